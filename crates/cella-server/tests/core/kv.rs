//! KV and Txn round trips over gRPC.

use cella_proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use tonic::Code;

use crate::harness::{b, everything, get, put, revision, sample, scrape, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_range_delete_round_trip_with_etcd_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;

    assert_eq!(revision(&mut kv).await, 1, "a fresh store is at revision 1");
    let resp = put(&mut kv, "app/a", "1").await;
    let header = resp.header.expect("header");
    assert_eq!(header.revision, 2);
    assert_eq!(header.member_id, 1);
    assert_ne!(header.cluster_id, 0);
    assert!(header.raft_term >= 1);
    put(&mut kv, "app/b", "2").await;
    put(&mut kv, "other", "x").await;
    let resp = kv
        .put(pb::PutRequest {
            key: b("app/a"),
            value: b("1b"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    assert_eq!(resp.prev_kv.expect("prev_kv").value, b("1"));

    let a = get(&mut kv, "app/a").await.expect("app/a");
    assert_eq!(
        (a.value, a.create_revision, a.mod_revision, a.version),
        (b("1b"), 2, 5, 2)
    );
    let prefix = kv
        .range(pb::RangeRequest {
            key: b("app/"),
            range_end: b("app0"),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(prefix.kvs.len(), 1);
    assert_eq!((prefix.count, prefix.more), (2, true));

    // A serializable read answers the same on a single node.
    let serial = kv
        .range(pb::RangeRequest {
            key: b("app/b"),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable range")
        .into_inner();
    assert_eq!(serial.kvs[0].value, b("2"));

    // Reads at an old revision see the state then.
    let old = kv
        .range(pb::RangeRequest {
            key: b("app/a"),
            revision: 4,
            ..Default::default()
        })
        .await
        .expect("range at 4")
        .into_inner();
    assert_eq!(old.kvs[0].value, b("1"));

    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b("app/"),
            range_end: b("app0"),
            prev_kv: true,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(deleted.prev_kvs.len(), 2);
    assert_eq!(deleted.header.expect("header").revision, 6);
    let nothing = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b("app/"),
            range_end: b("app0"),
            prev_kv: false,
        })
        .await
        .expect("delete nothing")
        .into_inner();
    assert_eq!(nothing.deleted, 0);
    assert_eq!(revision(&mut kv).await, 6, "deleting nothing does not bump");
    assert_eq!(everything(&mut kv).await.count, 1);
    drop(kv);
    node.stop().await;
}

fn cas(key: &str, expect_version: i64, value: &str) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: b(key),
            target_union: Some(compare::TargetUnion::Version(expect_version)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: b(key),
                value: b(value),
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                key: b(key),
                ..Default::default()
            })),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_and_swap_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;

    // Create-if-absent succeeds once.
    let first = kv
        .txn(cas("lock", 0, "me"))
        .await
        .expect("txn")
        .into_inner();
    assert!(first.succeeded);
    assert_eq!(first.header.as_ref().expect("header").revision, 2);
    let Some(response_op::Response::ResponsePut(p)) = &first.responses[0].response else {
        panic!("put response: {first:?}");
    };
    assert_eq!(p.header.as_ref().expect("nested header").revision, 2);
    let second = kv
        .txn(cas("lock", 0, "you"))
        .await
        .expect("txn")
        .into_inner();
    assert!(!second.succeeded);
    let Some(response_op::Response::ResponseRange(r)) = &second.responses[0].response else {
        panic!("range response: {second:?}");
    };
    assert_eq!(r.kvs[0].value, b("me"));
    assert_eq!(revision(&mut kv).await, 2, "a failed CAS writes nothing");
    // Swap on the right version.
    assert!(
        kv.txn(cas("lock", 1, "next"))
            .await
            .expect("txn")
            .into_inner()
            .succeeded
    );
    assert_eq!(get(&mut kv, "lock").await.expect("lock").value, b("next"));

    // Concurrent CAS on one key: exactly one winner per version.
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut kv = node.kv().await;
        handles.push(tokio::spawn(async move {
            kv.txn(cas("race", 0, &format!("w{i}")))
                .await
                .expect("txn")
                .into_inner()
                .succeeded
        }));
    }
    let mut winners = 0;
    for h in handles {
        winners += h.await.expect("task") as usize;
    }
    assert_eq!(winners, 1);

    // Compaction: older revisions are gone, the compact revision itself still reads.
    for i in 0..3 {
        put(&mut kv, "hist", &i.to_string()).await;
    }
    let now = revision(&mut kv).await;
    kv.compact(pb::CompactionRequest {
        revision: now - 1,
        physical: true,
    })
    .await
    .expect("compact");
    let err = kv
        .range(pb::RangeRequest {
            key: b("hist"),
            revision: now - 2,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("compacted"), "{}", err.message());
    let at = kv
        .range(pb::RangeRequest {
            key: b("hist"),
            revision: now - 1,
            ..Default::default()
        })
        .await
        .expect("the compact revision reads")
        .into_inner();
    assert_eq!(at.kvs[0].value, b("1"));
    let err = kv
        .compact(pb::CompactionRequest {
            revision: now + 10,
            physical: false,
        })
        .await
        .expect_err("future");
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("future revision"));
    assert_eq!(revision(&mut kv).await, now, "compaction is not a write");
    drop(kv);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_raft_entries_and_a_lone_write_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;
    put(&mut kv, "warm", "up").await;

    // A lone write goes to Raft by itself and is answered.
    let fsyncs =
        |text: &str| sample(text, "cella_core_log_fsync_seconds_count", &[]).unwrap_or(0.0);
    let before = scrape(&node).await;
    assert_eq!(
        put(&mut kv, "lone", "1")
            .await
            .header
            .expect("header")
            .revision,
        3
    );
    assert_eq!(fsyncs(&scrape(&node).await) - fsyncs(&before), 1.0);

    // 64 writes at once: one may go alone, the others wait in batches behind it.
    let before = scrape(&node).await;
    let writes = (0..64).map(|i| {
        let mut kv = kv.clone();
        tokio::spawn(async move { put(&mut kv, &format!("many/{i}"), "v").await })
    });
    let mut revisions = Vec::new();
    for write in writes.collect::<Vec<_>>() {
        revisions.push(
            write
                .await
                .expect("write task")
                .header
                .expect("header")
                .revision,
        );
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (4..68).collect::<Vec<_>>(),
        "each write its own revision"
    );
    let after = scrape(&node).await;
    let batches = fsyncs(&after) - fsyncs(&before);
    assert!(
        batches <= 32.0,
        "64 concurrent writes took {batches} fsyncs"
    );
    assert_eq!(everything(&mut kv).await.count, 66);
}
