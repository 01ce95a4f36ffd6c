//! The SDK against a live core: KV, txn, leases, keep-alive, watch, cluster and status.
//!
//! Each test starts its own `cella up` through cella-testkit (nextest runs every test in its
//! own process, so a node could not be shared anyway), which also keeps the compaction test
//! from cutting into another test's history. Keys still carry a per-test prefix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cella_sdk::kv::{
    Compare, CompareOp, DeleteOptions, KeyRange, Op, OpResult, PutOptions, RangeOptions, Txn,
};
use cella_sdk::watch::{Event, EventKind, WatchOptions, WatchStream};
use cella_sdk::{Client, Error, Result, Revision};
use cella_testkit::{Node, NodeOptions};
use futures::StreamExt;

/// How long a test waits for an expected watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a fresh node may take to elect itself and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts a fresh `cella up`, waits until it is ready and connects a client to it. Keep the
/// node alive for the whole test; dropping it kills the process.
async fn start() -> (Node, Client) {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(READY_TIMEOUT)
        .await
        .expect("cella up becomes ready");
    let client = Client::connect(&node.endpoint())
        .await
        .unwrap_or_else(|error| panic!("{} is reachable: {error}", node.endpoint()));
    (node, client)
}

/// Stops the node gracefully; it must exit with status 0.
async fn stop(mut node: Node) {
    node.stop().await.expect("cella up stops cleanly");
}

/// A key prefix that no other test or run uses.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("/cella-sdk-test/{test}/{nanos}/")
}

/// The next `count` events from `stream`, failing the test if they take too long.
async fn next_events(stream: &mut WatchStream, count: usize) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("events arrive in time")
            .expect("the watch stays open")?;
        events.extend(batch.events);
    }
    Ok(events)
}

fn value_of(event: &Event) -> Option<&[u8]> {
    event.prev_kv.as_ref().map(|kv| &kv.value[..])
}

#[tokio::test]
async fn put_get_range_and_delete_round_trip() -> Result<()> {
    let (node, client) = start().await;
    let kv = client.kv();
    let prefix = unique_prefix("round-trip");
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));

    let first = kv.put(a.clone(), "1").await?;
    let second = kv
        .put_with(a.clone(), "2", PutOptions::new().prev_kv())
        .await?;
    assert!(second.revision > first.revision);
    assert_eq!(
        second.prev_kv.map(|kv| kv.value),
        Some(Bytes::from_static(b"1"))
    );
    kv.put(b.clone(), "3").await?;

    let current = kv.get(a.clone()).await?.expect("a exists");
    assert_eq!(current.value, "2");
    assert_eq!(current.version, 2);
    assert_eq!(current.create_revision, first.revision);
    assert_eq!(current.mod_revision, second.revision);
    assert_eq!(kv.get(format!("{prefix}missing")).await?, None);

    let all = kv.get_prefix(prefix.clone()).await?;
    let keys: Vec<&[u8]> = all.kvs.iter().map(|kv| &kv.key[..]).collect();
    assert_eq!(keys, [a.as_bytes(), b.as_bytes()]);

    let past = kv
        .range(
            KeyRange::key(a.clone()),
            RangeOptions::new().revision(first.revision),
        )
        .await?;
    assert_eq!(past.kvs[0].value, "1");

    let limited = kv
        .range(
            KeyRange::prefix(prefix.clone()),
            RangeOptions::new().limit(1),
        )
        .await?;
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (1, true, 2)
    );

    let keys_only = kv
        .range(
            KeyRange::prefix(prefix.clone()),
            RangeOptions::new().keys_only(),
        )
        .await?;
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

    let counted = kv
        .range(
            KeyRange::prefix(prefix.clone()),
            RangeOptions::new().count_only(),
        )
        .await?;
    assert_eq!((counted.count, counted.kvs.len()), (2, 0));

    let local = kv
        .range(KeyRange::key(b.clone()), RangeOptions::new().serializable())
        .await?;
    assert_eq!(local.kvs[0].value, "3");

    let deleted = kv
        .delete_range(KeyRange::key(a.clone()), DeleteOptions::new().prev_kv())
        .await?;
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value, "2");
    assert_eq!(kv.get(a).await?, None);
    assert_eq!(kv.delete_prefix(prefix.clone()).await?.deleted, 1);
    assert_eq!(kv.get_prefix(prefix).await?.count, 0);
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn txn_compare_and_swap_takes_each_branch() -> Result<()> {
    let (node, client) = start().await;
    let kv = client.kv();
    let key = format!("{}k", unique_prefix("txn"));
    let written = kv.put(key.clone(), "v1").await?;

    let swap = || {
        Txn::new()
            .when([
                Compare::value(key.clone(), CompareOp::Equal, "v1"),
                Compare::mod_revision(key.clone(), CompareOp::Equal, written.revision),
                Compare::create_revision(key.clone(), CompareOp::Equal, written.revision),
                Compare::version(key.clone(), CompareOp::Less, 2),
                Compare::lease(key.clone(), CompareOp::Equal, None),
            ])
            .and_then([Op::put(key.clone(), "v2", PutOptions::new())])
            .or_else([Op::range(KeyRange::key(key.clone()), RangeOptions::new())])
    };

    let won = kv.txn(swap()).await?;
    assert!(won.succeeded);
    assert!(matches!(won.responses.as_slice(), [OpResult::Put(_)]));

    let lost = kv.txn(swap()).await?;
    assert!(!lost.succeeded);
    let [OpResult::Range(current)] = lost.responses.as_slice() else {
        panic!("the else branch reads the key: {:?}", lost.responses);
    };
    assert_eq!(current.kvs[0].value, "v2");
    assert_eq!(
        lost.revision, won.revision,
        "a failed compare writes nothing"
    );

    let absent = format!("{key}-absent");
    let create = Txn::new()
        .when([Compare::version(absent.clone(), CompareOp::Equal, 0)])
        .and_then([Op::put(absent.clone(), "new", PutOptions::new())]);
    assert!(kv.txn(create).await?.succeeded);
    assert_eq!(
        kv.get(absent).await?.map(|kv| kv.value),
        Some(Bytes::from_static(b"new"))
    );
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_keys() -> Result<()> {
    let (node, client) = start().await;
    let (kv, leases) = (client.kv(), client.lease());
    let key = format!("{}leased", unique_prefix("lease"));

    let lease = leases.grant(30).await?;
    assert_eq!(lease.ttl_secs, 30);
    kv.put_with(key.clone(), "v", PutOptions::new().lease(lease.id))
        .await?;
    assert_eq!(
        kv.get(key.clone()).await?.and_then(|kv| kv.lease),
        Some(lease.id)
    );

    let ttl = leases.time_to_live(lease.id, true).await?;
    assert!(
        ttl.ttl_secs > 0 && ttl.ttl_secs <= 30,
        "remaining {}",
        ttl.ttl_secs
    );
    assert_eq!(ttl.granted_ttl_secs, 30);
    assert_eq!(ttl.keys, [Bytes::from(key.clone())]);
    assert!(leases.leases().await?.contains(&lease.id));

    leases.revoke(lease.id).await?;
    assert_eq!(kv.get(key).await?, None);
    let gone = leases.time_to_live(lease.id, false).await;
    assert!(
        matches!(gone, Err(Error::LeaseNotFound { id }) if id == lease.id),
        "{gone:?}"
    );
    let again = leases.revoke(lease.id).await;
    assert!(
        matches!(again, Err(Error::LeaseNotFound { .. })),
        "{again:?}"
    );
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn keep_alive_holds_a_short_lease_until_dropped() -> Result<()> {
    let (node, client) = start().await;
    let (kv, leases) = (client.kv(), client.lease());
    let key = format!("{}kept", unique_prefix("keep-alive"));

    let lease = leases.grant(2).await?;
    kv.put_with(key.clone(), "v", PutOptions::new().lease(lease.id))
        .await?;
    let mut keep_alive = leases.keep_alive(lease.id).await?;
    assert_eq!(keep_alive.id(), lease.id);

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        kv.get(key.clone()).await?.is_some(),
        "the key outlived its 2 s TTL"
    );
    assert!(keep_alive.refreshed().await? > 0);

    drop(keep_alive);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        kv.get(key).await?,
        None,
        "the lease expired once refreshes stopped"
    );
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn keep_alive_of_a_missing_lease_fails() -> Result<()> {
    let (node, client) = start().await;
    let leases = client.lease();
    let lease = leases.grant(30).await?;
    leases.revoke(lease.id).await?;
    let result = leases.keep_alive(lease.id).await;
    assert!(
        matches!(result, Err(Error::LeaseNotFound { .. })),
        "{result:?}"
    );
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn watch_sees_puts_and_deletes_with_previous_values() -> Result<()> {
    let (node, client) = start().await;
    let kv = client.kv();
    let prefix = unique_prefix("watch");
    let key = format!("{prefix}k");
    let options = WatchOptions::new().prev_kv();
    let mut live = client
        .watch()
        .watch(KeyRange::prefix(prefix.clone()), options.clone())
        .await?;

    let first = kv.put(key.clone(), "v1").await?;
    kv.put(key.clone(), "v2").await?;
    kv.delete(key.clone()).await?;

    let events = next_events(&mut live, 3).await?;
    let kinds: Vec<EventKind> = events.iter().map(|event| event.kind).collect();
    assert_eq!(kinds, [EventKind::Put, EventKind::Put, EventKind::Delete]);
    assert_eq!(events[0].kv.value, "v1");
    assert_eq!(value_of(&events[0]), None);
    assert_eq!(value_of(&events[1]), Some(&b"v1"[..]));
    assert_eq!(value_of(&events[2]), Some(&b"v2"[..]));
    assert_eq!(events[2].kv.key, key);

    // Replay from the first write's revision gives the same history.
    let from_first = options.start_revision(first.revision);
    let mut replay = client
        .watch()
        .watch(KeyRange::key(key.clone()), from_first)
        .await?;
    let replayed = next_events(&mut replay, 3).await?;
    assert_eq!(replayed[..3], events[..3]);
    // Open watches would hold up the node's graceful stop for its whole drain timeout.
    drop((live, replay));
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn watch_from_a_compacted_revision_reports_the_compact_revision() -> Result<()> {
    let (node, client) = start().await;
    let kv = client.kv();
    let key = format!("{}k", unique_prefix("compacted"));
    let old = kv.put(key.clone(), "1").await?;
    let newer = kv.put(key.clone(), "2").await?;
    kv.compact(newer.revision).await?;

    let from_old = WatchOptions::new().start_revision(old.revision);
    let error = match client.watch().watch(KeyRange::key(key), from_old).await {
        Err(error) => error,
        Ok(mut stream) => tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .expect("the server answers in time")
            .expect("the stream reports why it ends")
            .expect_err("a compacted start revision is an error"),
    };
    assert!(
        matches!(error, Error::Compacted { compact_revision } if compact_revision == newer.revision),
        "{error:?}"
    );
    stop(node).await;
    Ok(())
}

#[tokio::test]
async fn members_and_status_agree() -> Result<()> {
    let (node, client) = start().await;
    let members = client.cluster().members().await?;
    let status = client.maintenance().status().await?;
    let seen = format!("members {members:?}, status {status:?}");
    assert!(
        members.iter().any(|member| member.id == status.member_id),
        "{seen}"
    );
    let leader = status.leader.unwrap_or_else(|| panic!("no leader: {seen}"));
    assert!(members.iter().any(|member| member.id == leader), "{seen}");
    assert!(
        status.raft_applied_index > 0 && status.revision > Revision(0),
        "{seen}"
    );
    stop(node).await;
    Ok(())
}
