//! The load-loop driver every workload shares.
//!
//! A workload supplies one [`LoadClient`] per simulated client; the driver runs them all
//! concurrently on the current tokio runtime, each in a closed loop (the next operation starts
//! when the previous one returns), until the shared operation budget is spent or the time
//! limit passes, whichever comes first. It times every operation, merges the per-client
//! histograms and error tallies, and feeds the progress line.
//!
//! Limits: latencies are closed-loop (no coordinated-omission correction); with `rate` set,
//! each client paces itself to `rate / clients` operations per second and a late client does
//! not burst to catch up. A client that fails [`MAX_CONSECUTIVE_ERRORS`] times in a row stops
//! early, so a dead target costs errors, not a busy loop; an operation still running
//! [`GRACE`] after the deadline is abandoned, so a hung target cannot stall the run.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::progress::Progress;
use crate::stats::{describe, ErrorTally, Latencies, Measurement};

/// Consecutive failures after which one client gives up for the rest of the run.
pub(crate) const MAX_CONSECUTIVE_ERRORS: u32 = 100;

/// How long past the deadline an operation may still run before it is abandoned as timed
/// out (and its client stops, since a stream it was using may now be out of step).
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// One simulated client of a workload: its connection and whatever state its operations need.
pub(crate) trait LoadClient: Send + 'static {
    /// Performs one operation; `Ok` means it completed as the workload intends.
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Called between the warm-up and the measured run.
    fn start_measuring(&mut self) {}

    /// For clients that time something other than the call itself (a lock hand-over): after
    /// a successful call, `Some(Some(d))` records `d`, `Some(None)` records nothing, and
    /// `None` (the default) records the call's own duration.
    fn measured_latency(&mut self) -> Option<Option<Duration>> {
        None
    }

    /// For clients whose one call handles several operations (a batch of messages): how
    /// many the last successful call did, each recorded with the call's latency. Default 1.
    fn ops_in_call(&mut self) -> u64 {
        1
    }

    /// Whether the client has nothing left to do (a drained backlog); checked before every
    /// call, it ends the client's loop early.
    fn done(&self) -> bool {
        false
    }
}

/// The bounds of one load run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Wall-time limit.
    pub duration: Duration,
    /// Operation limit over all clients (attempts, failed ones included).
    pub count: u64,
    /// Cap on operations per second over all clients.
    pub rate: Option<u32>,
}

/// Runs `clients` within `bounds`, reporting to `progress` if given, and hands the clients
/// back with what was measured.
pub(crate) async fn drive<C: LoadClient>(
    clients: Vec<C>,
    bounds: Bounds,
    progress: Option<&Progress>,
) -> anyhow::Result<(Vec<C>, Measurement)> {
    let started = Instant::now();
    let deadline = started + bounds.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let pace = bounds
        .rate
        .map(|rate| Duration::from_secs_f64(clients.len() as f64 / f64::from(rate.max(1))));
    let ticker = progress.map(|p| p.start(completed.clone()));

    let n = clients.len();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let issued = issued.clone();
            let completed = completed.clone();
            // Spread paced clients over one interval so they do not fire in lockstep.
            let first = pace.map(|p| started + p.mul_f64(i as f64 / n as f64));
            tokio::spawn(run_client(
                client,
                deadline,
                bounds.count,
                pace,
                first,
                issued,
                completed,
            ))
        })
        .collect();

    let mut clients = Vec::with_capacity(tasks.len());
    let mut latencies = Latencies::new();
    let mut errors = ErrorTally::default();
    for task in tasks {
        let (client, l, e) = task.await?;
        clients.push(client);
        latencies.merge(&l);
        errors.merge(&e);
    }
    let elapsed = started.elapsed();
    if let Some(ticker) = ticker {
        ticker.finish();
    }
    Ok((
        clients,
        Measurement {
            elapsed,
            latencies,
            errors,
            server: None,
        },
    ))
}

async fn run_client<C: LoadClient>(
    mut client: C,
    deadline: Instant,
    count: u64,
    pace: Option<Duration>,
    first: Option<Instant>,
    issued: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
) -> (C, Latencies, ErrorTally) {
    let mut latencies = Latencies::new();
    let mut errors = ErrorTally::default();
    let mut consecutive_errors = 0;
    let mut next = first;
    loop {
        if let (Some(at), Some(pace)) = (next, pace) {
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            next = Some((at + pace).max(Instant::now()));
        }
        if client.done()
            || Instant::now() >= deadline
            || issued.fetch_add(1, Ordering::Relaxed) >= count
        {
            break;
        }
        let sent = Instant::now();
        let Ok(result) = tokio::time::timeout_at(deadline + GRACE, client.call()).await else {
            errors.add("timed out past the end of the run", 1);
            errors.gave_up += 1;
            break;
        };
        match result {
            Ok(()) => {
                let ops = client.ops_in_call();
                match client.measured_latency() {
                    None => latencies.record_n(sent.elapsed(), ops),
                    Some(Some(own)) => latencies.record_n(own, ops),
                    Some(None) => {}
                }
                consecutive_errors = 0;
                completed.fetch_add(ops, Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                errors.add(describe(&e), 1);
                consecutive_errors += 1;
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    errors.gave_up += 1;
                    break;
                }
            }
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
    (client, latencies, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        calls: u64,
        fail_every: u64,
        delay: Duration,
    }

    impl LoadClient for Counter {
        async fn call(&mut self) -> anyhow::Result<()> {
            self.calls += 1;
            tokio::time::sleep(self.delay).await;
            if self.fail_every > 0 && self.calls % self.fail_every == 0 {
                anyhow::bail!("planned failure");
            }
            Ok(())
        }
    }

    fn counters(n: usize, fail_every: u64, delay: Duration) -> Vec<Counter> {
        (0..n)
            .map(|_| Counter {
                calls: 0,
                fail_every,
                delay,
            })
            .collect()
    }

    #[tokio::test]
    async fn stops_at_the_count_and_tallies_errors() {
        let bounds = Bounds {
            duration: Duration::from_secs(60),
            count: 1000,
            rate: None,
        };
        let (clients, m) = drive(counters(8, 10, Duration::ZERO), bounds, None)
            .await
            .unwrap();
        assert_eq!(clients.iter().map(|c| c.calls).sum::<u64>(), 1000);
        assert_eq!(m.ops() + m.errors.total(), 1000);
        assert!(m.errors.total() >= 93, "about one in ten fails");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline() {
        let bounds = Bounds {
            duration: Duration::from_millis(100),
            count: u64::MAX,
            rate: None,
        };
        let (clients, m) = drive(counters(2, 0, Duration::from_millis(10)), bounds, None)
            .await
            .unwrap();
        // Each client starts ops at 0,10,...,90 ms: ten each.
        assert_eq!(clients.iter().map(|c| c.calls).sum::<u64>(), 20);
        assert_eq!(m.ops(), 20);
        assert_eq!(m.errors.total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_rate() {
        let bounds = Bounds {
            duration: Duration::from_secs(1),
            count: u64::MAX,
            rate: Some(50),
        };
        let (_, m) = drive(counters(5, 0, Duration::ZERO), bounds, None)
            .await
            .unwrap();
        assert!((49..=51).contains(&m.ops()), "{} ops", m.ops());
    }

    /// Takes batches of 3 from a shared pool of 10 until it is empty.
    struct Batcher {
        pool: Arc<AtomicU64>,
        last: u64,
    }

    impl LoadClient for Batcher {
        async fn call(&mut self) -> anyhow::Result<()> {
            let left = self.pool.load(Ordering::Relaxed);
            self.last = left.min(3);
            self.pool.fetch_sub(self.last, Ordering::Relaxed);
            Ok(())
        }

        fn ops_in_call(&mut self) -> u64 {
            self.last
        }

        fn done(&self) -> bool {
            self.pool.load(Ordering::Relaxed) == 0
        }
    }

    #[tokio::test]
    async fn batches_count_each_operation_and_done_ends_the_run() {
        let bounds = Bounds {
            duration: Duration::from_secs(60),
            count: u64::MAX,
            rate: None,
        };
        let pool = Arc::new(AtomicU64::new(10));
        let client = Batcher {
            pool: pool.clone(),
            last: 0,
        };
        let (_, m) = drive(vec![client], bounds, None).await.unwrap();
        assert_eq!(m.ops(), 10, "3+3+3+1 operations in four calls");
        assert_eq!(pool.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_failing_client_gives_up() {
        let bounds = Bounds {
            duration: Duration::from_secs(60),
            count: u64::MAX,
            rate: None,
        };
        let (clients, m) = drive(counters(1, 1, Duration::ZERO), bounds, None)
            .await
            .unwrap();
        assert_eq!(clients[0].calls, u64::from(MAX_CONSECUTIVE_ERRORS));
        assert_eq!(m.ops(), 0);
        assert_eq!(m.errors.gave_up, 1);
    }
}
