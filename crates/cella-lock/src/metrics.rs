//! The lock block's metrics, named `cella_lock_*`, registered once into the server's
//! registry. They count what this node serves: grants and releases that pass through it.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

struct LockMetrics {
    acquisitions_total: Counter,
    releases_total: Counter,
    waiters: Gauge,
    hold_seconds: Histogram,
    handover_seconds: Histogram,
}

fn metrics() -> &'static LockMetrics {
    static METRICS: OnceLock<LockMetrics> = OnceLock::new();
    METRICS.get_or_init(|| LockMetrics {
        acquisitions_total: Counter::default(),
        releases_total: Counter::default(),
        waiters: Gauge::default(),
        // 100 µs to about 30 min.
        hold_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 25)),
        // 50 µs to about 1.6 s.
        handover_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
    })
}

/// Adds the lock block's metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("cella_lock");
    r.register(
        "acquisitions",
        "Locks and semaphore permits granted through this node (etcd's Lock included)",
        m.acquisitions_total.clone(),
    );
    r.register(
        "releases",
        "Locks and semaphore permits released through this node",
        m.releases_total.clone(),
    );
    r.register(
        "waiters",
        "Callers on this node waiting for their turn on a lock, semaphore or election",
        m.waiters.clone(),
    );
    r.register(
        "hold_seconds",
        "Time from a grant to its release, for holds granted and released through this node",
        m.hold_seconds.clone(),
    );
    r.register(
        "handover_seconds",
        "Time from a release through this node to the grant of the waiter it let in",
        m.handover_seconds.clone(),
    );
}

pub(crate) fn count_acquisition() {
    metrics().acquisitions_total.inc();
}

pub(crate) fn count_release(held_for: Option<Duration>) {
    metrics().releases_total.inc();
    if let Some(held) = held_for {
        metrics().hold_seconds.observe(held.as_secs_f64());
    }
}

pub(crate) fn observe_handover(took: Duration) {
    metrics().handover_seconds.observe(took.as_secs_f64());
}

/// Counts one waiter while alive.
pub(crate) struct Waiting(());

impl Waiting {
    pub(crate) fn start() -> Waiting {
        metrics().waiters.inc();
        Waiting(())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics().waiters.dec();
    }
}
