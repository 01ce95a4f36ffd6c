//! Transactional (half) messages, without I/O: which half messages wait for their
//! producer's decision, and when to ask the producer group again (check-back).
//!
//! A half message is stored at once but delivered only when its producer commits it; a
//! rollback discards it. If no decision arrives within the check interval, the broker offers
//! it to the producer group's check-back poll, again every interval; after `max_checks`
//! unanswered checks it is rolled back.

use std::collections::BTreeMap;

/// One half message waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Half {
    /// Its offset in the half queue.
    pub(crate) offset: u64,
    /// The producer group asked on check-back.
    pub(crate) producer_group: String,
    /// When it may next be offered for a check (unix ms).
    next_check_ms: u64,
    /// Checks offered so far.
    checks: u32,
}

/// Every half message waiting for a decision, by message id.
#[derive(Debug, Default)]
pub(crate) struct Halves {
    pending: BTreeMap<u128, Half>,
}

impl Halves {
    /// Records a half message stored at `stored_ms`; first check after `interval_ms`.
    pub(crate) fn add(
        &mut self,
        id: u128,
        offset: u64,
        producer_group: &str,
        stored_ms: u64,
        interval_ms: u64,
    ) {
        self.pending.insert(
            id,
            Half {
                offset,
                producer_group: producer_group.to_string(),
                next_check_ms: stored_ms + interval_ms,
                checks: 0,
            },
        );
    }

    /// Takes the half message `id` for a decision; `None` if unknown or already decided.
    pub(crate) fn decide(&mut self, id: u128) -> Option<Half> {
        self.pending.remove(&id)
    }

    /// Half messages of `producer_group` due for a check at `now_ms` (at most `max`); each is
    /// offered again only after another interval.
    pub(crate) fn due_checks(
        &mut self,
        producer_group: &str,
        now_ms: u64,
        interval_ms: u64,
        max: usize,
    ) -> Vec<(u128, u64)> {
        let mut due = Vec::new();
        for (id, half) in self.pending.iter_mut() {
            if due.len() == max {
                break;
            }
            if half.producer_group == producer_group && half.next_check_ms <= now_ms {
                half.checks += 1;
                half.next_check_ms = now_ms + interval_ms;
                due.push((*id, half.offset));
            }
        }
        due
    }

    /// Half messages checked `max_checks` times and still undecided at `now_ms`: removed, to
    /// be rolled back.
    pub(crate) fn abandoned(&mut self, now_ms: u64, max_checks: u32) -> Vec<u128> {
        let gone: Vec<u128> = self
            .pending
            .iter()
            .filter(|(_, h)| h.checks >= max_checks && h.next_check_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.pending.remove(id);
        }
        gone
    }

    /// Half messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_is_decided_once() {
        let mut h = Halves::default();
        h.add(7, 0, "p", 1_000, 5_000);
        assert_eq!(h.decide(7).map(|x| x.offset), Some(0));
        assert!(h.decide(7).is_none(), "a second decision finds nothing");
    }

    #[test]
    fn checks_come_after_the_interval_for_the_right_group_and_repeat() {
        let mut h = Halves::default();
        h.add(1, 10, "p", 0, 5_000);
        h.add(2, 11, "q", 0, 5_000);
        assert!(h.due_checks("p", 4_999, 5_000, 10).is_empty());
        assert_eq!(h.due_checks("p", 5_000, 5_000, 10), vec![(1, 10)]);
        assert!(
            h.due_checks("p", 9_999, 5_000, 10).is_empty(),
            "not again within the interval"
        );
        assert_eq!(h.due_checks("p", 10_000, 5_000, 10), vec![(1, 10)]);
        assert_eq!(h.due_checks("q", 10_000, 5_000, 10), vec![(2, 11)]);
    }

    #[test]
    fn halves_checked_too_often_are_abandoned() {
        let mut h = Halves::default();
        h.add(1, 0, "p", 0, 100);
        for t in [100, 200, 300] {
            assert_eq!(h.due_checks("p", t, 100, 10).len(), 1);
        }
        assert!(h.abandoned(399, 3).is_empty());
        assert_eq!(h.abandoned(400, 3), vec![1]);
        assert_eq!(h.len(), 0);
    }
}
