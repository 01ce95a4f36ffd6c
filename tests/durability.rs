//! Durability under kill -9 (SPEC §1, Reliability): a single node (`cella up`) takes puts of
//! distinct keys from several concurrent clients; after a random 0.3–1 s it is killed with
//! SIGKILL and restarted on the same data dir, and every put that was acknowledged must be
//! there with its value, and no key that was never written may appear. Repeated
//! `CELLA_FAULT_ITERATIONS` times (default 20) on the same node, so recovery is also tested
//! on top of earlier recoveries; at the end every iteration's writes are checked again.

use std::time::{Duration, Instant};

use cella_testkit::client::Consistency;
use cella_testkit::workload::{verify_acked, WriteLoad, WriteReport};
use cella_testkit::{fault_iterations, Node, NodeOptions};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

const WRITERS: usize = 8;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const READY: Duration = Duration::from_secs(30);
const VERIFY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_kill9() -> anyhow::Result<()> {
    let iterations = fault_iterations(20);
    let started = Instant::now();
    let mut rng = SmallRng::from_os_rng();
    let mut node = Node::embedded(NodeOptions::default())?;
    node.wait_ready(READY).await?;
    let mut all = WriteReport::default();
    let mut recoveries = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let prefix = format!("durability/i{i:03}");
        let load = WriteLoad::start(&[node.endpoint()], WRITERS, &prefix, CALL_TIMEOUT)?;
        let run_for = rng.random_range(Duration::from_millis(300)..Duration::from_millis(1000));
        tokio::time::sleep(run_for).await;
        node.kill9()?;
        let report = load.stop().await?;

        node.restart()?;
        let restarted = Instant::now();
        node.wait_ready(READY).await?;
        let recovery = restarted.elapsed();
        recoveries.push(recovery);

        let check = verify_acked(
            &node.endpoint(),
            &format!("{prefix}/"),
            &report,
            Consistency::Linearizable,
            VERIFY,
        )
        .await?;
        println!(
            "iteration {i}: killed after {run_for:?}; {} acked, {} unknown, {} refused; ready {recovery:?} after restart; {check}",
            report.acked.len(),
            report.unknown,
            report.not_sent,
        );
        assert!(
            check.is_ok(),
            "iteration {i}: writes lost or invented across kill -9: {check}\n{}",
            node.log_report()
        );
        all.merge(report);
    }

    let check = verify_acked(
        &node.endpoint(),
        "durability/",
        &all,
        Consistency::Linearizable,
        VERIFY,
    )
    .await?;
    assert!(
        check.is_ok(),
        "after all iterations: {check}\n{}",
        node.log_report()
    );
    node.stop().await?;
    let slowest = recoveries.iter().max().copied().unwrap_or_default();
    println!(
        "durability: {iterations} kill -9 cycles, {} acknowledged puts all present, slowest recovery {slowest:?}, total {:?}",
        all.acked.len(),
        started.elapsed()
    );
    Ok(())
}
