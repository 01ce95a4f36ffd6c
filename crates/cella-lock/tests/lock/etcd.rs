//! etcd's Lock and Election services, called through their generated gRPC clients.

use bytes::Bytes;
use cella_proto::v3electionpb as electionpb;
use cella_proto::v3lockpb as lockpb;
use tonic::Code;

use crate::harness::{eventually, TestNode, WAIT};

#[tokio::test]
async fn v3lock_excludes_a_second_locker_until_unlock() {
    let node = TestNode::start().await;
    let mut client = node.v3lock().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);
    let held = client
        .lock(lockpb::LockRequest {
            name: Bytes::from("res"),
            lease: a,
        })
        .await
        .expect("lock")
        .into_inner();
    assert_eq!(held.key, Bytes::from(format!("res/{a:x}")));
    let first_revision = held.header.expect("header").revision;

    let mut second = client.clone();
    let waiting = tokio::spawn(async move {
        second
            .lock(lockpb::LockRequest {
                name: Bytes::from("res"),
                lease: b,
            })
            .await
    });
    let mut locks = node.locks().await;
    eventually("b waits", || {
        let mut l = locks.clone();
        async move {
            let s = l
                .status(cella_proto::cella::lock::v1::StatusRequest { name: "res".into() })
                .await
                .ok()?;
            (s.into_inner().waiters.len() == 1).then_some(())
        }
    })
    .await;
    assert!(!waiting.is_finished());
    client
        .unlock(lockpb::UnlockRequest { key: held.key })
        .await
        .expect("unlock");
    let next = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("b locks")
        .expect("task")
        .expect("lock");
    assert!(next.into_inner().header.expect("header").revision > first_revision);
    let status = locks
        .status(cella_proto::cella::lock::v1::StatusRequest { name: "res".into() })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.holder.map(|h| h.lease), Some(b));

    let empty = client
        .lock(lockpb::LockRequest {
            name: Bytes::new(),
            lease: a,
        })
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn v3election_campaign_observe_proclaim_resign() {
    let node = TestNode::start().await;
    let mut election = node.election().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);
    let name = Bytes::from("leader-of-jobs");

    let no_leader = election
        .leader(electionpb::LeaderRequest { name: name.clone() })
        .await
        .expect_err("nobody campaigns yet");
    assert_eq!(no_leader.code(), Code::NotFound);

    let won = election
        .campaign(electionpb::CampaignRequest {
            name: name.clone(),
            lease: a,
            value: Bytes::from("node-a"),
        })
        .await
        .expect("a campaigns")
        .into_inner()
        .leader
        .expect("leader key");
    let mut observed = election
        .observe(electionpb::LeaderRequest { name: name.clone() })
        .await
        .expect("observe")
        .into_inner();
    assert_eq!(next_value(&mut observed).await, Bytes::from("node-a"));

    let mut challenger = election.clone();
    let b_campaign = {
        let name = name.clone();
        tokio::spawn(async move {
            challenger
                .campaign(electionpb::CampaignRequest {
                    name,
                    lease: b,
                    value: Bytes::from("node-b"),
                })
                .await
        })
    };
    election
        .proclaim(electionpb::ProclaimRequest {
            leader: Some(won.clone()),
            value: Bytes::from("node-a v2"),
        })
        .await
        .expect("proclaim");
    assert_eq!(next_value(&mut observed).await, Bytes::from("node-a v2"));
    let leader = election
        .leader(electionpb::LeaderRequest { name: name.clone() })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(leader.kv.expect("kv").value, Bytes::from("node-a v2"));
    assert!(!b_campaign.is_finished(), "b must wait while a leads");

    election
        .resign(electionpb::ResignRequest {
            leader: Some(won.clone()),
        })
        .await
        .expect("resign");
    let b_won = tokio::time::timeout(WAIT, b_campaign)
        .await
        .expect("b wins")
        .expect("task")
        .expect("campaign");
    let b_won = b_won.into_inner();
    assert_eq!(b_won.leader.as_ref().expect("key").lease, b);
    assert_eq!(next_value(&mut observed).await, Bytes::from("node-b"));

    let stale = election
        .proclaim(electionpb::ProclaimRequest {
            leader: Some(won.clone()),
            value: Bytes::from("stale"),
        })
        .await
        .expect_err("a no longer leads");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(stale.message(), "election: not leader");

    // As in etcd 3.4, resigning with a stale leader key (its key gone, or b's key with a
    // revision it no longer has) succeeds and changes nothing.
    let b_key = b_won.leader.expect("b's key");
    let revision_before = election
        .leader(electionpb::LeaderRequest { name: name.clone() })
        .await
        .expect("leader")
        .into_inner()
        .header
        .expect("header")
        .revision;
    for stale_key in [
        won,
        electionpb::LeaderKey {
            rev: b_key.rev + 1000,
            ..b_key.clone()
        },
        electionpb::LeaderKey {
            rev: 0,
            ..b_key.clone()
        },
    ] {
        let resigned = election
            .resign(electionpb::ResignRequest {
                leader: Some(stale_key),
            })
            .await
            .expect("a stale resign is not an error")
            .into_inner();
        assert_eq!(resigned.header.expect("header").revision, revision_before);
    }
    let still = election
        .leader(electionpb::LeaderRequest { name: name.clone() })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(still.kv.expect("kv").lease, b, "b still leads");
    let missing = election
        .resign(electionpb::ResignRequest { leader: None })
        .await
        .expect_err("no leader key");
    assert_eq!(missing.code(), Code::InvalidArgument);
}

/// The value of the next leader change on an Observe stream.
async fn next_value(observed: &mut tonic::Streaming<electionpb::LeaderResponse>) -> Bytes {
    let resp = tokio::time::timeout(WAIT, observed.message())
        .await
        .expect("a change within the wait")
        .expect("stream open")
        .expect("a message");
    resp.kv.expect("kv").value
}
