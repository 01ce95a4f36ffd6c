//! Smoke tests of the process harness itself against the real `cella` binary: a single
//! node's lifecycle (probes, a put and a get, kill -9 and restart, graceful stop with exit
//! status 0) and a 3-node cluster's leader discovery. When these fail, the fault tests'
//! failures are about the harness or startup, not about durability or consistency.

use std::time::{Duration, Instant};

use cella_testkit::client::{self, Consistency};
use cella_testkit::{Cluster, Node, NodeOptions};

const READY: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_lifecycle() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut node = Node::embedded(NodeOptions::default())?;
    node.wait_ready(READY).await?;
    println!(
        "cella up ready in {:?} at {}",
        started.elapsed(),
        node.endpoint()
    );
    assert!(
        node.is_healthy().await,
        "/healthz must answer 200 once ready"
    );

    let mut kv = client::kv(&node.endpoint())?;
    client::put(&mut kv, "harness/k", "v1", CALL).await?;
    let seen = client::get(&mut kv, "harness/k", Consistency::Linearizable, CALL).await?;
    assert_eq!(seen.as_deref(), Some("v1"));

    node.kill9()?;
    assert!(!node.is_healthy().await, "a killed node must not answer");
    let restarted = Instant::now();
    node.restart()?;
    node.wait_ready(READY).await?;
    println!(
        "restarted after kill -9 and ready in {:?}",
        restarted.elapsed()
    );
    let mut kv = client::kv(&node.endpoint())?;
    let seen = client::get(&mut kv, "harness/k", Consistency::Linearizable, CALL).await?;
    assert_eq!(
        seen.as_deref(),
        Some("v1"),
        "an acknowledged put survives kill -9"
    );

    let stopping = Instant::now();
    node.stop().await?;
    println!("stopped gracefully (exit 0) in {:?}", stopping.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_finds_its_leader_and_tolerates_a_paused_follower() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::start_with(
        3,
        NodeOptions::default().election_timeout(Duration::from_millis(1000)),
    )?;
    cluster.wait_ready(READY).await?;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    println!(
        "3 members ready with leader {leader} in {:?}",
        started.elapsed()
    );

    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("3 members");
    cluster.member_mut(follower).pause()?;
    let mut kv = client::kv(&cluster.member(leader).endpoint())?;
    let write = Instant::now();
    client::put(&mut kv, "harness/cluster", "v", CALL).await?;
    println!(
        "write with member {follower} paused took {:?}",
        write.elapsed()
    );
    cluster.member_mut(follower).resume()?;

    let mut kv = client::kv(&cluster.member(follower).endpoint())?;
    let seen = client::get(&mut kv, "harness/cluster", Consistency::Linearizable, CALL).await?;
    assert_eq!(
        seen.as_deref(),
        Some("v"),
        "a linearizable read on a follower sees the write"
    );
    Ok(())
}
