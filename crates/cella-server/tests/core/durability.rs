//! Restarting a node on its data directory keeps every acknowledged write, whether the
//! state comes back from the Raft log alone or from a snapshot plus the log after it.

use std::time::Duration;

use cella_proto::etcdserverpb as pb;

use crate::harness::{b, config, everything, put, TestNode, WAIT};

async fn write_history(node: &TestNode, keys: usize) -> (pb::RangeResponse, i64) {
    let mut kv = node.kv().await;
    let mut leases = node.lease().await;
    for i in 0..keys {
        put(&mut kv, &format!("k/{i:03}"), &format!("v{i}")).await;
    }
    put(&mut kv, "k/000", "rewritten").await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: b("k/001"),
        ..Default::default()
    })
    .await
    .expect("delete");
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    kv.put(pb::PutRequest {
        key: b("leased"),
        value: b("v"),
        lease,
        ..Default::default()
    })
    .await
    .expect("put with lease");
    (everything(&mut kv).await, lease)
}

async fn assert_restored(node: &TestNode, before: &pb::RangeResponse, lease: i64) {
    let mut kv = node.kv().await;
    let after = everything(&mut kv).await;
    assert_eq!(
        after.header.as_ref().expect("header").revision,
        before.header.as_ref().expect("header").revision
    );
    assert_eq!(after.kvs, before.kvs);
    let old = kv
        .range(pb::RangeRequest {
            key: b("k/000"),
            revision: 2,
            ..Default::default()
        })
        .await
        .expect("history survives too")
        .into_inner();
    assert_eq!(old.kvs[0].value, b("v0"));
    let ttl = node
        .lease()
        .await
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![b("leased")]);
    // The node goes on writing from where it was.
    let next = put(&mut kv, "after", "restart").await;
    assert_eq!(
        next.header.expect("header").revision,
        before.header.as_ref().expect("header").revision + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let node = TestNode::start(cfg.clone()).await;
    let (before, lease) = write_history(&node, 20).await;
    node.stop().await;
    assert!(
        !dir.path().join("raft/snapshot").exists(),
        "no snapshot yet: the state comes from the log alone"
    );
    let node = TestNode::start(cfg).await;
    assert_restored(&node, &before, lease).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.core.snapshot_every = 8;
    let node = TestNode::start(cfg.clone()).await;
    let (before, lease) = write_history(&node, 30).await;
    let snapshot = dir.path().join("raft/snapshot");
    tokio::time::timeout(WAIT, async {
        while !snapshot.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a snapshot is written after a few entries");
    node.stop().await;
    let node = TestNode::start(cfg).await;
    assert_restored(&node, &before, lease).await;
    node.stop().await;
}
