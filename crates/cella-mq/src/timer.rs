//! A hashed timing wheel for delayed messages: any delay, not fixed levels.
//!
//! Time is cut into ticks of `tick_ms`; an entry sits in slot `deadline_tick % slots` with
//! its absolute deadline tick, so one revolution of the wheel does not limit the delay: an
//! entry whose deadline is later revolutions away stays in its slot until the wheel reaches
//! that tick. Advancing visits each slot passed (at most one revolution) and fires the
//! entries due. Inserting and firing cost O(1) per entry plus the entries sharing a slot.

/// The timing wheel; `T` is what fires (here: a delay-queue offset).
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    tick_ms: u64,
    slots: Vec<Vec<(u64, T)>>,
    /// The next tick not yet processed.
    current: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` slots of `tick_ms` each, starting at time `now_ms`.
    pub(crate) fn new(tick_ms: u64, slots: usize, now_ms: u64) -> Self {
        let tick_ms = tick_ms.max(1);
        Self {
            tick_ms,
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            current: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `item` to fire at `deadline_ms`: never earlier, at most one tick later (at the
    /// next advance if the deadline is past).
    pub(crate) fn insert(&mut self, deadline_ms: u64, item: T) {
        let tick = deadline_ms.div_ceil(self.tick_ms).max(self.current);
        let n = self.slots.len() as u64;
        self.slots[(tick % n) as usize].push((tick, item));
        self.len += 1;
    }

    /// Fires every entry due at or before `now_ms`, in deadline order.
    pub(crate) fn advance(&mut self, now_ms: u64) -> Vec<T> {
        let target = now_ms / self.tick_ms;
        if target < self.current {
            return Vec::new();
        }
        let n = self.slots.len() as u64;
        let steps = (target - self.current + 1).min(n);
        let mut due = Vec::new();
        for step in 0..steps {
            let slot = &mut self.slots[((self.current + step) % n) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= target {
                    due.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        self.current = target + 1;
        self.len -= due.len();
        due.sort_by_key(|(tick, _)| *tick);
        due.into_iter().map(|(_, item)| item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_at_their_tick_and_not_before() {
        let mut w = TimerWheel::new(100, 8, 0);
        w.insert(250, "a");
        w.insert(120, "b");
        w.insert(0, "now");
        assert_eq!(w.advance(50), vec!["now"]);
        assert!(
            w.advance(199).is_empty(),
            "120 fires at the first tick at or after it: 200"
        );
        assert_eq!(w.advance(200), vec!["b"]);
        assert!(
            w.advance(299).is_empty(),
            "never before its deadline's tick"
        );
        assert_eq!(w.advance(300), vec!["a"]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn delays_longer_than_a_revolution_wait_for_their_own_tick() {
        let mut w = TimerWheel::new(100, 4, 0);
        w.insert(1_050, "late");
        w.insert(250, "early");
        for now in (0..1_000).step_by(100) {
            let fired = w.advance(now);
            assert!(!fired.contains(&"late"), "fired early at {now}");
        }
        assert!(w.advance(1_000).is_empty());
        assert_eq!(w.advance(1_100), vec!["late"]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_long_jump_fires_everything_due_in_deadline_order_and_past_deadlines_fire_next() {
        let mut w = TimerWheel::new(10, 4, 1_000);
        for (i, deadline) in [5_000u64, 1_200, 3_000, 90_000].iter().enumerate() {
            w.insert(*deadline, i);
        }
        assert_eq!(w.advance(10_000), vec![1, 2, 0]);
        w.insert(5, 9);
        assert_eq!(
            w.advance(10_010),
            vec![9],
            "a deadline in the past fires at the next tick"
        );
        assert_eq!(w.advance(90_000), vec![3]);
    }
}
