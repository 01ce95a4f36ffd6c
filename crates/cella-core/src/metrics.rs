//! The core's metrics, named `cella_core_*`, registered once into the server's registry.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

struct CoreMetrics {
    log_fsync_seconds: Histogram,
    log_appends_per_fsync: Histogram,
    apply_seconds: Histogram,
    proposals_total: Counter,
    proposals_failed_total: Counter,
    watchers: Gauge,
    leases_expired_total: Counter,
}

fn metrics() -> &'static CoreMetrics {
    static METRICS: OnceLock<CoreMetrics> = OnceLock::new();
    METRICS.get_or_init(|| CoreMetrics {
        log_fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        log_appends_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        apply_seconds: Histogram::new(exponential_buckets(0.000001, 2.0, 20)),
        proposals_total: Counter::default(),
        proposals_failed_total: Counter::default(),
        watchers: Gauge::default(),
        leases_expired_total: Counter::default(),
    })
}

/// Adds the core's metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("cella_core");
    r.register(
        "log_fsync_seconds",
        "Time of one Raft log fsync",
        m.log_fsync_seconds.clone(),
    );
    r.register(
        "log_appends_per_fsync",
        "Append batches made durable by one fsync (group commit)",
        m.log_appends_per_fsync.clone(),
    );
    r.register(
        "apply_seconds",
        "Time to apply one batch of entries to the state machine",
        m.apply_seconds.clone(),
    );
    r.register(
        "proposals",
        "Writes proposed through this node",
        m.proposals_total.clone(),
    );
    r.register(
        "proposals_failed",
        "Writes that failed to commit",
        m.proposals_failed_total.clone(),
    );
    r.register("watchers", "Watchers open on this node", m.watchers.clone());
    r.register(
        "leases_expired",
        "Leases revoked by this node as leader because they expired",
        m.leases_expired_total.clone(),
    );
}

pub(crate) fn observe_log_fsync(took: Duration, appends: usize) {
    metrics().log_fsync_seconds.observe(took.as_secs_f64());
    metrics().log_appends_per_fsync.observe(appends as f64);
}

pub(crate) fn observe_apply(took: Duration) {
    metrics().apply_seconds.observe(took.as_secs_f64());
}

pub(crate) fn count_proposal(ok: bool) {
    metrics().proposals_total.inc();
    if !ok {
        metrics().proposals_failed_total.inc();
    }
}

pub(crate) fn watcher_opened() {
    metrics().watchers.inc();
}

pub(crate) fn watcher_closed() {
    metrics().watchers.dec();
}

pub(crate) fn count_expired_lease() {
    metrics().leases_expired_total.inc();
}
