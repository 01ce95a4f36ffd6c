//! The SDK's lock and election module against a live `cella up`: the guard renews its lease
//! while it lives, reports the lease's loss, and releases by owner only.

use std::time::Duration;

use cella_sdk::lock::AcquireOptions;
use cella_sdk::{Client, Error, LeaseId};
use cella_testkit::{Node, NodeOptions};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(20);

async fn start() -> (Node, Client) {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(WAIT).await.expect("cella up becomes ready");
    let client = Client::connect(&node.endpoint()).await.expect("connect");
    (node, client)
}

#[tokio::test]
async fn a_guard_keeps_its_lock_past_the_ttl_and_releases_it() {
    let (_node, client) = start().await;
    let locks = client.lock();
    let options = AcquireOptions {
        ttl_secs: 2,
        timeout: WAIT,
    };
    let guard = locks.acquire("jobs", options).await.expect("acquire");
    let lease = guard.lease().expect("a lease");
    // Three TTLs later the lease has been renewed and the lock is still this guard's.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!guard.is_lost());
    let status = locks.status("jobs").await.expect("status");
    assert_eq!(status.holder.as_ref().map(|h| h.lease), Some(lease));
    assert_eq!(
        status.holder.map(|h| h.fencing_token),
        Some(guard.fencing_token())
    );
    assert!(
        locks.try_acquire("jobs", 2).await.expect("try").is_none(),
        "held by the guard"
    );

    let refused = locks.release("jobs", LeaseId(0x1234), 0).await;
    assert!(
        matches!(refused, Err(Error::PermissionDenied { .. })),
        "{refused:?}"
    );

    let token = guard.fencing_token();
    assert!(guard.release().await.expect("release"), "it held the lock");
    assert!(locks.status("jobs").await.expect("status").holder.is_none());
    let next = locks
        .try_acquire("jobs", 2)
        .await
        .expect("try")
        .expect("free now");
    assert!(next.fencing_token() > token);
}

#[tokio::test]
async fn a_guard_reports_the_loss_of_its_lease() {
    let (_node, client) = start().await;
    let locks = client.lock();
    let mut guard = locks
        .acquire("lost", AcquireOptions::default())
        .await
        .expect("acquire");
    let lease = guard.lease().expect("a lease");
    client.lease().revoke(lease).await.expect("revoke");
    let why = tokio::time::timeout(WAIT, guard.lost())
        .await
        .expect("loss noticed");
    assert!(matches!(why, Error::LeaseNotFound { .. }), "{why:?}");
    assert!(guard.is_lost());
    assert!(locks.status("lost").await.expect("status").holder.is_none());
}

#[tokio::test]
async fn elections_campaign_observe_and_resign() {
    let (_node, client) = start().await;
    let elections = client.election();
    assert_eq!(elections.leader("db").await.expect("leader"), None);
    let leadership = elections
        .campaign("db", "node-a", 5)
        .await
        .expect("campaign");
    let mut changes = Box::pin(elections.observe("db").await.expect("observe"));
    let first = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("value");
    assert_eq!(&first[..], b"node-a");
    leadership.proclaim("node-a v2").await.expect("proclaim");
    let second = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("value");
    assert_eq!(&second[..], b"node-a v2");

    let standby = {
        let elections = elections.clone();
        tokio::spawn(async move { elections.campaign("db", "node-b", 5).await })
    };
    leadership.resign().await.expect("resign");
    let b = tokio::time::timeout(WAIT, standby)
        .await
        .expect("b elected")
        .expect("task")
        .expect("campaign");
    let third = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("value");
    assert_eq!(&third[..], b"node-b");
    elections
        .resign("db", b.lease())
        .await
        .expect("resign by lease from anywhere");
    assert_eq!(elections.leader("db").await.expect("leader"), None);
}
