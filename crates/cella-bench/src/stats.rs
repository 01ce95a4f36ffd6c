//! Latency histograms, error tallies, per-level results and the ratios between targets.
//!
//! Latencies are recorded in microseconds in an HDR histogram (3 significant digits, 1 µs to
//! 60 s; slower samples are clamped to 60 s). Ratios divide a target's figures by the
//! baseline target's at the same client level.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::usage::ServerUsage;

/// Highest latency the histograms track, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Distinct error messages kept per level; the rest are counted under "other".
const MAX_ERROR_KINDS: usize = 8;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Latencies(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds are valid for hdrhistogram"),
        )
    }

    /// Records one latency; below 1 µs counts as 1 µs, above 60 s as 60 s.
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records `n` operations that took `latency` each (a batch); nothing when `n` is 0.
    pub(crate) fn record_n(&mut self, latency: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record_n(us.clamp(1, MAX_LATENCY_US), n);
    }

    /// Adds every sample of `other`.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        self.0
            .add(&other.0)
            .expect("histograms with equal bounds always merge");
    }

    /// Number of samples.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The p50, p99 and p99.9 latencies in microseconds (0 when empty).
    pub(crate) fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: self.0.value_at_quantile(0.50),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// A short one-line description of a failed operation: gRPC statuses as `Code: message`
/// (tonic's own rendering carries the whole transport error chain), other errors as-is.
pub(crate) fn describe(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| match cause.downcast_ref::<tonic::Status>() {
            Some(status) => format!("{:?}: {}", status.code(), status.message()),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// Failed operations counted by message.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorTally {
    by_message: BTreeMap<String, u64>,
    other: u64,
    /// Clients that stopped early after too many consecutive failures.
    pub gave_up: u64,
}

impl ErrorTally {
    /// Counts one failure with this message.
    pub(crate) fn add(&mut self, message: impl Into<String>, n: u64) {
        let message = message.into();
        if let Some(count) = self.by_message.get_mut(&message) {
            *count += n;
        } else if self.by_message.len() < MAX_ERROR_KINDS {
            self.by_message.insert(message, n);
        } else {
            self.other += n;
        }
    }

    /// Adds every count of `other`.
    pub(crate) fn merge(&mut self, other: &ErrorTally) {
        for (message, n) in &other.by_message {
            self.add(message.clone(), *n);
        }
        self.other += other.other;
        self.gave_up += other.gave_up;
    }

    /// Total failures.
    pub(crate) fn total(&self) -> u64 {
        self.by_message.values().sum::<u64>() + self.other
    }

    /// The messages with their counts, most frequent first, with "other" last.
    pub(crate) fn summary(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .by_message
            .iter()
            .map(|(m, n)| (m.clone(), *n))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if self.other > 0 {
            out.push(("other errors".to_string(), self.other));
        }
        out
    }
}

/// What one load run measured: successful operations, their latencies, failures, wall time.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    /// Wall time from the start until the last client stopped.
    pub elapsed: Duration,
    /// One sample per successful operation.
    pub latencies: Latencies,
    /// Failed operations.
    pub errors: ErrorTally,
    /// The server process's usage during the run, when `--server-pid` is given.
    pub server: Option<ServerUsage>,
}

impl Measurement {
    /// Successful operations (one latency sample each).
    pub(crate) fn ops(&self) -> u64 {
        self.latencies.len()
    }

    /// Adds a later run of the same target and level (a round): times and samples add up,
    /// the server's CPU share is averaged over both and its memory is the later one's.
    pub(crate) fn merge(&mut self, later: &Measurement) {
        self.server = match (self.server, later.server) {
            (Some(a), Some(b)) => {
                let (ta, tb) = (self.elapsed.as_secs_f64(), later.elapsed.as_secs_f64());
                let total = (ta + tb).max(f64::MIN_POSITIVE);
                Some(ServerUsage {
                    cpu_percent: (a.cpu_percent * ta + b.cpu_percent * tb) / total,
                    rss_bytes: b.rss_bytes,
                })
            }
            (a, b) => b.or(a),
        };
        self.elapsed += later.elapsed;
        self.latencies.merge(&later.latencies);
        self.errors.merge(&later.errors);
    }
}

/// The row of the result table for one target at one client level.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LevelResult {
    /// Target name.
    pub target: String,
    /// Client level (watchers for watch-fanout).
    pub clients: usize,
    /// Successful operations.
    pub ops: u64,
    /// Successful operations per second of the run's wall time.
    pub ops_per_sec: f64,
    /// Latency percentiles of the successful operations, in microseconds.
    pub latency: Percentiles,
    /// Failed operations.
    pub errors: u64,
    /// Failed operations by message, most frequent first.
    pub error_kinds: Vec<(String, u64)>,
    /// Clients that stopped early (too many consecutive failures, or a timeout).
    pub clients_gave_up: u64,
    /// The server process's usage during the run, when measured.
    pub server: Option<ServerUsage>,
}

impl LevelResult {
    /// Summarises a measurement of `target` at `clients`.
    pub(crate) fn from_measurement(target: &str, clients: usize, m: &Measurement) -> Self {
        LevelResult {
            target: target.to_string(),
            clients,
            ops: m.ops(),
            ops_per_sec: rate(m.ops(), m.elapsed),
            latency: m.latencies.percentiles(),
            errors: m.errors.total(),
            error_kinds: m.errors.summary(),
            clients_gave_up: m.errors.gave_up,
            server: m.server,
        }
    }
}

/// Operations per second; 0 when no time passed.
pub(crate) fn rate(ops: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        ops as f64 / secs
    } else {
        0.0
    }
}

/// One target's figures divided by the baseline's at the same level.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RatioRow {
    /// Target name.
    pub target: String,
    /// Client level.
    pub clients: usize,
    /// Throughput ratio: above 1 means faster than the baseline.
    pub ops_per_sec: Option<f64>,
    /// Median latency ratio: below 1 means lower latency than the baseline.
    pub p50: Option<f64>,
    /// p99 latency ratio: below 1 means lower latency than the baseline.
    pub p99: Option<f64>,
}

/// Ratios of every non-baseline result to the baseline result at the same level.
/// Empty when no result belongs to `baseline`.
pub(crate) fn ratios(results: &[LevelResult], baseline: &str) -> Vec<RatioRow> {
    let mut rows = Vec::new();
    for r in results.iter().filter(|r| r.target != baseline) {
        let Some(base) = results
            .iter()
            .find(|b| b.target == baseline && b.clients == r.clients)
        else {
            continue;
        };
        rows.push(RatioRow {
            target: r.target.clone(),
            clients: r.clients,
            ops_per_sec: divide(r.ops_per_sec, base.ops_per_sec),
            p50: divide(r.latency.p50 as f64, base.latency.p50 as f64),
            p99: divide(r.latency.p99 as f64, base.latency.p99 as f64),
        });
    }
    rows
}

fn divide(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_merge_into_one_measurement() {
        let round = |us: u64, secs: u64, cpu: f64, rss: u64| {
            let mut latencies = Latencies::new();
            latencies.record(Duration::from_micros(us));
            Measurement {
                elapsed: Duration::from_secs(secs),
                latencies,
                errors: ErrorTally::default(),
                server: Some(ServerUsage {
                    cpu_percent: cpu,
                    rss_bytes: rss,
                }),
            }
        };
        let mut merged = round(100, 1, 50.0, 10);
        let mut failing = round(300, 3, 100.0, 20);
        failing.errors.add("refused", 2);
        merged.merge(&failing);
        assert_eq!(merged.ops(), 2);
        assert_eq!(merged.elapsed, Duration::from_secs(4));
        assert_eq!(merged.errors.total(), 2);
        let server = merged.server.expect("both rounds sampled the server");
        assert!((server.cpu_percent - 87.5).abs() < 1e-9, "{server:?}");
        assert_eq!(server.rss_bytes, 20);
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Latencies::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        assert_eq!(p.p50, 500);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(h.len(), 1000);
    }

    #[test]
    fn percentiles_clamp_and_merge() {
        let mut a = Latencies::new();
        a.record(Duration::from_nanos(10));
        let mut b = Latencies::new();
        b.record(Duration::from_secs(3600));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert_eq!(a.percentiles().p50, 1);
        // 3 significant digits: the top bucket may report slightly above the clamp.
        assert!(a.percentiles().p999 >= MAX_LATENCY_US);
        assert_eq!(Latencies::new().percentiles(), Percentiles::default());
    }

    #[test]
    fn error_tally_keeps_the_most_frequent_first_and_bounds_kinds() {
        let mut t = ErrorTally::default();
        t.add("a", 1);
        t.add("b", 5);
        t.add("a", 1);
        let mut u = ErrorTally::default();
        for i in 0..20 {
            u.add(format!("kind {i}"), 1);
        }
        t.merge(&u);
        assert_eq!(t.total(), 27);
        let s = t.summary();
        assert_eq!(s[0], ("b".to_string(), 5));
        assert_eq!(s[1], ("a".to_string(), 2));
        assert_eq!(s.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(s.last().unwrap(), &("other errors".to_string(), 14));
    }

    fn result(target: &str, clients: usize, ops_per_sec: f64, p50: u64, p99: u64) -> LevelResult {
        LevelResult {
            target: target.into(),
            clients,
            ops: 0,
            ops_per_sec,
            latency: Percentiles {
                p50,
                p99,
                p999: p99,
            },
            errors: 0,
            error_kinds: vec![],
            clients_gave_up: 0,
            server: None,
        }
    }

    #[test]
    fn ratios_pair_each_target_with_the_baseline_at_the_same_level() {
        let results = vec![
            result("cella", 1, 3000.0, 300, 900),
            result("etcd", 1, 1000.0, 1000, 1800),
            result("cella", 64, 30_000.0, 2000, 0),
            result("etcd", 64, 20_000.0, 3000, 0),
            result("other", 8, 1.0, 1, 1),
        ];
        let rows = ratios(&results, "etcd");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].target, "cella");
        assert_eq!(rows[0].ops_per_sec, Some(3.0));
        assert_eq!(rows[0].p50, Some(0.3));
        assert_eq!(rows[0].p99, Some(0.5));
        assert_eq!(rows[1].clients, 64);
        assert_eq!(rows[1].ops_per_sec, Some(1.5));
        assert_eq!(rows[1].p99, None, "a zero baseline gives no ratio");
        assert!(ratios(&results, "nobody").is_empty());
    }

    #[test]
    fn statuses_are_described_briefly() {
        let e = anyhow::Error::new(tonic::Status::unavailable("tcp connect error"));
        assert_eq!(describe(&e), "Unavailable: tcp connect error");
        let e = e.context("opening watch stream");
        assert_eq!(
            describe(&e),
            "opening watch stream: Unavailable: tcp connect error"
        );
    }

    #[test]
    fn rate_handles_zero_time() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_millis(500)), 20.0);
    }
}
