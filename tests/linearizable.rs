//! Linearizability under node kills (SPEC §1, Reliability): six clients run put / get /
//! compare-and-set (an etcd Txn comparing the value, or version 0 for "absent") on five
//! keys against random members of a 3-node cluster for 12 s, while a nemesis kills members
//! with SIGKILL (often the leader) and restarts them, one at a time. The recorded history —
//! with timeouts and errors as unknown outcomes, and failed reads left out — must be
//! linearizable. `CELLA_FAULT_SEED` fixes the clients' and nemesis' random choices.
//!
//! A second, targeted test covers the case the random run found: a leader killed and
//! restarted at once comes back as leader of the same term, and must not answer a
//! linearizable read from a state machine that has not caught up with its log.

use std::time::{Duration, Instant};

use cella_testkit::client::{self, Consistency};
use cella_testkit::linearizability::check;
use cella_testkit::nemesis::{Nemesis, NemesisAction};
use cella_testkit::workload::RegisterWorkload;
use cella_testkit::{Cluster, NodeOptions};

const RUN: Duration = Duration::from_secs(12);
/// Shorter than the default so the run sees more elections.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);
const READY: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_kill9_are_linearizable() -> anyhow::Result<()> {
    let seed = std::env::var("CELLA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set CELLA_FAULT_SEED to replay the same choices)");
    let mut cluster =
        Cluster::start_with(3, NodeOptions::default().election_timeout(ELECTION_TIMEOUT))?;
    cluster.wait_ready(READY).await?;
    cluster.wait_leader(Duration::from_secs(10)).await?;

    let endpoints = cluster.endpoints();
    for node in cluster.members() {
        println!(
            "node {:?} at {} (log {})",
            node.node_id(),
            node.endpoint(),
            node.log_path().display()
        );
    }
    let workload = RegisterWorkload {
        seed,
        ..RegisterWorkload::default()
    };
    let nemesis = Nemesis {
        seed,
        ..Nemesis::default()
    };
    let started = Instant::now();
    let (run, faults) = tokio::join!(
        workload.run(&endpoints, RUN),
        nemesis.run(&mut cluster, RUN)
    );
    let faults = faults?;
    let (history, stats) = run?;
    for event in &faults {
        println!(
            "{:>8.3}s  {}",
            (event.at - started).as_secs_f64(),
            event.action
        );
    }
    println!("workload: {} operations recorded; {stats:?}", history.len());

    let checking = Instant::now();
    let verdict = check(&history);
    let took = checking.elapsed();
    match verdict {
        Ok(report) => println!("linearizable: {report:?}, checked in {took:?}"),
        Err(err) => panic!("{err}\n(checked in {took:?}, seed {seed})"),
    }
    let kills = faults
        .iter()
        .filter(|e| matches!(e.action, NemesisAction::Kill { .. }))
        .count();
    assert!(kills > 0, "the nemesis never struck");
    assert!(
        stats.ok > 100,
        "too few operations succeeded to mean anything: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_restarted_at_once_serves_no_stale_reads() -> anyhow::Result<()> {
    const FILLERS: usize = 8;
    const FILL_PUTS: usize = 250;
    const ROUNDS: usize = 5;
    const PUTS: usize = 50;
    const READ_FOR: Duration = Duration::from_millis(1000);
    let mut cluster =
        Cluster::start_with(3, NodeOptions::default().election_timeout(ELECTION_TIMEOUT))?;
    cluster.wait_ready(READY).await?;
    // Overwrite the key a couple of thousand times first, so the node holds snapshots and
    // log entries of many older values of it: a restart that serves reads before it has
    // replayed its log then returns one of those.
    let leader = cluster.wait_leader(READY).await?;
    let fillers = (0..FILLERS).map(|f| {
        let endpoint = cluster.member(leader).endpoint();
        tokio::spawn(async move {
            let mut kv = client::kv(&endpoint)?;
            let mut failed = 0;
            for i in 0..FILL_PUTS {
                let value = format!("fill{f}-{i}");
                failed += usize::from(client::put(&mut kv, "stale/k", &value, CALL).await.is_err());
            }
            anyhow::Ok(failed)
        })
    });
    let mut fill_errors = 0;
    for filler in futures::future::join_all(fillers).await {
        fill_errors += filler??;
    }
    println!("filled: {} puts, {fill_errors} failed", FILLERS * FILL_PUTS);
    let mut stale_total = 0;
    for round in 0..ROUNDS {
        let mut last = String::new();
        for i in 0..PUTS {
            last = format!("r{round}-{i}");
            put_via_leader(&cluster, "stale/k", &last).await?;
        }
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        // Every read below starts after `last` was acknowledged, so each must return it.
        cluster.restart(leader)?;
        let restarted = Instant::now();
        let mut kv = client::kv(&cluster.member(leader).endpoint())?;
        let (mut reads, mut stale) = (0, Vec::new());
        // Read for READ_FOR from the first answer (a loaded machine may take a while to
        // restart the node), giving up 10 s after the restart.
        let mut first_answer: Option<Instant> = None;
        while first_answer.map_or(restarted.elapsed() < Duration::from_secs(10), |at| {
            at.elapsed() < READ_FOR
        }) {
            match client::get(&mut kv, "stale/k", Consistency::Linearizable, CALL).await {
                Ok(seen) => {
                    first_answer.get_or_insert_with(Instant::now);
                    reads += 1;
                    if seen.as_deref() != Some(last.as_str()) {
                        stale.push((restarted.elapsed(), seen));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        println!(
            "round {round}: restarted leader {leader} at once; {reads} linearizable reads from it in {READ_FOR:?}, {} stale {:?}",
            stale.len(),
            stale.iter().take(3).collect::<Vec<_>>()
        );
        stale_total += stale.len();
        cluster.member_mut(leader).wait_ready(READY).await?;
    }
    assert_eq!(
        stale_total, 0,
        "a restarted leader answered linearizable reads with stale values"
    );
    Ok(())
}

/// Puts `value` through the current leader, retrying (with the leader looked up again)
/// until it is acknowledged or 15 s have passed.
async fn put_via_leader(cluster: &Cluster, key: &str, value: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
        let mut kv = client::kv(&cluster.member(leader).endpoint())?;
        match client::put(&mut kv, key, value, CALL).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                anyhow::bail!("put {key}={value} kept failing: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
