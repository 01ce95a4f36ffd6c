//! Where a topic's queues are, as producers and consumers cache it (RocketMQ's topic route).
//!
//! Every member's broker serves all of a topic's queues from its own commitlog, so a slot
//! is (member, queue). Round-robin sends go to the members in turn, passing one that lately
//! could not be reached; a sharding key always maps to the same slot while the membership
//! stands (on one member, the queue the broker itself would pick), so per-key order holds
//! and a keyed send waits for its member rather than move. Consumers pull from every member.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cella_base::fnv1a64;

use crate::sync::lock;

/// How long a fetched route is used before it is asked for again.
pub(crate) const ROUTE_TTL: Duration = Duration::from_secs(30);
/// How long a member that could not be reached is passed over.
const SKIP_FAILED_FOR: Duration = Duration::from_secs(5);

/// A topic's route as one member answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    /// Queues per member.
    pub(crate) queues: u32,
    /// The members' `HOST:PORT`, by node id; the answering member's is the client's own.
    pub(crate) addresses: Vec<String>,
}

/// Whether a member lately failed to answer, and so is passed over until when.
#[derive(Debug, Default)]
pub(crate) struct Health(Mutex<Option<Instant>>);

impl Health {
    /// Records that the member could not be reached just now.
    pub(crate) fn failed(&self) {
        *self.until() = Some(Instant::now() + SKIP_FAILED_FOR);
    }

    /// Whether the member is passed over at `now`.
    pub(crate) fn skipped(&self, now: Instant) -> bool {
        self.until().is_some_and(|until| now < until)
    }

    fn until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        lock(&self.0)
    }
}

/// The member (index) and queue for `key` among `members` members of `queues` queues each.
/// Slots interleave members (slot `s` is member `s % members`, queue `s / members`), so with
/// one member the queue is the broker's own choice for the key: its FNV-1a hash mod `queues`.
pub(crate) fn key_slot(key: &str, members: usize, queues: u32) -> (usize, u32) {
    let members = members.max(1) as u64;
    let slot = fnv1a64(&[key.as_bytes()]) % (members * u64::from(queues.max(1)));
    ((slot % members) as usize, (slot / members) as u32)
}

/// The member for round-robin turn `turn` among those of `members` that `skipped` passes,
/// so the others share a skipped member's turns evenly; if every member is skipped, among
/// all of them.
pub(crate) fn next_member(turn: u64, members: usize, skipped: impl Fn(usize) -> bool) -> usize {
    let members = members.max(1);
    let healthy = (0..members).filter(|&m| !skipped(m)).count();
    if healthy == 0 {
        return (turn % members as u64) as usize;
    }
    let nth = (turn % healthy as u64) as usize;
    (0..members)
        .filter(|&m| !skipped(m))
        .nth(nth)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_one_member_a_key_gets_the_queue_the_broker_would_pick() {
        for key in ["order-1", "order-2", "k", ""] {
            let broker_choice = (fnv1a64(&[key.as_bytes()]) % 8) as u32;
            assert_eq!(key_slot(key, 1, 8), (0, broker_choice));
        }
    }

    #[test]
    fn keys_spread_over_every_slot_of_every_member() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2_000 {
            let (member, queue) = key_slot(&format!("key-{i}"), 3, 4);
            assert!(member < 3 && queue < 4);
            seen.insert((member, queue));
        }
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn round_robin_passes_skipped_members_unless_all_are() {
        let picks = |skipped: fn(usize) -> bool| -> Vec<usize> {
            (0..6).map(|turn| next_member(turn, 3, skipped)).collect()
        };
        assert_eq!(picks(|_| false), [0, 1, 2, 0, 1, 2]);
        assert_eq!(picks(|m| m == 0), [1, 2, 1, 2, 1, 2]);
        assert_eq!(picks(|m| m != 2), [2; 6]);
        assert_eq!(picks(|_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_failed_member_is_skipped_for_a_while() {
        let health = Health::default();
        assert!(!health.skipped(Instant::now()));
        health.failed();
        assert!(health.skipped(Instant::now()));
        assert!(!health.skipped(Instant::now() + SKIP_FAILED_FOR));
    }
}
