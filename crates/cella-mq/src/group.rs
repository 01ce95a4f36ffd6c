//! Consumer-group decisions, without I/O: who holds which queue, what each queue's cursor
//! has delivered, what was acknowledged, and what must be delivered again.
//!
//! A clustering group shares one cursor per queue and gives each queue to one live member
//! (queue `q` goes to the `q % n`-th member in name order, recomputed on every join, leave
//! or session expiry). A broadcasting group gives every member every queue, each with its
//! own cursors. A cursor's `committed` offset is durable progress: every message below it
//! was acknowledged (or filtered out). Deliveries not acknowledged before their deadline,
//! negatively acknowledged, or held by a member that left, are delivered again: delivery is
//! at least once. On an ordered topic a queue has deliveries of one batch in flight at a
//! time, and redeliveries come first, in offset order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Most unacknowledged deliveries one queue's cursor keeps (unordered topics).
pub(crate) const MAX_INFLIGHT_PER_QUEUE: usize = 1024;

/// How a group shares messages among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Each message to one member; each queue held by one member.
    Clustering,
    /// Each message to every member.
    Broadcasting,
}

/// One delivery waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inflight {
    member: String,
    deadline: Duration,
}

/// Why an ack or nack was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotInflight;

/// Progress of one consumer (a clustering group, or one broadcasting member) on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Every offset below this is done (acknowledged or filtered out).
    pub(crate) committed: u64,
    /// The lowest offset never delivered.
    pub(crate) next: u64,
    inflight: BTreeMap<u64, Inflight>,
    redeliver: BTreeSet<u64>,
    done_above: BTreeSet<u64>,
}

impl Cursor {
    /// A cursor whose first message is `start`.
    pub(crate) fn new(start: u64) -> Self {
        Self {
            committed: start,
            next: start,
            inflight: BTreeMap::new(),
            redeliver: BTreeSet::new(),
            done_above: BTreeSet::new(),
        }
    }

    /// Moves past messages that retention removed.
    pub(crate) fn skip_to(&mut self, first_retained: u64) {
        if self.committed < first_retained {
            self.committed = first_retained;
            self.next = self.next.max(first_retained);
            self.inflight = self.inflight.split_off(&first_retained);
            self.redeliver = self.redeliver.split_off(&first_retained);
            self.done_above = self.done_above.split_off(&first_retained);
        }
    }

    /// Deliveries past their deadline become redeliveries.
    pub(crate) fn expire(&mut self, now: Duration) {
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(o, _)| *o)
            .collect();
        for o in expired {
            self.inflight.remove(&o);
            self.redeliver.insert(o);
        }
    }

    /// Deliveries held by `member` become redeliveries (it left or its session expired).
    pub(crate) fn release(&mut self, member: &str) {
        let held: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, d)| d.member == member)
            .map(|(o, _)| *o)
            .collect();
        for o in held {
            self.inflight.remove(&o);
            self.redeliver.insert(o);
        }
    }

    /// How many messages may be delivered now (0 when an ordered queue has some in flight).
    pub(crate) fn room(&self, ordered: bool, want: usize) -> usize {
        if ordered && !self.inflight.is_empty() {
            return 0;
        }
        want.min(MAX_INFLIGHT_PER_QUEUE.saturating_sub(self.inflight.len()))
    }

    /// Offsets to deliver again, lowest first, at most `limit`.
    pub(crate) fn redeliveries(&self, limit: usize) -> Vec<u64> {
        self.redeliver.iter().take(limit).copied().collect()
    }

    /// Whether the cursor has redeliveries pending (new messages wait behind them when ordered).
    pub(crate) fn has_redeliveries(&self) -> bool {
        !self.redeliver.is_empty()
    }

    /// Records that `offset` was handed to `member`, to be acknowledged by `deadline`.
    pub(crate) fn deliver(&mut self, offset: u64, member: &str, deadline: Duration) {
        self.redeliver.remove(&offset);
        self.next = self.next.max(offset + 1);
        self.inflight.insert(
            offset,
            Inflight {
                member: member.to_string(),
                deadline,
            },
        );
    }

    /// Records that `offset` was passed over (filtered out by tag, or no longer retained).
    pub(crate) fn skip(&mut self, offset: u64) {
        self.redeliver.remove(&offset);
        self.next = self.next.max(offset + 1);
        self.mark_done(offset);
    }

    /// Whether `offset` is in flight to `member` and not past its deadline.
    pub(crate) fn check(
        &self,
        offset: u64,
        member: &str,
        now: Duration,
    ) -> Result<(), NotInflight> {
        match self.inflight.get(&offset) {
            Some(d) if d.member == member && d.deadline > now => Ok(()),
            _ => Err(NotInflight),
        }
    }

    /// Acknowledges a delivery to `member`; refused if it is not in flight to it.
    pub(crate) fn ack(
        &mut self,
        offset: u64,
        member: &str,
        now: Duration,
    ) -> Result<(), NotInflight> {
        self.check(offset, member, now)?;
        self.inflight.remove(&offset);
        self.mark_done(offset);
        Ok(())
    }

    /// Negatively acknowledges a delivery: it will be delivered again. On an ordered queue
    /// every later delivery of the batch goes back too, so order is kept.
    pub(crate) fn nack(
        &mut self,
        offset: u64,
        member: &str,
        now: Duration,
        ordered: bool,
    ) -> Result<(), NotInflight> {
        self.check(offset, member, now)?;
        let back: Vec<u64> = if ordered {
            self.inflight.range(offset..).map(|(o, _)| *o).collect()
        } else {
            vec![offset]
        };
        for o in back {
            self.inflight.remove(&o);
            self.redeliver.insert(o);
        }
        Ok(())
    }

    fn mark_done(&mut self, offset: u64) {
        if offset < self.committed {
            return;
        }
        self.done_above.insert(offset);
        while self.done_above.remove(&self.committed) {
            self.committed += 1;
        }
    }
}

/// Queues a member holds: clustering splits them among live members, broadcasting gives all.
pub(crate) fn assigned_queues(
    mode: GroupMode,
    members: &BTreeSet<String>,
    member: &str,
    queues: u32,
) -> Vec<u32> {
    match mode {
        GroupMode::Broadcasting => (0..queues).collect(),
        GroupMode::Clustering => {
            let Some(index) = members.iter().position(|m| m == member) else {
                return Vec::new();
            };
            (0..queues)
                .filter(|q| *q as usize % members.len() == index)
                .collect()
        }
    }
}

/// Live members of one group and when each was last heard from.
#[derive(Debug, Default, Clone)]
pub(crate) struct Members {
    last_seen: BTreeMap<String, Duration>,
}

impl Members {
    /// Records a heartbeat; returns whether `member` is new (a rebalance).
    pub(crate) fn heartbeat(&mut self, member: &str, now: Duration) -> bool {
        self.last_seen.insert(member.to_string(), now).is_none()
    }

    /// Removes `member`; returns whether it was there.
    pub(crate) fn leave(&mut self, member: &str) -> bool {
        self.last_seen.remove(member).is_some()
    }

    /// Removes members not heard from within `timeout`; returns them.
    pub(crate) fn expire(&mut self, now: Duration, timeout: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.saturating_sub(**seen) >= timeout)
            .map(|(m, _)| m.clone())
            .collect();
        for m in &gone {
            self.last_seen.remove(m);
        }
        gone
    }

    /// The live members' names.
    pub(crate) fn names(&self) -> BTreeSet<String> {
        self.last_seen.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn acks_out_of_order_commit_only_the_contiguous_prefix() {
        let mut c = Cursor::new(10);
        for o in 10..14 {
            c.deliver(o, "a", T);
        }
        c.ack(12, "a", Duration::ZERO).unwrap();
        assert_eq!(c.committed, 10);
        c.ack(10, "a", Duration::ZERO).unwrap();
        c.ack(11, "a", Duration::ZERO).unwrap();
        assert_eq!(c.committed, 13);
        assert_eq!(
            c.ack(11, "a", Duration::ZERO),
            Err(NotInflight),
            "acked twice"
        );
        assert_eq!(
            c.ack(13, "b", Duration::ZERO),
            Err(NotInflight),
            "another member"
        );
        assert_eq!(
            c.ack(99, "a", Duration::ZERO),
            Err(NotInflight),
            "never delivered"
        );
        assert_eq!(c.ack(13, "a", T), Err(NotInflight), "past its deadline");
    }

    #[test]
    fn expired_released_and_nacked_deliveries_come_back() {
        let mut c = Cursor::new(0);
        c.deliver(0, "a", Duration::from_secs(1));
        c.deliver(1, "b", T);
        c.deliver(2, "a", T);
        c.expire(Duration::from_secs(1));
        assert_eq!(c.redeliveries(10), vec![0]);
        c.release("b");
        assert_eq!(c.redeliveries(10), vec![0, 1]);
        c.nack(2, "a", Duration::ZERO, false).unwrap();
        assert_eq!(c.redeliveries(10), vec![0, 1, 2]);
        c.deliver(0, "c", T);
        assert_eq!(c.redeliveries(10), vec![1, 2]);
        assert_eq!(c.next, 3);
    }

    #[test]
    fn an_ordered_queue_holds_one_batch_and_a_nack_returns_the_rest_of_it() {
        let mut c = Cursor::new(0);
        assert_eq!(c.room(true, 8), 8);
        for o in 0..3 {
            c.deliver(o, "a", T);
        }
        assert_eq!(c.room(true, 8), 0);
        assert_eq!(c.room(false, 8), 8);
        c.ack(0, "a", Duration::ZERO).unwrap();
        c.nack(1, "a", Duration::ZERO, true).unwrap();
        assert_eq!(c.redeliveries(10), vec![1, 2]);
        assert_eq!(c.ack(2, "a", Duration::ZERO), Err(NotInflight));
        assert_eq!(c.room(true, 8), 8);
    }

    #[test]
    fn filtered_offsets_count_as_done_and_retention_moves_the_cursor() {
        let mut c = Cursor::new(0);
        c.skip(0);
        c.deliver(1, "a", T);
        c.skip(2);
        assert_eq!((c.committed, c.next), (1, 3));
        c.ack(1, "a", Duration::ZERO).unwrap();
        assert_eq!(c.committed, 3);
        c.skip_to(10);
        assert_eq!((c.committed, c.next), (10, 10));
    }

    #[test]
    fn clustering_splits_queues_among_members_and_broadcasting_gives_all() {
        let members: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut all = Vec::new();
        for m in &members {
            all.extend(assigned_queues(GroupMode::Clustering, &members, m, 8));
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (0..8).collect::<Vec<_>>(),
            "each queue held by exactly one member"
        );
        assert_eq!(
            assigned_queues(GroupMode::Clustering, &members, "b", 8),
            vec![1, 4, 7]
        );
        assert!(assigned_queues(GroupMode::Clustering, &members, "z", 8).is_empty());
        assert_eq!(
            assigned_queues(GroupMode::Broadcasting, &members, "b", 3),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn members_expire_after_the_session_timeout() {
        let mut m = Members::default();
        assert!(m.heartbeat("a", Duration::ZERO));
        assert!(!m.heartbeat("a", Duration::from_secs(5)));
        assert!(m.heartbeat("b", Duration::from_secs(6)));
        assert_eq!(
            m.expire(Duration::from_secs(15), Duration::from_secs(10)),
            vec!["a".to_string()]
        );
        assert_eq!(
            m.names().into_iter().collect::<Vec<_>>(),
            vec!["b".to_string()]
        );
        assert!(m.leave("b"));
        assert!(m.names().is_empty());
    }
}
