use super::*;
use proptest::prelude::*;
use std::time::Duration;

/// Builds histories with times given in milliseconds from a fixed origin.
struct Builder {
    origin: Instant,
    history: History,
}

impl Builder {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            history: History::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms)
    }

    /// `ret`: `Some((ms, output))` for a returned op, `None` for an unknown outcome.
    fn op(
        &mut self,
        client: ClientId,
        call: Call,
        invoked: u64,
        ret: Option<(u64, Output)>,
    ) -> &mut Self {
        let completion = match ret {
            Some((ms, output)) => Completion::Returned {
                at: self.at(ms),
                output,
            },
            None => Completion::Unknown,
        };
        self.history.push(Operation {
            client,
            call,
            invoked: self.at(invoked),
            completion,
            note: None,
        });
        self
    }

    fn put(
        &mut self,
        client: ClientId,
        key: &str,
        value: &str,
        invoked: u64,
        returned: u64,
    ) -> &mut Self {
        self.op(
            client,
            put_call(key, value),
            invoked,
            Some((returned, Output::Put)),
        )
    }

    fn get(
        &mut self,
        client: ClientId,
        key: &str,
        seen: Option<&str>,
        invoked: u64,
        returned: u64,
    ) -> &mut Self {
        self.op(
            client,
            get_call(key),
            invoked,
            Some((returned, Output::Get(seen.map(str::to_string)))),
        )
    }

    fn cas(
        &mut self,
        client: ClientId,
        key: &str,
        expected: Option<&str>,
        new: &str,
        invoked: u64,
        outcome: Option<(u64, bool)>,
    ) -> &mut Self {
        let call = Call::Cas {
            key: key.into(),
            expected: expected.map(str::to_string),
            new: new.into(),
        };
        self.op(
            client,
            call,
            invoked,
            outcome.map(|(ms, applied)| (ms, Output::Cas(applied))),
        )
    }

    fn check(&self) -> Result<CheckReport, CheckError> {
        check(&self.history)
    }
}

fn put_call(key: &str, value: &str) -> Call {
    Call::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn get_call(key: &str) -> Call {
    Call::Get { key: key.into() }
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(check(&History::new()), Ok(CheckReport::default()));
}

#[test]
fn accepts_sequential_history() {
    let mut b = Builder::new();
    b.get(1, "k", None, 0, 1)
        .put(1, "k", "a", 2, 3)
        .get(2, "k", Some("a"), 4, 5)
        .cas(2, "k", Some("a"), "b", 6, Some((7, true)))
        .cas(1, "k", Some("a"), "c", 8, Some((9, false)))
        .get(1, "k", Some("b"), 10, 11);
    let report = b
        .check()
        .expect("a sequential register history is linearizable");
    assert_eq!(report.keys, 1);
    assert_eq!(report.operations, 6);
}

#[test]
fn rejects_stale_read() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .put(1, "k", "b", 2, 3)
        .get(2, "k", Some("a"), 4, 5);
    let err = b
        .check()
        .expect_err("reading a after b was acknowledged is stale");
    let CheckError::NotLinearizable { key, explanation } = err else {
        panic!("unexpected {err}")
    };
    assert_eq!(key, "k");
    assert!(explanation.contains("get(k)"), "{explanation}");
}

#[test]
fn rejects_lost_write() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1).get(2, "k", None, 2, 3);
    assert!(matches!(b.check(), Err(CheckError::NotLinearizable { .. })));
}

#[test]
fn rejects_a_cas_that_succeeded_on_a_mismatch() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .cas(2, "k", None, "b", 2, Some((3, true)));
    assert!(matches!(b.check(), Err(CheckError::NotLinearizable { .. })));
}

#[test]
fn rejects_two_cas_winners_from_the_same_value() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .cas(2, "k", Some("a"), "b", 2, Some((10, true)))
        .cas(3, "k", Some("a"), "c", 3, Some((10, true)));
    assert!(matches!(b.check(), Err(CheckError::NotLinearizable { .. })));
}

#[test]
fn concurrent_operations_may_take_effect_in_either_order() {
    // Two overlapping puts; readers after both may see only the one ordered last, and every
    // later reader must agree with the first.
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 10)
        .put(2, "k", "b", 1, 9)
        .get(3, "k", Some("a"), 11, 12)
        .get(3, "k", Some("a"), 13, 14);
    b.check().expect("b then a is a valid order");

    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 10)
        .put(2, "k", "b", 1, 9)
        .get(3, "k", Some("a"), 11, 12)
        .get(4, "k", Some("b"), 13, 14);
    assert!(
        b.check().is_err(),
        "after both returned the value cannot flip back"
    );
}

#[test]
fn a_read_concurrent_with_a_write_may_see_old_or_new() {
    for seen in [None, Some("a")] {
        let mut b = Builder::new();
        b.put(1, "k", "a", 0, 10).get(2, "k", seen, 2, 8);
        b.check().expect("a concurrent read may go either way");
    }
}

#[test]
fn reads_must_not_go_back_in_time_while_a_write_is_in_flight() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 100)
        .get(2, "k", Some("a"), 10, 20)
        .get(2, "k", None, 30, 40);
    assert!(
        b.check().is_err(),
        "once a reader saw a, a later read cannot see the old value"
    );
}

#[test]
fn unknown_write_may_take_effect_late() {
    let mut b = Builder::new();
    b.op(1, put_call("k", "a"), 0, None)
        .get(2, "k", None, 10, 11)
        .get(2, "k", Some("a"), 50, 51);
    b.check()
        .expect("an unknown write may land long after its invocation");
}

#[test]
fn unknown_write_may_never_take_effect() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .op(1, put_call("k", "b"), 2, None)
        .get(2, "k", Some("a"), 10, 11);
    let report = b.check().expect("an unknown write may have been lost");
    assert_eq!(report.unknown, 1);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    let mut b = Builder::new();
    b.get(2, "k", Some("a"), 0, 1)
        .op(1, put_call("k", "a"), 5, None);
    assert!(b.check().is_err());
}

#[test]
fn unknown_cas_applies_only_where_it_would_succeed() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .cas(2, "k", Some("a"), "b", 2, None)
        .get(3, "k", Some("b"), 10, 11);
    b.check().expect("the unknown cas applied");

    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .cas(2, "k", Some("x"), "b", 2, None)
        .get(3, "k", Some("b"), 10, 11);
    assert!(b.check().is_err(), "the cas could never have applied");
}

#[test]
fn failed_operations_and_unknown_reads_are_ignored() {
    let mut b = Builder::new();
    b.put(1, "k", "a", 0, 1)
        .op(2, get_call("k"), 2, None)
        .get(3, "k", Some("a"), 10, 11);
    b.history.push(Operation {
        client: 4,
        call: put_call("k", "never"),
        invoked: b.at(3),
        completion: Completion::Failed,
        note: None,
    });
    let report = b
        .check()
        .expect("ignored operations do not constrain the history");
    assert_eq!(report.ignored, 2);
    assert_eq!(report.operations, 2);
}

#[test]
fn keys_are_independent() {
    let mut b = Builder::new();
    b.put(1, "x", "1", 0, 1)
        .put(1, "y", "2", 2, 3)
        .get(2, "x", Some("1"), 4, 5)
        .get(2, "y", Some("2"), 6, 7);
    assert_eq!(b.check().expect("linearizable").keys, 2);

    b.get(3, "y", None, 8, 9);
    let err = b.check().expect_err("y lost its write");
    assert!(
        matches!(err, CheckError::NotLinearizable { ref key, .. } if key == "y"),
        "{err}"
    );
}

#[test]
fn malformed_outputs_are_reported() {
    let mut b = Builder::new();
    b.op(1, put_call("k", "a"), 0, Some((1, Output::Cas(true))));
    assert!(matches!(
        b.check(),
        Err(CheckError::Malformed { op: 0, .. })
    ));

    let mut b = Builder::new();
    b.put(1, "k", "a", 5, 1);
    assert!(matches!(
        b.check(),
        Err(CheckError::Malformed { op: 0, .. })
    ));
}

#[test]
fn history_recording_marks_pending_operations_unknown() {
    let mut history = History::new();
    let done = history.invoke(1, put_call("k", "a"));
    let pending = history.invoke(2, put_call("k", "b"));
    let failed = history.invoke(3, put_call("k", "c"));
    history.returned(done, Output::Put);
    history.failed(failed);
    assert!(matches!(
        history.operations()[done].completion,
        Completion::Returned { .. }
    ));
    assert_eq!(
        history.operations()[pending].completion,
        Completion::Unknown
    );
    assert_eq!(history.operations()[failed].completion, Completion::Failed);
    let report = check(&history).expect("linearizable");
    assert_eq!((report.unknown, report.ignored), (1, 1));
}

/// A random sequential run of the register model: each op takes effect at `10 * i` ms and
/// its interval is stretched around that point, so the history is linearizable by
/// construction. Some writes lose their outcome and some reads are dropped.
fn sequential_history(
    keys: usize,
    steps: Vec<(u8, u8, u16, u16, u8)>,
    lose_outcomes: bool,
) -> (History, Vec<Option<usize>>) {
    let origin = Instant::now() + Duration::from_secs(1);
    let mut state: Vec<Option<String>> = vec![None; keys];
    let mut history = History::new();
    let mut read_ops = Vec::new();
    for (i, (kind, key, before, after, fate)) in steps.into_iter().enumerate() {
        let key_index = key as usize % keys;
        let key = format!("k{key_index}");
        let point = 10_000 * (i as u64 + 10);
        let invoked = origin + Duration::from_micros(point - u64::from(before) * 2);
        let returned = origin + Duration::from_micros(point + u64::from(after) * 2);
        let value = format!("v{i}");
        let current = state[key_index].clone();
        let (call, output) = match kind % 3 {
            0 => {
                state[key_index] = Some(value.clone());
                (Call::Put { key, value }, Output::Put)
            }
            1 => {
                read_ops.push(Some(history.len()));
                (Call::Get { key }, Output::Get(current))
            }
            _ => {
                // Expect the current value half the time, else a value that is not there.
                let expected = if fate % 2 == 0 {
                    current.clone()
                } else {
                    Some(format!("stale{i}"))
                };
                let applied = expected == current;
                if applied {
                    state[key_index] = Some(value.clone());
                }
                (
                    Call::Cas {
                        key,
                        expected,
                        new: value,
                    },
                    Output::Cas(applied),
                )
            }
        };
        let unknown = lose_outcomes && fate % 7 == 0;
        let completion = if unknown {
            Completion::Unknown
        } else {
            Completion::Returned {
                at: returned,
                output,
            }
        };
        history.push(Operation {
            client: (i % 6) as ClientId,
            call,
            invoked,
            completion,
            note: None,
        });
    }
    (history, read_ops)
}

fn step_strategy(len: usize) -> impl Strategy<Value = Vec<(u8, u8, u16, u16, u8)>> {
    // Intervals stretch up to 40 ms each way around points 10 ms apart: up to ~8 ops overlap.
    prop::collection::vec(
        (
            any::<u8>(),
            any::<u8>(),
            0u16..20_000,
            0u16..20_000,
            any::<u8>(),
        ),
        1..len,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sequential_runs_with_overlapping_intervals_are_linearizable(
        keys in 1usize..4,
        steps in step_strategy(120),
        lose_outcomes in any::<bool>(),
    ) {
        let (history, _) = sequential_history(keys, steps, lose_outcomes);
        if let Err(err) = check(&history) {
            prop_assert!(false, "{}", err);
        }
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected(
        keys in 1usize..3,
        steps in step_strategy(60),
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut history, reads) = sequential_history(keys, steps, false);
        prop_assume!(!reads.is_empty());
        let victim = reads[pick.index(reads.len())].expect("recorded read");
        if let Completion::Returned { output, .. } = &mut history.ops[victim].completion {
            *output = Output::Get(Some("never-written".into()));
        }
        let rejected = matches!(check(&history), Err(CheckError::NotLinearizable { .. }));
        prop_assert!(rejected, "a read of a value nobody wrote was accepted");
    }
}

/// The size the fault tests produce: 10 keys × 300 operations, six clients, a share of
/// unknown outcomes; must check in well under a second even unoptimized.
#[test]
fn checks_a_fault_test_sized_history_quickly() {
    let steps: Vec<(u8, u8, u16, u16, u8)> = (0..3000u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761);
            (
                (x >> 3) as u8,
                (x >> 11) as u8 % 10,
                (x >> 7) as u16 % 20_000,
                (x >> 17) as u16 % 20_000,
                (x >> 23) as u8,
            )
        })
        .collect();
    let (history, _) = sequential_history(10, steps, true);
    let started = Instant::now();
    let report = check(&history).expect("linearizable by construction");
    let took = started.elapsed();
    println!("checked {report:?} in {took:?}");
    assert_eq!(report.keys, 10);
    assert!(took < Duration::from_secs(5), "checking took {took:?}");
}

/// A violation late in a large history with unknown outcomes must still be found quickly:
/// refuting it explores every linearization of the prefix.
#[test]
fn refutes_a_late_violation_in_a_large_history_quickly() {
    let steps: Vec<(u8, u8, u16, u16, u8)> = (0..600u32)
        .map(|i| {
            let x = i.wrapping_mul(2_246_822_519).rotate_left(13);
            (
                (x >> 3) as u8,
                0,
                (x >> 7) as u16 % 20_000,
                (x >> 17) as u16 % 20_000,
                (x >> 23) as u8,
            )
        })
        .collect();
    let (mut history, reads) = sequential_history(1, steps, true);
    let last_read = reads
        .iter()
        .flatten()
        .rev()
        .find(|&&op| matches!(history.ops[op].completion, Completion::Returned { .. }))
        .copied()
        .expect("some returned reads");
    history.ops[last_read].completion = Completion::Returned {
        at: history.ops[last_read].invoked,
        output: Output::Get(Some("never-written".into())),
    };
    let started = Instant::now();
    let err = check(&history).expect_err("the forged read is not linearizable");
    let took = started.elapsed();
    println!("refuted in {took:?}:\n{err}");
    assert!(took < Duration::from_secs(10), "refuting took {took:?}");
}
