//! The broker's settings: the `[mq]` table of the server's configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Tunables of the message broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqConfig {
    /// Size of each commitlog segment file in bytes (1 GiB).
    pub segment_bytes: u64,
    /// How often async-flush topics are fsynced, in milliseconds.
    pub flush_interval_ms: u64,
    /// Delete whole segments whose messages are all older than this many hours (0: never).
    pub retention_hours: u64,
    /// Delete the oldest segments while the commitlog is larger than this (0: no limit).
    pub retention_bytes: u64,
    /// Create a topic on its first message when it does not exist.
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic (and the default for `topic create`).
    pub default_queues: u32,
    /// Largest message body in bytes (4 MiB).
    pub max_body_bytes: usize,
    /// Longest delay a message may ask for, in milliseconds (7 days).
    pub max_delay_ms: u64,
    /// A member not heard from for this long leaves its group, in milliseconds.
    pub session_timeout_ms: u64,
    /// A delivery not acknowledged within this long is delivered again, in milliseconds.
    pub ack_timeout_ms: u64,
    /// Most messages one pull returns.
    pub max_pull: u32,
    /// Most messages one batched send carries (their bodies together are bounded by
    /// `max_body_bytes`) and most deliveries one batched ack carries.
    pub max_batch: u32,
    /// Backoff before the n-th retry of a nacked message, in milliseconds (the last level
    /// repeats).
    pub retry_backoff_ms: Vec<u64>,
    /// Retries before a message goes to the group's dead-letter topic.
    pub max_retries: u32,
    /// An undecided transactional message is checked back with its producer group after
    /// this long, and again at this interval, in milliseconds.
    pub transaction_check_ms: u64,
    /// Check-backs before an undecided transactional message is rolled back.
    pub transaction_max_checks: u32,
}

impl Default for MqConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            flush_interval_ms: 200,
            retention_hours: 72,
            retention_bytes: 0,
            auto_create_topics: true,
            default_queues: 4,
            max_body_bytes: 4 << 20,
            max_delay_ms: 7 * 24 * 3600 * 1000,
            session_timeout_ms: 10_000,
            ack_timeout_ms: 30_000,
            max_pull: 256,
            max_batch: 1024,
            retry_backoff_ms: vec![
                1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
            ],
            max_retries: 16,
            transaction_check_ms: 6_000,
            transaction_max_checks: 15,
        }
    }
}

impl MqConfig {
    pub(crate) fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// The largest request the APIs accept: a batch of bodies up to `max_body_bytes` in all,
    /// plus room for each message's headers.
    pub(crate) fn max_request_bytes(&self) -> usize {
        self.max_body_bytes + 64 * 1024 + self.max_batch as usize * 1024
    }
}
