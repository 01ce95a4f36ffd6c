//! Busy polling: after activity, a current-thread tokio runtime keeps polling its sockets for
//! a short window instead of sleeping, so an event that comes within it costs no wake-up.
//!
//! A process that sleeps in `epoll_wait` is woken by the kernel when data arrives; on a VM
//! whose idle CPUs halt, that wake-up (an IPI, the host rescheduling the vCPU, the switch
//! back in) costs tens of µs, more than the work a proxy does per call. A proxy pays it twice
//! per call (the answer, then the next request). Linux's guest halt-polling and `busy_poll`
//! sockets, Go's spinning scheduler threads and Aeron's idle strategies trade a little CPU
//! for that latency; this does the same in user space, for runtimes that serve one hot path.
//!
//! The window adapts as halt-polling's does, to how long the runtime sat idle before new work
//! arrived ([`BusyPoll::arrival`]): within `max`, the window doubles (from [`GROW_START`] up
//! to `max`); later, it halves (to zero below [`GROW_START`]). Polling only pays when the next
//! request comes soon (measured on a 2-vCPU VM: for a caller that waits 2 ms between calls,
//! polling while the app answered saved nothing and cost CPU), so a busy runtime polls after
//! every event and one with sparse callers soon not at all. Polling costs at most the window
//! of one core per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The window after the first arrival that came soon enough to be worth polling for.
pub const GROW_START: Duration = Duration::from_micros(10);

/// A handle to a runtime's busy poller: [`BusyPoll::arrival`] and [`BusyPoll::activity`]
/// mark events worth polling after. Clones share one poller; it stops when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct BusyPoll {
    state: Option<Arc<State>>,
}

#[derive(Debug)]
struct State {
    epoch: Instant,
    max: u64,
    /// The window, in ns.
    window: AtomicU64,
    /// When the last event was, in ns since `epoch` ([`NEVER`] before the first).
    last: AtomicU64,
    /// Wakes the poller from its sleep (on events, and when the handles are gone).
    wake: Arc<Notify>,
}

/// `State::last` before the first event.
const NEVER: u64 = u64::MAX;

impl Drop for State {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

impl State {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the last event is within the window.
    fn polling(&self) -> bool {
        let since = self.now().saturating_sub(self.last.load(Ordering::Relaxed));
        since < self.window.load(Ordering::Relaxed)
    }

    /// Marks an event now; returns how long since the one before (None for the first).
    fn mark(&self) -> Option<u64> {
        let now = self.now();
        let before = self.last.swap(now, Ordering::Relaxed);
        self.wake.notify_one();
        (before != NEVER).then(|| now.saturating_sub(before))
    }
}

/// The window after new work arrived `idle` after the last event.
fn adapt(window: u64, idle: u64, max: u64) -> u64 {
    let start = u64::try_from(GROW_START.as_nanos()).unwrap_or(u64::MAX);
    if idle <= max {
        window.saturating_mul(2).clamp(start.min(max), max)
    } else if window / 2 < start {
        0
    } else {
        window / 2
    }
}

impl BusyPoll {
    /// A handle that never polls.
    pub fn off() -> BusyPoll {
        BusyPoll { state: None }
    }

    /// Starts a poller task on the current runtime that polls for up to `max` after each
    /// event (0: [`BusyPoll::off`]). Meant for a current-thread runtime, whose one thread the
    /// polling keeps awake; must be called within a runtime.
    pub fn start(max: Duration) -> BusyPoll {
        if max.is_zero() {
            return BusyPoll::off();
        }
        let wake = Arc::new(Notify::new());
        let state = Arc::new(State {
            epoch: Instant::now(),
            max: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            window: AtomicU64::new(0),
            last: AtomicU64::new(NEVER),
            wake: wake.clone(),
        });
        tokio::spawn(poll_while_active(Arc::downgrade(&state), wake));
        BusyPoll { state: Some(state) }
    }

    /// Marks the arrival of new work (a request): the time since the last event adapts the
    /// window, and the runtime polls for it from now.
    pub fn arrival(&self) {
        let Some(state) = &self.state else { return };
        if let Some(idle) = state.mark() {
            let window = state.window.load(Ordering::Relaxed);
            let next = adapt(window, idle, state.max);
            state.window.store(next, Ordering::Relaxed);
        }
    }

    /// Marks an event within work under way (a call sent on, its answer back): the runtime
    /// polls for the window from now.
    pub fn activity(&self) {
        if let Some(state) = &self.state {
            state.mark();
        }
    }

    /// The current window (zero when off).
    pub fn window(&self) -> Duration {
        self.state.as_ref().map_or(Duration::ZERO, |state| {
            Duration::from_nanos(state.window.load(Ordering::Relaxed))
        })
    }
}

/// The poller: while within the window it yields to the OS, then to the runtime, which makes
/// a current-thread runtime poll its I/O driver without blocking before it runs the task
/// again; otherwise it sleeps until the next event. Ends once every handle is gone.
async fn poll_while_active(state: Weak<State>, wake: Arc<Notify>) {
    loop {
        let polling = match state.upgrade() {
            Some(state) => state.polling(),
            None => return,
        };
        if polling {
            // Hand the CPU to any other runnable process first: a poll must not slow the
            // app or its callers when they need this core.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        } else {
            wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_double_on_short_idles_and_halve_to_zero_on_long_ones() {
        let max = 1_000_000;
        let start = GROW_START.as_nanos() as u64;
        assert_eq!(adapt(0, 5, max), start);
        assert_eq!(adapt(start, max, max), 2 * start);
        assert_eq!(adapt(600_000, 1, max), max, "capped");
        assert_eq!(adapt(max, max + 1, max), max / 2);
        assert_eq!(adapt(start, max + 1, max), 0, "below the start it stops");
        assert_eq!(adapt(0, 1, 5), 5, "a max below the start caps it");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn busy_arrivals_open_the_window_and_sparse_ones_close_it() {
        let max = Duration::from_millis(200);
        let poll = BusyPoll::start(max);
        for _ in 0..20 {
            poll.arrival();
            poll.activity();
        }
        assert_eq!(poll.window(), max);
        // Events within work do not teach the window anything.
        poll.activity();
        assert_eq!(poll.window(), max);
        for _ in 0..2 {
            tokio::time::sleep(max + Duration::from_millis(20)).await;
            poll.arrival();
        }
        assert_eq!(poll.window(), max / 4);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            poll.activity();
        }
        tokio::time::sleep(max + Duration::from_millis(20)).await;
        poll.arrival();
        assert_eq!(poll.window(), max / 8);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_never_polls() {
        let poll = BusyPoll::start(Duration::ZERO);
        poll.arrival();
        poll.arrival();
        poll.activity();
        assert_eq!(poll.window(), Duration::ZERO);
        assert!(poll.state.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn it_polls_within_the_window_and_not_after() {
        let poll = BusyPoll::start(Duration::from_millis(50));
        let state = poll.state.clone().expect("on");
        assert!(!state.polling(), "no event yet");
        for _ in 0..20 {
            poll.arrival();
        }
        assert!(state.polling());
        // The poller keeps yielding meanwhile, so timers (and I/O) still run.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!state.polling(), "past the window");
        poll.activity();
        assert!(state.polling(), "any event opens the window again");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_poller_ends_with_its_last_handle() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let poll = BusyPoll::start(Duration::from_micros(100));
        let copy = poll.clone();
        assert_eq!(tasks(), before + 1);
        drop(poll);
        tokio::task::yield_now().await;
        assert_eq!(tasks(), before + 1, "a handle is left");
        drop(copy);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks(), before, "the poller returned");
    }
}
