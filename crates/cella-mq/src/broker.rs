//! The broker: produce into topics, consume through groups. It ties the pure decisions of
//! [`crate::group`] to the [`Store`] (messages), the core (topic and group metadata) and a
//! broker-local offsets file.
//!
//! Delayed messages (any delay up to `max_delay_ms`) are stored at once in the internal
//! topic `%DELAY%` with their target and due time as properties, and kept in a
//! [`TimerWheel`]; when due, a copy (same id) is appended to the target queue. The delay
//! queue's progress is an offset like a group's, so after a restart the wheel is rebuilt from
//! the not-yet-delivered part (a message delivered just before a crash may be delivered
//! twice: at least once, as everywhere).
//!
//! A negative acknowledgement on an unordered topic sends the message (same id) to the
//! group's retry topic `%RETRY%<group>` after the next backoff level (`retry_backoff_ms`);
//! the group's pulls take from its retry topic too. After `max_retries` it goes to the
//! dead-letter topic `%DLQ%<group>` instead, which can be consumed like any topic. Ordered
//! topics retry in place, in order.
//!
//! Transactional messages: a send with a transaction group is stored as a half message in
//! `%HALF%` and delivered only on commit (a copy, same id, appended to its queue); each
//! decision is recorded in `%HALF_OP%` after its effect, so a crash can only repeat a
//! commit, never lose one. Undecided halves are offered to the producer group's check-back
//! poll every `transaction_check_ms`, and rolled back after `transaction_max_checks`.
//!
//! Batches: [`Broker::send_batch`] checks every message of one topic before storing any, then
//! appends them all with one [`Store::append_batch`] (in order, one group commit); delays and
//! transactions stay single sends. [`Broker::ack_batch`] checks every delivery under the
//! groups lock and acknowledges them only if all are in flight to the member, so a refused
//! batch changes nothing.
//!
//! Consumer offsets are kept in `offsets.json` beside the store, not in the core: they
//! describe positions in this broker's own queues (meaningless to another node's store),
//! and they change on every acknowledgement, which through Raft would cost a replicated,
//! fsynced log entry per ack. The file is rewritten (tmp + fsync + rename) every second
//! and on close; a crash can lose at most that last second of progress, which only
//! redelivers messages — delivery is at least once either way.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cella_base::Clock;
use cella_core::Core;
use serde::{Deserialize, Serialize};

use crate::config::MqConfig;
use crate::error::{MqError, MqResult};
use crate::group::{assigned_queues, Cursor, GroupMode, Members};
use crate::meta::{
    validate_name, FlushPolicy, GroupMeta, Metadata, Overflow, StartFrom, SubscriptionMeta,
    TopicMeta,
};
use crate::storage::{record::hash64, FlushMode, Store, StoreConfig, StoredMessage};
use crate::timer::TimerWheel;
use crate::txn::Halves;

/// Internal topics of transactional messages: the halves, and the decisions taken.
const HALF_TOPIC: &str = "%HALF%";
const HALF_OP_TOPIC: &str = "%HALF_OP%";
const PROP_PRODUCER_GROUP: &str = "%PRODUCER_GROUP";

/// The internal topic holding delayed messages until they are due.
const DELAY_TOPIC: &str = "%DELAY%";
/// Property names the broker uses on delayed messages (user properties may not start with `%`).
const PROP_TARGET_TOPIC: &str = "%TARGET_TOPIC";
const PROP_TARGET_QUEUE: &str = "%TARGET_QUEUE";
const PROP_DELIVER_AT: &str = "%DELIVER_AT";
/// Delay-wheel resolution and size (one revolution: 51.2 s; longer delays wait in place).
const DELAY_TICK_MS: u64 = 100;
const DELAY_SLOTS: usize = 512;
/// How many times a message was retried, and where it came from (set on retry copies).
const PROP_RETRIES: &str = "%RETRIES";
const PROP_ORIGIN_TOPIC: &str = "%ORIGIN_TOPIC";
const RETRY_PREFIX: &str = "%RETRY%";
const DLQ_PREFIX: &str = "%DLQ%";

/// The settings of a group's retry or dead-letter topic, for such names.
fn internal_topic(name: &str) -> Option<TopicMeta> {
    let group = name
        .strip_prefix(RETRY_PREFIX)
        .or_else(|| name.strip_prefix(DLQ_PREFIX))?;
    validate_name("group", group).ok()?;
    Some(TopicMeta {
        name: name.to_string(),
        queues: 1,
        ordered: false,
        flush: FlushPolicy::Sync,
    })
}

/// Checks a topic named by a consumer: a user topic, or a group's retry or dead-letter topic.
fn validate_consumed_topic(name: &str) -> MqResult<()> {
    if internal_topic(name).is_some() {
        return Ok(());
    }
    validate_name("topic", name)
}

/// The delay queue's cursor owner, as a stand-in member name.
const DELAY_MEMBER: &str = "%timer";

/// What a producer sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    /// The topic.
    pub topic: String,
    /// A sharding key: messages with the same key go to the same queue, in order.
    pub sharding_key: Option<String>,
    /// An explicit queue (overrides the sharding key).
    pub queue_id: Option<u32>,
    /// The tag consumers filter on (empty for none).
    pub tag: String,
    /// Keys to find the message by.
    pub keys: Vec<String>,
    /// Free-form properties.
    pub properties: BTreeMap<String, String>,
    /// The payload.
    pub body: Vec<u8>,
    /// When the producer created it (unix ms); 0 means "now".
    pub born_ms: u64,
    /// Deliver no earlier than this many milliseconds from now (0: at once).
    pub delay_ms: u64,
    /// Makes it a half message of this producer group, delivered only when committed.
    pub transaction_group: Option<String>,
}

/// Where a sent message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendResult {
    /// Its id.
    pub id: u128,
    /// Its queue.
    pub queue_id: u32,
    /// Its offset in the queue (0 for a delayed message: assigned when it is due).
    pub queue_offset: u64,
    /// Whether it waits in the delay queue.
    pub delayed: bool,
    /// Whether it is a half message waiting for its transaction's decision.
    pub half: bool,
}

/// One delivery to acknowledge: where its message sits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// The message's topic.
    pub topic: String,
    /// Its queue.
    pub queue_id: u32,
    /// Its offset in the queue.
    pub queue_offset: u64,
}

/// What a consumer asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullRequest {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The member's name (unique within the group while it lives).
    pub member: String,
    /// Only messages with one of these tags (all if empty or `*`).
    pub tags: Vec<String>,
    /// At most this many messages.
    pub max: u32,
    /// The group's mode, used when the group is new (default clustering).
    pub mode: Option<GroupMode>,
    /// Where a new group starts (default earliest).
    pub start: Option<StartFrom>,
}

/// One queue's consumer progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueLag {
    /// The topic.
    pub topic: String,
    /// The queue.
    pub queue_id: u32,
    /// The broadcasting member the progress belongs to (empty for clustering).
    pub member: String,
    /// Every message below this offset is done.
    pub committed: u64,
    /// The queue's next offset.
    pub end: u64,
    /// Messages not yet done.
    pub lag: u64,
}

/// Identifies one cursor: (group, owner, topic, queue); owner is "" in clustering groups.
type CursorKey = (String, String, String, u32);

#[derive(Debug)]
struct GroupRuntime {
    meta: GroupMeta,
    members: Members,
    cursors: BTreeMap<(String, String, u32), Cursor>,
}

/// The message broker of one node.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    config: MqConfig,
    store: Store,
    meta: Metadata,
    clock: Arc<dyn Clock>,
    epoch_ms: u64,
    topics: RwLock<HashMap<String, TopicMeta>>,
    round_robin: AtomicU64,
    groups: Mutex<HashMap<String, GroupRuntime>>,
    saved: Mutex<HashMap<CursorKey, u64>>,
    offsets_path: PathBuf,
    offsets_dirty: AtomicBool,
    delays: Mutex<Delays>,
    halves: Mutex<Halves>,
    subscriptions: RwLock<HashMap<(String, String), Option<SubscriptionMeta>>>,
}

/// Delayed messages waiting: the wheel of delay-queue offsets, and the queue's progress.
struct Delays {
    wheel: TimerWheel<u64>,
    cursor: Cursor,
}

fn delay_key() -> CursorKey {
    (DELAY_TOPIC.into(), String::new(), DELAY_TOPIC.into(), 0)
}

#[derive(Serialize, Deserialize)]
struct OffsetsFile {
    offsets: Vec<(String, String, String, u32, u64)>,
}

impl Broker {
    /// Opens the broker's store in `dir` (recovering it) and loads saved offsets.
    /// `epoch_ms` is the wall time (unix ms) at which `clock` read zero.
    pub fn open(
        dir: PathBuf,
        config: MqConfig,
        core: Core,
        clock: Arc<dyn Clock>,
        epoch_ms: u64,
    ) -> MqResult<Broker> {
        let store = Store::open(StoreConfig {
            segment_bytes: config.segment_bytes,
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            retention: (config.retention_hours > 0)
                .then(|| Duration::from_secs(config.retention_hours * 3600)),
            retention_bytes: (config.retention_bytes > 0).then_some(config.retention_bytes),
            ..StoreConfig::new(dir.join("store"))
        })?;
        let offsets_path = dir.join("offsets.json");
        let saved = match std::fs::read(&offsets_path) {
            Ok(bytes) => {
                let file: OffsetsFile = serde_json::from_slice(&bytes)
                    .map_err(|e| MqError::Corrupt(format!("{}: {e}", offsets_path.display())))?;
                file.offsets
                    .into_iter()
                    .map(|(g, o, t, q, c)| ((g, o, t, q), c))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(MqError::io("reading offsets.json")(e)),
        };
        let now_ms = epoch_ms + clock.now().as_millis() as u64;
        let delays = Mutex::new(load_delays(
            &store,
            saved.get(&delay_key()).copied(),
            now_ms,
        )?);
        Ok(Broker {
            inner: Arc::new(Inner {
                delays,
                halves: Mutex::new(load_halves(&store, config.transaction_check_ms, now_ms)?),
                subscriptions: RwLock::new(HashMap::new()),
                config,
                store,
                meta: Metadata::new(core),
                clock,
                epoch_ms,
                topics: RwLock::new(HashMap::new()),
                round_robin: AtomicU64::new(0),
                groups: Mutex::new(HashMap::new()),
                saved: Mutex::new(saved),
                offsets_path,
                offsets_dirty: AtomicBool::new(false),
            }),
        })
    }

    /// The broker's settings.
    pub fn config(&self) -> &MqConfig {
        &self.inner.config
    }

    /// The message store (for lookups by key and id).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch_ms + self.inner.clock.now().as_millis() as u64
    }

    /// Creates a topic; fails with `TopicExists` if it exists with other settings.
    pub async fn create_topic(
        &self,
        name: &str,
        queues: u32,
        ordered: bool,
        flush: FlushPolicy,
    ) -> MqResult<TopicMeta> {
        validate_name("topic", name)?;
        if queues == 0 || queues > 1024 {
            return Err(MqError::InvalidField {
                field: "queues",
                rule: format!("must be 1-1024 (got {queues})"),
            });
        }
        let wanted = TopicMeta {
            name: name.to_string(),
            queues,
            ordered,
            flush,
        };
        let (stored, _) = self.inner.meta.create_topic(&wanted).await?;
        if stored != wanted {
            return Err(MqError::TopicExists {
                topic: name.to_string(),
            });
        }
        self.inner
            .topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), stored.clone());
        Ok(stored)
    }

    /// Every topic.
    pub async fn topics(&self) -> MqResult<Vec<TopicMeta>> {
        self.inner.meta.topics().await
    }

    /// Where `name`'s queues are: the topic's settings and the members whose brokers serve
    /// it. Every member's broker serves every queue of every topic from its own commitlog, so
    /// producers spread over the members and skip one that fails. A missing topic that a send
    /// would create is described as it would be created; nothing is created here.
    pub async fn route(&self, name: &str) -> MqResult<(TopicMeta, Vec<(u64, String)>)> {
        validate_consumed_topic(name)?;
        let topic = match self.topic(name).await? {
            Some(topic) => topic,
            None if self.inner.config.auto_create_topics => self.auto_created(name),
            None => {
                return Err(MqError::TopicNotFound {
                    topic: name.to_string(),
                })
            }
        };
        Ok((topic, self.inner.meta.brokers()))
    }

    /// This member's node id.
    pub fn node_id(&self) -> u64 {
        self.inner.meta.node_id()
    }

    /// The other members' brokers, by node id, each with a channel to it (`None` when its
    /// address is malformed).
    pub fn other_members(&self) -> Vec<(u64, Option<tonic::transport::Channel>)> {
        let me = self.node_id();
        self.inner
            .meta
            .brokers()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, address)| (id, self.inner.meta.peer_channel(&address)))
            .collect()
    }

    /// A topic's settings, from the cache or the core; `None` if it does not exist.
    pub async fn topic(&self, name: &str) -> MqResult<Option<TopicMeta>> {
        if let Some(t) = internal_topic(name) {
            return Ok(Some(t));
        }
        if let Some(t) = self.inner.topics.read().expect("topics lock").get(name) {
            return Ok(Some(t.clone()));
        }
        let found = self.inner.meta.topic(name).await?;
        if let Some(t) = &found {
            self.inner
                .topics
                .write()
                .expect("topics lock")
                .insert(name.to_string(), t.clone());
        }
        Ok(found)
    }

    /// The settings a topic gets when a send creates it.
    fn auto_created(&self, name: &str) -> TopicMeta {
        TopicMeta {
            name: name.to_string(),
            queues: self.inner.config.default_queues.max(1),
            ordered: false,
            flush: FlushPolicy::Sync,
        }
    }

    async fn topic_for_send(&self, name: &str) -> MqResult<TopicMeta> {
        if let Some(t) = self.topic(name).await? {
            return Ok(t);
        }
        if !self.inner.config.auto_create_topics {
            return Err(MqError::TopicNotFound {
                topic: name.to_string(),
            });
        }
        let (stored, _) = self
            .inner
            .meta
            .create_topic(&self.auto_created(name))
            .await?;
        self.inner
            .topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), stored.clone());
        Ok(stored)
    }

    /// Checks a message's fields other than its topic.
    fn validate_send(&self, req: &SendRequest) -> MqResult<()> {
        let config = &self.inner.config;
        if req.body.len() > config.max_body_bytes {
            return Err(MqError::BodyTooLarge {
                len: req.body.len(),
                max: config.max_body_bytes,
            });
        }
        if req.delay_ms > config.max_delay_ms {
            return Err(MqError::DelayTooLong {
                delay_ms: req.delay_ms,
                max_ms: config.max_delay_ms,
            });
        }
        if req.tag.len() > 127 || req.tag.contains('|') || req.tag == "*" {
            return Err(MqError::InvalidField {
                field: "tag",
                rule: "must be at most 127 bytes, without `|`, and not `*`".into(),
            });
        }
        if req.keys.len() > 32 || req.keys.iter().any(|k| k.is_empty() || k.len() > 255) {
            return Err(MqError::InvalidField {
                field: "keys",
                rule: "must be at most 32 keys of 1-255 bytes".into(),
            });
        }
        if req.properties.len() > 64
            || req
                .properties
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 255 || k.starts_with('%') || v.len() > 4096)
        {
            return Err(MqError::InvalidField {
                field: "properties",
                rule: "must be at most 64 entries, keys of 1-255 bytes not starting with `%`, values up to 4096 bytes"
                    .into(),
            });
        }
        Ok(())
    }

    /// The queue a message goes to: the explicit one, its sharding key's, or the next in
    /// round robin.
    fn choose_queue(&self, topic: &TopicMeta, req: &SendRequest) -> MqResult<u32> {
        Ok(match (req.queue_id, &req.sharding_key) {
            (Some(q), _) if q >= topic.queues => {
                return Err(MqError::QueueNotFound {
                    topic: topic.name.clone(),
                    queue_id: q,
                    queues: topic.queues,
                })
            }
            (Some(q), _) => q,
            (None, Some(key)) => (hash64(key.as_bytes()) % u64::from(topic.queues)) as u32,
            (None, None) => {
                (self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(topic.queues))
                    as u32
            }
        })
    }

    /// The stored form of a message for `topic`: its queue chosen, a new id, stamped `now`.
    fn to_stored(&self, topic: &TopicMeta, req: SendRequest, now: u64) -> MqResult<StoredMessage> {
        Ok(StoredMessage {
            topic: topic.name.clone(),
            queue_id: self.choose_queue(topic, &req)?,
            queue_offset: 0,
            id: rand::random(),
            tag: req.tag,
            keys: req.keys,
            properties: req.properties,
            body: req.body,
            born_ms: if req.born_ms == 0 { now } else { req.born_ms },
            stored_ms: now,
        })
    }

    /// Stores a message and returns once it is acknowledged under its topic's flush policy.
    pub async fn send(&self, mut req: SendRequest) -> MqResult<SendResult> {
        validate_name("topic", &req.topic)?;
        self.validate_send(&req)?;
        let topic = self.topic_for_send(&req.topic).await?;
        let (delay_ms, transaction_group) = (req.delay_ms, req.transaction_group.take());
        let now = self.now_ms();
        let mut message = self.to_stored(&topic, req, now)?;
        let (id, queue_id) = (message.id, message.queue_id);
        if let Some(group) = &transaction_group {
            validate_name("transaction_group", group)?;
            if delay_ms > 0 {
                return Err(MqError::InvalidField {
                    field: "delay_ms",
                    rule: "must be 0 for a transactional message".into(),
                });
            }
            let props = &mut message.properties;
            props.insert(PROP_TARGET_TOPIC.into(), topic.name.clone());
            props.insert(PROP_TARGET_QUEUE.into(), queue_id.to_string());
            props.insert(PROP_PRODUCER_GROUP.into(), group.clone());
            message.topic = HALF_TOPIC.into();
            message.queue_id = 0;
            let appended = self.inner.store.append(message, topic.flush.mode()).await?;
            let interval = self.inner.config.transaction_check_ms;
            let mut halves = self.inner.halves.lock().expect("halves lock");
            halves.add(id, appended.queue_offset, group, now, interval);
            return Ok(SendResult {
                id,
                queue_id,
                queue_offset: 0,
                delayed: false,
                half: true,
            });
        }
        if delay_ms == 0 {
            let appended = self.inner.store.append(message, topic.flush.mode()).await?;
            return Ok(SendResult {
                id,
                queue_id,
                queue_offset: appended.queue_offset,
                delayed: false,
                half: false,
            });
        }
        let mode = topic.flush.mode();
        self.enqueue_delayed(message, topic.name, queue_id, now + delay_ms, mode)
            .await?;
        Ok(SendResult {
            id,
            queue_id,
            queue_offset: 0,
            delayed: true,
            half: false,
        })
    }

    /// Stores a batch of messages of one topic with one group commit and returns once all are
    /// acknowledged under the topic's flush policy; results are in request order. Every
    /// message is checked first: one that breaks a rule refuses the batch, naming it, and
    /// nothing is stored. A message's own `topic` must be empty or `topic`; delays and
    /// transactions are not allowed in a batch.
    pub async fn send_batch(
        &self,
        topic: &str,
        messages: Vec<SendRequest>,
    ) -> MqResult<Vec<SendResult>> {
        validate_name("topic", topic)?;
        let config = &self.inner.config;
        if messages.is_empty() || messages.len() > config.max_batch as usize {
            return Err(MqError::InvalidField {
                field: "messages",
                rule: format!(
                    "must hold 1-{} messages (got {})",
                    config.max_batch,
                    messages.len()
                ),
            });
        }
        let in_batch = |index| {
            move |e| MqError::InBatch {
                list: "messages",
                index,
                source: Box::new(e),
            }
        };
        for (index, m) in messages.iter().enumerate() {
            self.validate_batch_message(topic, m)
                .map_err(in_batch(index))?;
        }
        let total: usize = messages.iter().map(|m| m.body.len()).sum();
        if total > config.max_body_bytes {
            return Err(MqError::InvalidField {
                field: "messages",
                rule: format!(
                    "bodies must total at most {} bytes (got {total})",
                    config.max_body_bytes
                ),
            });
        }
        let topic = self.topic_for_send(topic).await?;
        let now = self.now_ms();
        let stored = messages
            .into_iter()
            .enumerate()
            .map(|(index, m)| self.to_stored(&topic, m, now).map_err(in_batch(index)))
            .collect::<MqResult<Vec<_>>>()?;
        let placed: Vec<(u128, u32)> = stored.iter().map(|m| (m.id, m.queue_id)).collect();
        let appended = self
            .inner
            .store
            .append_batch(stored, topic.flush.mode())
            .await?;
        Ok(placed
            .into_iter()
            .zip(appended)
            .map(|((id, queue_id), appended)| SendResult {
                id,
                queue_id,
                queue_offset: appended.queue_offset,
                delayed: false,
                half: false,
            })
            .collect())
    }

    /// Checks one message of a batch for `topic`.
    fn validate_batch_message(&self, topic: &str, req: &SendRequest) -> MqResult<()> {
        if !req.topic.is_empty() && req.topic != topic {
            return Err(MqError::InvalidField {
                field: "topic",
                rule: format!(
                    "must be empty or the batch's topic `{topic}` (got {:?})",
                    req.topic
                ),
            });
        }
        if req.delay_ms > 0 {
            return Err(MqError::InvalidField {
                field: "delay_ms",
                rule: "must be 0 in a batch (send delayed messages one by one)".into(),
            });
        }
        if req.transaction_group.is_some() {
            return Err(MqError::InvalidField {
                field: "transaction_group",
                rule: "must be empty in a batch (send half messages one by one)".into(),
            });
        }
        self.validate_send(req)
    }

    /// Commits (delivers) or rolls back (discards) the half message `id`.
    pub async fn end_transaction(&self, id: u128, commit: bool) -> MqResult<()> {
        let half = self
            .inner
            .halves
            .lock()
            .expect("halves lock")
            .decide(id)
            .ok_or(MqError::TransactionNotFound { id: format_id(id) })?;
        let result = self.apply_decision(id, half.offset, commit).await;
        if result.is_err() {
            // Nothing was recorded: the half waits for its decision again.
            let now = self.now_ms();
            let interval = self.inner.config.transaction_check_ms;
            let mut halves = self.inner.halves.lock().expect("halves lock");
            halves.add(id, half.offset, &half.producer_group, now, interval);
        }
        result
    }

    /// Delivers a committed half (then records the decision), or records a rollback.
    async fn apply_decision(&self, id: u128, offset: u64, commit: bool) -> MqResult<()> {
        if commit {
            let read = self.inner.store.read_queue(HALF_TOPIC, 0, offset, 1, &[])?;
            let message = read
                .messages
                .into_iter()
                .find(|m| m.queue_offset == offset)
                .ok_or_else(|| MqError::Corrupt(format!("half message at {offset} is gone")))?;
            self.release_to_target(message, PROP_PRODUCER_GROUP).await?;
        }
        let record = StoredMessage {
            topic: HALF_OP_TOPIC.into(),
            queue_id: 0,
            queue_offset: 0,
            id,
            tag: if commit { "commit" } else { "rollback" }.into(),
            keys: Vec::new(),
            properties: BTreeMap::new(),
            body: Vec::new(),
            born_ms: self.now_ms(),
            stored_ms: self.now_ms(),
        };
        self.inner.store.append(record, FlushMode::Sync).await?;
        Ok(())
    }

    /// Half messages of `producer_group` whose transaction the producer should report
    /// (check-back); halves asked about too often are rolled back here.
    pub async fn transaction_checks(
        &self,
        producer_group: &str,
        max: usize,
    ) -> MqResult<Vec<StoredMessage>> {
        validate_name("producer_group", producer_group)?;
        let now = self.now_ms();
        let config = &self.inner.config;
        let (due, abandoned) = {
            let mut halves = self.inner.halves.lock().expect("halves lock");
            let abandoned = halves.abandoned(now, config.transaction_max_checks);
            (
                halves.due_checks(producer_group, now, config.transaction_check_ms, max),
                abandoned,
            )
        };
        for id in abandoned {
            tracing::warn!(id = %format_id(id), "mq: no decision after every check-back; rolling back");
            self.apply_decision(id, 0, false).await?;
        }
        let mut out = Vec::new();
        for (id, offset) in due {
            let read = self.inner.store.read_queue(HALF_TOPIC, 0, offset, 1, &[])?;
            if let Some(mut m) = read
                .messages
                .into_iter()
                .find(|m| m.queue_offset == offset && m.id == id)
            {
                m.topic = m
                    .properties
                    .get(PROP_TARGET_TOPIC)
                    .cloned()
                    .unwrap_or_default();
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Appends a held message (delayed or half) to the queue its properties name, without
    /// the broker's own properties (`extra` is the holder's).
    async fn release_to_target(&self, mut message: StoredMessage, extra: &str) -> MqResult<()> {
        let target = message
            .properties
            .remove(PROP_TARGET_TOPIC)
            .unwrap_or_default();
        let queue = message
            .properties
            .remove(PROP_TARGET_QUEUE)
            .and_then(|q| q.parse().ok())
            .unwrap_or(0);
        message.properties.remove(extra);
        let mode = self
            .topic(&target)
            .await?
            .map_or(FlushPolicy::Sync, |t| t.flush)
            .mode();
        message.topic = target;
        message.queue_id = queue;
        message.stored_ms = self.now_ms();
        self.inner.store.append(message, mode).await?;
        Ok(())
    }

    /// Half messages waiting for a decision.
    pub fn pending_transactions(&self) -> usize {
        self.inner.halves.lock().expect("halves lock").len()
    }

    /// Moves every delayed message now due into its target queue; returns how many.
    pub async fn deliver_due_delays(&self) -> MqResult<usize> {
        let due = self
            .inner
            .delays
            .lock()
            .expect("delays lock")
            .wheel
            .advance(self.now_ms());
        for offset in &due {
            let read = self
                .inner
                .store
                .read_queue(DELAY_TOPIC, 0, *offset, 1, &[])?;
            if let Some(message) = read
                .messages
                .into_iter()
                .find(|m| m.queue_offset == *offset)
            {
                self.release_to_target(message, PROP_DELIVER_AT).await?;
            }
            let mut delays = self.inner.delays.lock().expect("delays lock");
            let _ = delays.cursor.ack(*offset, DELAY_MEMBER, Duration::ZERO);
            self.inner.offsets_dirty.store(true, Ordering::Release);
        }
        Ok(due.len())
    }

    /// Delayed messages not yet due.
    pub fn pending_delays(&self) -> usize {
        self.inner.delays.lock().expect("delays lock").wheel.len()
    }

    async fn group_meta(&self, req: &PullRequest) -> MqResult<GroupMeta> {
        let cached = self
            .inner
            .groups
            .lock()
            .expect("groups lock")
            .get(&req.group)
            .map(|g| g.meta.clone());
        let stored = match cached {
            Some(meta) => meta,
            None => {
                let wanted = GroupMeta {
                    name: req.group.clone(),
                    mode: req.mode.unwrap_or(GroupMode::Clustering),
                    start: req.start.unwrap_or_default(),
                };
                self.inner.meta.ensure_group(&wanted).await?
            }
        };
        if req.mode.is_some_and(|m| m != stored.mode) {
            return Err(MqError::InvalidField {
                field: "mode",
                rule: format!("must match the group's mode {:?}", stored.mode),
            });
        }
        Ok(stored)
    }

    /// Expires silent members and their deliveries; returns the group's runtime.
    fn refresh<'a>(
        &self,
        groups: &'a mut HashMap<String, GroupRuntime>,
        meta: &GroupMeta,
    ) -> &'a mut GroupRuntime {
        let now = self.inner.clock.now();
        let runtime = groups
            .entry(meta.name.clone())
            .or_insert_with(|| GroupRuntime {
                meta: meta.clone(),
                members: Members::default(),
                cursors: BTreeMap::new(),
            });
        for gone in runtime
            .members
            .expire(now, self.inner.config.session_timeout())
        {
            tracing::info!(group = %meta.name, member = %gone, "mq: member session expired; rebalancing");
            for cursor in runtime.cursors.values_mut() {
                cursor.release(&gone);
            }
        }
        for cursor in runtime.cursors.values_mut() {
            cursor.expire(now);
        }
        runtime
    }

    /// Pulls messages for a member (joining the group if needed) without waiting.
    pub async fn pull(&self, req: &PullRequest) -> MqResult<Vec<StoredMessage>> {
        validate_name("group", &req.group)?;
        validate_consumed_topic(&req.topic)?;
        if req.member.is_empty() || req.member.len() > 255 {
            return Err(MqError::InvalidField {
                field: "member",
                rule: "must be 1-255 bytes".into(),
            });
        }
        let topic = self
            .topic(&req.topic)
            .await?
            .ok_or_else(|| MqError::TopicNotFound {
                topic: req.topic.clone(),
            })?;
        let meta = self.group_meta(req).await?;
        let backlog = self.subscription(&meta.name, &topic.name).await?;
        let max = (req.max.max(1)).min(self.inner.config.max_pull) as usize;
        let tags: Vec<String> = req
            .tags
            .iter()
            .filter(|t| !t.is_empty() && t.as_str() != "*")
            .cloned()
            .collect();
        let now = self.inner.clock.now();
        let deadline = now + self.inner.config.ack_timeout();

        let taken = {
            let mut groups = self.inner.groups.lock().expect("groups lock");
            let runtime = self.refresh(&mut groups, &meta);
            if runtime.members.heartbeat(&req.member, now) {
                tracing::info!(group = %meta.name, member = %req.member, "mq: member joined; rebalancing");
            }
            let owner = match meta.mode {
                GroupMode::Clustering => String::new(),
                GroupMode::Broadcasting => req.member.clone(),
            };
            let mut taken = Taken::default();
            let take = Take {
                group: &meta,
                owner: &owner,
                member: &req.member,
                max,
                deadline,
                backlog: backlog
                    .filter(|s| s.max_backlog > 0)
                    .map(|s| (s.max_backlog, s.overflow)),
            };
            self.take_from(runtime, &take, &topic, &tags, &mut taken)?;
            let retry_topic = format!("{RETRY_PREFIX}{}", meta.name);
            if taken.out.len() < max
                && topic.name != retry_topic
                && self.inner.store.queue_bounds(&retry_topic, 0)?.1 > 0
            {
                let retry = internal_topic(&retry_topic).expect("a retry topic name");
                let take = Take {
                    backlog: None,
                    ..take
                };
                self.take_from(runtime, &take, &retry, &tags, &mut taken)?;
            }
            taken
        };
        self.inner.offsets_dirty.store(true, Ordering::Release);
        if taken.shed > 0 {
            tracing::warn!(group = %meta.name, topic = %topic.name, shed = taken.shed, "mq: backlog over its maximum; oldest messages shed");
        }
        crate::metrics::count_dead_lettered(&meta.name, taken.dead_letters.len() as u64);
        for mut message in taken.dead_letters {
            message
                .properties
                .insert(PROP_ORIGIN_TOPIC.into(), message.topic.clone());
            message.topic = format!("{DLQ_PREFIX}{}", meta.name);
            message.queue_id = 0;
            self.inner.store.append(message, FlushMode::Sync).await?;
        }
        Ok(taken.out)
    }

    /// The declared backlog limit of `group` on `topic`, if one was declared.
    pub async fn subscription(
        &self,
        group: &str,
        topic: &str,
    ) -> MqResult<Option<SubscriptionMeta>> {
        let key = (group.to_string(), topic.to_string());
        if let Some(found) = self
            .inner
            .subscriptions
            .read()
            .expect("subscriptions lock")
            .get(&key)
        {
            return Ok(found.clone());
        }
        let found = self.inner.meta.subscription(group, topic).await?;
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .insert(key, found.clone());
        Ok(found)
    }

    /// Creates a consumer group with `mode` and `start` unless it exists; a group that exists
    /// with another mode or start is refused (both are fixed once the group exists).
    pub async fn declare_group(
        &self,
        name: &str,
        mode: GroupMode,
        start: StartFrom,
    ) -> MqResult<GroupMeta> {
        validate_name("group", name)?;
        let wanted = GroupMeta {
            name: name.to_string(),
            mode,
            start,
        };
        let stored = self.inner.meta.ensure_group(&wanted).await?;
        if stored.mode != mode {
            return Err(MqError::InvalidField {
                field: "mode",
                rule: format!("cannot change: group `{name}` is {:?}", stored.mode),
            });
        }
        if stored.start != start {
            return Err(MqError::InvalidField {
                field: "start",
                rule: format!(
                    "cannot change: group `{name}` started from {:?}",
                    stored.start
                ),
            });
        }
        Ok(stored)
    }

    /// Declares a subscription's maximum backlog per queue and what happens past it.
    pub async fn declare_subscription(
        &self,
        group: &str,
        topic: &str,
        max_backlog: u64,
        overflow: Overflow,
    ) -> MqResult<SubscriptionMeta> {
        validate_name("group", group)?;
        validate_name("topic", topic)?;
        let sub = SubscriptionMeta {
            group: group.into(),
            topic: topic.into(),
            max_backlog,
            overflow,
        };
        self.inner.meta.put_subscription(&sub).await?;
        self.inner
            .subscriptions
            .write()
            .expect("subscriptions lock")
            .insert((group.into(), topic.into()), Some(sub.clone()));
        Ok(sub)
    }

    /// Delivers from `topic`'s queues held by the member into `out`, up to `take.max`.
    fn take_from(
        &self,
        runtime: &mut GroupRuntime,
        take: &Take<'_>,
        topic: &TopicMeta,
        tags: &[String],
        taken: &mut Taken,
    ) -> MqResult<()> {
        let out = &mut taken.out;
        let (meta, owner, max, deadline) = (take.group, take.owner, take.max, take.deadline);
        let store = &self.inner.store;
        let queues = assigned_queues(
            meta.mode,
            &runtime.members.names(),
            take.member,
            topic.queues,
        );
        let share = max.saturating_sub(out.len()).div_ceil(queues.len().max(1));
        for queue in queues {
            if out.len() >= max {
                break;
            }
            let (first, end) = store.queue_bounds(&topic.name, queue)?;
            let key = (topic.name.clone(), owner.to_string(), queue);
            let cursor = match runtime.cursors.get_mut(&key) {
                Some(c) => c,
                None => {
                    let saved = self
                        .inner
                        .saved
                        .lock()
                        .expect("saved lock")
                        .get(&(
                            meta.name.clone(),
                            owner.to_string(),
                            topic.name.clone(),
                            queue,
                        ))
                        .copied();
                    let start = saved.unwrap_or(match meta.start {
                        StartFrom::Earliest => first,
                        StartFrom::Latest => end,
                    });
                    runtime.cursors.entry(key).or_insert(Cursor::new(start))
                }
            };
            cursor.skip_to(first);
            if let Some((limit, overflow)) = take.backlog {
                // Shed at most a bounded slice per pull; later pulls shed the rest.
                let to = end.saturating_sub(limit).min(cursor.next + SHED_PER_PULL);
                for offset in cursor.next..to {
                    if overflow == Overflow::DeadLetter {
                        let read = store.read_queue(&topic.name, queue, offset, 1, &[])?;
                        taken.dead_letters.extend(
                            read.messages
                                .into_iter()
                                .filter(|m| m.queue_offset == offset),
                        );
                    }
                    cursor.skip(offset);
                    taken.shed += 1;
                }
            }
            let room = cursor.room(topic.ordered, share.min(max - out.len()));
            if room == 0 {
                continue;
            }
            let mut taken = 0;
            for offset in cursor.redeliveries(room) {
                match store
                    .read_queue(&topic.name, queue, offset, 1, &[])?
                    .messages
                    .pop()
                {
                    Some(m) if m.queue_offset == offset => {
                        cursor.deliver(offset, take.member, deadline);
                        out.push(m);
                    }
                    _ => cursor.skip(offset),
                }
                taken += 1;
            }
            if taken >= room || (topic.ordered && cursor.has_redeliveries()) {
                continue;
            }
            let from = cursor.next;
            let read = store.read_queue(&topic.name, queue, from, room - taken, tags)?;
            let delivered: Vec<u64> = read.messages.iter().map(|m| m.queue_offset).collect();
            for offset in from..read.next_offset {
                if delivered.contains(&offset) {
                    cursor.deliver(offset, take.member, deadline);
                } else {
                    cursor.skip(offset);
                }
            }
            out.extend(read.messages);
        }
        Ok(())
    }

    /// Pulls, waiting up to `wait` for messages when there are none (long poll).
    pub async fn pull_wait(
        &self,
        req: &PullRequest,
        wait: Duration,
    ) -> MqResult<Vec<StoredMessage>> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            // Subscribed before the pull, so that a message stored after it ends the wait.
            let mut signals = self
                .held_queue_signals(req)
                .unwrap_or_else(|| vec![self.inner.store.subscribe()]);
            let got = self.pull(req).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(got);
            }
            // Wake on new messages, or after a short while for redeliveries and rebalances.
            let nap = give_up.min(tokio::time::Instant::now() + Duration::from_millis(500));
            if signals.is_empty() {
                tokio::time::sleep_until(nap).await;
                continue;
            }
            let changed = signals.iter_mut().map(|s| Box::pin(s.changed()));
            let _ = tokio::time::timeout_at(nap, futures::future::select_all(changed)).await;
        }
    }

    /// Signals of the queues `req`'s member holds now, so its long poll wakes for them
    /// alone (not for every message of every consumer); `None` while the topic, group or
    /// member is not known yet (the caller then watches the whole store).
    fn held_queue_signals(
        &self,
        req: &PullRequest,
    ) -> Option<Vec<tokio::sync::watch::Receiver<u64>>> {
        let topic = match internal_topic(&req.topic) {
            Some(topic) => topic,
            None => self
                .inner
                .topics
                .read()
                .expect("topics lock")
                .get(&req.topic)?
                .clone(),
        };
        let groups = self.inner.groups.lock().expect("groups lock");
        let runtime = groups.get(&req.group)?;
        let members = runtime.members.names();
        if !members.contains(&req.member) {
            return None;
        }
        let mut signals = Vec::new();
        let mut hold = |topic: &TopicMeta| {
            let queues = assigned_queues(runtime.meta.mode, &members, &req.member, topic.queues);
            for queue in queues {
                signals.push(self.inner.store.subscribe_queue(&topic.name, queue));
            }
        };
        hold(&topic);
        // A pull also takes the group's retries (see `pull`).
        let retry_topic = format!("{RETRY_PREFIX}{}", runtime.meta.name);
        if topic.name != retry_topic {
            hold(&internal_topic(&retry_topic)?);
        }
        Some(signals)
    }

    /// Runs `op` on `group`'s runtime (after expiring silent members) with the cursor owner
    /// `member` uses and the current time, under the groups lock.
    fn with_group<T>(
        &self,
        group: &str,
        member: &str,
        op: impl FnOnce(&mut GroupRuntime, String, Duration) -> MqResult<T>,
    ) -> MqResult<T> {
        let mut groups = self.inner.groups.lock().expect("groups lock");
        let meta =
            groups
                .get(group)
                .map(|g| g.meta.clone())
                .ok_or_else(|| MqError::GroupNotFound {
                    group: group.to_string(),
                })?;
        let runtime = self.refresh(&mut groups, &meta);
        let owner = match meta.mode {
            GroupMode::Clustering => String::new(),
            GroupMode::Broadcasting => member.to_string(),
        };
        let result = op(runtime, owner, self.inner.clock.now())?;
        self.inner.offsets_dirty.store(true, Ordering::Release);
        Ok(result)
    }

    fn with_cursor<T>(
        &self,
        group: &str,
        member: &str,
        topic: &TopicMeta,
        queue_id: u32,
        offset: u64,
        op: impl FnOnce(&mut Cursor, Duration) -> Result<T, crate::group::NotInflight>,
    ) -> MqResult<T> {
        self.with_group(group, member, |runtime, owner, now| {
            let unknown = || unknown_offset(&topic.name, queue_id, offset);
            let cursor = runtime
                .cursors
                .get_mut(&(topic.name.clone(), owner, queue_id))
                .ok_or_else(unknown)?;
            op(cursor, now).map_err(|_| unknown())
        })
    }

    async fn known_topic(&self, name: &str, queue_id: u32) -> MqResult<TopicMeta> {
        let topic = self
            .topic(name)
            .await?
            .ok_or_else(|| MqError::TopicNotFound {
                topic: name.to_string(),
            })?;
        if queue_id >= topic.queues {
            return Err(MqError::QueueNotFound {
                topic: topic.name,
                queue_id,
                queues: topic.queues,
            });
        }
        Ok(topic)
    }

    /// Acknowledges a delivery: the member is done with it.
    pub async fn ack(
        &self,
        group: &str,
        member: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> MqResult<()> {
        let topic = self.known_topic(topic, queue_id).await?;
        self.with_cursor(group, member, &topic, queue_id, offset, |c, now| {
            c.ack(offset, member, now)
        })
    }

    /// Acknowledges many deliveries to `member` at once. Every one must be an unacked
    /// delivery to the member: if one is not, the batch is refused, naming it, and none is
    /// acknowledged.
    pub async fn ack_batch(
        &self,
        group: &str,
        member: &str,
        deliveries: &[Delivery],
    ) -> MqResult<()> {
        self.ack_listed(group, member, deliveries, "deliveries")
            .await
    }

    /// [`Broker::ack_batch`] of deliveries sent in the request field `list` (named in errors).
    pub async fn ack_listed(
        &self,
        group: &str,
        member: &str,
        deliveries: &[Delivery],
        list: &'static str,
    ) -> MqResult<()> {
        let max = self.inner.config.max_batch as usize;
        if deliveries.len() > max {
            return Err(MqError::InvalidField {
                field: list,
                rule: format!("must hold at most {max} (got {})", deliveries.len()),
            });
        }
        let in_batch = |index, e| MqError::InBatch {
            list,
            index,
            source: Box::new(e),
        };
        for (index, d) in deliveries.iter().enumerate() {
            self.known_topic(&d.topic, d.queue_id)
                .await
                .map_err(|e| in_batch(index, e))?;
        }
        self.with_group(group, member, |runtime, owner, now| {
            let mut seen = std::collections::HashSet::new();
            for (index, d) in deliveries.iter().enumerate() {
                let unknown =
                    || in_batch(index, unknown_offset(&d.topic, d.queue_id, d.queue_offset));
                if !seen.insert(d) {
                    return Err(unknown());
                }
                runtime
                    .cursors
                    .get(&(d.topic.clone(), owner.clone(), d.queue_id))
                    .ok_or_else(unknown)?
                    .check(d.queue_offset, member, now)
                    .map_err(|_| unknown())?;
            }
            for d in deliveries {
                runtime
                    .cursors
                    .get_mut(&(d.topic.clone(), owner.clone(), d.queue_id))
                    .expect("the cursor was checked under this lock")
                    .ack(d.queue_offset, member, now)
                    .expect("the delivery was checked under this lock");
            }
            Ok(())
        })
    }

    /// Negatively acknowledges a delivery: it will be delivered again.
    pub async fn nack(
        &self,
        group: &str,
        member: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> MqResult<()> {
        let topic = self.known_topic(topic, queue_id).await?;
        if topic.ordered {
            return self.with_cursor(group, member, &topic, queue_id, offset, |c, now| {
                c.nack(offset, member, now, true)
            });
        }
        self.with_cursor(group, member, &topic, queue_id, offset, |c, now| {
            c.check(offset, member, now)
        })?;
        let read = self
            .inner
            .store
            .read_queue(&topic.name, queue_id, offset, 1, &[])?;
        if let Some(message) = read.messages.into_iter().find(|m| m.queue_offset == offset) {
            self.send_to_retry(group, message).await?;
        }
        self.with_cursor(group, member, &topic, queue_id, offset, |c, now| {
            c.ack(offset, member, now)
        })
    }

    /// Re-sends a nacked message to the group's retry topic after its backoff, or to its
    /// dead-letter topic once it has been retried `max_retries` times.
    async fn send_to_retry(&self, group: &str, mut message: StoredMessage) -> MqResult<()> {
        let retries: u32 = message
            .properties
            .get(PROP_RETRIES)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
            + 1;
        if !message.properties.contains_key(PROP_ORIGIN_TOPIC) {
            message
                .properties
                .insert(PROP_ORIGIN_TOPIC.into(), message.topic.clone());
        }
        message
            .properties
            .insert(PROP_RETRIES.into(), retries.to_string());
        message.stored_ms = self.now_ms();
        message.queue_id = 0;
        let config = &self.inner.config;
        if retries > config.max_retries {
            tracing::info!(group, id = %format_id(message.id), retries, "mq: retries exhausted; to the dead-letter topic");
            message.topic = format!("{DLQ_PREFIX}{group}");
            self.inner.store.append(message, FlushMode::Sync).await?;
            crate::metrics::count_dead_lettered(group, 1);
            return Ok(());
        }
        crate::metrics::count_retry(group);
        let level = (retries as usize - 1).min(config.retry_backoff_ms.len().saturating_sub(1));
        let backoff = config.retry_backoff_ms.get(level).copied().unwrap_or(1_000);
        self.enqueue_delayed(
            message,
            format!("{RETRY_PREFIX}{group}"),
            0,
            self.now_ms() + backoff,
            FlushMode::Sync,
        )
        .await
    }

    /// Stores `message` in the delay queue, to be appended to `target`/`queue` at `deliver_at`.
    async fn enqueue_delayed(
        &self,
        mut message: StoredMessage,
        target: String,
        queue: u32,
        deliver_at: u64,
        mode: FlushMode,
    ) -> MqResult<()> {
        message.properties.insert(PROP_TARGET_TOPIC.into(), target);
        message
            .properties
            .insert(PROP_TARGET_QUEUE.into(), queue.to_string());
        message
            .properties
            .insert(PROP_DELIVER_AT.into(), deliver_at.to_string());
        message.topic = DELAY_TOPIC.into();
        message.queue_id = 0;
        let appended = self.inner.store.append(message, mode).await?;
        let mut delays = self.inner.delays.lock().expect("delays lock");
        delays.wheel.insert(deliver_at, appended.queue_offset);
        delays
            .cursor
            .deliver(appended.queue_offset, DELAY_MEMBER, Duration::MAX);
        Ok(())
    }

    /// Removes a member at once: its queues go to the others, its deliveries come back.
    pub fn leave(&self, group: &str, member: &str) -> MqResult<()> {
        let mut groups = self.inner.groups.lock().expect("groups lock");
        let runtime = groups
            .get_mut(group)
            .ok_or_else(|| MqError::GroupNotFound {
                group: group.to_string(),
            })?;
        if !runtime.members.leave(member) {
            return Err(MqError::MemberNotFound {
                group: group.to_string(),
                member: member.to_string(),
            });
        }
        for cursor in runtime.cursors.values_mut() {
            cursor.release(member);
        }
        Ok(())
    }

    /// The group's progress on every queue it has consumed from.
    pub async fn lag(&self, group: &str) -> MqResult<Vec<QueueLag>> {
        validate_name("group", group)?;
        let known = self
            .inner
            .groups
            .lock()
            .expect("groups lock")
            .contains_key(group);
        if !known && self.inner.meta.group(group).await?.is_none() {
            return Err(MqError::GroupNotFound {
                group: group.to_string(),
            });
        }
        let mut out = Vec::new();
        for ((_, topic, member, queue_id), committed) in self.committed_offsets(Some(group)) {
            let (first, end) = self.inner.store.queue_bounds(&topic, queue_id)?;
            let committed = committed.max(first);
            out.push(QueueLag {
                topic,
                queue_id,
                member,
                committed,
                end,
                lag: end.saturating_sub(committed),
            });
        }
        Ok(out)
    }

    /// The committed offset of every cursor of `group` (of every group with `None`), keyed
    /// by (group, topic, owner, queue): saved offsets overlaid by the live cursors.
    fn committed_offsets(
        &self,
        group: Option<&str>,
    ) -> BTreeMap<(String, String, String, u32), u64> {
        let wanted = |g: &str| group.is_none_or(|w| w == g) && g != DELAY_TOPIC;
        let mut committed = BTreeMap::new();
        for ((g, owner, topic, queue), c) in self.inner.saved.lock().expect("saved lock").iter() {
            if wanted(g) {
                committed.insert((g.clone(), topic.clone(), owner.clone(), *queue), *c);
            }
        }
        for (g, runtime) in self.inner.groups.lock().expect("groups lock").iter() {
            if wanted(g) {
                for ((topic, owner, queue), cursor) in &runtime.cursors {
                    let key = (g.clone(), topic.clone(), owner.clone(), *queue);
                    committed.insert(key, cursor.committed);
                }
            }
        }
        committed
    }

    /// Every group's backlog per cursor as (group, topic, owner, queue, lag), for metrics;
    /// queues whose bounds cannot be read are left out.
    pub(crate) fn lag_snapshot(&self) -> Vec<(String, String, String, u32, u64)> {
        let mut out = Vec::new();
        for ((group, topic, owner, queue), committed) in self.committed_offsets(None) {
            if let Ok((first, end)) = self.inner.store.queue_bounds(&topic, queue) {
                out.push((
                    group,
                    topic,
                    owner,
                    queue,
                    end.saturating_sub(committed.max(first)),
                ));
            }
        }
        out
    }

    /// Delayed messages (and retries waiting out their backoff) not yet due.
    pub(crate) fn delayed_pending(&self) -> usize {
        self.inner.delays.lock().expect("delays lock").wheel.len()
    }

    /// Every group.
    pub async fn groups(&self) -> MqResult<Vec<GroupMeta>> {
        self.inner.meta.groups().await
    }

    /// Writes every cursor's committed offset to `offsets.json` (tmp, fsync, rename).
    pub fn save_offsets(&self) -> MqResult<()> {
        if !self.inner.offsets_dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut saved = self.inner.saved.lock().expect("saved lock");
        for (group, runtime) in self.inner.groups.lock().expect("groups lock").iter() {
            for ((topic, owner, queue), cursor) in &runtime.cursors {
                saved.insert(
                    (group.clone(), owner.clone(), topic.clone(), *queue),
                    cursor.committed,
                );
            }
        }
        saved.insert(
            delay_key(),
            self.inner
                .delays
                .lock()
                .expect("delays lock")
                .cursor
                .committed,
        );
        let file = OffsetsFile {
            offsets: saved
                .iter()
                .map(|((g, o, t, q), c)| (g.clone(), o.clone(), t.clone(), *q, *c))
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).expect("offsets serialize");
        let tmp = self.inner.offsets_path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.inner.offsets_path)?;
            if let Some(dir) = self.inner.offsets_path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(MqError::io("writing offsets.json"))
    }

    /// Applies retention now.
    pub async fn apply_retention(&self) -> MqResult<usize> {
        self.inner.store.retain(self.now_ms()).await
    }

    /// Runs the broker's periodic work (offset saving, retention) until `stop` resolves.
    pub async fn run_maintenance(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(DELAY_TICK_MS));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            ticks += 1;
            if let Err(e) = self.deliver_due_delays().await {
                tracing::error!(error = %e, "mq: delivering delayed messages failed");
            }
            if ticks.is_multiple_of(10) {
                if let Err(e) = self.save_offsets() {
                    tracing::error!(error = %e, "mq: saving offsets failed");
                }
            }
            if ticks.is_multiple_of(600) {
                if let Err(e) = self.apply_retention().await {
                    tracing::error!(error = %e, "mq: retention failed");
                }
            }
        }
    }

    /// Saves offsets and stops the store (flushing and checkpointing it).
    pub fn close(&self) {
        self.inner.offsets_dirty.store(true, Ordering::Release);
        if let Err(e) = self.save_offsets() {
            tracing::error!(error = %e, "mq: saving offsets on close failed");
        }
        self.inner.store.close();
    }
}

/// What one pull is for: the group, the cursor owner, the member, and its limits.
struct Take<'a> {
    group: &'a GroupMeta,
    owner: &'a str,
    member: &'a str,
    max: usize,
    deadline: Duration,
    /// The subscription's maximum backlog per queue and its overflow policy.
    backlog: Option<(u64, Overflow)>,
}

/// What one pull produced: deliveries, and messages shed by a backlog limit.
#[derive(Default)]
struct Taken {
    out: Vec<StoredMessage>,
    dead_letters: Vec<StoredMessage>,
    shed: u64,
}

/// Most messages one queue sheds per pull when over its backlog limit.
const SHED_PER_PULL: u64 = 4096;

/// Rebuilds the undecided half messages: every retained half without a recorded decision.
fn load_halves(store: &Store, interval_ms: u64, now_ms: u64) -> MqResult<Halves> {
    let mut decided = std::collections::HashSet::new();
    scan_queue(store, HALF_OP_TOPIC, |m| {
        decided.insert(m.id);
    })?;
    let mut halves = Halves::default();
    scan_queue(store, HALF_TOPIC, |m| {
        if !decided.contains(&m.id) {
            let group = m
                .properties
                .get(PROP_PRODUCER_GROUP)
                .cloned()
                .unwrap_or_default();
            halves.add(
                m.id,
                m.queue_offset,
                &group,
                m.stored_ms.min(now_ms),
                interval_ms,
            );
        }
    })?;
    Ok(halves)
}

/// Visits every retained message of queue 0 of an internal topic.
fn scan_queue(store: &Store, topic: &str, mut visit: impl FnMut(&StoredMessage)) -> MqResult<()> {
    let (mut at, end) = store.queue_bounds(topic, 0)?;
    while at < end {
        let read = store.read_queue(topic, 0, at, 256, &[])?;
        read.messages.iter().for_each(&mut visit);
        if read.next_offset <= at {
            break;
        }
        at = read.next_offset;
    }
    Ok(())
}

/// Rebuilds the delay wheel from the delay queue past its committed offset.
fn load_delays(store: &Store, committed: Option<u64>, now_ms: u64) -> MqResult<Delays> {
    let (first, end) = store.queue_bounds(DELAY_TOPIC, 0)?;
    let mut delays = Delays {
        wheel: TimerWheel::new(DELAY_TICK_MS, DELAY_SLOTS, now_ms),
        cursor: Cursor::new(committed.unwrap_or(first).max(first)),
    };
    let mut at = delays.cursor.committed;
    while at < end {
        let read = store.read_queue(DELAY_TOPIC, 0, at, 256, &[])?;
        for m in &read.messages {
            let deliver_at = m
                .properties
                .get(PROP_DELIVER_AT)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0);
            delays.wheel.insert(deliver_at, m.queue_offset);
            delays
                .cursor
                .deliver(m.queue_offset, DELAY_MEMBER, Duration::MAX);
        }
        if read.next_offset <= at {
            break;
        }
        at = read.next_offset;
    }
    Ok(delays)
}

/// The refusal of an ack or nack of an offset that is not an unacked delivery.
fn unknown_offset(topic: &str, queue_id: u32, offset: u64) -> MqError {
    MqError::UnknownOffset {
        topic: topic.to_string(),
        queue_id,
        offset,
    }
}

/// A message id as text: 32 lowercase hex digits.
pub fn format_id(id: u128) -> String {
    format!("{id:032x}")
}
