//! Config center workloads, over `cella.config.v1`.
//!
//! - config-push: a level is the number of watchers W, each with its own watch stream (as
//!   W separate client processes would have), spread over W/100 extra connections (HTTP/2
//!   servers cap concurrent streams per connection). One writer publishes, paced by `--rate`
//!   (20 publishes/s by default); each content starts with the instant the publish was sent
//!   (nanoseconds since a base instant of this process) and its phase. Every watcher records
//!   `received - sent` for each measured release (see `fanout`), so latency is publish-sent
//!   to watcher-notified.
//! - config-read: Get of one of `min(--key-space, 1000)` preloaded configs, round-robin per
//!   client (each get is linearizable on the server).
//!
//! Both use the namespace `cella-bench` (created if missing), group `bench`.

use anyhow::Context;
use cella_proto::cella::config::v1 as cpb;
use cella_proto::cella::config::v1::config_service_client::ConfigServiceClient;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::time::Instant;
use tonic::Code;

use super::fanout::{nanos_since, Readers, Received};
use super::{measure, Settings};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// The config-push writer's pace when `--rate` is not given, in publishes per second.
pub(crate) const DEFAULT_PUSH_RATE: u32 = 20;
/// Watch streams per connection in config-push.
const STREAMS_PER_CONNECTION: usize = 100;
/// Most configs config-read preloads.
const MAX_READ_CONFIGS: u64 = 1000;
const NAMESPACE: &str = "cella-bench";
const GROUP: &str = "bench";

fn key(data_id: &str) -> Option<cpb::ConfigKey> {
    Some(cpb::ConfigKey {
        namespace: NAMESPACE.into(),
        group: GROUP.into(),
        data_id: data_id.into(),
    })
}

async fn ensure_namespace(channel: Channel) -> anyhow::Result<()> {
    let req = cpb::CreateNamespaceRequest {
        name: NAMESPACE.into(),
        description: "cella bench".into(),
    };
    match ConfigServiceClient::new(channel)
        .create_namespace(req)
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(anyhow::anyhow!(
            "creating namespace {NAMESPACE}: {}",
            s.message()
        )),
    }
}

/// `t=<nanos> p=<phase>` then filler up to `size`.
fn stamped(sent_nanos: u64, measured: bool, size: usize) -> String {
    let mut s = format!("t={sent_nanos} p={}\n", u8::from(measured));
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The send instant of a measured release's content; None for warm-up or foreign content.
fn sent_at(content: &str) -> Option<u64> {
    let line = content.lines().next()?;
    let (t, p) = line.split_once(' ')?;
    let nanos = t.strip_prefix("t=")?.parse().ok()?;
    (p == "p=1").then_some(nanos)
}

struct Publisher {
    rpc: ConfigServiceClient<Channel>,
    base: Instant,
    size: usize,
    measured: bool,
}

impl LoadClient for Publisher {
    async fn call(&mut self) -> anyhow::Result<()> {
        let req = cpb::PublishRequest {
            key: key("push"),
            content: stamped(
                nanos_since(self.base, Instant::now()),
                self.measured,
                self.size,
            ),
            format: "text".into(),
            author: "cella-bench".into(),
            ..Default::default()
        };
        self.rpc.publish(req).await?;
        Ok(())
    }

    fn start_measuring(&mut self) {
        self.measured = true;
    }
}

/// Opens one watcher's stream and waits for its first answer.
async fn open_watcher(
    channel: Channel,
    i: usize,
) -> anyhow::Result<tonic::Streaming<cpb::WatchResponse>> {
    let req = cpb::WatchRequest {
        client: Some(cpb::ClientIdentity {
            client_id: format!("bench-{i}"),
            labels: Default::default(),
        }),
        configs: vec![cpb::WatchedConfig {
            key: key("push"),
            hash: String::new(),
        }],
        groups: Vec::new(),
    };
    let mut stream = ConfigServiceClient::new(channel)
        .watch(req)
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("watch stream ended before its first answer"))?;
    Ok(stream)
}

/// One watcher's measured stamps, message by message.
fn stamps(stream: tonic::Streaming<cpb::WatchResponse>) -> BoxStream<'static, Received> {
    stream
        .map(|message| match message {
            Ok(resp) => Ok(resp
                .changes
                .iter()
                .filter_map(|c| c.release.as_ref().and_then(|r| sent_at(&r.content)))
                .collect()),
            Err(s) => Err(format!(
                "watch stream failed: {:?}: {}",
                s.code(),
                s.message()
            )),
        })
        .boxed()
}

/// config-push with `watchers` watchers and one publisher.
pub(super) async fn run_push(
    conns: &Connections,
    watchers: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let base = Instant::now();
    ensure_namespace(conns.channel(0)).await?;
    let conns = conns
        .at_least(watchers.div_ceil(STREAMS_PER_CONNECTION))
        .await?;
    let mut streams = Vec::with_capacity(watchers);
    for chunk in (0..watchers).collect::<Vec<_>>().chunks(64) {
        let opened = futures::future::try_join_all(
            chunk
                .iter()
                .map(|&i| open_watcher(conns.channel(i / STREAMS_PER_CONNECTION), i)),
        )
        .await
        .context("opening config watchers")?;
        streams.extend(opened.into_iter().map(stamps));
    }
    let readers = Readers::spawn(streams, base);
    let publisher = Publisher {
        rpc: ConfigServiceClient::new(conns.channel(0)),
        base,
        size: settings.value_size,
        measured: false,
    };
    let mut paced = settings.clone();
    paced.bounds.rate = Some(settings.bounds.rate.unwrap_or(DEFAULT_PUSH_RATE));
    let (_, written) = measure(vec![publisher], &paced, progress).await?;

    let expected = written.ops() * watchers as u64;
    readers.finish(written, expected).await
}

struct Reader {
    rpc: ConfigServiceClient<Channel>,
    next: u64,
    configs: u64,
}

impl LoadClient for Reader {
    async fn call(&mut self) -> anyhow::Result<()> {
        let req = cpb::GetConfigRequest {
            key: key(&format!("read-{:04}", self.next % self.configs)),
            client: None,
            release: None,
        };
        self.next += 1;
        let resp = self.rpc.get(req).await?.into_inner();
        anyhow::ensure!(resp.release.is_some(), "get answered without a release");
        Ok(())
    }
}

/// config-read with `clients` readers.
pub(super) async fn run_read(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    ensure_namespace(conns.channel(0)).await?;
    let configs = settings.key_space.clamp(1, MAX_READ_CONFIGS);
    let content = stamped(0, false, settings.value_size);
    for chunk in (0..configs).collect::<Vec<_>>().chunks(32) {
        futures::future::try_join_all(chunk.iter().map(|&n| {
            let mut rpc = ConfigServiceClient::new(conns.channel(n as usize));
            let req = cpb::PublishRequest {
                key: key(&format!("read-{n:04}")),
                content: content.clone(),
                author: "cella-bench".into(),
                ..Default::default()
            };
            async move { rpc.publish(req).await }
        }))
        .await
        .context("preloading configs")?;
    }
    let readers = (0..clients)
        .map(|i| Reader {
            rpc: ConfigServiceClient::new(conns.channel(i)),
            next: i as u64,
            configs,
        })
        .collect();
    Ok(measure(readers, settings, progress).await?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_warmup_is_skipped() {
        let content = stamped(123_456, true, 64);
        assert_eq!(content.len(), 64);
        assert_eq!(sent_at(&content), Some(123_456));
        assert_eq!(sent_at(&stamped(5, false, 10)), None);
        assert_eq!(sent_at("other"), None);
    }
}
