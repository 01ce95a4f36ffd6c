//! The id generators' metrics, named `cella_idgen_*`, registered once into the server's
//! registry (process-wide, so the SDK's generators count too).

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

struct IdgenMetrics {
    clock_backwards_total: Counter,
    ids_total: Counter,
    segment_fetches_total: Counter,
}

fn metrics() -> &'static IdgenMetrics {
    static METRICS: OnceLock<IdgenMetrics> = OnceLock::new();
    METRICS.get_or_init(|| IdgenMetrics {
        clock_backwards_total: Counter::default(),
        ids_total: Counter::default(),
        segment_fetches_total: Counter::default(),
    })
}

/// Adds the id generators' metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("cella_idgen");
    r.register(
        "clock_backwards",
        "Alarm: requests refused because the clock moved back further than is waited out",
        m.clock_backwards_total.clone(),
    );
    r.register("ids", "Snowflake ids issued", m.ids_total.clone());
    r.register(
        "segment_fetches",
        "Segments allocated from the core by compare-and-swap",
        m.segment_fetches_total.clone(),
    );
}

/// How many times the clock-backwards alarm fired in this process.
pub fn clock_backwards_count() -> u64 {
    metrics().clock_backwards_total.get()
}

pub(crate) fn count_clock_backwards() {
    metrics().clock_backwards_total.inc();
}

pub(crate) fn count_ids(n: usize) {
    metrics().ids_total.inc_by(n as u64);
}

pub(crate) fn count_segment_fetch() {
    metrics().segment_fetches_total.inc();
}
