//! The workloads. Each builds its clients (and any fixture: preloaded keys, leases,
//! watchers), then hands them to the shared driver through [`measure`]; none has a load loop
//! of its own.

mod config;
mod kv;
mod lease;
mod txn;
mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use tokio::task::JoinHandle;

use crate::args::Workload;
use crate::conn::Connections;
use crate::driver::{drive, Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::{ErrorTally, Latencies, Measurement};

pub(crate) use config::DEFAULT_PUSH_RATE as DEFAULT_CONFIG_PUSH_RATE;
pub(crate) use watch::DEFAULT_RATE as DEFAULT_WATCH_RATE;

/// Key prefix every workload writes under, so benchmark data is easy to find and delete.
const KEY_PREFIX: &str = "/cella-bench/";

/// Everything a workload needs besides its connections and client count.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Bounds of the measured run.
    pub bounds: Bounds,
    /// Length of the unmeasured warm-up run (bounded by `bounds.count` too).
    pub warmup: Duration,
    /// Size of every value written.
    pub value_size: usize,
    /// Distinct keys for kv-put and kv-get.
    pub key_space: u64,
    /// kv-get reads serializably.
    pub serializable: bool,
    /// watch-fanout's watch streams.
    pub streams: usize,
}

/// Runs `workload` once at `clients` against `conns`; `progress` labels the progress line.
pub(crate) async fn run_level(
    workload: Workload,
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    match workload {
        Workload::KvPut => kv::run_put(conns, clients, settings, progress).await,
        Workload::KvGet => kv::run_get(conns, clients, settings, progress).await,
        Workload::TxnCas => txn::run(conns, clients, settings, progress).await,
        Workload::LeaseKeepalive => lease::run(conns, clients, settings, progress).await,
        Workload::WatchFanout => watch::run(conns, clients, settings, progress).await,
        Workload::ConfigPush => config::run_push(conns, clients, settings, progress).await,
        Workload::ConfigRead => config::run_read(conns, clients, settings, progress).await,
    }
}

/// Warms up with `clients`, then measures them: the one path from clients to numbers.
async fn measure<C: LoadClient>(
    clients: Vec<C>,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<(Vec<C>, Measurement)> {
    let mut clients = clients;
    if !settings.warmup.is_zero() {
        let warmup = Bounds {
            duration: settings.warmup,
            ..settings.bounds
        };
        clients = drive(clients, warmup, None).await?.0;
    }
    for client in &mut clients {
        client.start_measuring();
    }
    drive(clients, settings.bounds, progress).await
}

/// What one notification reader (a watch stream) saw.
struct ReaderOutcome {
    latencies: Latencies,
    errors: ErrorTally,
}

/// Ends a fan-out run: waits up to `drain` for the `expected` notifications (counted in
/// `received`), stops the readers, and merges their latencies and errors with the writer's
/// `written` measurement; every notification still missing is an error.
async fn finish_fanout(
    written: Measurement,
    expected: u64,
    received: &AtomicU64,
    stop: tokio::sync::watch::Sender<bool>,
    readers: Vec<JoinHandle<ReaderOutcome>>,
    drain: Duration,
) -> anyhow::Result<Measurement> {
    let drain_deadline = tokio::time::Instant::now() + drain;
    while received.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Receivers may all be gone already (every stream failed); nothing to stop then.
    let _ = stop.send(true);
    let mut latencies = Latencies::new();
    let mut errors = written.errors.clone();
    for reader in readers {
        let outcome = reader.await?;
        latencies.merge(&outcome.latencies);
        errors.merge(&outcome.errors);
    }
    let missing = expected.saturating_sub(latencies.len());
    if missing > 0 {
        errors.add(
            format!("notifications not received within {}s", drain.as_secs()),
            missing,
        );
    }
    Ok(Measurement {
        elapsed: written.elapsed,
        latencies,
        errors,
    })
}

/// A value of `size` bytes that starts with `head` (filler after it).
fn value_with_head(head: &[u8], size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size.max(head.len()));
    v.extend_from_slice(head);
    v.resize(size.max(head.len()), b'x');
    Bytes::from(v)
}

/// The key `n` of a workload's key space, fixed width so keys sort numerically.
fn numbered_key(workload: &str, n: u64) -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}{workload}/{n:010}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_keys() {
        assert_eq!(value_with_head(b"ab", 4), Bytes::from_static(b"abxx"));
        assert_eq!(value_with_head(b"abcd", 2), Bytes::from_static(b"abcd"));
        assert_eq!(
            numbered_key("kv", 42),
            Bytes::from_static(b"/cella-bench/kv/0000000042")
        );
    }
}
