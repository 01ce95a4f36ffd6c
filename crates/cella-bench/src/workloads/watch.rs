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

use anyhow::Context;
use bytes::Bytes;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::watch_client::WatchClient;
use cella_proto::etcdserverpb::watch_request::RequestUnion;
use cella_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::fanout::{decode_stamp, encode_stamp, nanos_since, Readers, Received};
use super::{measure, value_with_head, Settings, KEY_PREFIX};
use crate::conn::{Channel, Connections};
use crate::driver::{Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::Measurement;

/// The writer's pace when `--rate` is not given, in puts per second.
pub(crate) const DEFAULT_RATE: u32 = 100;

fn prefix() -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}watch/"))
}

/// The end of the range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    Bytes::from(cella_base::prefix_end(prefix))
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

/// One watch stream's measured stamps, message by message.
fn stamps(
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
) -> BoxStream<'static, Received> {
    responses
        .map(move |message| {
            // Held as long as the stream: closing the request side would end it.
            let _requests = &requests;
            match message {
                Ok(response) if response.canceled => {
                    Err(format!("watch canceled: {}", response.cancel_reason))
                }
                Ok(response) => Ok(response
                    .events
                    .iter()
                    .filter_map(|e| e.kv.as_ref().and_then(|kv| decode_stamp(&kv.value)))
                    .collect()),
                Err(status) => Err(format!(
                    "watch stream failed: {:?}: {}",
                    status.code(),
                    status.message()
                )),
            }
        })
        .boxed()
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

    let readers = Readers::spawn(
        opened
            .into_iter()
            .map(|(requests, responses)| stamps(requests, responses))
            .collect(),
        base,
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

    let expected = watchers as u64 * written.ops();
    readers.finish(written, expected).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), Bytes::from_static(b"/a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff"), Bytes::from_static(b"\0"));
    }
}
