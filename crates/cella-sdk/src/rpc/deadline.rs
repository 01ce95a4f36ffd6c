//! Deadlines: each call ends by the sooner of its context's deadline and the per-call
//! timeout, enforced here: past it the call fails with `DeadlineExceeded`.
//!
//! Only the context's deadline (set by the app, or inherited from the request being
//! served) travels on, as `grpc-timeout`. The per-call timeout is this caller's guard
//! alone, as in gRPC's own clients: a call it abandons is reset on its connection, which
//! cancels it at the server all the same, and the server is spared arming a timer for
//! every call (with tonic, over a context switch per call at one caller).
//!
//! The calls of one stack share a [`DeadlineWatch`] instead of each arming a tokio timer:
//! registering a timer sooner than the runtime's next planned wake-up (and between calls
//! none is planned) wakes the thread parked on the I/O driver, a context switch per call
//! that measured 5–10% of a one-caller loopback call. A call here only records its
//! deadline; one watcher task sleeps until the earliest recorded one and is woken early only
//! by a call whose deadline is sooner than that. With a fixed timeout deadlines only grow,
//! so the watcher wakes about once per timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tower::{BoxError, Layer, Service};

use super::context::Context;
use super::RpcRequest;
use crate::Error;

/// Sets and enforces each call's deadline.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// Calls without a sooner deadline end after `timeout` (never, if `None`).
    pub fn new(timeout: Option<Duration>) -> Self {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            timeout: self.timeout,
            watch: Arc::new(DeadlineWatch::default()),
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    timeout: Option<Duration>,
    watch: Arc<DeadlineWatch>,
}

/// The sooner of a context deadline and `now + timeout`.
pub(crate) fn effective_deadline(
    context: Option<Instant>,
    timeout: Option<Duration>,
    now: Instant,
) -> Option<Instant> {
    match (context, timeout.map(|t| now + t)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The deadlines of the calls in flight through one stack, and the task that wakes each
/// call when its deadline passes (started on first use, stopped with the last clone).
#[derive(Default)]
struct DeadlineWatch {
    waiting: Arc<Mutex<Waiting>>,
    /// Tells the watcher a call brought a deadline sooner than the one it sleeps until.
    sooner: Arc<Notify>,
    watcher: OnceLock<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for DeadlineWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadlineWatch")
    }
}

impl Drop for DeadlineWatch {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.abort();
        }
    }
}

/// A call's place in [`Waiting`]: its deadline, then a number that tells calls apart.
type Slot = (Instant, u64);

#[derive(Default)]
struct Waiting {
    calls: BTreeMap<Slot, Waker>,
    next_number: u64,
    /// When the watcher looks next; `None` while it waits for a call.
    watcher_wakes_at: Option<Instant>,
}

impl Waiting {
    /// Wakes the calls whose deadline is at or before `now` and forgets them; returns when
    /// the watcher should look next.
    fn wake_passed(&mut self, now: Instant) -> Option<Instant> {
        while let Some(call) = self.calls.first_entry() {
            if call.key().0 > now {
                break;
            }
            call.remove().wake();
        }
        self.watcher_wakes_at = self.calls.keys().next().map(|(deadline, _)| *deadline);
        self.watcher_wakes_at
    }
}

impl DeadlineWatch {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .expect("deadline lock is never poisoned")
    }

    /// Records (or refreshes the waker of) a call waiting until `deadline`.
    fn remember(&self, slot: &mut Option<Slot>, deadline: Instant, waker: &Waker) {
        self.watcher.get_or_init(|| {
            tokio::spawn(wake_at_deadlines(self.waiting.clone(), self.sooner.clone()))
                .abort_handle()
        });
        let mut waiting = self.waiting();
        if let Some(key) = slot {
            if let Some(known) = waiting.calls.get_mut(key) {
                known.clone_from(waker);
            }
            return;
        }
        let key = (deadline, waiting.next_number);
        waiting.next_number += 1;
        waiting.calls.insert(key, waker.clone());
        *slot = Some(key);
        if waiting.watcher_wakes_at.is_none_or(|at| deadline < at) {
            waiting.watcher_wakes_at = Some(deadline);
            self.sooner.notify_one();
        }
    }

    fn forget(&self, slot: &mut Option<Slot>) {
        if let Some(key) = slot.take() {
            self.waiting().calls.remove(&key);
        }
    }
}

/// The watcher: sleeps until the earliest deadline it knows of (which may belong to a call
/// already answered: it then just looks again) or until told of a sooner one.
async fn wake_at_deadlines(waiting: Arc<Mutex<Waiting>>, sooner: Arc<Notify>) {
    loop {
        let next = waiting
            .lock()
            .expect("deadline lock is never poisoned")
            .wake_passed(Instant::now());
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = sooner.notified() => {}
                }
            }
            None => sooner.notified().await,
        }
    }
}

/// A call racing its deadline.
struct Watched<F> {
    call: F,
    deadline: Instant,
    watch: Arc<DeadlineWatch>,
    slot: Option<Slot>,
}

fn exceeded() -> BoxError {
    Box::new(Error::DeadlineExceeded {
        message: "the call's deadline passed before an answer".into(),
    })
}

impl<F, R> Future for Watched<F>
where
    F: Future<Output = Result<R, BoxError>> + Unpin,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let passed = |this: &Watched<F>| Instant::now() >= this.deadline;
        if let Poll::Ready(result) = Pin::new(&mut this.call).poll(cx) {
            this.watch.forget(&mut this.slot);
            // A connection that enforces `grpc-timeout` itself fails first with its own
            // error: past the deadline, it is the deadline all the same.
            return Poll::Ready(match result {
                Err(_) if passed(this) => Err(exceeded()),
                result => result,
            });
        }
        if passed(this) {
            this.watch.forget(&mut this.slot);
            return Poll::Ready(Err(exceeded()));
        }
        this.watch
            .remember(&mut this.slot, this.deadline, cx.waker());
        Poll::Pending
    }
}

impl<F> Drop for Watched<F> {
    fn drop(&mut self) {
        self.watch.forget(&mut self.slot);
    }
}

impl<S, R> Service<RpcRequest> for DeadlineService<S>
where
    S: Service<RpcRequest, Response = R, Error = BoxError>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: RpcRequest) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let context = parts.extensions.get_or_insert_with(Context::new);
        // The other context headers are written by the context layer outside this one.
        context.write_deadline(&mut parts.headers);
        let deadline = effective_deadline(context.deadline, self.timeout, Instant::now());
        let call = Box::pin(self.inner.call(RpcRequest::from_parts(parts, body)));
        match deadline {
            None => call,
            Some(deadline) => Box::pin(Watched {
                call,
                deadline,
                watch: self.watch.clone(),
                slot: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    type TestStack = DeadlineService<tower::util::BoxService<RpcRequest, (), BoxError>>;

    /// A stack whose calls answer after the number of milliseconds in their body (never for
    /// an empty body), with `timeout` per call.
    fn slow_service(timeout: Duration) -> TestStack {
        let inner = tower::service_fn(|request: RpcRequest| async move {
            match std::str::from_utf8(request.body())
                .ok()
                .and_then(|t| t.parse().ok())
            {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
            Ok::<_, BoxError>(())
        });
        DeadlineLayer::new(Some(timeout)).layer(tower::util::BoxService::new(inner))
    }

    fn call_with(body: &'static str, deadline: Option<Duration>) -> RpcRequest {
        let mut request = RpcRequest::new(bytes::Bytes::from_static(body.as_bytes()));
        if let Some(timeout) = deadline {
            request
                .extensions_mut()
                .insert(Context::new().with_timeout(timeout));
        }
        request
    }

    /// Sends a call that never answers, with `deadline`, and checks it fails by it.
    async fn expect_deadline(stack: &mut TestStack, deadline: Duration) {
        let call = stack
            .ready()
            .await
            .unwrap()
            .call(call_with("", Some(deadline)));
        let error = call.await.expect_err("the deadline passes");
        assert!(
            matches!(
                error.downcast_ref::<Error>(),
                Some(Error::DeadlineExceeded { .. })
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_sooner_deadline_ends_its_call_while_a_later_one_waits() {
        let mut stack = slow_service(Duration::from_secs(60));
        // A call that waits for the 60 s timeout: the watcher sleeps until then...
        let long = stack.ready().await.unwrap().call(call_with("", None));
        let long = tokio::spawn(long);
        tokio::task::yield_now().await;
        // ...and a sooner deadline arriving later must wake it early.
        let started = Instant::now();
        expect_deadline(&mut stack, Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(30));
        // A call that answers in time is not touched.
        let fast = stack
            .ready()
            .await
            .unwrap()
            .call(call_with("5", Some(Duration::from_secs(30))));
        fast.await.expect("answered before its deadline");
        assert!(!long.is_finished());
        long.abort();
        // Answered, failed and dropped calls leave nothing behind.
        let _ = long.await;
        assert!(stack.watch.waiting().calls.is_empty());
    }

    #[tokio::test]
    async fn calls_after_a_deadline_fired_are_still_watched() {
        let mut stack = slow_service(Duration::from_secs(60));
        for _ in 0..3 {
            expect_deadline(&mut stack, Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_sooner_deadline_wins() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(effective_deadline(None, None, now), None);
        assert_eq!(effective_deadline(Some(now + s), None, now), Some(now + s));
        assert_eq!(effective_deadline(None, Some(s), now), Some(now + s));
        assert_eq!(
            effective_deadline(Some(now + 5 * s), Some(s), now),
            Some(now + s)
        );
        assert_eq!(
            effective_deadline(Some(now + s), Some(5 * s), now),
            Some(now + s)
        );
    }
}
