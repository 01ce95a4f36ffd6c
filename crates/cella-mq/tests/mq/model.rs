//! Model-based test: random operation sequences run against the real broker and against a
//! small in-memory model of what consumer groups promise; every answer is checked.
//!
//! The model knows what was sent, which deliveries are in flight to whom until when, and
//! what was acknowledged. It checks: a delivered message is the one sent at its queue
//! offset, from a queue the member holds, passing its tag filter, not acknowledged already
//! and not in flight to another member; on ordered topics every earlier matching message
//! of the queue is done; ack and nack succeed exactly when the model has the delivery in
//! flight to that member. At the end one member drains the topic and every matching message
//! must have been acknowledged, with the group's committed offsets at the queues' ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cella_base::ManualClock;
use cella_core::Core;
use cella_mq::{Broker, FlushPolicy, PullRequest, SendRequest};
use proptest::prelude::*;

use crate::common::{open_broker, start_core, test_config};

const QUEUES: u32 = 3;
const MEMBERS: [&str; 3] = ["a", "b", "c"];
const SESSION: Duration = Duration::from_secs(10);
const ACK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Op {
    Send {
        queue: u32,
        tag: u8,
    },
    Pull {
        member: usize,
        max: u32,
    },
    Ack {
        member: usize,
        pick: usize,
    },
    Nack {
        member: usize,
        pick: usize,
    },
    AckUnknown {
        member: usize,
        queue: u32,
        offset: u64,
    },
    Leave {
        member: usize,
    },
    Advance {
        secs: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..QUEUES, 0..2u8).prop_map(|(queue, tag)| Op::Send { queue, tag }),
        4 => (0..3usize, 0..4u32).prop_map(|(member, max)| Op::Pull { member, max }),
        3 => (0..3usize, any::<usize>()).prop_map(|(member, pick)| Op::Ack { member, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(member, pick)| Op::Nack { member, pick }),
        1 => (0..3usize, 0..QUEUES, 0..12u64).prop_map(|(member, queue, offset)| Op::AckUnknown { member, queue, offset }),
        1 => (0..3usize).prop_map(|member| Op::Leave { member }),
        1 => prop_oneof![Just(1u64), Just(11), Just(31)].prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Restart),
    ]
}

/// What the group promises, kept naively.
#[derive(Default)]
struct Model {
    /// Tags of the messages sent, per queue, by queue offset.
    sent: Vec<Vec<u8>>,
    /// (queue, offset) → (member, deadline).
    inflight: HashMap<(u32, u64), (String, Duration)>,
    acked: HashSet<(u32, u64)>,
    /// Member → last heartbeat.
    members: BTreeMap<String, Duration>,
}

impl Model {
    fn matches(&self, filter: Option<u8>, queue: u32, offset: u64) -> bool {
        filter.is_none_or(|t| self.sent[queue as usize][offset as usize] == t)
    }

    /// Mirrors the broker's refresh: silent members leave, late deliveries expire.
    fn refresh(&mut self, now: Duration) {
        self.members
            .retain(|_, seen| now.saturating_sub(*seen) < SESSION);
        let members = &self.members;
        self.inflight
            .retain(|_, (m, deadline)| *deadline > now && members.contains_key(m));
    }

    fn holds(&self, member: &str, queue: u32) -> bool {
        let names: Vec<&String> = self.members.keys().collect();
        names
            .iter()
            .position(|m| *m == member)
            .is_some_and(|i| queue as usize % names.len() == i)
    }

    fn owned_by(&self, member: &str) -> Vec<(u32, u64)> {
        let mut v: Vec<_> = self
            .inflight
            .iter()
            .filter(|(_, (m, _))| m == member)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }
}

struct Env {
    runtime: tokio::runtime::Runtime,
    core: Core,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let core = runtime.block_on(start_core(dir.path()));
        Env {
            runtime,
            core,
            _dir: dir,
        }
    })
}

async fn run_case(ops: Vec<Op>, ordered: bool, filter: Option<u8>) -> Result<(), TestCaseError> {
    static CASE: AtomicU32 = AtomicU32::new(0);
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let (topic, group) = (format!("model-{case}"), format!("group-{case}"));
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut broker: Broker = open_broker(dir.path(), test_config(), &env.core, &clock);
    broker
        .create_topic(&topic, QUEUES, ordered, FlushPolicy::Async)
        .await
        .unwrap();
    let tags: Vec<String> = filter.map(|t| vec![format!("t{t}")]).unwrap_or_default();
    let mut model = Model {
        sent: vec![Vec::new(); QUEUES as usize],
        ..Model::default()
    };
    let pull = |member: &str, max: u32| PullRequest {
        group: group.clone(),
        topic: topic.clone(),
        member: member.into(),
        tags: tags.clone(),
        max,
        ..Default::default()
    };

    for op in ops {
        let now = clock.now_for_test();
        match op {
            Op::Send { queue, tag } => {
                let offset = model.sent[queue as usize].len() as u64;
                let r = broker
                    .send(SendRequest {
                        topic: topic.clone(),
                        queue_id: Some(queue),
                        tag: format!("t{tag}"),
                        body: format!("{queue}-{offset}").into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                prop_assert_eq!((r.queue_id, r.queue_offset), (queue, offset));
                model.sent[queue as usize].push(tag);
            }
            Op::Pull { member, max } => {
                let member = MEMBERS[member];
                model.refresh(now);
                model.members.insert(member.to_string(), now);
                let got = broker.pull(&pull(member, max)).await.unwrap();
                prop_assert!(got.len() <= max.max(1) as usize);
                let mut batch: BTreeSet<(u32, u64)> = BTreeSet::new();
                for m in got {
                    let key = (m.queue_id, m.queue_offset);
                    prop_assert_eq!(
                        String::from_utf8_lossy(&m.body).into_owned(),
                        format!("{}-{}", key.0, key.1)
                    );
                    prop_assert!(
                        model.holds(member, key.0),
                        "{member} got {key:?} from a queue it does not hold"
                    );
                    prop_assert!(
                        model.matches(filter, key.0, key.1),
                        "{key:?} does not pass the filter"
                    );
                    prop_assert!(
                        !model.acked.contains(&key),
                        "{key:?} delivered after its ack"
                    );
                    prop_assert!(
                        !model.inflight.contains_key(&key),
                        "{key:?} is in flight already"
                    );
                    if ordered {
                        for earlier in 0..key.1 {
                            let e = (key.0, earlier);
                            prop_assert!(
                                !model.matches(filter, e.0, e.1)
                                    || model.acked.contains(&e)
                                    || batch.contains(&e),
                                "ordered: {key:?} delivered before {e:?} was done"
                            );
                        }
                    }
                    batch.insert(key);
                    model.inflight.insert(key, (member.to_string(), now + ACK));
                }
            }
            Op::Ack { member, pick } | Op::Nack { member, pick } => {
                let name = MEMBERS[member];
                // Pick among deliveries still valid; refresh only if the broker is called.
                let live = model
                    .members
                    .get(name)
                    .is_some_and(|seen| now.saturating_sub(*seen) < SESSION);
                let owned: Vec<_> = model
                    .owned_by(name)
                    .into_iter()
                    .filter(|k| model.inflight[k].1 > now)
                    .collect();
                let Some(&(queue, offset)) = owned.get(pick % owned.len().max(1)).filter(|_| live)
                else {
                    continue;
                };
                model.refresh(now);
                if matches!(op, Op::Ack { .. }) {
                    broker
                        .ack(&group, name, &topic, queue, offset)
                        .await
                        .unwrap();
                    model.inflight.remove(&(queue, offset));
                    model.acked.insert((queue, offset));
                } else {
                    broker
                        .nack(&group, name, &topic, queue, offset)
                        .await
                        .unwrap();
                    model.inflight.retain(|(q, o), _| {
                        !(*q == queue && (*o == offset || (ordered && *o > offset)))
                    });
                }
            }
            Op::AckUnknown {
                member,
                queue,
                offset,
            } => {
                let name = MEMBERS[member];
                model.refresh(now);
                let expected_ok = model
                    .inflight
                    .get(&(queue, offset))
                    .is_some_and(|(m, _)| m == name);
                let result = broker.ack(&group, name, &topic, queue, offset).await;
                let group_known =
                    !model.members.is_empty() || !model.acked.is_empty() || result.is_ok();
                if expected_ok {
                    prop_assert!(
                        result.is_ok(),
                        "ack of a delivery in flight failed: {result:?}"
                    );
                    model.inflight.remove(&(queue, offset));
                    model.acked.insert((queue, offset));
                } else {
                    prop_assert!(
                        result.is_err() || !group_known,
                        "ack of {queue}/{offset} by {name} accepted"
                    );
                }
            }
            Op::Leave { member } => {
                let name = MEMBERS[member];
                let result = broker.leave(&group, name);
                prop_assert_eq!(result.is_ok(), model.members.remove(name).is_some());
                model.inflight.retain(|_, (m, _)| m != name);
            }
            Op::Advance { secs } => clock.advance(Duration::from_secs(secs)),
            Op::Restart => {
                // Progress above the saved committed offset may be delivered again.
                let committed: HashMap<u32, u64> = match broker.lag(&group).await {
                    Ok(lag) => lag.into_iter().map(|l| (l.queue_id, l.committed)).collect(),
                    Err(_) => HashMap::new(),
                };
                broker.close();
                drop(broker);
                broker = open_broker(dir.path(), test_config(), &env.core, &clock);
                model
                    .acked
                    .retain(|(q, o)| *o < committed.get(q).copied().unwrap_or(0));
                model.inflight.clear();
                model.members.clear();
            }
        }
    }

    // Drain: everyone falls silent; one member takes every queue and acks all it gets.
    clock.advance(SESSION + ACK);
    for _ in 0..500 {
        let got = broker.pull(&pull("drainer", 16)).await.unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            broker
                .ack(&group, "drainer", &topic, m.queue_id, m.queue_offset)
                .await
                .unwrap();
            model.acked.insert((m.queue_id, m.queue_offset));
        }
    }
    for (queue, sent) in model.sent.iter().enumerate() {
        for offset in 0..sent.len() as u64 {
            if model.matches(filter, queue as u32, offset) {
                prop_assert!(
                    model.acked.contains(&(queue as u32, offset)),
                    "{queue}/{offset} never acked"
                );
            }
        }
    }
    for lag in broker.lag(&group).await.unwrap() {
        prop_assert_eq!(
            lag.committed,
            lag.end,
            "queue {} not fully committed",
            lag.queue_id
        );
    }
    broker.close();
    Ok(())
}

trait NowForTest {
    fn now_for_test(&self) -> Duration;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> Duration {
        cella_base::Clock::now(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_broker_keeps_the_promises_of_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        ordered in any::<bool>(),
        filter in prop_oneof![Just(None), Just(Some(0u8))],
    ) {
        env().runtime.block_on(run_case(ops, ordered, filter))?;
    }
}
