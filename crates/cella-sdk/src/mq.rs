//! The message broker: topics, a [`Producer`] and a [`Consumer`] that acknowledges what it
//! handled, plus [`Dedupe`] for consumers that must be idempotent.
//!
//! Delivery is at least once: a message not acknowledged (the consumer crashed, or missed
//! the ack deadline) is delivered again, possibly to another member. Consumers that must
//! not act twice remember recent message ids with [`Dedupe`].
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! use cella_sdk::mq::{Consumer, OutgoingMessage};
//! let client = cella_sdk::Client::connect("127.0.0.1:7070").await?;
//! let sent = client.mq().producer().send(OutgoingMessage::new("orders", "created #1").key("order-1")).await?;
//! let mut consumer = Consumer::new(client.mq(), "billing", "orders");
//! for delivery in consumer.poll(16, std::time::Duration::from_secs(1)).await? {
//!     consumer.ack(&delivery).await?;
//! }
//! // Many messages per call: one SendBatch, one AckBatch.
//! let batch = (0..100).map(|i| OutgoingMessage::new("orders", format!("created #{i}")));
//! client.mq().producer().send_batch("orders", batch.collect()).await?;
//! let deliveries = consumer.poll(100, std::time::Duration::from_secs(1)).await?;
//! consumer.ack_all(&deliveries).await?;
//! # let _ = sent; Ok(()) }
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// The broker's wire messages (`cella.mq.v1`).
pub use cella_proto::cella::mq::v1 as pb;
use pb::message_queue_client::MessageQueueClient;

use crate::client::Transport;
use crate::mq_wire::WireLink;
use crate::{Error, Result};

/// Sends retried on an unavailable broker, with this first pause (doubling).
const SEND_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Attempts per send when the broker is unavailable.
const SEND_ATTEMPTS: u32 = 3;

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its queue count.
    pub queues: u32,
    /// Whether each queue is consumed in order.
    pub ordered: bool,
    /// Whether sends are acknowledged after fsync (`true`) or after the write.
    pub sync_flush: bool,
}

impl From<pb::Topic> for Topic {
    fn from(t: pb::Topic) -> Self {
        Topic {
            name: t.name,
            queues: t.queues,
            ordered: t.ordered,
            sync_flush: t.flush != pb::FlushPolicy::Async as i32,
        }
    }
}

/// The broker service of one node.
#[derive(Debug, Clone)]
pub struct Mq {
    client: MessageQueueClient<Transport>,
    /// The node's `HOST:PORT` and connect timeout, for producers' wires.
    address: String,
    connect_timeout: Duration,
}

impl Mq {
    pub(crate) fn new(transport: Transport, address: String, connect_timeout: Duration) -> Self {
        Mq {
            client: MessageQueueClient::new(transport),
            address,
            connect_timeout,
        }
    }

    /// Creates a topic with `queues` queues (0: the broker's default); succeeds unchanged if
    /// it exists with the same settings.
    pub async fn create_topic(
        &self,
        name: &str,
        queues: u32,
        ordered: bool,
        sync_flush: bool,
    ) -> Result<Topic> {
        let flush = if sync_flush {
            pb::FlushPolicy::Sync
        } else {
            pb::FlushPolicy::Async
        };
        let request = pb::CreateTopicRequest {
            name: name.into(),
            queues,
            ordered,
            flush: flush as i32,
        };
        Ok(self
            .client
            .clone()
            .create_topic(request)
            .await?
            .into_inner()
            .into())
    }

    /// Every topic.
    pub async fn topics(&self) -> Result<Vec<Topic>> {
        let response = self
            .client
            .clone()
            .list_topics(pb::ListTopicsRequest {})
            .await?;
        Ok(response
            .into_inner()
            .topics
            .into_iter()
            .map(Topic::from)
            .collect())
    }

    /// A producer. It sends over a connection of its own, opened on its first send, that
    /// speaks the broker's lean producer wire (`cella_proto::mq_wire`) instead of gRPC. Its
    /// clones share it and gather their concurrent sends into shared calls (see
    /// [`Producer::send`]): create one and hand clones to the tasks that send.
    pub fn producer(&self) -> Producer {
        let link = WireLink::new(self.address.clone(), self.connect_timeout);
        Producer {
            coalescer: Arc::new(Coalescer::new(link)),
        }
    }

    /// Declares that `group` may have at most `max_backlog` messages waiting per queue of
    /// `topic`; older ones are dropped, or moved to the group's dead-letter topic when
    /// `dead_letter` is set.
    pub async fn declare_subscription(
        &self,
        group: &str,
        topic: &str,
        max_backlog: u64,
        dead_letter: bool,
    ) -> Result<()> {
        let overflow = if dead_letter {
            pb::Overflow::DeadLetter
        } else {
            pb::Overflow::DropOldest
        };
        let request = pb::Subscription {
            group: group.into(),
            topic: topic.into(),
            max_backlog,
            overflow: overflow as i32,
        };
        self.client.clone().declare_subscription(request).await?;
        Ok(())
    }

    /// Commits (delivers) or rolls back the half message `message_id`.
    pub async fn end_transaction(&self, message_id: &str, commit: bool) -> Result<()> {
        let request = pb::EndTransactionRequest {
            message_id: message_id.into(),
            commit,
        };
        self.client.clone().end_transaction(request).await?;
        Ok(())
    }

    /// Half messages of `producer_group` waiting for a decision (the broker's check-back):
    /// answer each with [`Mq::end_transaction`].
    pub async fn transaction_checks(
        &self,
        producer_group: &str,
        max: u32,
    ) -> Result<Vec<pb::Message>> {
        let request = pb::TransactionChecksRequest {
            producer_group: producer_group.into(),
            max_messages: max,
        };
        Ok(self
            .client
            .clone()
            .transaction_checks(request)
            .await?
            .into_inner()
            .messages)
    }

    /// A group's committed offset and backlog per queue.
    pub async fn lag(&self, group: &str) -> Result<Vec<pb::QueueLag>> {
        let response = self
            .client
            .clone()
            .lag(pb::LagRequest {
                group: group.into(),
            })
            .await?;
        Ok(response.into_inner().queues)
    }
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    request: pb::SendRequest,
}

impl OutgoingMessage {
    /// A message with `body` for `topic`.
    pub fn new(topic: impl Into<String>, body: impl Into<bytes::Bytes>) -> Self {
        OutgoingMessage {
            request: pb::SendRequest {
                topic: topic.into(),
                body: body.into(),
                ..Default::default()
            },
        }
    }

    /// Adds a key to find the message by.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.request.keys.push(key.into());
        self
    }

    /// Sets the tag consumers filter on.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.request.tag = tag.into();
        self
    }

    /// Routes by `key`: messages with one sharding key keep their order in one queue.
    pub fn sharding_key(mut self, key: impl Into<String>) -> Self {
        self.request.sharding_key = key.into();
        self
    }

    /// Delivers the message no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.request.delay_ms = delay.as_millis() as u64;
        self
    }

    /// Makes it a half message of `producer_group`: stored now, delivered only once
    /// committed with [`Mq::end_transaction`]; until then the broker asks the group about it
    /// through [`Mq::transaction_checks`].
    pub fn transaction(mut self, producer_group: impl Into<String>) -> Self {
        self.request.transaction_group = producer_group.into();
        self
    }

    /// Sets a property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.properties.insert(name.into(), value.into());
        self
    }
}

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its id (32 hex digits).
    pub id: String,
    /// Its queue.
    pub queue_id: u32,
    /// Its offset in the queue (0 while delayed).
    pub queue_offset: u64,
    /// Whether it waits in the delay queue.
    pub delayed: bool,
    /// Whether it is a half message waiting for its transaction's decision.
    pub half: bool,
}

/// Sends messages; retries while the broker is unavailable.
#[derive(Debug, Clone)]
pub struct Producer {
    coalescer: Arc<Coalescer>,
}

impl From<pb::SendResponse> for Sent {
    fn from(r: pb::SendResponse) -> Self {
        Sent {
            id: r.message_id,
            queue_id: r.queue_id,
            queue_offset: r.queue_offset,
            delayed: r.delayed,
            half: r.half,
        }
    }
}

/// Runs `call` again while the broker is unavailable, up to [`SEND_ATTEMPTS`] times with a
/// doubling pause.
async fn retry_unavailable<T, Fut>(mut call: impl FnMut() -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut pause = SEND_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(r) => return Ok(r),
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < SEND_ATTEMPTS => {
                tracing::debug!(attempt, error = %status.message(), "mq send: broker unavailable, retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

impl Producer {
    /// Sends `message` and returns once the broker made it durable under the topic's policy.
    /// A retried send may store the message twice; consumers dedupe by key or id.
    ///
    /// Sends made while this producer's (and its clones') earlier calls are in flight wait
    /// and leave together in one SendBatch, as Kafka's and RocketMQ's producers batch; an
    /// idle producer sends at once. Delayed and transactional messages travel alone.
    pub async fn send(&self, message: OutgoingMessage) -> Result<Sent> {
        let request = message.request;
        if request.delay_ms > 0 || !request.transaction_group.is_empty() {
            return send_one(&self.coalescer.link, request).await;
        }
        self.coalescer.send(request).await
    }

    /// Sends `messages` to `topic` in one call with one group commit, and returns once all
    /// are durable; results are in the messages' order. Each message's topic must be empty
    /// or `topic`, with no delay or transaction. A message that breaks a rule refuses the
    /// whole batch (the error names it, e.g. `messages[3].body`) and nothing is stored.
    pub async fn send_batch(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Sent>> {
        let request = pb::SendBatchRequest {
            topic: topic.into(),
            messages: messages.into_iter().map(|m| m.request).collect(),
        };
        let sent = send_many(&self.coalescer.link, &request).await?;
        Ok(sent.results.into_iter().map(Sent::from).collect())
    }
}

/// Sends a batch with one SendBatch.
async fn send_many(
    link: &WireLink,
    request: &pb::SendBatchRequest,
) -> Result<pb::SendBatchResponse> {
    retry_unavailable(|| link.send_batch(request)).await
}

/// Sends one message with one Send.
async fn send_one(link: &WireLink, request: pb::SendRequest) -> Result<Sent> {
    Ok(retry_unavailable(|| link.send(&request)).await?.into())
}

/// Most messages one coalesced SendBatch carries.
const COALESCE_MAX_MESSAGES: usize = 256;
/// Most body bytes one coalesced SendBatch carries (the broker allows 4 MiB by default).
const COALESCE_MAX_BYTES: usize = 1 << 20;
/// Coalesced calls one producer keeps in flight at once.
const COALESCE_IN_FLIGHT: usize = 1;

/// Gathers a producer's concurrent sends into SendBatch calls: a send that finds a free call
/// slot leaves at once (with whatever else waits), and sends that arrive while
/// [`COALESCE_IN_FLIGHT`] calls are busy wait and leave together in the next. An idle
/// producer so adds no delay, and a busy one pays one call per batch instead of one per
/// message. Each send still gets its own answer: a batch that the broker refuses for one bad
/// message is sent again message by message.
#[derive(Debug)]
struct Coalescer {
    link: WireLink,
    state: Mutex<CoalesceState>,
}

/// What waits to be sent and how many calls are out.
#[derive(Debug, Default)]
struct CoalesceState {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

/// One send waiting for a call, and where its answer goes.
#[derive(Debug)]
struct Waiting {
    request: pb::SendRequest,
    answer: oneshot::Sender<Result<Sent>>,
}

impl CoalesceState {
    /// The next call's messages, oldest first, within the batch limits (at least one).
    fn next_batch(&mut self) -> Vec<Waiting> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.waiting.front() {
            let size = next.request.body.len();
            if !batch.is_empty()
                && (batch.len() == COALESCE_MAX_MESSAGES || bytes + size > COALESCE_MAX_BYTES)
            {
                break;
            }
            bytes += size;
            batch.extend(self.waiting.pop_front());
        }
        batch
    }
}

impl Coalescer {
    fn new(link: WireLink) -> Self {
        Coalescer {
            link,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, CoalesceState> {
        // The state stays consistent across a panic elsewhere: every change is one step.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `request` and waits for its answer, starting a call if a slot is free.
    async fn send(self: &Arc<Self>, request: pb::SendRequest) -> Result<Sent> {
        let (answer, answered) = oneshot::channel();
        let batch = {
            let mut state = self.state();
            state.waiting.push_back(Waiting { request, answer });
            (state.in_flight < COALESCE_IN_FLIGHT).then(|| {
                state.in_flight += 1;
                state.next_batch()
            })
        };
        if let Some(batch) = batch {
            // The caller makes its own call (an idle producer's send so passes through no
            // other task); the slot then goes on to a task of its own, even if the caller
            // stops waiting, for whatever queued meanwhile.
            let slot = Slot(Arc::clone(self));
            self.deliver(batch).await;
            drop(slot);
        }
        answered.await.unwrap_or_else(|_| {
            Err(Error::Protocol {
                message: "the producer's send task ended without an answer".into(),
            })
        })
    }

    /// Gives up a call slot: to a task that sends what waits, or, if nothing does, back.
    fn pass_on(self: &Arc<Self>) {
        let mut state = self.state();
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !state.waiting.is_empty() => {
                let batch = state.next_batch();
                runtime.spawn(Arc::clone(self).calls(batch));
            }
            // Outside a runtime nothing can be sent: waiting sends get "ended without an answer".
            _ => {
                state.waiting.clear();
                state.in_flight -= 1;
            }
        }
    }

    /// Sends `batch`, then whatever waits meanwhile, until nothing does; holds one slot.
    async fn calls(self: Arc<Self>, mut batch: Vec<Waiting>) {
        loop {
            self.deliver(batch).await;
            // The senders just answered usually send again at once: let them queue behind
            // this slot, so they leave together rather than the first alone.
            tokio::task::yield_now().await;
            let mut state = self.state();
            if state.waiting.is_empty() {
                state.in_flight -= 1;
                return;
            }
            batch = state.next_batch();
        }
    }

    /// Sends `batch` (one SendBatch per topic, in order) and answers each of its sends.
    async fn deliver(&self, batch: Vec<Waiting>) {
        let mut by_topic: Vec<(String, Vec<Waiting>)> = Vec::new();
        for waiting in batch {
            match by_topic
                .iter_mut()
                .find(|(t, _)| *t == waiting.request.topic)
            {
                Some((_, same)) => same.push(waiting),
                None => by_topic.push((waiting.request.topic.clone(), vec![waiting])),
            }
        }
        for (topic, mut same) in by_topic {
            if same.len() == 1 {
                let Waiting { request, answer } = same.remove(0);
                let _ = answer.send(send_one(&self.link, request).await);
                continue;
            }
            let (messages, answers): (Vec<_>, Vec<_>) =
                same.into_iter().map(|w| (w.request, w.answer)).unzip();
            let request = pb::SendBatchRequest { topic, messages };
            let sent = send_many(&self.link, &request).await;
            match sent {
                Ok(sent) if sent.results.len() == answers.len() => {
                    for (answer, result) in answers.into_iter().zip(sent.results) {
                        let _ = answer.send(Ok(result.into()));
                    }
                }
                Ok(sent) => {
                    let error = Error::Protocol {
                        message: format!(
                            "SendBatch of {} messages answered {} results",
                            answers.len(),
                            sent.results.len()
                        ),
                    };
                    answers
                        .into_iter()
                        .for_each(|a| drop(a.send(Err(error.clone()))));
                }
                // One message broke a rule and nothing was stored: each send gets its own
                // answer from a send of its own.
                Err(Error::InvalidArgument { .. }) => {
                    for (request, answer) in request.messages.into_iter().zip(answers) {
                        let _ = answer.send(send_one(&self.link, request).await);
                    }
                }
                Err(error) => answers
                    .into_iter()
                    .for_each(|a| drop(a.send(Err(error.clone())))),
            }
        }
    }
}

/// A call slot held by a caller making its own call; passed on when dropped.
struct Slot(Arc<Coalescer>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.pass_on();
    }
}

/// A received message; acknowledge it with [`Consumer::ack`] (or many with
/// [`Consumer::ack_all`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The message as stored.
    pub message: pb::Message,
}

impl Delivery {
    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }
}

/// A member of a consumer group on one topic. Polling is its heartbeat; drop it (or call
/// [`Consumer::leave`]) to hand its queues to the others.
#[derive(Debug)]
pub struct Consumer {
    mq: Mq,
    group: String,
    topic: String,
    member: String,
    tags: Vec<String>,
    broadcasting: bool,
    from_latest: bool,
}

fn member_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Consumer {
    /// A new member (with a unique name) of `group` consuming `topic`.
    pub fn new(mq: Mq, group: &str, topic: &str) -> Consumer {
        Consumer {
            mq,
            group: group.into(),
            topic: topic.into(),
            member: member_name(),
            tags: Vec::new(),
            broadcasting: false,
            from_latest: false,
        }
    }

    /// Names the member (default: unique per process and consumer).
    pub fn member(mut self, name: impl Into<String>) -> Self {
        self.member = name.into();
        self
    }

    /// Receives only messages with one of `tags`.
    pub fn tags(mut self, tags: impl IntoIterator<Item = String>) -> Self {
        self.tags = tags.into_iter().collect();
        self
    }

    /// Makes a new group broadcasting: every member gets every message.
    pub fn broadcasting(mut self) -> Self {
        self.broadcasting = true;
        self
    }

    /// Makes a new group start after the last message sent so far.
    pub fn from_latest(mut self) -> Self {
        self.from_latest = true;
        self
    }

    /// This member's name.
    pub fn member_name(&self) -> &str {
        &self.member
    }

    /// Takes up to `max` messages, waiting up to `wait` (at most 30 s) when none is ready.
    pub async fn poll(&mut self, max: u32, wait: Duration) -> Result<Vec<Delivery>> {
        let request = pb::PullRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            member: self.member.clone(),
            tags: self.tags.clone(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            mode: if self.broadcasting {
                pb::GroupMode::Broadcasting
            } else {
                pb::GroupMode::Unspecified
            } as i32,
            start: if self.from_latest {
                pb::StartFrom::Latest
            } else {
                pb::StartFrom::Unspecified
            } as i32,
        };
        let response = self.mq.client.clone().pull(request).await?;
        Ok(response
            .into_inner()
            .messages
            .into_iter()
            .map(|message| Delivery { message })
            .collect())
    }

    fn ack_request(&self, delivery: &Delivery) -> pb::AckRequest {
        pb::AckRequest {
            group: self.group.clone(),
            member: self.member.clone(),
            topic: delivery.message.topic.clone(),
            queue_id: delivery.message.queue_id,
            queue_offset: delivery.message.queue_offset,
        }
    }

    /// Marks a delivery handled.
    pub async fn ack(&self, delivery: &Delivery) -> Result<()> {
        self.mq
            .client
            .clone()
            .ack(self.ack_request(delivery))
            .await?;
        Ok(())
    }

    /// Marks every delivery of `deliveries` handled in one call. If one is not an unacked
    /// delivery to this member (acked already, or past its ack deadline), none is acked and
    /// the error names it (e.g. `deliveries[2]`).
    pub async fn ack_all(&self, deliveries: &[Delivery]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let request = pb::AckBatchRequest {
            group: self.group.clone(),
            member: self.member.clone(),
            deliveries: deliveries
                .iter()
                .map(|d| pb::Delivery {
                    topic: d.message.topic.clone(),
                    queue_id: d.message.queue_id,
                    queue_offset: d.message.queue_offset,
                })
                .collect(),
        };
        self.mq.client.clone().ack_batch(request).await?;
        Ok(())
    }

    /// Hands a delivery back: it will be delivered again.
    pub async fn nack(&self, delivery: &Delivery) -> Result<()> {
        self.mq
            .client
            .clone()
            .nack(self.ack_request(delivery))
            .await?;
        Ok(())
    }

    /// Leaves the group now, so its queues and unacknowledged deliveries go to the others.
    pub async fn leave(&self) -> Result<()> {
        let request = pb::LeaveRequest {
            group: self.group.clone(),
            member: self.member.clone(),
        };
        match self.mq.client.clone().leave(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(Error::from(status)),
        }
    }
}

/// Remembers the last `capacity` message ids (or business keys) a consumer handled, so a
/// redelivered message can be recognised and skipped.
#[derive(Debug, Clone)]
pub struct Dedupe {
    capacity: usize,
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Dedupe {
    /// Remembers up to `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Dedupe {
        Dedupe {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Whether `id` is new; records it. The oldest id is forgotten when full.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_recognises_repeats_and_forgets_the_oldest_when_full() {
        let mut d = Dedupe::new(2);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
        assert!(d.first_time("c"));
        assert!(d.first_time("a"), "a was forgotten when c arrived");
        assert!(!d.first_time("c"));
    }

    fn waiting(body_bytes: usize) -> Waiting {
        Waiting {
            request: pb::SendRequest {
                body: vec![0; body_bytes].into(),
                ..Default::default()
            },
            answer: oneshot::channel().0,
        }
    }

    fn batch_sizes(bodies: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut state = CoalesceState::default();
        state.waiting.extend(bodies.into_iter().map(waiting));
        std::iter::from_fn(|| Some(state.next_batch().len()).filter(|&n| n > 0)).collect()
    }

    #[test]
    fn a_coalesced_batch_stays_within_the_message_and_byte_limits() {
        assert_eq!(
            batch_sizes([10; 300]),
            [COALESCE_MAX_MESSAGES, 300 - COALESCE_MAX_MESSAGES]
        );
        let most = COALESCE_MAX_BYTES / 3;
        assert_eq!(batch_sizes([most; 4]), [3, 1]);
        assert_eq!(
            batch_sizes([1, COALESCE_MAX_BYTES + 1, 1]),
            [1, 1, 1],
            "a message over the byte limit leaves alone"
        );
    }
}
