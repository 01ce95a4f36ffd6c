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

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The broker's wire messages (`cella.mq.v1`).
pub use cella_proto::cella::mq::v1 as pb;
use pb::message_queue_client::MessageQueueClient;

use cella_base::Backoff;

use crate::client::{lazy_transport, Credentials, Transport};
use crate::mq_route::{key_slot, next_member, Health, RouteInfo, ROUTE_TTL};
use crate::mq_wire::WireLink;
use crate::sync::lock;
use crate::{Error, Result};

/// Pauses before retrying a send on an unreachable member: 100 ms, then 200 ms.
const SEND_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_millis(400),
};
/// Attempts per send while members cannot be reached.
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

/// The broker service, reached through one member; producers and consumers also reach the
/// other members a topic's route names.
#[derive(Debug, Clone)]
pub struct Mq {
    client: MessageQueueClient<Transport>,
    /// The member's `HOST:PORT`, connect timeout and credentials, for producers' wires and
    /// for connections to the other members.
    address: String,
    connect_timeout: Duration,
    credentials: Credentials,
}

impl Mq {
    pub(crate) fn new(
        transport: Transport,
        address: String,
        connect_timeout: Duration,
        credentials: Credentials,
    ) -> Self {
        Mq {
            client: MessageQueueClient::new(transport),
            address,
            connect_timeout,
            credentials,
        }
    }

    /// The broker of the member at `address` (`HOST:PORT`), connected on first use.
    fn member(&self, address: &str) -> Result<Mq> {
        if address == self.address {
            return Ok(self.clone());
        }
        let transport = lazy_transport(address, self.connect_timeout, self.credentials.clone())?;
        Ok(Mq::new(
            transport,
            address.to_owned(),
            self.connect_timeout,
            self.credentials.clone(),
        ))
    }

    /// Where `topic`'s queues are. The answering member is listed at this client's address
    /// (its own listed address may be a wildcard such as `0.0.0.0`).
    async fn route(&self, topic: &str) -> Result<RouteInfo> {
        let request = pb::RouteRequest {
            topic: topic.into(),
        };
        let route = self.client.clone().route(request).await?.into_inner();
        let queues = route.topic.map(|t| t.queues).unwrap_or_default();
        if route.brokers.is_empty() || queues == 0 {
            return Err(Error::Protocol {
                message: format!("the route of topic {topic:?} names no member or no queue"),
            });
        }
        let addresses = route
            .brokers
            .into_iter()
            .map(|broker| match broker.node_id == route.answered_by {
                true => self.address.clone(),
                false => broker.address,
            })
            .collect();
        Ok(RouteInfo { queues, addresses })
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

    /// A producer. It sends over connections of its own, one per member, opened on first
    /// use, that speak the broker's lean producer wire (`cella_proto::mq_wire`) instead of
    /// gRPC. Its clones share them and gather their concurrent sends into shared calls (see
    /// [`Producer::send`]): create one and hand clones to the tasks that send.
    pub fn producer(&self) -> Producer {
        Producer {
            routing: Arc::new(Routing {
                mq: self.clone(),
                links: Mutex::default(),
                routes: Mutex::default(),
                turn: AtomicU64::new(rand::random::<u32>().into()),
            }),
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

    /// A group's committed offset and backlog per queue of every member, and the members
    /// that could not be asked.
    pub async fn lag(&self, group: &str) -> Result<pb::LagResponse> {
        let request = pb::LagRequest {
            group: group.into(),
            local: false,
        };
        Ok(self.client.clone().lag(request).await?.into_inner())
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
    /// The member that stored it (`HOST:PORT`); its queues are that member's.
    pub member: String,
}

/// Sends messages over the members of each topic's route (fetched on first use, asked for
/// again every 30 s): round robin passes over a member that lately could not be reached and
/// retries at once on another; a sharding key keeps its member and queue, so per-key order
/// holds, and waits for it. Delayed and transactional messages go to the member the client
/// connected to, which also ends transactions.
#[derive(Debug, Clone)]
pub struct Producer {
    routing: Arc<Routing>,
}

impl Sent {
    /// The broker's answer `r`, from `member`.
    fn stored(r: pb::SendResponse, member: &str) -> Sent {
        Sent {
            id: r.message_id,
            queue_id: r.queue_id,
            queue_offset: r.queue_offset,
            delayed: r.delayed,
            half: r.half,
            member: member.to_owned(),
        }
    }
}

/// What a producer and its clones share: a wire per member, the routes last fetched, and
/// the round-robin turn.
#[derive(Debug)]
struct Routing {
    mq: Mq,
    links: Mutex<HashMap<String, Arc<MemberLink>>>,
    routes: Mutex<HashMap<String, Arc<ProducerRoute>>>,
    turn: AtomicU64,
}

/// A producer's wire to one member, its sends gathered, and whether it lately failed.
#[derive(Debug)]
struct MemberLink {
    coalescer: Arc<Coalescer>,
    health: Health,
}

/// A topic's route with each member's link.
#[derive(Debug)]
struct ProducerRoute {
    queues: u32,
    members: Vec<Arc<MemberLink>>,
    fetched: Instant,
}

impl ProducerRoute {
    /// The member for `request` and whether it is pinned there: a sharding key's slot (its
    /// queue set on the request), or round-robin `turn`'s member past those lately failed
    /// (the member then picks the queue).
    fn place(&self, mut request: pb::SendRequest, turn: u64) -> (usize, bool, pb::SendRequest) {
        if request.sharding_key.is_empty() || request.queue_id.is_some() {
            let now = Instant::now();
            let member = next_member(turn, self.members.len(), |m| {
                self.members[m].health.skipped(now)
            });
            return (member, false, request);
        }
        let (member, queue) = key_slot(&request.sharding_key, self.members.len(), self.queues);
        request.queue_id = Some(queue);
        (member, true, request)
    }
}

impl Routing {
    /// The link to the member at `address`, made on first use.
    fn link(&self, address: &str) -> Arc<MemberLink> {
        let mut links = lock(&self.links);
        let link = links.entry(address.to_owned()).or_insert_with(|| {
            let wire = WireLink::new(address.to_owned(), self.mq.connect_timeout);
            Arc::new(MemberLink {
                coalescer: Arc::new(Coalescer::new(wire)),
                health: Health::default(),
            })
        });
        Arc::clone(link)
    }

    /// `topic`'s route: cached, or fetched when older than [`ROUTE_TTL`]. A route that
    /// cannot be fetched again (the member the client uses is down) is used as it was; with
    /// none yet, an unreachable member is asked again as a send would be.
    async fn route(&self, topic: &str) -> Result<Arc<ProducerRoute>> {
        let cached = lock(&self.routes).get(topic).cloned();
        if let Some(route) = cached.as_ref().filter(|r| r.fetched.elapsed() < ROUTE_TTL) {
            return Ok(Arc::clone(route));
        }
        let mut attempt = 1;
        let info = loop {
            match self.mq.route(topic).await {
                Ok(info) => break info,
                Err(Error::Unavailable { .. }) if cached.is_none() && attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(SEND_BACKOFF.pause(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return cached.ok_or(error),
            }
        };
        let route = Arc::new(ProducerRoute {
            queues: info.queues,
            members: info.addresses.iter().map(|a| self.link(a)).collect(),
            fetched: Instant::now(),
        });
        lock(&self.routes).insert(topic.to_owned(), Arc::clone(&route));
        Ok(route)
    }

    fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Calls `call` on `members[first]`. A member that cannot be reached is marked; unless the
/// call is `pinned` to it, the next member not passed over is tried at once. Pinned calls,
/// and calls with every member passed over, wait ([`SEND_BACKOFF`]) before trying again;
/// [`SEND_ATTEMPTS`] calls in all.
async fn failover<T, Fut>(
    members: &[Arc<MemberLink>],
    first: usize,
    pinned: bool,
    call: impl Fn(Arc<MemberLink>) -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<T>>,
{
    let mut member = first;
    let mut attempt = 1;
    loop {
        let link = Arc::clone(&members[member]);
        match call(Arc::clone(&link)).await {
            Err(Error::Unavailable { message }) if attempt < SEND_ATTEMPTS => {
                tracing::debug!(attempt, error = %message, "mq send: member unreachable, retrying");
                link.health.failed();
                let now = Instant::now();
                let skipped = |m: usize| members[m].health.skipped(now);
                let next = next_member(u64::from(attempt), members.len(), skipped);
                if pinned || skipped(next) {
                    tokio::time::sleep(SEND_BACKOFF.pause(attempt)).await;
                }
                if !pinned {
                    member = next;
                }
                attempt += 1;
            }
            result => return result,
        }
    }
}

impl Producer {
    /// Sends `message` and returns once the broker made it durable under the topic's policy.
    /// A retried send may store the message twice; consumers dedupe by key or id.
    ///
    /// Sends made while this producer's (and its clones') earlier calls to the same member
    /// are in flight wait and leave together in one SendBatch, as Kafka's and RocketMQ's
    /// producers batch; an idle producer sends at once. Delayed and transactional messages
    /// travel alone.
    pub async fn send(&self, message: OutgoingMessage) -> Result<Sent> {
        let request = message.request;
        if request.delay_ms > 0 || !request.transaction_group.is_empty() {
            let home = [self.routing.link(&self.routing.mq.address)];
            return failover(&home, 0, true, |link| {
                let request = request.clone();
                async move { send_one(&link.coalescer.link, request).await }
            })
            .await;
        }
        let route = self.routing.route(&request.topic).await?;
        let (member, pinned, request) = route.place(request, self.routing.next_turn());
        failover(&route.members, member, pinned, |link| {
            let request = request.clone();
            async move { link.coalescer.send(request).await }
        })
        .await
    }

    /// Sends `messages` to `topic` and returns once all are durable; results are in the
    /// messages' order. Each message's topic must be empty or `topic`, with no delay or
    /// transaction. The messages go to one member in one call with one group commit, except
    /// that messages with a sharding key go to their key's member: one call per member then.
    /// A message that breaks a rule refuses its call whole (the error names it within the
    /// call, e.g. `messages[3].body`), and that call stores nothing.
    pub async fn send_batch(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<Sent>> {
        let route = self.routing.route(topic).await?;
        let turn = self.routing.next_turn();
        let count = messages.len();
        // Per member: pinned?, the messages' places in the batch, the messages.
        let mut calls: Vec<(usize, bool, Vec<usize>, Vec<pb::SendRequest>)> = Vec::new();
        for (index, message) in messages.into_iter().enumerate() {
            let (member, pinned, request) = route.place(message.request, turn);
            match calls.iter_mut().find(|call| call.0 == member) {
                Some(call) => {
                    call.1 |= pinned;
                    call.2.push(index);
                    call.3.push(request);
                }
                None => calls.push((member, pinned, vec![index], vec![request])),
            }
        }
        if calls.is_empty() {
            // The broker's answer to an empty batch, whatever it is.
            calls.push((
                route.place(Default::default(), turn).0,
                false,
                vec![],
                vec![],
            ));
        }
        let route = &route;
        let answers = futures::future::try_join_all(calls.into_iter().map(
            |(member, pinned, places, messages)| async move {
                let request = pb::SendBatchRequest {
                    topic: topic.into(),
                    messages,
                };
                let (sent, member) = failover(&route.members, member, pinned, |link| {
                    let request = &request;
                    async move {
                        let wire = &link.coalescer.link;
                        Ok((send_many(wire, request).await?, wire.address().to_owned()))
                    }
                })
                .await?;
                Ok::<_, Error>((places, sent.results, member))
            },
        ))
        .await?;
        let mut results = vec![None; count];
        for (places, sent, member) in answers {
            if sent.len() != places.len() {
                return Err(Error::Protocol {
                    message: format!(
                        "SendBatch of {} messages answered {} results",
                        places.len(),
                        sent.len()
                    ),
                });
            }
            for (place, result) in places.into_iter().zip(sent) {
                results[place] = Some(Sent::stored(result, &member));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// Sends a batch with one SendBatch.
async fn send_many(
    link: &WireLink,
    request: &pb::SendBatchRequest,
) -> Result<pb::SendBatchResponse> {
    Ok(link.send_batch(request).await?)
}

/// Sends one message with one Send.
async fn send_one(link: &WireLink, request: pb::SendRequest) -> Result<Sent> {
    Ok(Sent::stored(link.send(&request).await?, link.address()))
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
        lock(&self.state)
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
                        let _ = answer.send(Ok(Sent::stored(result, self.link.address())));
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
    /// The member that delivered it (its `HOST:PORT`), which takes its ack.
    member: Arc<str>,
}

impl Delivery {
    /// The message body.
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }

    /// Where the message sits, as an ack names it.
    fn position(&self) -> pb::Delivery {
        pb::Delivery {
            topic: self.message.topic.clone(),
            queue_id: self.message.queue_id,
            queue_offset: self.message.queue_offset,
        }
    }
}

/// `deliveries`' positions grouped by the member that delivered them, in order.
fn by_member(deliveries: &[Delivery]) -> HashMap<Arc<str>, Vec<pb::Delivery>> {
    let mut grouped: HashMap<Arc<str>, Vec<pb::Delivery>> = HashMap::new();
    for d in deliveries {
        let member = grouped.entry(Arc::clone(&d.member)).or_default();
        member.push(d.position());
    }
    grouped
}

/// A member of a consumer group on one topic. It pulls from every member of the topic's
/// route (each member's broker holds its own share of the messages and hands its queues out
/// among the consumers that pull from it). Polling is its heartbeat; drop it (or call
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
    /// The route's members, pulled from; empty until the first poll.
    sources: Vec<Source>,
    /// When the route was last fetched.
    routed: Option<Instant>,
    /// Deliveries pulled beyond what the last poll could return.
    ready: VecDeque<Delivery>,
    /// Acks that travel with the next pull to the member that delivered them.
    deferred: HashMap<Arc<str>, Vec<pb::Delivery>>,
}

/// A pull whose answer has not been taken yet. The mutex only makes it `Sync`, as a
/// consumer's `&self` methods need: it is reached through `&mut` alone, without locking.
type PendingPull = Mutex<Pin<Box<dyn Future<Output = Result<Vec<pb::Message>>> + Send>>>;

/// One member of a topic's route as a consumer pulls from it.
struct Source {
    mq: Mq,
    address: Arc<str>,
    health: Health,
    /// The pull in flight, kept across polls so that nothing it takes is dropped.
    pull: Option<PendingPull>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("address", &self.address)
            .field("health", &self.health)
            .field("pulling", &self.pull.is_some())
            .finish()
    }
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
            sources: Vec::new(),
            routed: None,
            ready: VecDeque::new(),
            deferred: HashMap::new(),
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

    /// Takes up to `max` messages (0: the broker's default, 32), waiting up to `wait` (at most
    /// 30 s) when none is ready. With several members a pull to each is in flight at once;
    /// the first answer ends the wait, and what later answers take is kept for the next poll.
    /// A member that cannot be reached is passed over for a while.
    pub async fn poll(&mut self, max: u32, wait: Duration) -> Result<Vec<Delivery>> {
        if self.ready.is_empty() {
            self.refresh_route().await?;
            self.start_pulls(max, wait);
            self.take_pulls().await?;
        }
        // `max` 0 asks for the broker's default batch: all that the pulls took.
        let count = match max {
            0 => self.ready.len(),
            max => self.ready.len().min(max as usize),
        };
        Ok(self.ready.drain(..count).collect())
    }

    /// Fetches the topic's route when it is older than [`ROUTE_TTL`]; sources that stay
    /// keep their pulls in flight. If it cannot be fetched, the known sources serve on.
    async fn refresh_route(&mut self) -> Result<()> {
        if self.routed.is_some_and(|at| at.elapsed() < ROUTE_TTL) {
            return Ok(());
        }
        let info = match self.mq.route(&self.topic).await {
            Ok(info) => info,
            Err(error) if self.sources.is_empty() => return Err(error),
            Err(error) => {
                tracing::debug!(error = %error, topic = %self.topic, "mq consumer: route not refreshed");
                self.routed = Some(Instant::now());
                return Ok(());
            }
        };
        let mut known = std::mem::take(&mut self.sources);
        for address in info.addresses {
            let source = match known.iter().position(|s| *s.address == *address) {
                Some(at) => known.swap_remove(at),
                None => Source {
                    mq: self.mq.member(&address)?,
                    address: address.into(),
                    health: Health::default(),
                    pull: None,
                },
            };
            self.sources.push(source);
        }
        // Members gone from the route: their pulls are dropped; anything those took is
        // delivered again after its ack deadline.
        self.routed = Some(Instant::now());
        Ok(())
    }

    /// Starts a pull on every source without one, passing over sources that lately failed
    /// (unless all did).
    fn start_pulls(&mut self, max: u32, wait: Duration) {
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
            acks: Vec::new(),
        };
        let now = Instant::now();
        let all_failed = self.sources.iter().all(|s| s.health.skipped(now));
        for source in &mut self.sources {
            if source.pull.is_some() || (source.health.skipped(now) && !all_failed) {
                continue;
            }
            let mut client = source.mq.client.clone();
            let mut request = request.clone();
            request.acks = self.deferred.remove(&source.address).unwrap_or_default();
            source.pull = Some(Mutex::new(Box::pin(async move {
                Ok(client.pull(request).await?.into_inner().messages)
            })));
        }
    }

    /// Waits for pulls to answer and keeps what they took. Returns when a member answered
    /// (even with nothing). A member that cannot be reached is marked and the others are
    /// waited for; its error is returned when none is left to wait for.
    async fn take_pulls(&mut self) -> Result<()> {
        loop {
            let sources = &mut self.sources;
            let answers = std::future::poll_fn(|cx| {
                let mut answers = Vec::new();
                for (index, source) in sources.iter_mut().enumerate() {
                    let pull = source.pull.as_mut().map(|pull| {
                        let pull = pull.get_mut().unwrap_or_else(|p| p.into_inner());
                        pull.as_mut().poll(cx)
                    });
                    if let Some(Poll::Ready(answer)) = pull {
                        source.pull = None;
                        answers.push((index, answer));
                    }
                }
                match answers.is_empty() {
                    true => Poll::Pending,
                    false => Poll::Ready(answers),
                }
            })
            .await;
            let mut answered = false;
            let mut unreachable = None;
            for (index, answer) in answers {
                let source = &self.sources[index];
                match answer {
                    Ok(messages) => {
                        answered = true;
                        self.ready
                            .extend(messages.into_iter().map(|message| Delivery {
                                message,
                                member: Arc::clone(&source.address),
                            }));
                    }
                    Err(error @ Error::Unavailable { .. }) => {
                        tracing::debug!(member = %source.address, error = %error, "mq consumer: member unreachable");
                        source.health.failed();
                        unreachable = Some(error);
                    }
                    // What other answers took stays in `ready` for the next poll.
                    Err(refused) => return Err(refused),
                }
            }
            let pending = self.sources.iter().any(|s| s.pull.is_some());
            match unreachable {
                Some(error) if !answered && !pending => return Err(error),
                _ if answered => return Ok(()),
                _ => {}
            }
        }
    }

    /// The broker of `member` (`HOST:PORT`), which delivered something.
    fn source(&self, member: &str) -> Result<Mq> {
        match self.sources.iter().find(|s| *s.address == *member) {
            Some(source) => Ok(source.mq.clone()),
            None => self.mq.member(member),
        }
    }

    fn ack_request(&self, delivery: &Delivery) -> pb::AckRequest {
        let pb::Delivery {
            topic,
            queue_id,
            queue_offset,
        } = delivery.position();
        pb::AckRequest {
            group: self.group.clone(),
            member: self.member.clone(),
            topic,
            queue_id,
            queue_offset,
        }
    }

    /// Marks a delivery handled.
    pub async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let mut client = self.source(&delivery.member)?.client;
        client.ack(self.ack_request(delivery)).await?;
        Ok(())
    }

    /// Marks every delivery of `deliveries` handled, in one call per member that delivered
    /// them. If one is not an unacked delivery to this member (acked already, or past its
    /// ack deadline), none of its call is acked and the error names it within the call
    /// (e.g. `deliveries[2]`).
    pub async fn ack_all(&self, deliveries: &[Delivery]) -> Result<()> {
        let calls = by_member(deliveries)
            .into_iter()
            .map(|(member, deliveries)| {
                let request = pb::AckBatchRequest {
                    group: self.group.clone(),
                    member: self.member.clone(),
                    deliveries,
                };
                let source = self.source(&member);
                async move {
                    source?.client.ack_batch(request).await?;
                    Ok::<_, Error>(())
                }
            });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Acknowledges `deliveries` with the next poll's pull to the member that delivered
    /// each (one call per batch instead of two, as RocketMQ's pulls carry their offset
    /// commits). If that pull finds one not an unacked delivery to this member (past its
    /// ack deadline), the poll fails and none of that member's is acked; if the member
    /// cannot be reached, they are delivered again after their deadline.
    pub fn ack_with_next_poll(&mut self, deliveries: &[Delivery]) {
        for (member, positions) in by_member(deliveries) {
            self.deferred.entry(member).or_default().extend(positions);
        }
    }

    /// Hands a delivery back: it will be delivered again.
    pub async fn nack(&self, delivery: &Delivery) -> Result<()> {
        let mut client = self.source(&delivery.member)?.client;
        client.nack(self.ack_request(delivery)).await?;
        Ok(())
    }

    /// Leaves the group on every member now, so its queues and unacknowledged deliveries go
    /// to the others.
    pub async fn leave(&self) -> Result<()> {
        let request = pb::LeaveRequest {
            group: self.group.clone(),
            member: self.member.clone(),
        };
        let members: Vec<Mq> = match self.sources.is_empty() {
            true => vec![self.mq.clone()],
            false => self.sources.iter().map(|s| s.mq.clone()).collect(),
        };
        let calls = members.into_iter().map(|mq| {
            let request = request.clone();
            async move {
                match mq.client.clone().leave(request).await {
                    Ok(_) => Ok(()),
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
                    Err(status) => Err(Error::from(status)),
                }
            }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
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
