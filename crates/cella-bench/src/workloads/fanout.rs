//! The measuring half of the fan-out workloads (watch-fanout, registry-push): one writer
//! stamps each change with the instant it was sent; readers on many streams decode the
//! stamps of what they receive and record `received - sent`.
//!
//! A stamp is 9 bytes: the send instant in nanoseconds since a base instant of this process
//! (u64 LE), then the phase (warm-up or measured); only measured stamps are recorded. Each
//! reader's stream yields, per message, the stamps it carried or an error to count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::stats::{ErrorTally, Latencies, Measurement};

/// How long readers may take to receive the last notifications after the writer stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Length of an encoded stamp.
pub(super) const STAMP_LEN: usize = 9;
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURED: u8 = 1;

/// What one message of a reader's stream carried: measured stamps, or a failure to count.
pub(super) type Received = Result<Vec<u64>, String>;

pub(super) fn encode_stamp(sent_nanos: u64, measured: bool) -> [u8; STAMP_LEN] {
    let mut stamp = [0u8; STAMP_LEN];
    stamp[..8].copy_from_slice(&sent_nanos.to_le_bytes());
    stamp[8] = if measured {
        PHASE_MEASURED
    } else {
        PHASE_WARMUP
    };
    stamp
}

/// The send instant (nanoseconds since the base) of a measured stamp at the start of
/// `bytes`; `None` for warm-up stamps and bytes this benchmark did not write.
pub(super) fn decode_stamp(bytes: &[u8]) -> Option<u64> {
    let stamp = bytes.get(..STAMP_LEN)?;
    let nanos = u64::from_le_bytes(stamp[..8].try_into().ok()?);
    (stamp[8] == PHASE_MEASURED).then_some(nanos)
}

pub(super) fn nanos_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// What one reader saw.
struct ReaderOutcome {
    latencies: Latencies,
    errors: ErrorTally,
}

/// The readers of one run; dropping them (a run abandoned midway) ends their streams.
pub(super) struct Readers {
    handles: Vec<JoinHandle<ReaderOutcome>>,
    received: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in &self.handles {
            reader.abort();
        }
    }
}

impl Readers {
    /// Starts one reader per stream; a stream ending before the run does counts as an error.
    pub(super) fn spawn(streams: Vec<BoxStream<'static, Received>>, base: Instant) -> Self {
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let handles = streams
            .into_iter()
            .map(|stream| spawn_reader(stream, base, received.clone(), stopped.clone()))
            .collect();
        Readers {
            handles,
            received,
            stop,
        }
    }

    /// Waits up to [`DRAIN`] for `expected` notifications, stops the readers, and returns
    /// the writer's run with the readers' latencies and errors; every expected notification
    /// still missing counts as an error.
    pub(super) async fn finish(
        mut self,
        written: Measurement,
        expected: u64,
    ) -> anyhow::Result<Measurement> {
        let drain_deadline = Instant::now() + DRAIN;
        while self.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Receivers may all be gone already (every stream failed); nothing to stop then.
        let _ = self.stop.send(true);
        let mut latencies = Latencies::new();
        let mut errors = written.errors.clone();
        for reader in std::mem::take(&mut self.handles) {
            let outcome = reader.await?;
            latencies.merge(&outcome.latencies);
            errors.merge(&outcome.errors);
        }
        let missing = expected.saturating_sub(latencies.len());
        if missing > 0 {
            errors.add(
                format!("notifications not received within {}s", DRAIN.as_secs()),
                missing,
            );
        }
        Ok(Measurement {
            elapsed: written.elapsed,
            latencies,
            errors,
            server: written.server,
        })
    }
}

fn spawn_reader(
    mut stream: BoxStream<'static, Received>,
    base: Instant,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<ReaderOutcome> {
    tokio::spawn(async move {
        let mut latencies = Latencies::new();
        let mut errors = ErrorTally::default();
        loop {
            let message = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                message = stream.next() => message,
            };
            let now = nanos_since(base, Instant::now());
            match message {
                Some(Ok(stamps)) => {
                    for sent in stamps {
                        latencies.record(Duration::from_nanos(now.saturating_sub(sent)));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Err(failure)) => errors.add(failure, 1),
                None => {
                    errors.add("stream ended early", 1);
                    break;
                }
            }
        }
        ReaderOutcome { latencies, errors }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_warmup_is_skipped() {
        let mut value = encode_stamp(123_456_789, true).to_vec();
        value.extend_from_slice(b"filler");
        assert_eq!(decode_stamp(&value), Some(123_456_789));
        assert_eq!(decode_stamp(&encode_stamp(5, false)), None);
        assert_eq!(decode_stamp(b"short"), None);
    }
}
