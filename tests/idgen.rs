//! Unique ids across restarts of a real node (SPEC §4, IDs, correctness): a `cella up`
//! process hands out snowflake ids (two layouts) and segment ids in batches; between rounds
//! it is stopped gracefully or killed with SIGKILL and restarted on the same data dir —
//! sometimes at once (the old worker lease still held), sometimes after the lease expired
//! (the same worker id is claimed again and must start past its persisted high-water
//! mark). No id may ever come back twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cella_proto::cella::idgen::v1 as idpb;
use cella_proto::cella::idgen::v1::ids_client::IdsClient;
use cella_testkit::{client, fault_iterations, Node, NodeOptions};

const READY: Duration = Duration::from_secs(30);
/// The worker lease TTL configured below; waiting past it frees the old worker ids.
const WORKER_LEASE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_ids_across_node_restarts() -> anyhow::Result<()> {
    let rounds = fault_iterations(8);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("cella.toml");
    std::fs::write(
        &config,
        "[idgen.generator]\nworker_lease_ttl_secs = 2\nreserve_ms = 500\n",
    )?;
    let mut node = Node::embedded(NodeOptions::default().env("CELLA_CONFIG", config.display()))?;
    node.wait_ready(READY).await?;
    let mut seen: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut workers: Vec<u64> = Vec::new();
    for round in 0..rounds {
        let mut ids = IdsClient::new(client::channel(&node.endpoint())?);
        for (layout, tags) in [
            ("snowflake64", HashMap::new()),
            ("snowflake64", HashMap::new()),
            (
                "order32",
                HashMap::from([("db".to_string(), 7u64), ("table".to_string(), 3u64)]),
            ),
        ] {
            let resp = ids
                .batch(idpb::BatchRequest {
                    layout: layout.into(),
                    count: 10_000,
                    tags,
                })
                .await?
                .into_inner();
            if layout == "snowflake64" {
                workers.push(resp.worker);
            }
            let set = seen.entry(layout).or_default();
            for id in resp.ids {
                assert!(
                    set.insert(id.clone()),
                    "round {round}: {layout} id {id} issued twice\n{}",
                    node.log_report()
                );
            }
        }
        for _ in 0..2 {
            let resp = ids
                .segment_next(idpb::SegmentNextRequest {
                    tag: "orders".into(),
                    count: 1_000,
                })
                .await?
                .into_inner();
            let set = seen.entry("segment").or_default();
            for id in resp.ids {
                assert!(
                    set.insert(id.to_string()),
                    "round {round}: segment id {id} issued twice"
                );
            }
        }
        // Restart: gracefully (the node gives its worker ids back) or with SIGKILL (its
        // worker leases run on, and the restarted leader gives them a fresh TTL). After a
        // kill, every other time wait until those leases have expired, so the worker ids
        // are claimed again; otherwise the node must take other ones.
        if round % 2 == 0 {
            node.stop().await?;
            node.restart()?;
            node.wait_ready(READY).await?;
        } else {
            node.kill9()?;
            node.restart()?;
            node.wait_ready(READY).await?;
            if round % 4 == 3 {
                tokio::time::sleep(WORKER_LEASE * 2).await;
            }
        }
    }
    let total: usize = seen.values().map(HashSet::len).sum();
    println!("{total} ids over {rounds} rounds; snowflake64 worker ids by round: {workers:?}");
    let distinct: HashSet<_> = workers.iter().collect();
    assert!(
        distinct.len() < workers.len() / 2,
        "worker ids were claimed again after restarts: {workers:?}"
    );
    node.stop().await?;
    Ok(())
}
