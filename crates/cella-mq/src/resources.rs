//! The broker's resource kinds, so topology is declared in a file (`cella apply -f`) and
//! created at app start (seed 004: topology declared, not improvised at runtime).
//!
//! ```yaml
//! apiVersion: cella.dev/v1
//! kind: Topic
//! metadata: { name: orders }
//! spec: { queues: 8, ordered: true, flush: sync }      # defaults: 4, false, sync
//! ---
//! apiVersion: cella.dev/v1
//! kind: ConsumerGroup
//! metadata: { name: billing }
//! spec:
//!   mode: clustering                                   # or broadcasting
//!   start: earliest                                    # or latest
//!   subscriptions:
//!     - { topic: orders, maxBacklog: 100000, overflow: dead_letter }  # or drop_oldest
//! ```
//!
//! A topic's queues, order and flush, and a group's mode and start, are fixed once created:
//! applying other values is refused and changes nothing. Subscriptions' backlog limits may
//! change; a subscription dropped from the spec keeps its last limit. Neither kind can be deleted yet (the broker keeps topics and groups for good), so
//! delete is refused with that reason.

use cella_core::gateway::ApiError;
use cella_resource::{Kind, KindFuture, Resource, ResourceError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::error::MqError;
use crate::group::GroupMode;
use crate::meta::{validate_name, FlushPolicy, Overflow, StartFrom};

/// The `Topic` kind.
pub struct TopicKind {
    broker: Broker,
}

/// The `ConsumerGroup` kind.
pub struct ConsumerGroupKind {
    broker: Broker,
}

impl TopicKind {
    /// Topics of `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

impl ConsumerGroupKind {
    /// Consumer groups of `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TopicSpec {
    #[serde(default = "default_queues")]
    queues: u32,
    #[serde(default)]
    ordered: bool,
    #[serde(default)]
    flush: FlushPolicy,
}

fn default_queues() -> u32 {
    4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupSpec {
    #[serde(default = "clustering")]
    mode: GroupMode,
    #[serde(default)]
    start: StartFrom,
    #[serde(default)]
    subscriptions: Vec<SubscriptionSpec>,
}

fn clustering() -> GroupMode {
    GroupMode::Clustering
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SubscriptionSpec {
    topic: String,
    #[serde(default)]
    max_backlog: u64,
    #[serde(default = "drop_oldest")]
    overflow: Overflow,
}

fn drop_oldest() -> Overflow {
    Overflow::DropOldest
}

/// Reads a spec, naming the field serde complained about.
fn spec<T: for<'de> Deserialize<'de>>(resource: &Resource) -> Result<T, ResourceError> {
    serde_json::from_value(resource.spec.clone())
        .map_err(|e| ResourceError::invalid("spec", e.to_string()))
}

fn rejected(field_prefix: &str, err: MqError) -> ResourceError {
    match err {
        MqError::InvalidField { field, rule } => {
            ResourceError::invalid(format!("{field_prefix}{field}"), rule)
        }
        other => ResourceError::Rejected {
            code: other.grpc_code(),
            message: other.to_string(),
        },
    }
}

fn not_deletable(kind: &str) -> ResourceError {
    ResourceError::Rejected {
        code: tonic::Code::FailedPrecondition,
        message: format!(
            "a {kind} cannot be deleted: the broker keeps topics and groups with their messages and offsets; nothing was deleted"
        ),
    }
}

impl Kind for TopicKind {
    fn name(&self) -> &'static str {
        "Topic"
    }

    fn namespaced(&self) -> bool {
        false
    }

    fn apply<'a>(&'a self, resource: &'a Resource) -> KindFuture<'a, Value> {
        Box::pin(async move {
            let want: TopicSpec = spec(resource)?;
            let name = &resource.metadata.name;
            validate_name("topic", name).map_err(|e| rejected("metadata.", e))?;
            if let Some(have) = self.broker.topic(name).await.map_err(|e| rejected("", e))? {
                let fixed = [
                    (
                        "spec.queues",
                        have.queues.to_string(),
                        want.queues.to_string(),
                    ),
                    (
                        "spec.ordered",
                        have.ordered.to_string(),
                        want.ordered.to_string(),
                    ),
                    (
                        "spec.flush",
                        format!("{:?}", have.flush),
                        format!("{:?}", want.flush),
                    ),
                ];
                if let Some((field, have, _)) = fixed.iter().find(|(_, h, w)| h != w) {
                    return Err(ResourceError::invalid(
                        *field,
                        format!("cannot change once the topic exists (topic {name} has {have})"),
                    ));
                }
            }
            let topic = self
                .broker
                .create_topic(name, want.queues, want.ordered, want.flush)
                .await
                .map_err(|e| rejected("spec.", e))?;
            Ok(json!({ "queues": topic.queues, "ordered": topic.ordered, "flush": topic.flush }))
        })
    }

    fn delete<'a>(&'a self, _resource: &'a Resource) -> KindFuture<'a, ()> {
        Box::pin(async move { Err(not_deletable("Topic")) })
    }
}

impl Kind for ConsumerGroupKind {
    fn name(&self) -> &'static str {
        "ConsumerGroup"
    }

    fn namespaced(&self) -> bool {
        false
    }

    fn apply<'a>(&'a self, resource: &'a Resource) -> KindFuture<'a, Value> {
        Box::pin(async move {
            let want: GroupSpec = spec(resource)?;
            let name = &resource.metadata.name;
            validate_name("group", name).map_err(|e| rejected("metadata.", e))?;
            for (i, sub) in want.subscriptions.iter().enumerate() {
                validate_name("topic", &sub.topic)
                    .map_err(|e| rejected(&format!("spec.subscriptions[{i}]."), e))?;
            }
            let group = self
                .broker
                .declare_group(name, want.mode, want.start)
                .await
                .map_err(|e| rejected("spec.", e))?;
            let mut subscriptions = Vec::new();
            for sub in &want.subscriptions {
                let declared = self
                    .broker
                    .declare_subscription(name, &sub.topic, sub.max_backlog, sub.overflow)
                    .await
                    .map_err(|e| rejected("spec.subscriptions.", e))?;
                subscriptions.push(json!({
                    "topic": declared.topic, "maxBacklog": declared.max_backlog, "overflow": declared.overflow,
                }));
            }
            Ok(json!({ "mode": group.mode, "start": group.start, "subscriptions": subscriptions }))
        })
    }

    fn delete<'a>(&'a self, _resource: &'a Resource) -> KindFuture<'a, ()> {
        Box::pin(async move { Err(not_deletable("ConsumerGroup")) })
    }
}
