//! Cella's message broker (SPEC §6): topics with queues, producers, consumer groups.
//!
//! - [`storage`]: the message store — commitlog segments, consume queues, lookup index,
//!   group commit, crash recovery, retention. Messages live here, not in the core.
//! - [`Broker`]: produce and consume; topic and group metadata live in the core.
//! - [`api`]: the gRPC service and REST routes over a [`Broker`].
//! - `wire`: the producer wire, framed sends on an upgraded connection (`cella_proto::mq_wire`).
//! - `timer`: the timing wheel behind delayed messages.
//! - `group`: the consumer-group decisions (assignment, cursors, redelivery), no I/O.
//! - [`metrics`]: the `cella_mq_*` Prometheus metrics.

pub mod api;
mod broker;
mod config;
mod error;
mod group;
mod meta;
pub mod metrics;
pub mod resources;
pub mod storage;
mod timer;
mod txn;
mod wire;

pub use broker::{format_id, Broker, Delivery, PullRequest, QueueLag, SendRequest, SendResult};
pub use config::MqConfig;
pub use error::{MqError, MqResult};
pub use group::GroupMode;
pub use meta::{FlushPolicy, GroupMeta, Overflow, StartFrom, SubscriptionMeta, TopicMeta};
