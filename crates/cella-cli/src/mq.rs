//! `cella mq`: topics, sending, consuming (acking each batch once printed) and group lag.

use std::io::{self, Write};
use std::time::Duration;

use cella_sdk::mq::{Consumer, OutgoingMessage, Topic};
use clap::Subcommand;
use serde::Serialize;

use crate::output::{emit, write_columns, Format, Render, Text};
use crate::{Remote, UsageError};

/// The `mq` verbs.
#[derive(Debug, Subcommand)]
pub enum MqCommand {
    /// Create or list topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send one message; prints its id.
    Send {
        /// The topic (created on first use when the broker allows it).
        #[arg(long)]
        topic: String,
        /// A key to find the message by; repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// The tag consumers filter on.
        #[arg(long)]
        tag: Option<String>,
        /// Keep messages with one sharding key in one queue, in order.
        #[arg(long)]
        sharding_key: Option<String>,
        /// Deliver no earlier than this many milliseconds from now.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// The message body.
        body: String,
    },
    /// Receive messages as a group member, printing one body per line; each batch is acked
    /// once printed.
    Consume {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Stop after this many messages (waiting up to --timeout-ms for them); without it,
        /// stop when no message arrives for one second.
        #[arg(long)]
        count: Option<u64>,
        /// Only messages with this tag; repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// With --count: fail if the messages have not arrived within this many milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Declare a group's maximum backlog per queue of a topic and what happens past it.
    Subscribe {
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Most messages per queue the group may have waiting (0: no limit).
        #[arg(long)]
        max_backlog: u64,
        /// Move the messages past the limit to the group's dead-letter topic instead of
        /// dropping them.
        #[arg(long)]
        dead_letter: bool,
    },
    /// Show a group's committed offset and backlog per queue.
    Lag {
        /// The consumer group.
        #[arg(long)]
        group: String,
    },
}

/// The `mq topic` verbs.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (succeeds unchanged if it exists with the same settings).
    Create {
        /// The topic's name.
        name: String,
        /// Number of queues (default: the broker's, 4).
        #[arg(long, default_value_t = 0)]
        queues: u32,
        /// Consume each queue in order.
        #[arg(long)]
        ordered: bool,
        /// Acknowledge sends after the write and fsync periodically, instead of after fsync.
        #[arg(long)]
        async_flush: bool,
    },
    /// List topics.
    List,
}

#[derive(Serialize)]
struct TopicsView {
    topics: Vec<TopicView>,
}

#[derive(Serialize)]
struct TopicView {
    name: String,
    queues: u32,
    ordered: bool,
    flush: &'static str,
}

impl From<Topic> for TopicView {
    fn from(t: Topic) -> Self {
        TopicView {
            name: t.name,
            queues: t.queues,
            ordered: t.ordered,
            flush: if t.sync_flush { "sync" } else { "async" },
        }
    }
}

impl Render for TopicsView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .topics
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.queues.to_string(),
                    t.ordered.to_string(),
                    t.flush.to_string(),
                ]
            })
            .collect();
        write_columns(out, &["TOPIC", "QUEUES", "ORDERED", "FLUSH"], &rows)
    }
}

#[derive(Serialize)]
struct SentView {
    id: String,
    queue_id: u32,
    queue_offset: u64,
}

impl Render for SentView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.id)
    }
}

#[derive(Serialize)]
struct MessageView {
    id: String,
    queue_id: u32,
    queue_offset: u64,
    tag: String,
    body: Text,
}

impl Render for MessageView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.body)
    }
}

#[derive(Serialize)]
struct LagView {
    queues: Vec<LagRow>,
    /// Members whose lag could not be asked for.
    unreachable: Vec<u64>,
}

#[derive(Serialize)]
struct LagRow {
    node: u64,
    topic: String,
    queue_id: u32,
    member: String,
    committed: u64,
    end: u64,
    lag: u64,
}

impl Render for LagView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .queues
            .iter()
            .map(|q| {
                vec![
                    q.node.to_string(),
                    q.topic.clone(),
                    q.queue_id.to_string(),
                    q.member.clone(),
                    q.committed.to_string(),
                    q.end.to_string(),
                    q.lag.to_string(),
                ]
            })
            .collect();
        write_columns(
            out,
            &[
                "NODE",
                "TOPIC",
                "QUEUE",
                "MEMBER",
                "COMMITTED",
                "END",
                "LAG",
            ],
            &rows,
        )?;
        if !self.unreachable.is_empty() {
            let ids: Vec<String> = self.unreachable.iter().map(u64::to_string).collect();
            writeln!(
                out,
                "not reached (down or partitioned): node {}",
                ids.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Runs one `mq` verb.
pub async fn run(command: MqCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let mq = remote.connect().await?.mq();
    match command {
        MqCommand::Topic(TopicCommand::Create {
            name,
            queues,
            ordered,
            async_flush,
        }) => {
            let topic = mq
                .create_topic(&name, queues, ordered, !async_flush)
                .await?;
            emit(
                format,
                &TopicsView {
                    topics: vec![topic.into()],
                },
            )
        }
        MqCommand::Topic(TopicCommand::List) => {
            let topics = mq
                .topics()
                .await?
                .into_iter()
                .map(TopicView::from)
                .collect();
            emit(format, &TopicsView { topics })
        }
        MqCommand::Send {
            topic,
            keys,
            tag,
            sharding_key,
            delay_ms,
            body,
        } => {
            let mut message = OutgoingMessage::new(topic, body.into_bytes())
                .delay(Duration::from_millis(delay_ms));
            for key in keys {
                message = message.key(key);
            }
            if let Some(tag) = tag {
                message = message.tag(tag);
            }
            if let Some(key) = sharding_key {
                message = message.sharding_key(key);
            }
            let sent = mq.producer().send(message).await?;
            emit(
                format,
                &SentView {
                    id: sent.id,
                    queue_id: sent.queue_id,
                    queue_offset: sent.queue_offset,
                },
            )
        }
        MqCommand::Consume {
            topic,
            group,
            count,
            tags,
            timeout_ms,
        } => {
            if count == Some(0) {
                return Err(UsageError("--count must be at least 1".into()).into());
            }
            let mut consumer = Consumer::new(mq, &group, &topic).tags(tags);
            let result = consume(
                &mut consumer,
                count,
                Duration::from_millis(timeout_ms),
                format,
            )
            .await;
            // Hand the queues back at once rather than after the session timeout.
            let left = consumer.leave().await;
            result?;
            Ok(left?)
        }
        MqCommand::Subscribe {
            group,
            topic,
            max_backlog,
            dead_letter,
        } => {
            mq.declare_subscription(&group, &topic, max_backlog, dead_letter)
                .await?;
            let policy = if dead_letter {
                "dead-letter"
            } else {
                "drop-oldest"
            };
            println!("{group} on {topic}: at most {max_backlog} waiting per queue, then {policy}");
            Ok(())
        }
        MqCommand::Lag { group } => {
            let lag = mq.lag(&group).await?;
            let queues = lag
                .queues
                .into_iter()
                .map(|q| LagRow {
                    node: q.node_id,
                    topic: q.topic,
                    queue_id: q.queue_id,
                    member: q.member,
                    committed: q.committed,
                    end: q.end,
                    lag: q.lag,
                })
                .collect();
            let unreachable = lag.unreachable;
            emit(
                format,
                &LagView {
                    queues,
                    unreachable,
                },
            )
        }
    }
}

async fn consume(
    consumer: &mut Consumer,
    count: Option<u64>,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + timeout;
    let mut printed = 0u64;
    loop {
        let want = count.map_or(32, |c| (c - printed).min(32) as u32);
        let deliveries = consumer.poll(want, Duration::from_secs(1)).await?;
        if deliveries.is_empty() {
            match count {
                None => return Ok(()),
                Some(c) if tokio::time::Instant::now() >= give_up => {
                    anyhow::bail!(
                        "received {printed} of {c} messages within {} ms",
                        timeout.as_millis()
                    )
                }
                Some(_) => continue,
            }
        }
        for delivery in &deliveries {
            let m = &delivery.message;
            emit(
                format,
                &MessageView {
                    id: m.message_id.clone(),
                    queue_id: m.queue_id,
                    queue_offset: m.queue_offset,
                    tag: m.tag.clone(),
                    body: Text::from(&m.body[..]),
                },
            )?;
            printed += 1;
        }
        // Acked once printed: a crash before this line redelivers, never loses.
        consumer.ack_all(&deliveries).await?;
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
    }
}
