//! The three mq workloads run end to end against a real `cella up` (cella-testkit starts
//! `target/debug/cella`; run `cargo build -p cella-cli` first): each must measure
//! messages with no errors and write its section, flush row included, to `--out`.
//! Peers (NATS, RabbitMQ) are not installed where tests run, so only Cella is measured.

use std::time::Duration;

use cella_bench::BenchArgs;
use cella_testkit::{Node, NodeOptions};
use clap::Parser;

/// How long a fresh node may take to elect itself and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// The rows of the results table in `section`: (target, clients, ops, errors).
fn rows(section: &str) -> Vec<(String, u64, u64, u64)> {
    section
        .lines()
        .filter(|l| l.starts_with("| cella |"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | target | clients | ops | ops/s | p50 | p99 | p99.9 | errors |
            if cells.len() < 10 {
                return None;
            }
            Some((
                cells[1].to_string(),
                cells[2].parse().ok()?,
                cells[3].parse().ok()?,
                cells[8].parse().ok()?,
            ))
        })
        .collect()
}

async fn bench(node: &Node, out: &std::path::Path, args: &[&str]) -> String {
    let target = format!("cella={}", node.addr());
    let mut argv = vec!["bench"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--targets", &target, "--out"]);
    let out_arg = out.to_string_lossy().into_owned();
    argv.push(&out_arg);
    let cli = Cli::try_parse_from(&argv).expect("valid bench arguments");
    cella_bench::run(cli.bench).await.expect("the bench runs");
    std::fs::read_to_string(out).expect("the section was written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mq_workloads_measure_cella_without_errors() {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(READY_TIMEOUT).await.expect("ready");
    let dir = tempfile::tempdir().unwrap();
    let bounded = ["--duration", "1s", "--warmup", "200ms", "--count", "2000"];

    let out = dir.path().join("produce.md");
    let mut args = vec!["mq-produce", "--clients", "1,8", "--flush", "async"];
    args.extend_from_slice(&bounded);
    let text = bench(&node, &out, &args).await;
    assert!(text.contains("## mq-produce"), "{text}");
    assert!(
        text.contains("flush async; cella: topic flush=async"),
        "{text}"
    );
    let got = rows(&text);
    assert_eq!(got.len(), 2, "{text}");
    for (_, clients, ops, errors) in &got {
        assert!(*ops > 0, "{clients} producers sent nothing: {text}");
        assert_eq!(*errors, 0, "{text}");
    }

    // Batched sends: each call is one SendBatch of 16, each message an operation.
    let out = dir.path().join("produce-batch.md");
    let mut args = vec!["mq-produce", "--clients", "2", "--batch", "16"];
    args.extend_from_slice(&bounded);
    let text = bench(&node, &out, &args).await;
    assert!(text.contains("batch 16 (messages per"), "{text}");
    let got = rows(&text);
    assert_eq!(got.len(), 1, "{text}");
    let (_, _, ops, errors) = got[0];
    assert!(
        ops > 0 && ops % 16 == 0,
        "whole batches of messages: {text}"
    );
    assert_eq!(errors, 0, "{text}");

    let out = dir.path().join("consume.md");
    // Two members join one after another, so the group rebalances during the run: give
    // the drain more time than the other levels.
    let mut args = vec!["mq-consume", "--clients", "2", "--backlog", "500"];
    args.extend_from_slice(&["--duration", "10s", "--warmup", "200ms", "--count", "2000"]);
    let text = bench(&node, &out, &args).await;
    let got = rows(&text);
    assert_eq!(got.len(), 1, "{text}");
    assert_eq!(
        (got[0].2, got[0].3),
        (500, 0),
        "the whole backlog, acked: {text}"
    );

    let out = dir.path().join("e2e.md");
    let mut args = vec![
        "mq-e2e",
        "--clients",
        "2",
        "--rate",
        "200",
        "--consumers",
        "2",
        "--batch",
        "4",
    ];
    args.extend_from_slice(&bounded);
    let text = bench(&node, &out, &args).await;
    let got = rows(&text);
    assert_eq!(got.len(), 1, "{text}");
    assert!(
        got[0].2 > 50,
        "about 200 received in 1 s, sent 4 per call: {text}"
    );
    assert_eq!(got[0].3, 0, "every message sent was received: {text}");

    // Rounds: one row per level still, merging the level's three turns.
    let out = dir.path().join("rounds.md");
    let args = [
        "mq-produce",
        "--clients",
        "2",
        "--rounds",
        "3",
        "--duration",
        "900ms",
        "--warmup",
        "0s",
        "--count",
        "3000",
    ];
    let text = bench(&node, &out, &args).await;
    assert!(text.contains("rounds 3"), "{text}");
    let got = rows(&text);
    assert_eq!(got.len(), 1, "{text}");
    assert!(got[0].2 > 0 && got[0].3 == 0, "{text}");

    node.stop().await.expect("cella up stops cleanly");
}
