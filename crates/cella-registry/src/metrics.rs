//! The registry's metrics, named `cella_registry_*`, registered once into the server's registry.

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

struct RegistryMetrics {
    instances: Gauge,
    heartbeats_total: Counter,
    changes_total: Counter,
    protecting_services: Gauge,
}

fn metrics() -> &'static RegistryMetrics {
    static METRICS: OnceLock<RegistryMetrics> = OnceLock::new();
    METRICS.get_or_init(|| RegistryMetrics {
        instances: Gauge::default(),
        heartbeats_total: Counter::default(),
        changes_total: Counter::default(),
        protecting_services: Gauge::default(),
    })
}

/// Adds the registry's metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("cella_registry");
    r.register(
        "instances",
        "Instances registered on this node",
        m.instances.clone(),
    );
    r.register(
        "heartbeats",
        "Heartbeats received",
        m.heartbeats_total.clone(),
    );
    r.register(
        "changes",
        "Service changes pushed to subscribers",
        m.changes_total.clone(),
    );
    r.register(
        "protecting_services",
        "Services whose expiry is held back by protection (the alarm: more went silent at once than their threshold allows)",
        m.protecting_services.clone(),
    );
}

pub(crate) fn set_instances(n: usize) {
    metrics().instances.set(n as i64);
}

pub(crate) fn heartbeats(n: usize) {
    metrics().heartbeats_total.inc_by(n as u64);
}

pub(crate) fn changes(n: usize) {
    metrics().changes_total.inc_by(n as u64);
}

pub(crate) fn set_protecting_services(n: usize) {
    metrics().protecting_services.set(n as i64);
}
