//! Rust client for Cella: the consistent core, the blocks built on it (service registry,
//! locks and elections, unique ids, config center, message broker), and the client RPC
//! stack ([`rpc`]) that calls a service's instances.
//!
//! The core speaks etcd v3's gRPC API, so this client also works against etcd. One
//! [`Client`] holds one HTTP/2 connection; each service handle it hands out shares it.
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! let client = cella_sdk::Client::connect("127.0.0.1:7070").await?;
//! client.kv().put("greeting", "hello").await?;
//! let value = client.kv().get("greeting").await?.map(|kv| kv.value);
//! # Ok(()) }
//! ```
//!
//! Errors are one enum, [`Error`]; server errors keep the server's message.

#![warn(missing_docs)]

mod client;
mod error;
mod mq_route;
mod mq_wire;
mod sync;
mod types;

pub mod cluster;
pub mod config;
pub mod id;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod mq;
pub mod registry;
pub mod resources;
pub mod rpc;
pub mod watch;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use types::{LeaseId, MemberId, ParseLeaseIdError, Revision};
