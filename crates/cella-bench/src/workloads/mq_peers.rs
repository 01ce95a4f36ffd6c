//! The peers of the mq workloads, each driven by its own client: NATS JetStream through
//! `async-nats`, RabbitMQ through `lapin` (AMQP 0-9-1).
//!
//! NATS: one file-storage stream per measurement (subject = stream name with `.` for `-`);
//! producers publish `--batch` messages, then await their JetStream acks; consumers share
//! one durable pull consumer with explicit acks, fetch up to [`BATCH`] messages and
//! acknowledge each with a double ack (the server confirms the ack, as Cella's AckBatch
//! answers; the client has no batched ack). NATS 2.9 has no per-message fsync, so both
//! `--flush` modes run the same stream (see the report's flush row). Producers share
//! `--connections` NATS connections round-robin.
//!
//! RabbitMQ: one queue per measurement, durable; a quorum queue for `--flush sync` and a
//! classic queue with transient messages for `--flush async`. Each producer has its own
//! channel in confirm mode, publishes `--batch` messages, then awaits their confirms; each
//! consumer has its own channel with a prefetch of [`BATCH`], takes what has arrived (up to
//! [`BATCH`]) and acks it with one multiple-ack (AMQP acks have no answer). Channels share
//! `--connections` connections round-robin.

use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ConnectionProperties};

use super::mq::{Consumer, Producer, BATCH, RECEIVE_WAIT};
use super::Settings;
use crate::args::Flush;
use crate::conn::Connections;

/// NATS: the stream of one measurement.
pub(crate) struct NatsRun {
    clients: Vec<async_nats::Client>,
    stream: String,
    subject: String,
}

/// How long a NATS or RabbitMQ connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn nats_connect(uri: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(uri)
        .await
        .with_context(|| format!("connecting to NATS at {uri}"))
}

impl NatsRun {
    pub(super) async fn open(
        conns: &Connections,
        settings: &Settings,
        name: String,
    ) -> anyhow::Result<NatsRun> {
        let mut clients = Vec::with_capacity(settings.connections);
        for _ in 0..settings.connections {
            clients.push(nats_connect(conns.uri()).await?);
        }
        let subject = name.replace('-', ".");
        let js = jetstream::new(clients[0].clone());
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {name}"))?;
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("bench".to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 1_000_000,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the consumer of stream {name}"))?;
        Ok(NatsRun {
            clients,
            stream: name,
            subject,
        })
    }

    fn context(&self, i: usize) -> jetstream::Context {
        jetstream::new(self.clients[i % self.clients.len()].clone())
    }

    pub(super) fn producer(&self, i: usize) -> anyhow::Result<Producer> {
        Ok(Producer::Nats(Box::new(NatsProducer {
            js: self.context(i),
            subject: self.subject.clone(),
        })))
    }

    pub(super) async fn consumer(&self, i: usize) -> anyhow::Result<Consumer> {
        let consumer: jetstream::consumer::PullConsumer = self
            .context(i)
            .get_stream(&self.stream)
            .await?
            .get_consumer("bench")
            .await
            .map_err(|e| anyhow::anyhow!("getting the stream's consumer: {e}"))?;
        Ok(Consumer::Nats(Box::new(NatsConsumer { consumer })))
    }

    pub(super) async fn close(self) {
        let _ = self.context(0).delete_stream(&self.stream).await;
    }
}

/// NATS: one producer.
pub(crate) struct NatsProducer {
    js: jetstream::Context,
    subject: String,
}

impl NatsProducer {
    /// Publishes every body, then awaits all their acks.
    pub(super) async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(bodies.len());
        for body in bodies {
            acks.push(self.js.publish(self.subject.clone(), body).await?);
        }
        // All are in flight already: awaiting them in turn waits for the slowest.
        for ack in acks {
            ack.await.context("JetStream publish ack")?;
        }
        Ok(())
    }
}

/// NATS: one fetcher of the shared durable pull consumer.
pub(crate) struct NatsConsumer {
    consumer: jetstream::consumer::PullConsumer,
}

impl NatsConsumer {
    pub(super) async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(BATCH)
            .expires(RECEIVE_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("JetStream fetch: {e}"))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| anyhow::anyhow!("JetStream fetch: {e}"))?);
        }
        let acks = messages.iter().map(|m| m.double_ack());
        futures::future::try_join_all(acks)
            .await
            .map_err(|e| anyhow::anyhow!("JetStream ack: {e}"))?;
        Ok(messages.into_iter().map(|m| m.message.payload).collect())
    }
}

/// The version NATS reports in its INFO.
pub(crate) async fn nats_version(uri: &str) -> anyhow::Result<String> {
    let client = nats_connect(uri).await?;
    let info = client.server_info();
    Ok(format!(
        "nats-server {} (JetStream {})",
        info.version,
        if info.jetstream { "on" } else { "OFF" }
    ))
}

/// RabbitMQ: the queue of one measurement.
pub(crate) struct RabbitRun {
    connections: Vec<lapin::Connection>,
    queue: String,
    persistent: bool,
}

async fn rabbit_connect(uri: &str) -> anyhow::Result<lapin::Connection> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    tokio::time::timeout(CONNECT_TIMEOUT, lapin::Connection::connect(uri, properties))
        .await
        .with_context(|| format!("connecting to RabbitMQ at {uri}: timed out"))?
        .with_context(|| format!("connecting to RabbitMQ at {uri}"))
}

impl RabbitRun {
    pub(super) async fn open(
        conns: &Connections,
        settings: &Settings,
        queue: String,
    ) -> anyhow::Result<RabbitRun> {
        let mut connections = Vec::with_capacity(settings.connections);
        for _ in 0..settings.connections {
            connections.push(rabbit_connect(conns.uri()).await?);
        }
        let mut arguments = FieldTable::default();
        let queue_type = match settings.flush {
            Flush::Sync => "quorum",
            Flush::Async => "classic",
        };
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        let channel = connections[0].create_channel().await?;
        channel
            .queue_declare(
                &queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .with_context(|| format!("declaring {queue_type} queue {queue}"))?;
        let _ = channel.close(200, "declared").await;
        Ok(RabbitRun {
            connections,
            queue,
            persistent: settings.flush == Flush::Sync,
        })
    }

    async fn channel(&self, i: usize) -> anyhow::Result<lapin::Channel> {
        Ok(self.connections[i % self.connections.len()]
            .create_channel()
            .await?)
    }

    pub(super) async fn producer(&self, i: usize) -> anyhow::Result<Producer> {
        let channel = self.channel(i).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Delivery mode 2 is persistent, 1 transient.
        let mode = if self.persistent { 2 } else { 1 };
        Ok(Producer::Rabbit(Box::new(RabbitProducer {
            channel,
            queue: self.queue.clone(),
            properties: BasicProperties::default().with_delivery_mode(mode),
        })))
    }

    pub(super) async fn consumer(&self, i: usize) -> anyhow::Result<Consumer> {
        let channel = self.channel(i).await?;
        channel
            .basic_qos(BATCH as u16, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                &self.queue,
                &format!("bench-consumer-{i}"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer::Rabbit(RabbitConsumer { consumer }))
    }

    pub(super) async fn close(self) {
        if let Ok(channel) = self.connections[0].create_channel().await {
            let _ = channel
                .queue_delete(&self.queue, QueueDeleteOptions::default())
                .await;
        }
        for connection in self.connections {
            let _ = connection.close(200, "done").await;
        }
    }
}

/// RabbitMQ: one producer channel in confirm mode.
pub(crate) struct RabbitProducer {
    channel: lapin::Channel,
    queue: String,
    properties: BasicProperties,
}

impl RabbitProducer {
    /// Publishes every body, then waits for all their confirms.
    pub(super) async fn send(&mut self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            let confirm = self
                .channel
                .basic_publish(
                    "",
                    &self.queue,
                    BasicPublishOptions::default(),
                    &body,
                    self.properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in futures::future::try_join_all(confirms).await? {
            match confirm {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => bail!("publish returned unroutable"),
                Confirmation::Nack(_) => bail!("publish nacked by the broker"),
                Confirmation::NotRequested => bail!("channel is not in confirm mode"),
            }
        }
        Ok(())
    }
}

/// RabbitMQ: one consumer channel.
pub(crate) struct RabbitConsumer {
    consumer: lapin::Consumer,
}

impl RabbitConsumer {
    pub(super) async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let first = match tokio::time::timeout(RECEIVE_WAIT, self.consumer.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => bail!("consumer cancelled"),
            Ok(Some(delivery)) => delivery?,
        };
        let mut deliveries = vec![first];
        while deliveries.len() < BATCH {
            match self.consumer.next().now_or_never() {
                Some(Some(delivery)) => deliveries.push(delivery?),
                Some(None) => bail!("consumer cancelled"),
                None => break,
            }
        }
        if let Some(last) = deliveries.last() {
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(deliveries
            .into_iter()
            .map(|d| Bytes::from(d.data))
            .collect())
    }
}

/// RabbitMQ does not report its version over AMQP through lapin; the peer script logs it.
pub(crate) async fn rabbit_version(uri: &str) -> anyhow::Result<String> {
    let connection = rabbit_connect(uri).await?;
    let _ = connection.close(200, "version").await;
    Ok("RabbitMQ (version in bench/peers/rabbitmq.sh's log)".to_string())
}
