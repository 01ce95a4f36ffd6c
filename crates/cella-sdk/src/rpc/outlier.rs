//! Outlier ejection (client-side circuit breaking), one breaker per endpoint.
//!
//! [`Outlier`] is the decision: after `consecutive_failures` failed calls in a row an endpoint
//! is ejected for `base × 2^(ejections-1)` (capped at `max`), then re-admitted; a success
//! resets both counts. [`EndpointLayer`] is the effect: it wraps each endpoint's connection,
//! counts its calls in flight, feeds its latency to a peak-EWMA estimate and its outcomes to
//! the breaker. The balancer reads that [`EndpointHealth`] when it picks.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cella_base::Clock;
use tower::{BoxError, Layer, Service};

use super::pick::PeakEwma;
use super::RpcRequest;

/// When an endpoint is ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionPolicy {
    /// Failed calls in a row that eject an endpoint (0 disables ejection).
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one in a row doubles it.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// One endpoint's breaker state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outlier {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Duration>,
}

impl Outlier {
    /// Whether the endpoint is out of the pick at `now`.
    pub fn is_ejected(&self, now: Duration) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Folds in one call's outcome; returns the end of a new ejection, if this one caused it.
    pub fn record(&mut self, ok: bool, now: Duration, policy: &EjectionPolicy) -> Option<Duration> {
        if ok {
            self.consecutive = 0;
            self.ejections = 0;
            return None;
        }
        self.consecutive += 1;
        if policy.consecutive_failures == 0
            || self.consecutive < policy.consecutive_failures
            || self.is_ejected(now)
        {
            return None;
        }
        self.consecutive = 0;
        self.ejections += 1;
        let factor = 2u32.saturating_pow(self.ejections - 1);
        let length = policy.base.saturating_mul(factor).min(policy.max);
        let until = now + length;
        self.ejected_until = Some(until);
        Some(until)
    }
}

/// What the balancer reads of an endpoint: calls in flight, latency, breaker.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    in_flight: AtomicUsize,
    state: Mutex<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    latency: PeakEwma,
    outlier: Outlier,
}

impl EndpointHealth {
    fn new(initial_latency: Duration, now: Duration) -> Self {
        EndpointHealth {
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(HealthState {
                latency: PeakEwma::new(initial_latency, now),
                outlier: Outlier::default(),
            }),
        }
    }

    /// (calls in flight, latency estimate in ns, ejected) at `now`.
    pub fn snapshot(&self, now: Duration, tau: Duration) -> (usize, f64, bool) {
        let state = self.state.lock().expect("health lock is never poisoned");
        (
            self.in_flight.load(Ordering::Relaxed),
            state.latency.at(now, tau),
            state.outlier.is_ejected(now),
        )
    }
}

/// Settings of the per-endpoint layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointSettings {
    pub ejection: EjectionPolicy,
    /// Latency assumed for an endpoint before its first answer.
    pub initial_latency: Duration,
    /// Time constant of the latency estimate's decay.
    pub decay: Duration,
}

/// Wraps an endpoint's connection in [`Observed`].
#[derive(Clone)]
pub(crate) struct EndpointLayer {
    settings: EndpointSettings,
    clock: Arc<dyn Clock>,
}

impl EndpointLayer {
    pub fn new(settings: EndpointSettings, clock: Arc<dyn Clock>) -> Self {
        EndpointLayer { settings, clock }
    }

    pub fn decay(&self) -> Duration {
        self.settings.decay
    }
}

impl<S> Layer<S> for EndpointLayer {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            health: Arc::new(EndpointHealth::new(
                self.settings.initial_latency,
                self.clock.now(),
            )),
            settings: self.settings,
            clock: self.clock.clone(),
        }
    }
}

/// An endpoint's connection whose calls are counted, timed and judged.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    health: Arc<EndpointHealth>,
    settings: EndpointSettings,
    clock: Arc<dyn Clock>,
}

impl<S> Observed<S> {
    pub(crate) fn health(&self) -> &Arc<EndpointHealth> {
        &self.health
    }
}

/// Whether a call failed in a way that says something about the endpoint (or may succeed
/// elsewhere): a transport error, HTTP 502/503/504, or gRPC UNAVAILABLE / INTERNAL / UNKNOWN.
pub(crate) fn is_failure<B>(result: &Result<http::Response<B>, BoxError>) -> bool {
    match result {
        Err(_) => true,
        Ok(response) => {
            let status = response.status().as_u16();
            let grpc = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u8>().ok());
            matches!(status, 502..=504) || matches!(grpc, Some(2 | 13 | 14))
        }
    }
}

impl<S, B> Service<RpcRequest> for Observed<S>
where
    S: Service<RpcRequest, Response = http::Response<B>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: RpcRequest) -> Self::Future {
        let health = self.health.clone();
        let clock = self.clock.clone();
        let settings = self.settings;
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        let start = clock.now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let now = clock.now();
            health.in_flight.fetch_sub(1, Ordering::Relaxed);
            let ok = !is_failure(&result);
            let mut state = health.state.lock().expect("health lock is never poisoned");
            state
                .latency
                .observe(now.saturating_sub(start), now, settings.decay);
            if let Some(until) = state.outlier.record(ok, now, &settings.ejection) {
                tracing::warn!(
                    for_ms = (until - now).as_millis() as u64,
                    "endpoint ejected after consecutive failures"
                );
            }
            drop(state);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> EjectionPolicy {
        EjectionPolicy {
            consecutive_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        }
    }

    #[test]
    fn consecutive_failures_eject_and_time_readmits() {
        let p = policy();
        let mut o = Outlier::default();
        assert_eq!(o.record(false, MS, &p), None);
        assert_eq!(o.record(false, 2 * MS, &p), None);
        assert_eq!(
            o.record(false, 3 * MS, &p),
            Some(3 * MS + Duration::from_secs(1))
        );
        assert!(o.is_ejected(500 * MS));
        assert!(!o.is_ejected(3 * MS + Duration::from_secs(1)));
    }

    #[test]
    fn a_success_breaks_the_run() {
        let p = policy();
        let mut o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.record(false, MS, &p), None);
            assert_eq!(o.record(false, MS, &p), None);
            assert_eq!(o.record(true, MS, &p), None);
        }
        assert!(!o.is_ejected(MS));
    }

    #[test]
    fn repeated_ejections_back_off_exponentially_up_to_the_cap() {
        let p = policy();
        let mut o = Outlier::default();
        let mut now = Duration::ZERO;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let until = (0..3)
                .find_map(|_| o.record(false, now, &p))
                .expect("ejected");
            lengths.push((until - now).as_secs());
            now = until;
        }
        assert_eq!(lengths, vec![1, 2, 4, 5, 5]);
        // Re-admitted and healthy: the next ejection starts short again.
        o.record(true, now, &p);
        let until = (0..3)
            .find_map(|_| o.record(false, now, &p))
            .expect("ejected");
        assert_eq!(until - now, Duration::from_secs(1));
    }

    #[test]
    fn failures_while_ejected_do_not_extend_it() {
        let p = policy();
        let mut o = Outlier::default();
        (0..3).for_each(|_| {
            o.record(false, Duration::ZERO, &p);
        });
        for _ in 0..10 {
            assert_eq!(o.record(false, 100 * MS, &p), None);
        }
        assert!(!o.is_ejected(Duration::from_secs(1)));
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let p = EjectionPolicy {
            consecutive_failures: 0,
            ..policy()
        };
        let mut o = Outlier::default();
        assert!((0..100).all(|_| o.record(false, MS, &p).is_none()));
    }

    #[test]
    fn failures_are_transport_errors_and_unavailable_answers() {
        let response = |status: u16, grpc: Option<&'static str>| {
            let mut r = http::Response::builder().status(status);
            if let Some(g) = grpc {
                r = r.header("grpc-status", g);
            }
            Ok::<_, BoxError>(r.body(()).expect("valid response"))
        };
        assert!(is_failure(&response(503, None)));
        assert!(is_failure(&response(200, Some("14"))));
        assert!(!is_failure(&response(200, Some("0"))));
        assert!(!is_failure(&response(200, Some("5"))));
        assert!(!is_failure(&response(404, None)));
        assert!(!is_failure(&response(500, None)));
        assert!(is_failure(&Err::<http::Response<()>, BoxError>(
            "reset".into()
        )));
    }
}
