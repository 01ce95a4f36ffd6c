//! Smoke tests of the `cella bench` workloads that compare paths or watch the server process:
//! a real `cella up`, the real `cella bench` binary, short runs. They check that every row
//! of the result table has operations and no errors, not how fast anything is (speed goes
//! in bench/results).

use std::process::Command;
use std::time::Duration;

use cella_testkit::{cella_binary, Node, NodeOptions};

/// Runs `cella bench ARGS` (short bounds) against `node` and returns its stdout (the
/// markdown section); fails the test if it exits unsuccessfully.
fn bench(node: &Node, args: &[&str]) -> String {
    let output = Command::new(cella_binary().expect("cella is built"))
        .arg("bench")
        .args(args)
        .args(["--targets", &format!("cella={}", node.addr())])
        .args(["--duration", "300ms", "--warmup", "100ms", "--count", "400"])
        .output()
        .expect("run cella bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cella bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The result-table rows (`| name | clients | ops | ops/s | p50 | p99 | p99.9 | errors |...`)
/// as (name, clients, ops, errors).
fn rows(markdown: &str) -> Vec<(String, u64, u64, u64)> {
    markdown
        .lines()
        .skip_while(|l| !l.starts_with("| target | clients | ops |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let number = |i: usize| cells[i].parse::<u64>().expect("a number cell");
            (cells[1].to_string(), number(2), number(3), number(8))
        })
        .collect()
}

fn assert_rows(markdown: &str, names: &[&str], levels: &[u64]) {
    let rows = rows(markdown);
    assert_eq!(rows.len(), names.len() * levels.len(), "{markdown}");
    for (name, clients, ops, errors) in rows {
        assert!(
            names.contains(&name.as_str()),
            "unexpected row {name}\n{markdown}"
        );
        assert!(levels.contains(&clients), "{markdown}");
        assert!(ops > 0, "{name} at {clients} did nothing\n{markdown}");
        assert_eq!(errors, 0, "{name} at {clients} had errors\n{markdown}");
    }
}

async fn node() -> Node {
    let mut node = Node::embedded(NodeOptions::default()).expect("start cella up");
    node.wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    node
}

#[tokio::test]
async fn rpc_overhead_measures_tonic_and_the_sdk_side_by_side() {
    let node = node().await;
    let md = bench(&node, &["rpc-overhead", "--clients", "1,4"]);
    assert_rows(&md, &["tonic", "sdk"], &[1, 4]);
    assert!(md.contains("Ratios to tonic"), "{md}");
}

#[tokio::test]
async fn sidecar_hop_measures_direct_and_sidecar_calls() {
    let node = node().await;
    let md = bench(&node, &["sidecar-hop", "--clients", "1,2"]);
    assert_rows(&md, &["direct", "sidecar"], &[1, 2]);
    assert!(md.contains("Ratios to direct"), "{md}");
}

#[tokio::test]
async fn registry_heartbeats_report_the_server_process() {
    let node = node().await;
    let pid = node.pid().expect("the node runs").to_string();
    for workload in ["registry-heartbeat-grpc", "registry-heartbeat"] {
        let md = bench(
            &node,
            &[
                workload,
                "--clients",
                "2",
                "--instances",
                "200",
                "--beat-batch",
                "50",
                "--server-pid",
                &pid,
            ],
        );
        assert_rows(&md, &["cella"], &[2]);
        assert!(md.contains("instances 200 in all"), "{md}");
        // The server's CPU share and memory were read from /proc for the run.
        let row = md
            .lines()
            .find(|l| l.starts_with("| cella | 2 |"))
            .expect("row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 12, "server columns present: {row}");
        assert!(cells[9].parse::<f64>().is_ok(), "{row}");
        assert!(cells[10].parse::<f64>().expect("RSS MiB") > 0.0, "{row}");
    }
}
