//! Snowflake generators on a real core: worker ids leased and reused, high-water marks
//! persisted, clock steps back (manual clock) — and no duplicate over millions of ids.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_base::Clock;
use cella_core::Core;
use cella_idgen::layout::{
    builtin_specs, FieldKind, FieldSpec, LayoutSpec, Radix, ORDER32, SNOWFLAKE64,
};
use cella_idgen::{GeneratorConfig, IdgenError, Layout, Snowflake, Tags};
use cella_proto::etcdserverpb as pb;

use crate::support::{RunningClock, TestCore, WAIT};

/// A wall-clock reading in late 2023, in ms since 1970.
const START: u64 = 1_700_000_000_000;

fn builtin(name: &str) -> Arc<Layout> {
    let spec = builtin_specs()
        .into_iter()
        .find(|s| s.name == name)
        .expect("built-in exists");
    Arc::new(Layout::new(spec).expect("valid"))
}

fn config() -> GeneratorConfig {
    GeneratorConfig {
        max_backstep_ms: 10,
        reserve_ms: 200,
        worker_lease_ttl_secs: 5,
    }
}

async fn start(core: &Core, layout: &Arc<Layout>, clock: &Arc<dyn Clock>) -> Snowflake<Core> {
    Snowflake::start(
        core.clone(),
        layout.clone(),
        clock.clone(),
        config(),
        "test",
    )
    .await
    .expect("generator starts")
}

/// Waits until `layout`'s worker key for `worker` is gone (its lease revoked).
async fn wait_released(core: &Core, layout: &str, worker: u64) {
    let key = format!("/cella/idgen/workers/{layout}/{worker}");
    tokio::time::timeout(WAIT, async {
        loop {
            let resp = core
                .range(pb::RangeRequest {
                    key: Bytes::from(key.clone()),
                    ..Default::default()
                })
                .await
                .expect("range");
            if resp.kvs.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("worker key released within the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_across_restarts_worker_churn_and_clock_steps_back() {
    const ROUNDS: u64 = 40;
    const BATCH: usize = 25_000;
    const LARGE_STEP_BACK: Duration = Duration::from_secs(60);
    let core = TestCore::start().await;
    let running = RunningClock::start(START, Duration::from_micros(50));
    let clock: Arc<dyn Clock> = Arc::new(running.clock.clone());
    let layout = builtin(SNOWFLAKE64);
    let mut seen: HashSet<u128> = HashSet::with_capacity(2_500_000);
    let mut generators: VecDeque<Snowflake<Core>> = VecDeque::new();
    let (mut refused, mut reused) = (0, 0);
    for round in 0..ROUNDS {
        // Churn: the oldest generator stops (a restart), and a new one claims the lowest
        // free worker id — usually the one just released, so it must start past its mark.
        if generators.len() == 3 {
            let old = generators.pop_front().expect("three running");
            let worker = old.worker();
            drop(old);
            wait_released(&core.core, SNOWFLAKE64, worker).await;
            let new = start(&core.core, &layout, &clock).await;
            reused += u32::from(new.worker() == worker);
            generators.push_back(new);
        } else {
            generators.push_back(start(&core.core, &layout, &clock).await);
        }
        // A small step back every round (waited out); a large one every fifth (refused:
        // a minute is far beyond what is waited out, even by a generator just started).
        running.clock.rewind(Duration::from_millis(round % 9));
        let large = round % 5 == 4;
        if large {
            running.clock.rewind(LARGE_STEP_BACK);
        }
        for generator in &generators {
            match generator.batch(BATCH, &Tags::default()).await {
                Ok(_) if large => panic!("round {round}: issued ids a minute in the past"),
                Ok(ids) => {
                    assert_eq!(ids.len(), BATCH);
                    for id in ids {
                        assert!(seen.insert(id.0), "duplicate id {} in round {round}", id.0);
                    }
                }
                Err(IdgenError::ClockMovedBackwards { .. }) if large => refused += 1,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        if large {
            running.clock.advance(LARGE_STEP_BACK);
        }
    }
    println!(
        "{} ids, {refused} refusals, {reused} worker ids reused",
        seen.len()
    );
    assert!(seen.len() >= 2_000_000, "only {} ids", seen.len());
    assert!(refused > 0, "large steps back must be refused");
    assert!(reused > 0, "released worker ids must be reused");
    assert!(cella_idgen::metrics::clock_backwards_count() >= refused as u64);
}

/// A holder whose lease ends behind its back (expiry, simulated by a revoke) may still
/// issue ids up to the mark it persisted, then refuses; the next holder of the same worker
/// id starts past that mark, so the two never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_holder_and_its_successor_never_collide() {
    let core = TestCore::start().await;
    let running = RunningClock::start(START, Duration::from_micros(200));
    let clock: Arc<dyn Clock> = Arc::new(running.clock.clone());
    let layout = builtin(SNOWFLAKE64);
    let old = start(&core.core, &layout, &clock).await;
    let mut seen = HashSet::new();
    for id in old
        .batch(1000, &Tags::default())
        .await
        .expect("first batch")
    {
        seen.insert(id.0);
    }
    let worker_key = format!("/cella/idgen/workers/{SNOWFLAKE64}/{}", old.worker());
    let lease = core
        .core
        .range(pb::RangeRequest {
            key: Bytes::from(worker_key),
            ..Default::default()
        })
        .await
        .expect("range")
        .kvs[0]
        .lease;
    core.core
        .lease_revoke(pb::LeaseRevokeRequest { id: lease })
        .await
        .expect("revoke");
    let new = start(&core.core, &layout, &clock).await;
    assert_eq!(
        new.worker(),
        old.worker(),
        "the freed worker id is claimed again"
    );
    let mut old_refused = false;
    for _ in 0..1000 {
        for id in new
            .batch(500, &Tags::default())
            .await
            .expect("successor issues")
        {
            assert!(seen.insert(id.0), "duplicate from the successor");
        }
        match old.batch(500, &Tags::default()).await {
            Ok(ids) => {
                for id in ids {
                    assert!(seen.insert(id.0), "duplicate from the lost holder");
                }
            }
            Err(IdgenError::WorkerLost { .. }) => {
                old_refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(old_refused, "the lost holder stops at its mark");
    assert!(old.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order32_ids_carry_their_tags_and_machine() {
    let core = TestCore::start().await;
    let running = RunningClock::start(START, Duration::from_micros(200));
    let clock: Arc<dyn Clock> = Arc::new(running.clock.clone());
    let layout = builtin(ORDER32);
    let generator = start(&core.core, &layout, &clock).await;
    let tags = layout
        .tags([("type", 7), ("db", 12), ("table", 34)])
        .expect("valid tags");
    let ids = generator.batch(3, &tags).await.expect("ids");
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let text = layout.format(ids[0]);
    assert_eq!(text.len(), 32);
    let decoded = layout.decode(&text).expect("decodes");
    let field = |name: &str| {
        decoded
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .expect("field present")
    };
    assert_eq!((field("type"), field("db"), field("table")), (7, 12, 34));
    assert_eq!(field("machine"), generator.worker());
    assert!(decoded.unix_ms >= START);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ids_are_never_held_twice_and_run_out_cleanly() {
    let core = TestCore::start().await;
    let running = RunningClock::start(START, Duration::from_micros(200));
    let clock: Arc<dyn Clock> = Arc::new(running.clock.clone());
    let two_workers = Arc::new(
        Layout::new(LayoutSpec {
            name: "two-workers".into(),
            radix: Radix::Binary,
            epoch_unix_ms: 0,
            fields: vec![
                FieldSpec {
                    name: "ts".into(),
                    kind: FieldKind::Timestamp,
                    width: 44,
                },
                FieldSpec {
                    name: "w".into(),
                    kind: FieldKind::Worker,
                    width: 1,
                },
                FieldSpec {
                    name: "seq".into(),
                    kind: FieldKind::Sequence,
                    width: 12,
                },
            ],
        })
        .expect("valid"),
    );
    let a = start(&core.core, &two_workers, &clock).await;
    let b = start(&core.core, &two_workers, &clock).await;
    assert_ne!(a.worker(), b.worker());
    let third = Snowflake::start(
        core.core.clone(),
        two_workers.clone(),
        clock.clone(),
        config(),
        "test",
    )
    .await;
    assert!(
        matches!(third, Err(IdgenError::WorkersExhausted { capacity: 2, .. })),
        "{third:?}"
    );
    let freed = a.worker();
    drop(a);
    wait_released(&core.core, "two-workers", freed).await;
    let c = start(&core.core, &two_workers, &clock).await;
    assert_eq!(c.worker(), freed);
}
