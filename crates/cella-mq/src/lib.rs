//! Cella's message broker (SPEC §6): topics with queues, producers, consumer groups.
//!
//! - [`storage`]: the message store — commitlog segments, consume queues, lookup index,
//!   group commit, crash recovery, retention. Messages live here, not in the core.

mod error;
pub mod storage;

pub use error::{MqError, MqResult};
