//! Bad input over gRPC: the right code, a message naming the rule, and no change.

use cella_proto::etcdserverpb::{self as pb, compare, request_op};
use tonic::Code;

use crate::harness::{b, everything, put, TestNode};

/// Asserts a call failed with `code` and a message containing `text`.
fn check<T>(result: Result<tonic::Response<T>, tonic::Status>, code: Code, text: &str) {
    let status = match result {
        Ok(_) => panic!("expected {code:?} ({text})"),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{text}: {}", status.message());
    assert!(
        status.message().contains(text),
        "message {:?} should name {text:?}",
        status.message()
    );
}

fn put_op(key: String) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.into_bytes().into(),
            value: b("v"),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;
    let mut leases = node.lease().await;
    put(&mut kv, "keep", "me").await;
    let before = everything(&mut kv).await;
    let revision = before.header.as_ref().expect("header").revision;

    let put_req = |key: bytes::Bytes, value: bytes::Bytes| pb::PutRequest {
        key,
        value,
        ..Default::default()
    };

    check(
        kv.put(put_req(b(""), b("v"))).await,
        Code::InvalidArgument,
        "key is not provided",
    );
    check(
        kv.range(pb::RangeRequest::default()).await,
        Code::InvalidArgument,
        "key is not provided",
    );
    check(
        kv.put(put_req(vec![b'k'; 4097].into(), b("v"))).await,
        Code::InvalidArgument,
        "key is too large",
    );
    let big = bytes::Bytes::from(vec![b'v'; 1536 * 1024 + 1]);
    check(
        kv.put(put_req(b("big"), big)).await,
        Code::InvalidArgument,
        "request is too large",
    );
    check(
        kv.range(pb::RangeRequest {
            key: b("b"),
            range_end: b("a"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "range_end",
    );
    check(
        kv.delete_range(pb::DeleteRangeRequest {
            key: b("b"),
            range_end: b("a"),
            prev_kv: false,
        })
        .await,
        Code::InvalidArgument,
        "range_end",
    );
    let too_many = pb::TxnRequest {
        success: (0..129).map(|i| put_op(format!("t{i}"))).collect(),
        ..Default::default()
    };
    check(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "too many operations",
    );
    let no_value = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b("keep"),
            target_union: None,
            ..Default::default()
        }],
        success: vec![put_op("t".into())],
        ..Default::default()
    };
    check(
        kv.txn(no_value).await,
        Code::InvalidArgument,
        "mod_revision",
    );
    let twice = pb::TxnRequest {
        success: vec![put_op("t".into()), put_op("t".into())],
        ..Default::default()
    };
    check(kv.txn(twice).await, Code::InvalidArgument, "duplicate key");
    check(
        kv.put(pb::PutRequest {
            lease: 123456,
            ..put_req(b("leased"), b("v"))
        })
        .await,
        Code::NotFound,
        "requested lease not found",
    );
    let leased_in_txn = pb::TxnRequest {
        success: vec![
            put_op("first".into()),
            pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    lease: 123456,
                    ..put_req(b("second"), b("v"))
                })),
            },
        ],
        ..Default::default()
    };
    check(
        kv.txn(leased_in_txn).await,
        Code::NotFound,
        "requested lease not found",
    );
    check(
        kv.put(pb::PutRequest {
            ignore_value: true,
            ..put_req(b("missing"), b(""))
        })
        .await,
        Code::InvalidArgument,
        "key not found",
    );
    check(
        kv.range(pb::RangeRequest {
            key: b("keep"),
            revision: revision + 100,
            ..Default::default()
        })
        .await,
        Code::OutOfRange,
        "future revision",
    );
    check(
        kv.compact(pb::CompactionRequest {
            revision: 0,
            physical: false,
        })
        .await,
        Code::InvalidArgument,
        "revision",
    );
    check(
        leases
            .lease_revoke(pb::LeaseRevokeRequest { id: 999 })
            .await,
        Code::NotFound,
        "lease not found",
    );
    check(
        leases
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
        Code::OutOfRange,
        "too large lease TTL",
    );
    check(
        leases
            .lease_grant(pb::LeaseGrantRequest { ttl: 5, id: -3 })
            .await,
        Code::InvalidArgument,
        "ID",
    );

    let after = everything(&mut kv).await;
    assert_eq!(
        after.header.as_ref().expect("header").revision,
        revision,
        "no refusal moved the revision"
    );
    assert_eq!(after.kvs, before.kvs, "no refusal changed a key");
    let listed = leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    assert!(listed.leases.is_empty(), "no refusal granted a lease");
    drop((kv, leases));
    node.stop().await;
}
