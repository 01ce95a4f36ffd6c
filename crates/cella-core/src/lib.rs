//! Cella's consistent core: a Raft-replicated, revisioned key-value store with leases,
//! watches and transactions — etcd's data model, served over etcd's v3 gRPC API.
//!
//! - [`Core`] runs one member: the Raft node, its log and state machine, lease expiry.
//! - [`grpc::routes`] and [`rest::router`] serve it; [`CoreError`] maps to both.
//! - [`gateway`] holds the REST conventions every block's routes share.
//! - Every write is fsynced to the Raft log on a majority before it is acknowledged;
//!   reads are linearizable unless a client asks for serializable.

mod election;
mod error;
pub mod gateway;
pub mod grpc;
mod lease;
mod log_store;
pub mod metrics;
mod mvcc;
mod network;
mod node;
pub mod rest;
mod state_machine;
mod types;
mod validate;
pub mod watch;

pub use error::{CoreError, CoreResult};
pub use node::{Core, CoreConfig, Membership};
pub use types::NodeId;
pub use validate::Limits;
pub use watch::{run_watcher, WatchSpec};

/// The etcd API level Cella's core speaks, reported by the Status call.
pub const ETCD_API_VERSION: &str = "3.4.0";
