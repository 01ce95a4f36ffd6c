//! Topic and group metadata, kept in the consistent core under `/cella/mq/`:
//! `/cella/mq/topics/<topic>` and `/cella/mq/groups/<group>`, each a JSON document. The core
//! replicates them, so every node's broker sees the same topics and groups; messages and
//! consumer offsets stay in each broker's own store.

use bytes::Bytes;
use cella_core::Core;
use cella_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as RequestOpKind;
use serde::{Deserialize, Serialize};

use crate::error::{MqError, MqResult};
use crate::group::GroupMode;
use crate::storage::FlushMode;

const TOPICS: &str = "/cella/mq/topics/";
const GROUPS: &str = "/cella/mq/groups/";
const SUBSCRIPTIONS: &str = "/cella/mq/subscriptions/";

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
    /// How many queues it has.
    pub queues: u32,
    /// Whether each queue is consumed in order (one batch in flight per queue).
    pub ordered: bool,
    /// `sync` (acknowledged after fsync) or `async`.
    pub flush: FlushPolicy,
}

/// A topic's flush policy, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Acknowledge after fsync (group commit).
    #[default]
    Sync,
    /// Acknowledge after the write; fsync periodically.
    Async,
}

impl FlushPolicy {
    pub(crate) fn mode(self) -> FlushMode {
        match self {
            FlushPolicy::Sync => FlushMode::Sync,
            FlushPolicy::Async => FlushMode::Async,
        }
    }
}

/// Where a group seen for the first time starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The first retained message of each queue.
    #[default]
    Earliest,
    /// Only messages sent after the group first pulled.
    Latest,
}

/// A consumer group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The group's name.
    pub name: String,
    /// Clustering or broadcasting.
    pub mode: GroupMode,
    /// Where it started.
    pub start: StartFrom,
}

/// What a subscription does when its backlog exceeds its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Skip the oldest messages past the limit (the subscription never sees them).
    DropOldest,
    /// Move the oldest messages past the limit to the group's dead-letter topic.
    DeadLetter,
}

/// A subscription (group × topic) declared with a maximum backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionMeta {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Most messages per queue the group may have waiting (0: no limit).
    pub max_backlog: u64,
    /// What happens to the messages past the limit.
    pub overflow: Overflow,
}

/// Checks a topic or group name: 1–127 of `[A-Za-z0-9._-]`, not starting with `.`.
pub(crate) fn validate_name(field: &'static str, name: &str) -> MqResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MqError::InvalidField {
            field,
            rule: format!("must be 1-127 characters of A-Z a-z 0-9 . _ - not starting with `.` (got {name:?})"),
        })
    }
}

/// Metadata access through the core.
#[derive(Clone)]
pub(crate) struct Metadata {
    core: Core,
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("metadata serializes"))
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> MqResult<T> {
    serde_json::from_slice(value)
        .map_err(|e| MqError::Corrupt(format!("metadata at {}: {e}", String::from_utf8_lossy(key))))
}

impl Metadata {
    pub(crate) fn new(core: Core) -> Self {
        Self { core }
    }

    /// The members whose brokers serve topics, as `(node id, HOST:PORT)` by id: every member
    /// of the core, at the address its clients use.
    pub(crate) fn brokers(&self) -> Vec<(u64, String)> {
        let mut brokers: Vec<(u64, String)> = self
            .core
            .members()
            .into_iter()
            .filter_map(|member| {
                let url = member.client_ur_ls.into_iter().next()?;
                let address = url.strip_prefix("http://").unwrap_or(&url).to_string();
                Some((member.id, address))
            })
            .collect();
        brokers.sort();
        brokers
    }

    /// This member's node id.
    pub(crate) fn node_id(&self) -> u64 {
        self.core.node_id()
    }

    /// A shared channel to the member at `address`; `None` when the address is malformed.
    pub(crate) fn peer_channel(&self, address: &str) -> Option<tonic::transport::Channel> {
        self.core.peer_channel(address)
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, key: String) -> MqResult<Option<T>> {
        let resp = self
            .core
            .range(pb::RangeRequest {
                key: Bytes::from(key),
                ..Default::default()
            })
            .await?;
        resp.kvs
            .first()
            .map(|kv| decode(&kv.key, &kv.value))
            .transpose()
    }

    async fn list<T: for<'de> Deserialize<'de>>(&self, prefix: &str) -> MqResult<Vec<T>> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("prefix is not empty") += 1;
        let resp = self
            .core
            .range(pb::RangeRequest {
                key: Bytes::from(prefix.to_string()),
                range_end: Bytes::from(end),
                ..Default::default()
            })
            .await?;
        resp.kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect()
    }

    /// Writes `value` at `key` unless the key exists; returns the stored value either way.
    async fn create<T: Serialize + for<'de> Deserialize<'de>>(
        &self,
        key: String,
        value: &T,
    ) -> MqResult<(T, bool)> {
        let key = Bytes::from(key);
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp {
                    request: Some(RequestOpKind::RequestPut(pb::PutRequest {
                        key: key.clone(),
                        value: encode(value),
                        ..Default::default()
                    })),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(RequestOpKind::RequestRange(pb::RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })),
                }],
            })
            .await?;
        if resp.succeeded {
            let stored = decode(&key, &encode(value))?;
            return Ok((stored, true));
        }
        let existing = resp
            .responses
            .iter()
            .find_map(|r| match &r.response {
                Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
                _ => None,
            })
            .ok_or_else(|| {
                MqError::Corrupt(format!(
                    "{} vanished during create",
                    String::from_utf8_lossy(&key)
                ))
            })?;
        Ok((decode(&existing.key, &existing.value)?, false))
    }

    pub(crate) async fn topic(&self, name: &str) -> MqResult<Option<TopicMeta>> {
        self.get(format!("{TOPICS}{name}")).await
    }

    pub(crate) async fn topics(&self) -> MqResult<Vec<TopicMeta>> {
        self.list(TOPICS).await
    }

    /// Creates a topic; returns the stored one and whether this call created it.
    pub(crate) async fn create_topic(&self, topic: &TopicMeta) -> MqResult<(TopicMeta, bool)> {
        self.create(format!("{TOPICS}{}", topic.name), topic).await
    }

    pub(crate) async fn group(&self, name: &str) -> MqResult<Option<GroupMeta>> {
        self.get(format!("{GROUPS}{name}")).await
    }

    pub(crate) async fn groups(&self) -> MqResult<Vec<GroupMeta>> {
        self.list(GROUPS).await
    }

    pub(crate) async fn subscription(
        &self,
        group: &str,
        topic: &str,
    ) -> MqResult<Option<SubscriptionMeta>> {
        self.get(format!("{SUBSCRIPTIONS}{group}/{topic}")).await
    }

    /// Declares (creates or replaces) a subscription.
    pub(crate) async fn put_subscription(&self, sub: &SubscriptionMeta) -> MqResult<()> {
        self.core
            .put(pb::PutRequest {
                key: Bytes::from(format!("{SUBSCRIPTIONS}{}/{}", sub.group, sub.topic)),
                value: encode(sub),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// Creates a group unless it exists; returns the stored one.
    pub(crate) async fn ensure_group(&self, group: &GroupMeta) -> MqResult<GroupMeta> {
        Ok(self
            .create(format!("{GROUPS}{}", group.name), group)
            .await?
            .0)
    }
}
