//! The snowflake generator's decisions, without effects: given the clock's reading, issue
//! the next (timestamp, sequence), wait, reserve more time, or refuse.
//!
//! Rules (times in ms since 1970):
//! - Monotonic: every issued pair is larger than the previous one.
//! - Sequence overflow within one ms: wait for the next ms.
//! - Clock behind the last issued timestamp by at most `max_backstep_ms`: wait until it
//!   catches up. Further behind: refuse (the caller counts an alarm).
//! - High-water mark: a timestamp is issued only below `reserved_until`, which the driver
//!   persists in the core before raising it. A restart (or the next holder of the worker
//!   id) resumes from the persisted mark, so it never reissues a timestamp; waiting out the
//!   mark at start may take up to the reservation window, so the backstep tolerance is
//!   widened by that window until the first id is issued.
//! - Reserve ahead: once the clock reaches the middle of the reserved window, ask for a new
//!   window `reserve_ms` ahead of the clock, so a busy generator persists about twice per
//!   window rather than once per id.

use crate::error::{IdgenError, IdgenResult};

/// Tunables of a snowflake generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GeneratorConfig {
    /// A clock step back up to this many ms is waited out; a larger one is refused.
    pub max_backstep_ms: u64,
    /// How far ahead of the clock the persisted high-water mark is set; also the longest
    /// a restarted generator may have to wait before its first id.
    pub reserve_ms: u64,
    /// TTL of the lease that holds the worker id, in seconds.
    pub worker_lease_ttl_secs: i64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            max_backstep_ms: 10,
            reserve_ms: 2000,
            worker_lease_ttl_secs: 10,
        }
    }
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Use this timestamp and sequence.
    Issue { unix_ms: u64, sequence: u64 },
    /// Wait until the clock reads at least this, then ask again.
    WaitUntil(u64),
    /// Persist a high-water mark of at least `until`, call [`Sequencer::reserved`], ask again.
    Reserve { until: u64 },
}

/// The generator's state; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Sequencer {
    max_sequence: u64,
    max_backstep_ms: u64,
    reserve_ms: u64,
    /// The largest timestamp issued (or the persisted mark at start).
    last_ms: u64,
    /// The next sequence at `last_ms`; above `max_sequence` when it is used up.
    next_sequence: u64,
    /// Timestamps below this are covered by the persisted high-water mark.
    reserved_until: u64,
    /// The backstep tolerated right now (widened until the first id after a start).
    tolerance_ms: u64,
}

impl Sequencer {
    /// A generator resuming after `persisted_mark` (0 for a never-used worker id).
    pub(crate) fn resume(persisted_mark: u64, max_sequence: u64, config: &GeneratorConfig) -> Self {
        Sequencer {
            max_sequence,
            max_backstep_ms: config.max_backstep_ms,
            reserve_ms: config.reserve_ms.max(2),
            last_ms: persisted_mark,
            next_sequence: max_sequence.saturating_add(1),
            reserved_until: persisted_mark,
            tolerance_ms: config.max_backstep_ms.saturating_add(config.reserve_ms),
        }
    }

    /// Decides the next step at clock reading `now`.
    pub(crate) fn step(&mut self, now: u64) -> IdgenResult<Step> {
        if now < self.last_ms {
            let behind = self.last_ms - now;
            if behind > self.tolerance_ms {
                return Err(IdgenError::ClockMovedBackwards {
                    behind_ms: behind,
                    max_wait_ms: self.tolerance_ms,
                });
            }
            return Ok(Step::WaitUntil(self.last_ms));
        }
        let sequence = if now == self.last_ms {
            if self.next_sequence > self.max_sequence {
                return Ok(Step::WaitUntil(self.last_ms + 1));
            }
            self.next_sequence
        } else {
            0
        };
        if now.saturating_add(self.reserve_ms / 2) >= self.reserved_until {
            // Past the middle of the window (or beyond it): move the mark first.
            return Ok(Step::Reserve {
                until: now.saturating_add(self.reserve_ms),
            });
        }
        self.last_ms = now;
        self.next_sequence = sequence + 1;
        self.tolerance_ms = self.max_backstep_ms;
        Ok(Step::Issue {
            unix_ms: now,
            sequence,
        })
    }

    /// Records that a high-water mark of `until` is persisted.
    pub(crate) fn reserved(&mut self, until: u64) {
        self.reserved_until = self.reserved_until.max(until);
    }

    /// The persisted high-water mark this state relies on.
    #[cfg(test)]
    pub(crate) fn reserved_until(&self) -> u64 {
        self.reserved_until
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use cella_base::{Clock, ManualClock};

    use super::*;

    const START: u64 = 1_700_000_000_000;

    fn config() -> GeneratorConfig {
        GeneratorConfig {
            max_backstep_ms: 10,
            reserve_ms: 100,
            worker_lease_ttl_secs: 10,
        }
    }

    fn now(clock: &ManualClock) -> u64 {
        clock.now().as_millis() as u64
    }

    fn clock_at(ms: u64) -> ManualClock {
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(ms));
        clock
    }

    /// Steps until an id is issued, reserving and advancing the clock as a driver would.
    fn issue(
        s: &mut Sequencer,
        clock: &ManualClock,
        persisted: &mut u64,
    ) -> IdgenResult<(u64, u64)> {
        for _ in 0..100_000 {
            match s.step(now(clock))? {
                Step::Issue { unix_ms, sequence } => {
                    assert!(
                        unix_ms < *persisted,
                        "issued {unix_ms} at or past the mark {persisted}"
                    );
                    return Ok((unix_ms, sequence));
                }
                Step::WaitUntil(t) => {
                    assert!(t > now(clock));
                    clock.advance(Duration::from_millis(1));
                }
                Step::Reserve { until } => {
                    *persisted = until;
                    s.reserved(until);
                }
            }
        }
        panic!("no id within 100000 steps");
    }

    #[test]
    fn sequence_overflow_waits_for_the_next_ms() {
        let clock = clock_at(START);
        let mut s = Sequencer::resume(0, 3, &config());
        let mut persisted = 0;
        let ids: Vec<_> = (0..6)
            .map(|_| issue(&mut s, &clock, &mut persisted).expect("issued"))
            .collect();
        assert_eq!(
            ids,
            [
                (START, 0),
                (START, 1),
                (START, 2),
                (START, 3),
                (START + 1, 0),
                (START + 1, 1)
            ]
        );
    }

    #[test]
    fn small_step_back_waits_and_large_one_refuses() {
        let clock = clock_at(START);
        let mut s = Sequencer::resume(0, 4095, &config());
        let mut persisted = 0;
        issue(&mut s, &clock, &mut persisted).expect("first");
        clock.rewind(Duration::from_millis(10));
        assert_eq!(s.step(now(&clock)), Ok(Step::WaitUntil(START)));
        clock.rewind(Duration::from_millis(1));
        assert_eq!(
            s.step(now(&clock)),
            Err(IdgenError::ClockMovedBackwards {
                behind_ms: 11,
                max_wait_ms: 10
            })
        );
        // Refusing changed nothing: once the clock is back, ids continue after the last.
        clock.advance(Duration::from_millis(11));
        assert_eq!(issue(&mut s, &clock, &mut persisted), Ok((START, 1)));
    }

    #[test]
    fn restart_resumes_after_the_persisted_mark() {
        let clock = clock_at(START);
        let mut s = Sequencer::resume(0, 4095, &config());
        let mut persisted = 0;
        let (first, _) = issue(&mut s, &clock, &mut persisted).expect("first");
        assert!(persisted > first);
        // Restart with the clock stepped back 5 ms: the mark is 105 ms ahead, within the
        // reservation window plus the backstep, so it waits.
        clock.rewind(Duration::from_millis(5));
        let mut restarted = Sequencer::resume(persisted, 4095, &config());
        assert!(matches!(
            restarted.step(now(&clock)),
            Ok(Step::WaitUntil(_))
        ));
        let (next, _) = issue(&mut restarted, &clock, &mut persisted).expect("after the mark");
        assert!(
            next > first + config().reserve_ms - 1,
            "{next} must follow the mark"
        );
        // A restart whose clock is further behind than window + backstep refuses.
        let mut far = Sequencer::resume(persisted, 4095, &config());
        clock.rewind(Duration::from_millis(1000));
        assert!(matches!(
            far.step(now(&clock)),
            Err(IdgenError::ClockMovedBackwards { .. })
        ));
    }

    #[test]
    fn reservation_moves_ahead_before_the_window_ends() {
        let clock = clock_at(START);
        let mut s = Sequencer::resume(0, 4095, &config());
        let mut persisted = 0;
        issue(&mut s, &clock, &mut persisted).expect("first");
        assert_eq!(persisted, START + 100);
        clock.advance(Duration::from_millis(49));
        issue(&mut s, &clock, &mut persisted).expect("inside the first half");
        assert_eq!(persisted, START + 100);
        clock.advance(Duration::from_millis(1));
        issue(&mut s, &clock, &mut persisted).expect("at the middle");
        assert_eq!(persisted, START + 150);
        assert_eq!(s.reserved_until(), START + 150);
    }

    /// Millions of ids from one worker id through clock steps back (small and large) and
    /// restarts from the persisted mark: every (timestamp, sequence) pair is unique and,
    /// within one run of the generator, increasing.
    #[test]
    fn millions_of_ids_unique_through_steps_back_and_restarts() {
        let clock = clock_at(START);
        let max_sequence = 4095;
        let mut persisted = 0;
        let mut s = Sequencer::resume(persisted, max_sequence, &config());
        let mut seen = HashSet::with_capacity(2_100_000);
        let mut last = (0, 0);
        let mut refused = 0;
        for i in 0..2_000_000u64 {
            if i % 250_000 == 0 {
                s = Sequencer::resume(persisted, max_sequence, &config());
                clock.rewind(Duration::from_millis(40));
                last = (0, 0);
            }
            if i % 10_007 == 0 {
                clock.rewind(Duration::from_millis(i % 8));
            }
            if i % 100_003 == 0 {
                clock.rewind(Duration::from_millis(30));
                if s.step(now(&clock)).is_err() {
                    refused += 1;
                }
                clock.advance(Duration::from_millis(30));
            }
            if i % 1_000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
            let id = issue(&mut s, &clock, &mut persisted).expect("issued");
            assert!(id > last, "{id:?} after {last:?}");
            last = id;
            assert!(seen.insert(id), "duplicate {id:?} at {i}");
        }
        assert!(refused > 0, "large steps back were refused at least once");
    }
}
