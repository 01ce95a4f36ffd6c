//! Cella's own lock API: try, timeouts, FIFO hand-over, fencing, owner-checked release,
//! status and semaphores.

use cella_proto::cella::lock::v1 as lockpb;
use cella_proto::cella::lock::v1::locks_client::LocksClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{eventually, TestNode, WAIT};

fn acquire(name: &str, lease: i64) -> lockpb::AcquireRequest {
    lockpb::AcquireRequest {
        name: name.into(),
        lease,
        timeout_ms: WAIT.as_millis() as i64,
        ..Default::default()
    }
}

fn release(name: &str, lease: i64, fencing_token: i64) -> lockpb::ReleaseRequest {
    lockpb::ReleaseRequest {
        name: name.into(),
        lease,
        fencing_token,
        revoke_lease: false,
    }
}

async fn status(locks: &mut LocksClient<Channel>, name: &str) -> lockpb::LockStatus {
    locks
        .status(lockpb::StatusRequest { name: name.into() })
        .await
        .expect("status")
        .into_inner()
}

fn waiter_leases(status: &lockpb::LockStatus) -> Vec<i64> {
    status.waiters.iter().map(|w| w.lease).collect()
}

#[tokio::test]
async fn only_the_owner_releases_and_fencing_tokens_increase() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);

    let first = locks
        .acquire(acquire("orders", a))
        .await
        .expect("a acquires")
        .into_inner();
    assert_eq!(first.lease, a);
    assert_eq!(first.key, format!("orders/{a:x}"));

    // try-lock fails at once and leaves no trace in the queue
    let mut try_b = acquire("orders", b);
    try_b.try_once = true;
    let refused = locks.acquire(try_b).await.expect_err("held");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let before = status(&mut locks, "orders").await;
    assert_eq!(before.holder.as_ref().map(|h| h.lease), Some(a));
    assert_eq!(
        before.holder.as_ref().map(|h| h.fencing_token),
        Some(first.fencing_token)
    );
    assert!(before.waiters.is_empty(), "{before:?}");

    // a wrong owner, or the right lease with a wrong token, releases nothing
    let wrong = locks
        .release(release("orders", b, 0))
        .await
        .expect_err("b does not own it");
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    assert!(wrong.message().contains("does not own"), "{wrong:?}");
    let stale = locks
        .release(release("orders", a, first.fencing_token + 1))
        .await
        .expect_err("wrong token");
    assert_eq!(stale.code(), Code::PermissionDenied);
    let after = status(&mut locks, "orders").await;
    assert_eq!(after.holder, before.holder);
    assert_eq!(
        after.revision, before.revision,
        "a refused release wrote nothing"
    );

    let released = locks
        .release(release("orders", a, first.fencing_token))
        .await
        .expect("owner releases")
        .into_inner();
    assert!(released.was_holder);
    let second = locks
        .acquire(acquire("orders", b))
        .await
        .expect("b acquires")
        .into_inner();
    assert!(second.fencing_token > first.fencing_token);
    let third = locks
        .acquire(acquire("orders", b))
        .await
        .expect("re-acquire by the holder")
        .into_inner();
    assert_eq!(
        third.fencing_token, second.fencing_token,
        "the same hold, not a new grant"
    );
}

#[tokio::test]
async fn waiters_are_served_in_order_and_status_says_since_when() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let (a, b, c) = (
        node.lease(30).await,
        node.lease(30).await,
        node.lease(30).await,
    );
    let held = locks
        .acquire(acquire("q", a))
        .await
        .expect("a")
        .into_inner();

    let mut waiter_b = locks.clone();
    let b_task = tokio::spawn(async move { waiter_b.acquire(acquire("q", b)).await });
    eventually("b queued", || {
        let mut l = locks.clone();
        async move { (waiter_leases(&status(&mut l, "q").await) == [b]).then_some(()) }
    })
    .await;
    let mut waiter_c = locks.clone();
    let c_task = tokio::spawn(async move { waiter_c.acquire(acquire("q", c)).await });
    eventually("c queued behind b", || {
        let mut l = locks.clone();
        async move { (waiter_leases(&status(&mut l, "q").await) == [b, c]).then_some(()) }
    })
    .await;

    let released = locks
        .release(release("q", a, held.fencing_token))
        .await
        .expect("release a")
        .into_inner();
    let b_held = b_task
        .await
        .expect("task")
        .expect("b gets the lock")
        .into_inner();
    assert!(b_held.fencing_token > held.fencing_token);
    assert!(!c_task.is_finished(), "c must still wait behind b");
    let now = status(&mut locks, "q").await;
    assert_eq!(now.holder.as_ref().map(|h| h.lease), Some(b));
    assert_eq!(waiter_leases(&now), [c]);
    assert_eq!(
        now.held_since_revision, released.revision,
        "b holds since a's release"
    );

    locks.release(release("q", b, 0)).await.expect("release b");
    let c_held = c_task
        .await
        .expect("task")
        .expect("c gets the lock")
        .into_inner();
    assert!(c_held.fencing_token > b_held.fencing_token);
}

#[tokio::test]
async fn a_timed_out_waiter_leaves_the_queue() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);
    locks.acquire(acquire("t", a)).await.expect("a");
    let mut short = acquire("t", b);
    short.timeout_ms = 200;
    let timed_out = locks.acquire(short).await.expect_err("times out");
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    assert!(status(&mut locks, "t").await.waiters.is_empty());
}

#[tokio::test]
async fn a_dead_holder_hands_over_when_its_lease_ends() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    // The server grants a 1 s lease that nobody keeps alive.
    let first = locks
        .acquire(lockpb::AcquireRequest {
            name: "d".into(),
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .expect("acquire with a server-granted lease")
        .into_inner();
    assert!(first.lease_granted);
    let b = node.lease(30).await;
    let next = locks
        .acquire(acquire("d", b))
        .await
        .expect("b gets it after expiry")
        .into_inner();
    assert!(next.fencing_token > first.fencing_token);
}

#[tokio::test]
async fn a_cancelled_waiter_leaves_the_queue() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let (a, b) = (node.lease(30).await, node.lease(30).await);
    locks.acquire(acquire("c", a)).await.expect("a");
    let mut waiter = locks.clone();
    let task = tokio::spawn(async move { waiter.acquire(acquire("c", b)).await });
    eventually("b queued", || {
        let mut l = locks.clone();
        async move { (!status(&mut l, "c").await.waiters.is_empty()).then_some(()) }
    })
    .await;
    task.abort();
    eventually("b's key withdrawn after its call was dropped", || {
        let mut l = locks.clone();
        async move { status(&mut l, "c").await.waiters.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let cases = [
        (acquire("", 5), "`name` must not be empty"),
        (
            lockpb::AcquireRequest {
                name: "x".into(),
                ttl_seconds: 0,
                ..Default::default()
            },
            "`ttl_seconds` must be between 1 and 86400",
        ),
        (
            lockpb::AcquireRequest {
                name: "x".into(),
                ttl_seconds: 86_401,
                ..Default::default()
            },
            "`ttl_seconds` must be between 1 and 86400",
        ),
        (
            lockpb::AcquireRequest {
                name: "x".into(),
                lease: 9,
                timeout_ms: -1,
                ..Default::default()
            },
            "`timeout_ms`",
        ),
    ];
    for (request, message) in cases {
        let err = locks.acquire(request.clone()).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(err.message().contains(message), "{request:?}: {err:?}");
    }
    let unknown = locks
        .acquire(acquire("x", 0x7777))
        .await
        .expect_err("no such lease");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let status = status(&mut locks, "x").await;
    assert!(
        status.holder.is_none() && status.waiters.is_empty(),
        "{status:?}"
    );
    let nothing = locks
        .release(release("x", 5, 0))
        .await
        .expect_err("not held");
    assert_eq!(nothing.code(), Code::PermissionDenied);
    assert!(nothing.message().contains("it is not held"), "{nothing:?}");
}

fn permit(name: &str, permits: u32, lease: i64) -> lockpb::AcquirePermitRequest {
    lockpb::AcquirePermitRequest {
        name: name.into(),
        permits,
        lease,
        timeout_ms: WAIT.as_millis() as i64,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_semaphore_admits_its_first_n() {
    let node = TestNode::start().await;
    let mut locks = node.locks().await;
    let leases = [
        node.lease(30).await,
        node.lease(30).await,
        node.lease(30).await,
    ];
    let first = locks
        .acquire_permit(permit("pool", 2, leases[0]))
        .await
        .expect("1st")
        .into_inner();
    locks
        .acquire_permit(permit("pool", 2, leases[1]))
        .await
        .expect("2nd");

    let mut try_third = permit("pool", 2, leases[2]);
    try_third.try_once = true;
    let full = locks.acquire_permit(try_third).await.expect_err("full");
    assert_eq!(full.code(), Code::FailedPrecondition);
    let mismatch = locks
        .acquire_permit(permit("pool", 3, leases[2]))
        .await
        .expect_err("permits differ");
    assert_eq!(mismatch.code(), Code::FailedPrecondition);
    assert!(mismatch.message().contains("has 2 permits"), "{mismatch:?}");

    let mut waiter = locks.clone();
    let third =
        tokio::spawn(async move { waiter.acquire_permit(permit("pool", 2, leases[2])).await });
    let status = eventually("third waits", || {
        let mut l = locks.clone();
        async move {
            let s = l
                .semaphore_status(lockpb::StatusRequest {
                    name: "pool".into(),
                })
                .await
                .ok()?
                .into_inner();
            (s.waiters.len() == 1).then_some(s)
        }
    })
    .await;
    assert_eq!(status.permits, 2);
    assert_eq!(
        status.holders.iter().map(|h| h.lease).collect::<Vec<_>>(),
        leases[..2]
    );
    let released = locks
        .release_permit(release("pool", leases[0], first.fencing_token))
        .await
        .expect("release a permit")
        .into_inner();
    assert!(released.was_holder);
    let got = third
        .await
        .expect("task")
        .expect("third gets a permit")
        .into_inner();
    assert_eq!(got.lease, leases[2]);
}
