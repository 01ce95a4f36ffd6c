//! When leases expire: timing kept by the leader only, never replicated.
//!
//! Grants and revokes go through the log; expiry does not. The leader tracks a deadline per
//! lease, refreshes it on keep-alive, and proposes a revoke once it passes, so every replica
//! deletes the lease's keys at the same revision. A new leader restarts every deadline at
//! a full TTL, because it cannot know when the old leader last saw a keep-alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cella_base::Clock;

/// Lease deadlines on this node.
pub(crate) struct LeaseTimer {
    clock: Arc<dyn Clock>,
    deadlines: HashMap<i64, (Duration, i64)>,
}

impl LeaseTimer {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            deadlines: HashMap::new(),
        }
    }

    /// Starts the deadline of a lease just granted.
    pub fn granted(&mut self, id: i64, ttl: i64) {
        let deadline = self.clock.now() + Duration::from_secs(ttl.max(0) as u64);
        self.deadlines.insert(id, (deadline, ttl));
    }

    /// Refreshes a lease to a full TTL; returns the TTL, or None if the lease is unknown.
    pub fn renew(&mut self, id: i64) -> Option<i64> {
        let now = self.clock.now();
        let (deadline, ttl) = self.deadlines.get_mut(&id)?;
        *deadline = now + Duration::from_secs(*ttl as u64);
        Some(*ttl)
    }

    /// Forgets a revoked lease.
    pub fn remove(&mut self, id: i64) {
        self.deadlines.remove(&id);
    }

    /// Seconds left before the lease expires (rounded), or None if unknown.
    pub fn remaining_secs(&self, id: i64) -> Option<i64> {
        let (deadline, _) = self.deadlines.get(&id)?;
        let left = deadline.saturating_sub(self.clock.now());
        Some(left.as_secs_f64().round() as i64)
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self) -> Vec<i64> {
        let now = self.clock.now();
        let mut ids: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(_, (d, _))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Restarts every deadline at a full TTL (on becoming leader).
    pub fn restart_all(&mut self) {
        let now = self.clock.now();
        for (deadline, ttl) in self.deadlines.values_mut() {
            *deadline = now + Duration::from_secs(*ttl as u64);
        }
    }

    /// Replaces all deadlines (after installing a snapshot), each at a full TTL.
    pub fn reset(&mut self, leases: impl Iterator<Item = (i64, i64)>) {
        self.deadlines.clear();
        for (id, ttl) in leases {
            self.granted(id, ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cella_base::ManualClock;

    #[test]
    fn lease_expires_after_ttl_unless_renewed() {
        let clock = ManualClock::new();
        let mut timer = LeaseTimer::new(Arc::new(clock.clone()));
        timer.granted(7, 10);
        timer.granted(8, 10);
        clock.advance(Duration::from_secs(6));
        assert_eq!(timer.renew(7), Some(10));
        assert_eq!(timer.remaining_secs(8), Some(4));
        clock.advance(Duration::from_secs(5));
        assert_eq!(timer.expired(), vec![8]);
        assert_eq!(timer.remaining_secs(7), Some(5));
        assert_eq!(timer.renew(9), None);
    }

    #[test]
    fn new_leader_restarts_every_deadline() {
        let clock = ManualClock::new();
        let mut timer = LeaseTimer::new(Arc::new(clock.clone()));
        timer.granted(1, 5);
        clock.advance(Duration::from_secs(4));
        timer.restart_all();
        clock.advance(Duration::from_secs(4));
        assert!(timer.expired().is_empty());
        timer.remove(1);
        assert_eq!(timer.remaining_secs(1), None);
    }
}
