//! watch-fanout: notify latency from one writer to many watchers of one prefix.
//!
//! A level is the number of watchers W. They all watch the prefix `/cella-bench/watch/` and
//! are spread round-robin over `--streams` watch streams, which are spread over the
//! connections. One writer (the driver's single client, paced by `--rate`, 100 puts/s by
//! default) puts values whose first bytes carry the instant the put was sent, in nanoseconds
//! since a base instant of this process, and whether it belongs to the warm-up. Each stream's
//! reader decodes every event it receives and records `received - sent` for each
//! watcher × event pair of the measured run, so latency is put-sent to event-received.
//!
//! Reported ops are notifications delivered (watcher × event pairs), ops/s is that over the
//! writer's measured time. After the writer stops, the readers get up to [`DRAIN`] to
//! receive the rest; every expected notification still missing then is an error, as are
//! canceled watches and stream failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::watch_client::WatchClient;
use cella_proto::etcdserverpb::watch_request::RequestUnion;
use cella_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::{finish_fanout, measure, value_with_head, ReaderOutcome, Settings, KEY_PREFIX};
use crate::conn::Connections;
use crate::driver::{Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::{ErrorTally, Latencies, Measurement};

/// The writer's pace when `--rate` is not given, in puts per second.
pub(crate) const DEFAULT_RATE: u32 = 100;

/// How long readers may take to receive the last notifications after the writer stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Stamp layout at the start of each value: sent-at nanoseconds (u64 LE), then the phase.
const STAMP_LEN: usize = 9;
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURED: u8 = 1;

fn prefix() -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}watch/"))
}

/// The end of the range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

fn encode_stamp(sent_nanos: u64, measured: bool) -> [u8; STAMP_LEN] {
    let mut stamp = [0u8; STAMP_LEN];
    stamp[..8].copy_from_slice(&sent_nanos.to_le_bytes());
    stamp[8] = if measured {
        PHASE_MEASURED
    } else {
        PHASE_WARMUP
    };
    stamp
}

/// The send instant (nanoseconds since the base) of a measured value; `None` for warm-up
/// values and values this benchmark did not write.
fn decode_stamp(value: &[u8]) -> Option<u64> {
    let stamp = value.get(..STAMP_LEN)?;
    let nanos = u64::from_le_bytes(stamp[..8].try_into().ok()?);
    (stamp[8] == PHASE_MEASURED).then_some(nanos)
}

fn nanos_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

struct Writer {
    kv: KvClient<Channel>,
    key: Bytes,
    base: Instant,
    value_size: usize,
    measured: bool,
}

impl LoadClient for Writer {
    async fn call(&mut self) -> anyhow::Result<()> {
        let stamp = encode_stamp(nanos_since(self.base, Instant::now()), self.measured);
        let request = PutRequest {
            key: self.key.clone(),
            value: value_with_head(&stamp, self.value_size),
            ..Default::default()
        };
        self.kv.put(request).await?;
        Ok(())
    }

    fn start_measuring(&mut self) {
        self.measured = true;
    }
}

/// Opens one watch stream carrying `watchers` watches of the prefix and waits until the
/// server has created them all.
async fn open_stream(
    channel: Channel,
    watchers: usize,
) -> anyhow::Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)> {
    let (requests, rx) = mpsc::channel(watchers.max(1));
    let key = prefix();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            range_end: prefix_end(&key),
            key,
            ..Default::default()
        })),
    };
    // Queue the creates before opening the stream: some servers send the response headers
    // only with the first message.
    for _ in 0..watchers {
        requests
            .send(create.clone())
            .await
            .map_err(|_| anyhow::anyhow!("watch request queue closed"))?;
    }
    let mut responses = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .context("opening watch stream")?
        .into_inner();
    let mut created = 0;
    while created < watchers {
        let response = responses
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch stream ended while creating watchers"))?;
        if response.canceled {
            anyhow::bail!("watch creation refused: {}", response.cancel_reason);
        }
        if response.created {
            created += 1;
        }
    }
    Ok((requests, responses))
}

/// The stream readers of one run; dropping them (a run abandoned midway) ends their streams.
struct Readers(Vec<JoinHandle<ReaderOutcome>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

/// Reads one stream until `stop`, recording the latency of every measured event.
fn spawn_reader(
    requests: mpsc::Sender<WatchRequest>,
    mut responses: Streaming<WatchResponse>,
    base: Instant,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<ReaderOutcome> {
    tokio::spawn(async move {
        // Held until the reader ends: closing the request side would end the stream.
        let _requests = requests;
        let mut latencies = Latencies::new();
        let mut errors = ErrorTally::default();
        loop {
            let message = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                message = responses.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    errors.add("watch stream ended early", 1);
                    break;
                }
                Err(status) => {
                    errors.add(
                        format!(
                            "watch stream failed: {:?}: {}",
                            status.code(),
                            status.message()
                        ),
                        1,
                    );
                    break;
                }
            };
            let now = nanos_since(base, Instant::now());
            if response.canceled {
                errors.add(format!("watch canceled: {}", response.cancel_reason), 1);
            }
            for event in &response.events {
                let Some(sent) = event.kv.as_ref().and_then(|kv| decode_stamp(&kv.value)) else {
                    continue;
                };
                latencies.record(Duration::from_nanos(now.saturating_sub(sent)));
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
        ReaderOutcome { latencies, errors }
    })
}

/// Runs watch-fanout with `watchers` watchers and one writer.
pub(super) async fn run(
    conns: &Connections,
    watchers: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let base = Instant::now();
    let streams = settings.streams.clamp(1, watchers);
    let opened = futures::future::try_join_all((0..streams).map(|s| {
        let on_this_stream = (s..watchers).step_by(streams).count();
        open_stream(conns.channel(s), on_this_stream)
    }))
    .await?;

    let received = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut readers = Readers(
        opened
            .into_iter()
            .map(|(requests, responses)| {
                spawn_reader(requests, responses, base, received.clone(), stopped.clone())
            })
            .collect(),
    );

    let writer = Writer {
        kv: KvClient::new(conns.channel(streams)),
        key: Bytes::from(format!("{KEY_PREFIX}watch/key")),
        base,
        value_size: settings.value_size,
        measured: false,
    };
    let settings = Settings {
        bounds: Bounds {
            rate: Some(settings.bounds.rate.unwrap_or(DEFAULT_RATE)),
            ..settings.bounds
        },
        ..settings.clone()
    };
    let (_, written) = measure(vec![writer], &settings, progress).await?;

    let expected = written.ops() * watchers as u64;
    let readers = std::mem::take(&mut readers.0);
    finish_fanout(written, expected, &received, stop, readers, DRAIN).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_warmup_is_skipped() {
        let value = value_with_head(&encode_stamp(123_456_789, true), 256);
        assert_eq!(value.len(), 256);
        assert_eq!(decode_stamp(&value), Some(123_456_789));
        assert_eq!(decode_stamp(&encode_stamp(5, false)), None);
        assert_eq!(decode_stamp(b"short"), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), Bytes::from_static(b"/a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff"), Bytes::from_static(b"\0"));
    }
}
