//! Unique ids on Cella's core (SPEC §4, IDs).
//!
//! - [`layout`]: id layouts as data — binary (snowflake) and decimal (order numbers) — with
//!   encode, decode and validation; built-ins `snowflake64` and `order32`.
//! - [`Snowflake`]: a generator for one layout from a worker id leased from the core
//!   ([`WorkerLease`]), with a persisted high-water mark so no restart reissues an id; its
//!   decisions (sequence overflow, clock steps back, reservations) are a pure state machine.
//! - [`SegmentAllocator`]: segment mode per business tag — ranges allocated from the core
//!   by compare-and-swap, double-buffered, with a step that adapts to consumption.
//! - `IdService` (feature `server`): the node's service — layouts served, one generator
//!   per layout holding its own worker id — over gRPC ([`grpc`]) and REST ([`rest`]).
//! - [`CoreStore`]: the few core calls the generators make, implemented by the node's
//!   in-process core (feature `server`) and by the SDK over the network.
//!
//! Everything that decides lives apart from what talks to the core: the layouts and the
//! sequencer are plain values tested with a manual clock.

#![warn(missing_docs)]

#[cfg(feature = "server")]
mod core_store;
mod error;
#[cfg(feature = "server")]
pub mod grpc;
pub mod layout;
pub mod metrics;
#[cfg(feature = "server")]
pub mod rest;
mod segment;
mod segments;
mod sequencer;
#[cfg(feature = "server")]
mod service;
mod snowflake;
mod store;
pub mod wire;
mod worker;

pub use cella_base::UnixClock;
pub use error::{IdgenError, IdgenResult};
pub use layout::{Decoded, Id, Layout, LayoutSpec, Tags};
pub use segment::SegmentConfig;
pub use segments::{check_tag, SegmentAllocator};
pub use sequencer::GeneratorConfig;
#[cfg(feature = "server")]
pub use service::{IdService, IdgenConfig};
pub use snowflake::Snowflake;
pub use store::{CoreStore, KEY_PREFIX};
pub use worker::WorkerLease;
