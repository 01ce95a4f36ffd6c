//! The broker's metrics, named `cella_mq_*`, registered once into the server's registry.
//!
//! Counters and histograms are process-wide (the store's writer and the broker update
//! them as they go); the consumer lag and the delayed messages waiting are read from the
//! registered [`Broker`] at scrape time, so they are exact when scraped.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::Broker;

type Labels = Vec<(&'static str, String)>;

struct MqMetrics {
    appended_messages: Family<Labels, Counter>,
    appended_bytes: Family<Labels, Counter>,
    fsync_seconds: Histogram,
    appends_per_fsync: Histogram,
    retries: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
}

fn metrics() -> &'static MqMetrics {
    static METRICS: OnceLock<MqMetrics> = OnceLock::new();
    METRICS.get_or_init(|| MqMetrics {
        appended_messages: Family::default(),
        appended_bytes: Family::default(),
        fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
        appends_per_fsync: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        retries: Family::default(),
        dead_lettered: Family::default(),
    })
}

/// Adds the broker's metrics to `registry`; lag and delayed messages are read from `broker`.
pub fn register(registry: &mut Registry, broker: Broker) {
    let m = metrics();
    let r = registry.sub_registry_with_prefix("cella_mq");
    r.register(
        "appended_messages",
        "Messages appended to the commitlog, per topic (retry, dead-letter and delay topics included)",
        m.appended_messages.clone(),
    );
    r.register(
        "appended_bytes",
        "Bytes of message records appended to the commitlog, per topic",
        m.appended_bytes.clone(),
    );
    r.register(
        "fsync_seconds",
        "Time of one commitlog fsync made for sync-flush appends (group commit)",
        m.fsync_seconds.clone(),
    );
    r.register(
        "appends_per_fsync",
        "Appends made durable by one group-commit fsync",
        m.appends_per_fsync.clone(),
    );
    r.register(
        "retries",
        "Nacked or timed-out messages sent to a group's retry topic, per group",
        m.retries.clone(),
    );
    r.register(
        "dead_lettered",
        "Messages moved to a group's dead-letter topic after their last retry, per group",
        m.dead_lettered.clone(),
    );
    r.register_collector(Box::new(BrokerGauges { broker }));
}

pub(crate) fn count_appended(topic: &str, messages: u64, bytes: u64) {
    let labels = vec![("topic", topic.to_string())];
    metrics()
        .appended_messages
        .get_or_create(&labels)
        .inc_by(messages);
    metrics()
        .appended_bytes
        .get_or_create(&labels)
        .inc_by(bytes);
}

pub(crate) fn observe_fsync(took: Duration, appends: usize) {
    metrics().fsync_seconds.observe(took.as_secs_f64());
    metrics().appends_per_fsync.observe(appends as f64);
}

pub(crate) fn count_retry(group: &str) {
    let labels = vec![("group", group.to_string())];
    metrics().retries.get_or_create(&labels).inc();
}

pub(crate) fn count_dead_lettered(group: &str, n: u64) {
    let labels = vec![("group", group.to_string())];
    metrics().dead_lettered.get_or_create(&labels).inc_by(n);
}

/// The gauges read from the broker when /metrics is scraped.
struct BrokerGauges {
    broker: Broker,
}

impl std::fmt::Debug for BrokerGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerGauges")
    }
}

impl Collector for BrokerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut lag = encoder.encode_descriptor(
            "consumer_lag",
            "Messages not yet acknowledged by a consumer group, per group, topic and queue \
             (member is set for broadcasting groups)",
            None,
            MetricType::Gauge,
        )?;
        for (group, topic, member, queue, behind) in self.broker.lag_snapshot() {
            let labels: Labels = vec![
                ("group", group),
                ("topic", topic),
                ("member", member),
                ("queue", queue.to_string()),
            ];
            ConstGauge::new(behind as i64).encode(lag.encode_family(&labels)?)?;
        }
        let delayed = encoder.encode_descriptor(
            "delayed_pending",
            "Delayed messages (and retries waiting out their backoff) not yet due",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.broker.delayed_pending() as i64).encode(delayed)?;
        Ok(())
    }
}
