//! Model-based test: random operation sequences run against the real broker and against a
//! small in-memory model of what consumer groups promise; every answer is checked.
//!
//! The model knows what was sent, which deliveries are in flight to whom until when, and
//! what was acknowledged. It checks: a delivered message is the one sent at its queue
//! offset, from a queue the member holds, passing its tag filter, not acknowledged already
//! and not in flight to another member; on ordered topics every earlier matching message
//! of the queue is done; ack and nack succeed exactly when the model has the delivery in
//! flight to that member, and a batch of acks succeeds exactly when all of them would (or
//! acks none); batched sends land at the queue offsets the model expects, in order; a
//! message nacked on an unordered topic comes back only through the
//! group's retry topic. At the end one member drains the topic and its retries, and every
//! matching message must have been acknowledged or dead-lettered (after a nack), with the
//! group's committed offsets at the queues' ends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cella_base::ManualClock;
use cella_core::Core;
use cella_mq::{Broker, Delivery, FlushPolicy, MqConfig, PullRequest, SendRequest};
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
    /// One SendBatch of messages to (queue, tag).
    SendBatch {
        messages: Vec<(u32, u8)>,
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
    /// One AckBatch of picked deliveries, plus maybe an arbitrary (queue, offset).
    AckBatch {
        member: usize,
        picks: Vec<usize>,
        extra: Option<(u32, u64)>,
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
        2 => proptest::collection::vec((0..QUEUES, 0..2u8), 1..5).prop_map(|messages| Op::SendBatch { messages }),
        4 => (0..3usize, 0..4u32).prop_map(|(member, max)| Op::Pull { member, max }),
        3 => (0..3usize, any::<usize>()).prop_map(|(member, pick)| Op::Ack { member, pick }),
        1 => (0..3usize, any::<usize>()).prop_map(|(member, pick)| Op::Nack { member, pick }),
        1 => (0..3usize, 0..QUEUES, 0..12u64).prop_map(|(member, queue, offset)| Op::AckUnknown { member, queue, offset }),
        2 => (0..3usize, proptest::collection::vec(any::<usize>(), 0..4), proptest::option::of((0..QUEUES, 0..12u64)))
            .prop_map(|(member, picks, extra)| Op::AckBatch { member, picks, extra }),
        1 => (0..3usize).prop_map(|member| Op::Leave { member }),
        1 => prop_oneof![Just(1u64), Just(11), Just(31)].prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Restart),
    ]
}

/// Where a delivery came from: (topic, queue, offset).
type Key = (String, u32, u64);

/// What the group promises, kept naively.
#[derive(Default)]
struct Model {
    /// Tags of the messages sent, per queue, by queue offset.
    sent: Vec<Vec<u8>>,
    /// Delivery → (member, deadline, body).
    inflight: HashMap<Key, (String, Duration, String)>,
    acked: HashSet<Key>,
    /// Bodies acknowledged from any topic (the topic itself or the group's retry topic).
    handled: HashSet<String>,
    /// Bodies nacked on an unordered topic: they must come back through the retry topic.
    nacked: HashSet<String>,
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
            .retain(|_, (m, deadline, _)| *deadline > now && members.contains_key(m));
    }

    fn holds(&self, member: &str, queue: u32, queues: u32) -> bool {
        let names: Vec<&String> = self.members.keys().collect();
        names
            .iter()
            .position(|m| *m == member)
            .is_some_and(|i| queue as usize % names.len() == i && queue < queues)
    }

    fn owned_by(&self, member: &str, now: Duration) -> Vec<Key> {
        let mut v: Vec<Key> = self
            .inflight
            .iter()
            .filter(|(_, (m, deadline, _))| m == member && *deadline > now)
            .map(|(k, _)| k.clone())
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

fn config() -> MqConfig {
    MqConfig {
        retry_backoff_ms: vec![1_000, 2_000],
        max_retries: 2,
        ..test_config()
    }
}

async fn run_case(ops: Vec<Op>, ordered: bool, filter: Option<u8>) -> Result<(), TestCaseError> {
    static CASE: AtomicU32 = AtomicU32::new(0);
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let (topic, group) = (format!("model-{case}"), format!("group-{case}"));
    let retry_topic = format!("%RETRY%{group}");
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut broker: Broker = open_broker(dir.path(), config(), &env.core, &clock);
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
            Op::SendBatch { messages } => {
                let mut expected = Vec::new();
                let mut batch = Vec::new();
                for (queue, tag) in messages {
                    let offset = model.sent[queue as usize].len() as u64;
                    model.sent[queue as usize].push(tag);
                    expected.push((queue, offset));
                    batch.push(SendRequest {
                        queue_id: Some(queue),
                        tag: format!("t{tag}"),
                        body: format!("{queue}-{offset}").into_bytes(),
                        ..Default::default()
                    });
                }
                let results = broker.send_batch(&topic, batch).await.unwrap();
                let placed: Vec<(u32, u64)> = results
                    .iter()
                    .map(|r| (r.queue_id, r.queue_offset))
                    .collect();
                prop_assert_eq!(placed, expected);
            }
            Op::Pull { member, max } => {
                let member = MEMBERS[member];
                model.refresh(now);
                model.members.insert(member.to_string(), now);
                broker.deliver_due_delays().await.unwrap();
                let got = broker.pull(&pull(member, max)).await.unwrap();
                prop_assert!(got.len() <= max.max(1) as usize);
                let mut batch: BTreeSet<Key> = BTreeSet::new();
                for m in got {
                    let key: Key = (m.topic.clone(), m.queue_id, m.queue_offset);
                    let body = String::from_utf8_lossy(&m.body).into_owned();
                    prop_assert!(
                        !model.acked.contains(&key),
                        "{key:?} delivered after its ack"
                    );
                    prop_assert!(
                        !model.inflight.contains_key(&key),
                        "{key:?} is in flight already"
                    );
                    if m.topic == retry_topic {
                        prop_assert!(
                            model.nacked.contains(&body),
                            "retry of {body}, which was never nacked"
                        );
                        prop_assert!(
                            model.holds(member, 0, 1),
                            "{member} got a retry it does not hold"
                        );
                    } else {
                        prop_assert_eq!(&m.topic, &topic);
                        prop_assert_eq!(&body, &format!("{}-{}", key.1, key.2));
                        prop_assert!(
                            model.holds(member, key.1, QUEUES),
                            "{member} got {key:?} from a queue it does not hold"
                        );
                        prop_assert!(
                            model.matches(filter, key.1, key.2),
                            "{key:?} does not pass the filter"
                        );
                        if ordered {
                            for earlier in 0..key.2 {
                                let e: Key = (topic.clone(), key.1, earlier);
                                prop_assert!(
                                    !model.matches(filter, key.1, earlier)
                                        || model.acked.contains(&e)
                                        || batch.contains(&e),
                                    "ordered: {key:?} delivered before {e:?} was done"
                                );
                            }
                        }
                    }
                    batch.insert(key.clone());
                    model
                        .inflight
                        .insert(key, (member.to_string(), now + ACK, body));
                }
            }
            Op::Ack { member, pick } | Op::Nack { member, pick } => {
                let name = MEMBERS[member];
                // Pick among deliveries still valid; refresh only if the broker is called.
                let live = model
                    .members
                    .get(name)
                    .is_some_and(|seen| now.saturating_sub(*seen) < SESSION);
                let owned = model.owned_by(name, now);
                let Some(key) = owned
                    .get(pick % owned.len().max(1))
                    .filter(|_| live)
                    .cloned()
                else {
                    continue;
                };
                model.refresh(now);
                let (t, queue, offset) = key.clone();
                let body = model.inflight[&key].2.clone();
                if matches!(op, Op::Ack { .. }) {
                    broker.ack(&group, name, &t, queue, offset).await.unwrap();
                    model.inflight.remove(&key);
                    model.acked.insert(key);
                    model.handled.insert(body);
                } else {
                    broker.nack(&group, name, &t, queue, offset).await.unwrap();
                    if ordered && t == topic {
                        model
                            .inflight
                            .retain(|(kt, q, o), _| !(*kt == t && *q == queue && *o >= offset));
                    } else {
                        // Done here; it comes back through the retry topic (or the DLQ).
                        model.inflight.remove(&key);
                        model.acked.insert(key);
                        model.nacked.insert(body);
                    }
                }
            }
            Op::AckUnknown {
                member,
                queue,
                offset,
            } => {
                let name = MEMBERS[member];
                model.refresh(now);
                let key: Key = (topic.clone(), queue, offset);
                let expected_ok = model.inflight.get(&key).is_some_and(|(m, _, _)| m == name);
                let result = broker.ack(&group, name, &topic, queue, offset).await;
                prop_assert_eq!(
                    result.is_ok(),
                    expected_ok,
                    "ack of {:?} by {}: {:?}",
                    key,
                    name,
                    result
                );
                if let Some((_, _, body)) = model.inflight.remove(&key).filter(|_| expected_ok) {
                    model.acked.insert(key);
                    model.handled.insert(body);
                }
            }
            Op::AckBatch {
                member,
                picks,
                extra,
            } => {
                let name = MEMBERS[member];
                let live = model
                    .members
                    .get(name)
                    .is_some_and(|seen| now.saturating_sub(*seen) < SESSION);
                let owned = if live {
                    model.owned_by(name, now)
                } else {
                    Vec::new()
                };
                let mut keys: Vec<Key> = Vec::new();
                for pick in picks {
                    if let Some(key) = owned.get(pick % owned.len().max(1)) {
                        if !keys.contains(key) {
                            keys.push(key.clone());
                        }
                    }
                }
                let mut expected_ok = true;
                if let Some((queue, offset)) = extra {
                    let key: Key = (topic.clone(), queue, offset);
                    expected_ok = !keys.contains(&key)
                        && model
                            .inflight
                            .get(&key)
                            .is_some_and(|(m, d, _)| m == name && *d > now)
                        && live;
                    keys.push(key);
                }
                if keys.is_empty() {
                    continue;
                }
                model.refresh(now);
                let deliveries: Vec<Delivery> = keys
                    .iter()
                    .map(|(t, queue_id, queue_offset)| Delivery {
                        topic: t.clone(),
                        queue_id: *queue_id,
                        queue_offset: *queue_offset,
                    })
                    .collect();
                let result = broker.ack_batch(&group, name, &deliveries).await;
                prop_assert_eq!(
                    result.is_ok(),
                    expected_ok,
                    "ack batch of {:?} by {}: {:?}",
                    keys,
                    name,
                    result
                );
                if expected_ok {
                    for key in keys {
                        let (_, _, body) = model.inflight.remove(&key).expect("picked in flight");
                        model.acked.insert(key);
                        model.handled.insert(body);
                    }
                }
            }
            Op::Leave { member } => {
                let name = MEMBERS[member];
                let result = broker.leave(&group, name);
                prop_assert_eq!(result.is_ok(), model.members.remove(name).is_some());
                model.inflight.retain(|_, (m, _, _)| m != name);
            }
            Op::Advance { secs } => clock.advance(Duration::from_secs(secs)),
            Op::Restart => {
                // Progress above the saved committed offset may be delivered again.
                let committed: HashMap<(String, u32), u64> = match broker.lag(&group).await {
                    Ok(lag) => lag
                        .into_iter()
                        .map(|l| ((l.topic, l.queue_id), l.committed))
                        .collect(),
                    Err(_) => HashMap::new(),
                };
                broker.close();
                drop(broker);
                broker = open_broker(dir.path(), config(), &env.core, &clock);
                model
                    .acked
                    .retain(|(t, q, o)| *o < committed.get(&(t.clone(), *q)).copied().unwrap_or(0));
                model.inflight.clear();
                model.members.clear();
            }
        }
    }

    // Drain: everyone falls silent; one member takes every queue (and the retries as their
    // backoff passes) and acks all it gets.
    for _ in 0..20 {
        clock.advance(SESSION + ACK);
        broker.deliver_due_delays().await.unwrap();
        let mut got_any = false;
        for _ in 0..500 {
            let got = broker.pull(&pull("drainer", 16)).await.unwrap();
            if got.is_empty() {
                break;
            }
            got_any = true;
            for m in got {
                broker
                    .ack(&group, "drainer", &m.topic, m.queue_id, m.queue_offset)
                    .await
                    .unwrap();
                model
                    .handled
                    .insert(String::from_utf8_lossy(&m.body).into_owned());
            }
        }
        if !got_any && broker.pending_delays() == 0 {
            break;
        }
    }
    let dead_letters = PullRequest {
        group: format!("dlq-reader-{case}"),
        topic: format!("%DLQ%{group}"),
        member: "reader".into(),
        max: 256,
        ..Default::default()
    };
    let dead: HashSet<String> = broker
        .pull(&dead_letters)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    for (queue, sent) in model.sent.iter().enumerate() {
        for offset in 0..sent.len() as u64 {
            let body = format!("{queue}-{offset}");
            if model.matches(filter, queue as u32, offset) {
                prop_assert!(
                    model.handled.contains(&body) || dead.contains(&body),
                    "{body} never acked nor dead-lettered"
                );
            }
        }
    }
    for body in &dead {
        prop_assert!(
            model.nacked.contains(body),
            "{body} dead-lettered without a nack"
        );
    }
    for lag in broker.lag(&group).await.unwrap() {
        prop_assert_eq!(
            lag.committed,
            lag.end,
            "queue {}/{} not fully committed",
            lag.topic,
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
