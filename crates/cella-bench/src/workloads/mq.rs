//! mq-produce, mq-consume and mq-e2e: one message-broker workload shape measured on Cella's
//! broker and, side by side, on NATS JetStream and RabbitMQ (chosen by the target's scheme:
//! `http://` Cella, `nats://` NATS, `amqp://` RabbitMQ; see [`super::mq_peers`]).
//!
//! Each measurement creates its own topic (Cella, with the `--flush` mode and `--queues`),
//! stream (NATS, file storage) or queue (RabbitMQ: quorum for sync, classic for async), so
//! runs never see each other's messages.
//!
//! - mq-produce: an operation is one message of a `--message-size` body, done when the
//!   broker acknowledged it (Cella's Send answer, a JetStream publish ack, a publisher
//!   confirm). Each system is driven through its own client as an app uses it: Cella's SDK
//!   producer (one per connection, shared by the clients on it, so sends made while its
//!   calls are busy leave together in one SendBatch), async-nats, lapin. With `--batch N`
//!   each call sends N messages (Cella: one SendBatch; the peers: N publishes, then their N
//!   acks or confirms) and each of them counts with the call's latency; `--count` and
//!   `--rate` still count messages.
//! - mq-consume: `--backlog` messages are sent first (not measured, one per call); each
//!   client then takes batches (up to [`BATCH`]) and acknowledges the whole batch before its
//!   next one (Cella: one AckBatch; RabbitMQ: one multiple-ack; NATS: one ack per message,
//!   as its client has no batched ack). An operation is one message; the latency of every
//!   message of a batch is that batch's receive+ack time. A level ends when the backlog is
//!   drained (or its bounds hit).
//! - mq-e2e: the clients send at `--rate` (paced by the driver) while `--consumers`
//!   receivers take and acknowledge; each body starts with the send instant, and the
//!   latency is send-started to received, recorded by the receivers (`super::fanout`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use cella_proto::cella::mq::v1 as mq;
use cella_sdk::mq::OutgoingMessage;
use futures::stream::BoxStream;
use futures::StreamExt;
use mq::message_queue_client::MessageQueueClient;
use tokio::time::Instant;

use super::fanout::{encode_stamp, nanos_since, Readers, Received};
use super::mq_peers::{NatsRun, RabbitRun};
use super::{measure, value_with_head, Settings};
use crate::args::{Broker, Flush};
use crate::conn::{Channel, Connections};
use crate::driver::{drive, Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::Measurement;

/// Most messages one receive takes.
pub(super) const BATCH: usize = 256;

/// How long one receive waits for a first message before it returns empty.
pub(super) const RECEIVE_WAIT: Duration = Duration::from_millis(200);

/// Producers that fill mq-consume's backlog.
const PREFILL_PRODUCERS: usize = 64;

/// A name unique to this measurement: topics, streams and queues are created per level.
fn run_name(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cella-bench-{kind}-{nanos}")
}

/// The one measurement's broker fixture: its topic/stream/queue and its connections.
pub(super) enum Run {
    Cella(Box<CellaRun>),
    Nats(NatsRun),
    Rabbit(RabbitRun),
}

impl Run {
    async fn open(conns: &Connections, settings: &Settings, kind: &str) -> anyhow::Result<Run> {
        let name = run_name(kind);
        let broker = Broker::of(conns.uri()).map_err(anyhow::Error::msg)?;
        Ok(match broker {
            Broker::Cella => Run::Cella(Box::new(CellaRun::open(conns, settings, name).await?)),
            Broker::Nats => Run::Nats(NatsRun::open(conns, settings, name).await?),
            Broker::Rabbitmq => Run::Rabbit(RabbitRun::open(conns, settings, name).await?),
        })
    }

    async fn producer(&self, i: usize) -> anyhow::Result<Producer> {
        match self {
            Run::Cella(run) => Ok(run.producer(i)),
            Run::Nats(run) => run.producer(i),
            Run::Rabbit(run) => run.producer(i).await,
        }
    }

    async fn consumer(&self, i: usize) -> anyhow::Result<Consumer> {
        match self {
            Run::Cella(run) => Ok(run.consumer(i)),
            Run::Nats(run) => run.consumer(i).await,
            Run::Rabbit(run) => run.consumer(i).await,
        }
    }

    async fn close(self) {
        match self {
            Run::Cella(_) => {}
            Run::Nats(run) => run.close().await,
            Run::Rabbit(run) => run.close().await,
        }
    }
}

/// Sends a batch of messages (often of one) and waits for the broker's acknowledgement of
/// each.
pub(super) enum Producer {
    Cella(CellaProducer),
    Nats(Box<super::mq_peers::NatsProducer>),
    Rabbit(Box<super::mq_peers::RabbitProducer>),
}

impl Producer {
    async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        match self {
            Producer::Cella(p) => p.send(bodies).await,
            Producer::Nats(p) => p.send(bodies).await,
            Producer::Rabbit(p) => p.send(bodies).await,
        }
    }
}

/// Takes a batch of messages and acknowledges each, returning their bodies.
pub(super) enum Consumer {
    Cella(CellaConsumer),
    Nats(Box<super::mq_peers::NatsConsumer>),
    Rabbit(super::mq_peers::RabbitConsumer),
}

impl Consumer {
    /// Up to [`BATCH`] messages, all acknowledged; empty when none came within
    /// [`RECEIVE_WAIT`].
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        match self {
            Consumer::Cella(c) => c.receive().await,
            Consumer::Nats(c) => c.receive().await,
            Consumer::Rabbit(c) => c.receive().await,
        }
    }
}

/// Cella: the topic of one measurement, and one SDK producer per connection.
pub(super) struct CellaRun {
    conns: Connections,
    producers: Vec<cella_sdk::mq::Producer>,
    topic: String,
    group: String,
}

impl CellaRun {
    async fn open(
        conns: &Connections,
        settings: &Settings,
        topic: String,
    ) -> anyhow::Result<CellaRun> {
        let flush = match settings.flush {
            Flush::Sync => mq::FlushPolicy::Sync,
            Flush::Async => mq::FlushPolicy::Async,
        };
        MessageQueueClient::new(conns.channel(0))
            .create_topic(mq::CreateTopicRequest {
                name: topic.clone(),
                queues: settings.queues,
                ordered: false,
                flush: flush as i32,
            })
            .await
            .with_context(|| format!("creating topic {topic}"))?;
        let mut producers = Vec::with_capacity(settings.connections);
        for _ in 0..settings.connections.max(1) {
            let client = cella_sdk::Client::connect(conns.uri())
                .await
                .with_context(|| format!("connecting to {}", conns.uri()))?;
            producers.push(client.mq().producer());
        }
        Ok(CellaRun {
            conns: conns.clone(),
            producers,
            group: format!("{topic}-group"),
            topic,
        })
    }

    fn producer(&self, i: usize) -> Producer {
        Producer::Cella(CellaProducer {
            producer: self.producers[i % self.producers.len()].clone(),
            topic: self.topic.clone(),
        })
    }

    fn consumer(&self, i: usize) -> Consumer {
        Consumer::Cella(CellaConsumer {
            client: MessageQueueClient::new(self.conns.channel(i)),
            topic: self.topic.clone(),
            group: self.group.clone(),
            member: format!("bench-consumer-{i}"),
            acks: Vec::new(),
        })
    }
}

/// Cella: one client's handle on its connection's SDK producer.
pub(super) struct CellaProducer {
    producer: cella_sdk::mq::Producer,
    topic: String,
}

impl CellaProducer {
    /// One message with the producer's send, more with one SendBatch.
    async fn send(&mut self, mut bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let message = |body| OutgoingMessage::new(self.topic.as_str(), body);
        let sent = match bodies.pop() {
            Some(body) if bodies.is_empty() => vec![self.producer.send(message(body)).await?],
            last => {
                bodies.extend(last);
                let messages = bodies.into_iter().map(message).collect();
                self.producer.send_batch(&self.topic, messages).await?
            }
        };
        if sent.iter().any(|s| s.id.is_empty()) {
            bail!("send answered without a message id");
        }
        Ok(())
    }
}

/// Cella: one member of the run's consumer group. A batch is acknowledged by the next pull
/// (`PullRequest.acks`): one call per receive, as the peers' acks cost no call of their own.
pub(super) struct CellaConsumer {
    client: MessageQueueClient<Channel>,
    topic: String,
    group: String,
    member: String,
    acks: Vec<mq::Delivery>,
}

impl CellaConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let pulled = self
            .client
            .pull(mq::PullRequest {
                group: self.group.clone(),
                topic: self.topic.clone(),
                member: self.member.clone(),
                tags: Vec::new(),
                max_messages: BATCH as u32,
                wait_ms: RECEIVE_WAIT.as_millis() as u64,
                mode: mq::GroupMode::Clustering as i32,
                start: mq::StartFrom::Earliest as i32,
                acks: std::mem::take(&mut self.acks),
            })
            .await?
            .into_inner()
            .messages;
        self.acks = pulled
            .iter()
            .map(|m| mq::Delivery {
                topic: m.topic.clone(),
                queue_id: m.queue_id,
                queue_offset: m.queue_offset,
            })
            .collect();
        Ok(pulled.into_iter().map(|m| m.body).collect())
    }
}

/// mq-produce's and mq-e2e's client: one producer sending `batch` messages per call; with a
/// stamp base, each body starts with the send instant (mq-e2e).
struct Sender {
    producer: Producer,
    body: Bytes,
    batch: usize,
    stamp_base: Option<Instant>,
    measuring: bool,
}

impl LoadClient for Sender {
    async fn call(&mut self) -> anyhow::Result<()> {
        let body = match self.stamp_base {
            Some(base) => {
                let stamp = encode_stamp(nanos_since(base, Instant::now()), self.measuring);
                value_with_head(&stamp, self.body.len())
            }
            None => self.body.clone(),
        };
        self.producer.send(vec![body; self.batch]).await
    }

    fn start_measuring(&mut self) {
        self.measuring = true;
    }

    fn ops_in_call(&mut self) -> u64 {
        self.batch as u64
    }
}

/// `clients` senders of `batch` messages per call.
async fn senders(
    run: &Run,
    clients: usize,
    settings: &Settings,
    batch: usize,
    stamp_base: Option<Instant>,
) -> anyhow::Result<Vec<Sender>> {
    let body = value_with_head(b"cella-bench", settings.message_size);
    let mut senders = Vec::with_capacity(clients);
    for i in 0..clients {
        senders.push(Sender {
            producer: run.producer(i).await?,
            body: body.clone(),
            batch,
            stamp_base,
            measuring: false,
        });
    }
    Ok(senders)
}

/// `settings` with `--count` and `--rate` (in messages) turned into the driver's bounds on
/// calls of `settings.batch` messages each.
fn per_call(settings: &Settings) -> Settings {
    let batch = settings.batch.max(1);
    let mut settings = settings.clone();
    settings.bounds.count = settings.bounds.count.div_ceil(batch as u64);
    settings.bounds.rate = settings.bounds.rate.map(|r| r.div_ceil(batch as u32));
    settings
}

/// Measures `settings.batch`-message senders: `clients` of them, stamping with `stamp_base`.
async fn measure_senders(
    run: &Run,
    clients: usize,
    settings: &Settings,
    stamp_base: Option<Instant>,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let senders = senders(run, clients, settings, settings.batch, stamp_base).await?;
    Ok(measure(senders, &per_call(settings), progress).await?.1)
}

/// Runs mq-produce at `clients` producers.
pub(super) async fn run_produce(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let run = Run::open(conns, settings, "produce").await?;
    let result = measure_senders(&run, clients, settings, None, progress).await;
    run.close().await;
    result
}

/// mq-consume's client: one consumer draining the shared backlog.
struct Drainer {
    consumer: Consumer,
    /// Messages of the backlog not yet received, shared by all drainers.
    remaining: Arc<AtomicU64>,
    last: u64,
}

impl LoadClient for Drainer {
    async fn call(&mut self) -> anyhow::Result<()> {
        let got = self.consumer.receive().await?.len() as u64;
        let before = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(got))
            })
            .unwrap_or(0);
        self.last = got.min(before);
        Ok(())
    }

    fn ops_in_call(&mut self) -> u64 {
        self.last
    }

    fn done(&self) -> bool {
        self.remaining.load(Ordering::Relaxed) == 0
    }
}

/// Runs mq-consume at `clients` consumers over a backlog of `settings.backlog` messages.
pub(super) async fn run_consume(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let run = Run::open(conns, settings, "consume").await?;
    let result = consume(&run, clients, settings, progress).await;
    run.close().await;
    result
}

async fn consume(
    run: &Run,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let backlog = settings.backlog;
    let fill = Bounds {
        duration: Duration::from_secs(3600),
        count: backlog,
        rate: None,
    };
    let producers = senders(run, PREFILL_PRODUCERS, settings, 1, None).await?;
    let filled = drive(producers, fill, None).await?.1;
    if filled.ops() != backlog {
        bail!(
            "filling the backlog: {} of {backlog} sends acknowledged ({})",
            filled.ops(),
            filled
                .errors
                .summary()
                .first()
                .map_or("", |(m, _)| m.as_str())
        );
    }
    let remaining = Arc::new(AtomicU64::new(backlog));
    let mut drainers = Vec::with_capacity(clients);
    for i in 0..clients {
        drainers.push(Drainer {
            consumer: run.consumer(i).await?,
            remaining: remaining.clone(),
            last: 0,
        });
    }
    for drainer in &mut drainers {
        drainer.start_measuring();
    }
    // No warm-up: it would drain the backlog being measured; filling it warmed the broker.
    let (_, measured) = drive(drainers, settings.bounds, progress).await?;
    Ok(measured)
}

/// Runs mq-e2e: `clients` producers at the run's rate, `settings.consumers` receivers.
pub(super) async fn run_e2e(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let run = Run::open(conns, settings, "e2e").await?;
    let result = e2e(&run, clients, settings, progress).await;
    run.close().await;
    result
}

async fn e2e(
    run: &Run,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let base = Instant::now();
    let mut streams = Vec::with_capacity(settings.consumers);
    for i in 0..settings.consumers {
        streams.push(stamps(run.consumer(i).await?));
    }
    let readers = Readers::spawn(streams, base);
    let written = measure_senders(run, clients, settings, Some(base), progress).await?;
    let expected = written.ops();
    readers.finish(written, expected).await
}

/// The stamps of what `consumer` receives, one item per batch; a failed receive is the
/// stream's last item (a broken consumer is not retried in a loop).
fn stamps(consumer: Consumer) -> BoxStream<'static, Received> {
    futures::stream::unfold(Some(consumer), |consumer| async move {
        let mut consumer = consumer?;
        match consumer.receive().await {
            Ok(bodies) => {
                let stamps = bodies
                    .iter()
                    .filter_map(|b| super::fanout::decode_stamp(b))
                    .collect();
                Some((Ok(stamps), Some(consumer)))
            }
            Err(e) => Some((Err(crate::stats::describe(&e)), None)),
        }
    })
    .boxed()
}

/// The version a target reports, for the report header; peers answer through their client.
pub(crate) async fn server_version(conns: &Connections) -> anyhow::Result<String> {
    match Broker::of(conns.uri()).map_err(anyhow::Error::msg)? {
        Broker::Cella => conns.server_version().await,
        Broker::Nats => super::mq_peers::nats_version(conns.uri()).await,
        Broker::Rabbitmq => super::mq_peers::rabbit_version(conns.uri()).await,
    }
}

/// The rows the report header shows for an mq run.
pub(crate) fn settings_shown(settings: &Settings) -> Vec<(String, String)> {
    let mut shown = vec![
        (
            "message size".to_string(),
            format!("{} B", settings.message_size),
        ),
        ("flush".to_string(), flush_meaning(settings.flush)),
        ("cella queues".to_string(), settings.queues.to_string()),
    ];
    shown.push((
        "batch".to_string(),
        format!(
            "{} (messages per mq-produce/mq-e2e send call)",
            settings.batch
        ),
    ));
    shown.push((
        "receive batch".to_string(),
        format!(
            "up to {BATCH}, all acked (cella: by the next pull, which carries them; \
             rabbitmq: one multiple-ack frame, never answered; nats: one double-ack per \
             message, answered before the next fetch)"
        ),
    ));
    shown.push((
        "mq-consume backlog".to_string(),
        settings.backlog.to_string(),
    ));
    shown.push((
        "mq-e2e consumers".to_string(),
        settings.consumers.to_string(),
    ));
    shown
}

/// What `--flush` means on each broker, stated once in every report.
pub(crate) fn flush_meaning(flush: Flush) -> String {
    let [cella, nats, rabbitmq] = match flush {
        Flush::Sync => [
            "topic flush=sync, acked after fsync (group commit)",
            "JetStream 2.9 file stream, acked after the write, fsynced only every 2 min \
             (2.9 has no per-message fsync): NOT sync",
            "quorum queue + publisher confirms, confirmed after its WAL fsync",
        ],
        Flush::Async => [
            "topic flush=async, acked after the write, fsynced every flush_interval_ms",
            "JetStream file stream, acked after the write",
            "classic durable queue, transient messages + confirms, confirmed in memory",
        ],
    };
    format!(
        "{}; cella: {cella}; nats: {nats}; rabbitmq: {rabbitmq}",
        flush.name()
    )
}
