//! Segment mode on a real core: allocators on one core (as on several nodes) never hand out
//! the same id of a tag; bad tags change nothing.

use std::collections::HashSet;
use std::sync::Arc;

use cella_base::{Clock, ManualClock};
use cella_core::Core;
use cella_idgen::{IdgenError, SegmentAllocator, SegmentConfig};

use crate::support::{idgen_keys, TestCore};

fn allocator(core: &Core, clock: &Arc<dyn Clock>) -> Arc<SegmentAllocator<Core>> {
    let config = SegmentConfig {
        initial_step: 100,
        min_step: 10,
        max_step: 5_000,
        target_period_ms: 60_000,
        prefetch_percent: 10,
    };
    Arc::new(SegmentAllocator::new(core.clone(), clock.clone(), config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocators_never_share_an_id() {
    let core = TestCore::start().await;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let nodes = [allocator(&core.core, &clock), allocator(&core.core, &clock)];
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..3 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..40u64 {
                    let count = 1 + (i * 37 + t * 11 + n as u64) % 300;
                    let ids = node.batch("orders", count).await.expect("batch");
                    assert_eq!(ids.len() as u64, count);
                    assert!(ids.windows(2).all(|w| w[0] < w[1]), "a batch increases");
                    got.extend(ids);
                }
                got
            }));
        }
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.expect("task") {
            assert!(id >= 1);
            assert!(seen.insert(id), "id {id} handed out twice");
        }
    }
    // The step grew: segments went by faster than the target period.
    assert!(nodes[0].step("orders").await.expect("valid tag") > 100);
    // Another tag counts on its own from 1.
    assert_eq!(nodes[1].batch("users", 3).await.expect("batch"), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tag_is_refused_and_writes_nothing() {
    let core = TestCore::start().await;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new());
    let node = allocator(&core.core, &clock);
    for tag in ["", "Orders", "a/b", &"x".repeat(65)] {
        let err = node.batch(tag, 1).await.unwrap_err();
        assert!(
            matches!(err, IdgenError::InvalidTag { .. }),
            "{tag:?}: {err}"
        );
        assert!(err.to_string().contains("field `tag`"), "{err}");
    }
    assert_eq!(idgen_keys(&core.core).await, 0, "nothing was written");
}
