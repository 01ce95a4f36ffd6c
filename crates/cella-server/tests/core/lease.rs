//! Leases over gRPC: grant, keep-alive stream, time-to-live, revoke, expiry.

use std::time::{Duration, Instant};

use cella_proto::etcdserverpb as pb;
use futures::StreamExt;
use tonic::Code;

use crate::harness::{b, get, revision, TestNode, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_keep_alive_time_to_live_and_revoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut leases = node.lease().await;
    let mut kv = node.kv().await;

    let granted = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, 2);
    let id = granted.id;
    let chosen = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 4242 })
        .await
        .expect("grant with an id")
        .into_inner();
    assert_eq!(chosen.id, 4242);
    let again = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 4242 })
        .await
        .expect_err("the id is taken");
    assert_eq!(again.code(), Code::FailedPrecondition);

    for key in ["l/a", "l/b"] {
        kv.put(pb::PutRequest {
            key: b(key),
            value: b("v"),
            lease: id,
            ..Default::default()
        })
        .await
        .expect("put with lease");
    }
    let ttl = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (id, 2));
    assert!((1..=2).contains(&ttl.ttl), "ttl {}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b("l/a"), b("l/b")]);
    let listed = leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    let mut want = vec![id, 4242];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Keep the 2 s lease alive over a stream for longer than its TTL.
    let (requests, outbound) = futures::channel::mpsc::unbounded();
    let mut answers = leases
        .lease_keep_alive(outbound)
        .await
        .expect("keep-alive stream")
        .into_inner();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        requests
            .unbounded_send(pb::LeaseKeepAliveRequest { id })
            .expect("send keep-alive");
        let answer = tokio::time::timeout(WAIT, answers.next())
            .await
            .expect("answer within the wait")
            .expect("stream open")
            .expect("keep-alive ok");
        assert_eq!((answer.id, answer.ttl), (id, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        get(&mut kv, "l/a").await.is_some(),
        "kept alive past its TTL"
    );
    // An unknown lease answers TTL 0.
    requests
        .unbounded_send(pb::LeaseKeepAliveRequest { id: 777 })
        .expect("send");
    let unknown = tokio::time::timeout(WAIT, answers.next())
        .await
        .expect("answer")
        .expect("open")
        .expect("ok");
    assert_eq!((unknown.id, unknown.ttl), (777, 0));
    drop(requests);

    let before = revision(&mut kv).await;
    let revoked = leases
        .lease_revoke(pb::LeaseRevokeRequest { id })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.header.expect("header").revision, before + 1);
    assert!(get(&mut kv, "l/a").await.is_none());
    assert!(get(&mut kv, "l/b").await.is_none());
    let gone = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect("ttl of a revoked lease")
        .into_inner();
    assert_eq!(gone.ttl, -1);
    let err = leases
        .lease_revoke(pb::LeaseRevokeRequest { id })
        .await
        .expect_err("already revoked");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("lease not found"));
    drop((leases, kv, answers));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_without_keep_alive_expires_and_takes_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut leases = node.lease().await;
    let mut kv = node.kv().await;
    let id = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    kv.put(pb::PutRequest {
        key: b("ephemeral"),
        value: b("v"),
        lease: id,
        ..Default::default()
    })
    .await
    .expect("put");
    let granted_at = Instant::now();
    let expired = tokio::time::timeout(Duration::from_secs(5), async {
        while get(&mut kv, "ephemeral").await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(expired.is_ok(), "the key outlived its 2 s lease by 3 s");
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1500),
        "expired too early: {:?}",
        granted_at.elapsed()
    );
    let ttl = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: false })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.ttl, -1, "the lease is gone too");
    drop((leases, kv));
    node.stop().await;
}
