//! The lock block's `cella_lock_*` metrics on the node's `/metrics`, and the grant time in a
//! lock's status. Metrics are process-wide and tests run in parallel, so counts are checked
//! as increases of at least what this test caused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cella_proto::cella::lock::v1 as cellapb;
use cella_proto::v3lockpb as lockpb;

use crate::harness::{eventually, TestNode, WAIT};

/// The value of the sample named exactly `name` in a Prometheus text page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {name} in /metrics"))
}

async fn metrics(node: &TestNode) -> String {
    let response = cella_testkit::http::http_request(
        &node.addr.to_string(),
        "GET",
        "/metrics",
        &[],
        b"",
        WAIT,
    )
    .await
    .expect("GET /metrics");
    assert_eq!(response.status, 200);
    response.body
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[tokio::test]
async fn metrics_count_grants_waiters_holds_and_handovers_and_status_gives_the_grant_time() {
    let node = TestNode::start().await;
    let mut client = node.v3lock().await;
    let mut locks = node.locks().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);
    let before = metrics(&node).await;
    let counters = [
        "cella_lock_acquisitions_total",
        "cella_lock_releases_total",
        "cella_lock_hold_seconds_count",
        "cella_lock_handover_seconds_count",
    ];
    let start: Vec<f64> = counters.iter().map(|c| sample(&before, c)).collect();

    let held = client
        .lock(lockpb::LockRequest {
            name: Bytes::from("metered"),
            lease: a,
        })
        .await
        .expect("a locks")
        .into_inner();
    let mut second = client.clone();
    let waiting = tokio::spawn(async move {
        second
            .lock(lockpb::LockRequest {
                name: Bytes::from("metered"),
                lease: b,
            })
            .await
    });
    eventually("b counts as a waiter", || {
        let node = &node;
        async move { (sample(&metrics(node).await, "cella_lock_waiters") >= 1.0).then_some(()) }
    })
    .await;

    tokio::time::sleep(Duration::from_millis(20)).await;
    let released_at = unix_ms();
    client
        .unlock(lockpb::UnlockRequest { key: held.key })
        .await
        .expect("a unlocks");
    let b_held = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("b gets the lock in time")
        .expect("task")
        .expect("b locks")
        .into_inner();
    let granted_by = unix_ms();

    let after = metrics(&node).await;
    let grown: Vec<f64> = counters
        .iter()
        .zip(&start)
        .map(|(c, s)| sample(&after, c) - s)
        .collect();
    assert!(grown[0] >= 2.0, "two grants counted: {grown:?}");
    assert!(grown[1] >= 1.0, "one release counted: {grown:?}");
    assert!(grown[2] >= 1.0, "a's hold time observed: {grown:?}");
    assert!(grown[3] >= 1.0, "the hand-over to b observed: {grown:?}");
    assert!(sample(&after, "cella_lock_hold_seconds_sum") >= 0.02);

    let status = locks
        .status(cellapb::StatusRequest {
            name: "metered".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.holder.as_ref().map(|h| h.lease), Some(b));
    assert!(status.held_since_revision > 0);
    assert!(
        (released_at..=granted_by).contains(&status.held_since_unix_ms),
        "b was granted between a's release ({released_at}) and b's answer ({granted_by}), status says {}",
        status.held_since_unix_ms
    );
    client
        .unlock(lockpb::UnlockRequest { key: b_held.key })
        .await
        .expect("b unlocks");
    let free = locks
        .status(cellapb::StatusRequest {
            name: "metered".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(free.holder, None);
    assert_eq!(free.held_since_unix_ms, 0);
}
