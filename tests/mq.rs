//! The message broker under process faults: real `cella` nodes and `cella mq consume`
//! processes, killed with SIGKILL.
//!
//! - kill -9 of the node while concurrent producers send to a sync-flush topic, one by one
//!   and in batches (SendBatch), repeated (`CELLA_FAULT_ITERATIONS`, default 20): after
//!   restart, every acknowledged message is there.
//! - a consumer process killed mid-stream: every message still reaches the group.
//! - per-key order on an ordered topic while consumer processes are killed and replaced.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cella_proto::cella::mq::v1 as mq;
use cella_testkit::client::{self, Mq};
use cella_testkit::{cella_binary, fault_iterations, Node, NodeOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

const READY: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(5);

/// A node with small segments (so runs cross segment boundaries) and short consumer
/// timeouts (so a dead consumer's queues move on within a second).
fn node(dir: &Path) -> anyhow::Result<Node> {
    let config = dir.join("cella.toml");
    std::fs::write(
        &config,
        "[mq]\nsegment_bytes = 262144\nsession_timeout_ms = 1000\nack_timeout_ms = 3000\n",
    )?;
    Node::embedded(NodeOptions::default().config_file(&config))
}

async fn create_topic(mq: &mut Mq, name: &str, queues: u32, ordered: bool) -> anyhow::Result<()> {
    let request = mq::CreateTopicRequest {
        name: name.into(),
        queues,
        ordered,
        flush: mq::FlushPolicy::Sync as i32,
    };
    tokio::time::timeout(CALL, mq.create_topic(request)).await??;
    Ok(())
}

async fn send(
    mq: &mut Mq,
    topic: &str,
    key: &str,
    body: String,
) -> anyhow::Result<mq::SendResponse> {
    let request = mq::SendRequest {
        topic: topic.into(),
        sharding_key: key.into(),
        body: body.into(),
        ..Default::default()
    };
    Ok(tokio::time::timeout(CALL, mq.send(request))
        .await??
        .into_inner())
}

/// Sends `bodies` to `topic` as one batch; answers once all are durable.
async fn send_batch(mq: &mut Mq, topic: &str, bodies: &[String]) -> anyhow::Result<()> {
    let messages = bodies.iter().map(|body| mq::SendRequest {
        body: body.clone().into(),
        ..Default::default()
    });
    let request = mq::SendBatchRequest {
        topic: topic.into(),
        messages: messages.collect(),
    };
    tokio::time::timeout(CALL, mq.send_batch(request)).await??;
    Ok(())
}

/// Pulls and acks as member `member` until a pull comes back empty; returns the bodies.
async fn drain(mq: &mut Mq, group: &str, topic: &str, member: &str) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    for _ in 0..10_000 {
        let request = mq::PullRequest {
            group: group.into(),
            topic: topic.into(),
            member: member.into(),
            max_messages: 256,
            wait_ms: 300,
            ..Default::default()
        };
        let messages = tokio::time::timeout(CALL, mq.pull(request))
            .await??
            .into_inner()
            .messages;
        if messages.is_empty() {
            return Ok(bodies);
        }
        for m in messages {
            let ack = mq::AckRequest {
                group: group.into(),
                member: member.into(),
                topic: topic.into(),
                queue_id: m.queue_id,
                queue_offset: m.queue_offset,
            };
            tokio::time::timeout(CALL, mq.ack(ack)).await??;
            bodies.push(String::from_utf8_lossy(&m.body).into_owned());
        }
    }
    anyhow::bail!("drain did not finish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_sync_production_loses_no_acknowledged_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    node.wait_ready(READY).await?;
    let mut admin = client::mq(&node.endpoint())?;
    create_topic(&mut admin, "durable", 4, false).await?;
    let mut seen: HashSet<String> = HashSet::new();
    let iterations = fault_iterations(20);
    let mut total_acked = 0;
    let mut batched_acked = 0;
    for iteration in 0..iterations {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut producers = Vec::new();
        for p in 0..4 {
            let (acked, endpoint) = (Arc::clone(&acked), node.endpoint());
            producers.push(tokio::spawn(async move {
                let Ok(mut mq) = client::mq(&endpoint) else {
                    return;
                };
                // Producer 0 sends batches of 8, the others one message at a time.
                let batch = if p == 0 { 8 } else { 1 };
                for n in 0..100_000 {
                    let bodies: Vec<String> = (0..batch)
                        .map(|b| format!("i{iteration}-p{p}-n{n}-{b}-{}", "x".repeat(200)))
                        .collect();
                    let sent = match &bodies[..] {
                        [body] => send(&mut mq, "durable", "", body.clone()).await.map(drop),
                        _ => send_batch(&mut mq, "durable", &bodies).await,
                    };
                    match sent {
                        Ok(()) => acked.lock().expect("acked lock").extend(bodies),
                        Err(_) => return,
                    }
                }
            }));
        }
        // Let them run briefly, then kill the node under them.
        tokio::time::sleep(Duration::from_millis(150 + 37 * (iteration as u64 % 7))).await;
        node.kill9()?;
        for p in producers {
            tokio::time::timeout(Duration::from_secs(10), p).await??;
        }
        node.restart()?;
        node.wait_ready(READY).await?;
        let mut mq = client::mq(&node.endpoint())?;
        seen.extend(drain(&mut mq, "verify", "durable", "verifier").await?);
        let acked = acked.lock().expect("acked lock").clone();
        let lost: Vec<&String> = acked.iter().filter(|b| !seen.contains(*b)).collect();
        assert!(
            lost.is_empty(),
            "iteration {iteration}: {} of {} acknowledged messages lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            lost.first()
        );
        total_acked += acked.len();
        batched_acked += acked.iter().filter(|b| b.contains("-p0-")).count();
    }
    println!("{iterations} kill -9 cycles, {total_acked} acknowledged sync sends ({batched_acked} in batches), none lost");
    assert!(
        total_acked > 0 && batched_acked > 0,
        "the producers, the batching one too, must have been acknowledged at least once"
    );
    Ok(())
}

/// Runs `cella mq consume`, returning the child and a channel of the bodies it prints.
fn consumer_process(
    endpoint: &str,
    topic: &str,
    group: &str,
    count: u64,
) -> anyhow::Result<(
    tokio::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let mut child = tokio::process::Command::new(cella_binary()?)
        .args([
            "--endpoint",
            endpoint,
            "mq",
            "consume",
            "--topic",
            topic,
            "--group",
            group,
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "4000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, rx))
}

/// Reads up to `n` lines (each within a few seconds), then kills the consumer with SIGKILL.
async fn read_then_kill(
    mut child: tokio::process::Child,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(6), rx.recv()).await {
            Ok(Some(line)) => got.push(line),
            _ => break,
        }
    }
    child.start_kill()?;
    child.wait().await?;
    while let Ok(line) = rx.try_recv() {
        got.push(line);
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_reaches_the_group_across_a_consumer_crash() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    node.wait_ready(READY).await?;
    let mut mq = client::mq(&node.endpoint())?;
    create_topic(&mut mq, "jobs", 4, false).await?;
    let sent: Vec<String> = (0..300).map(|n| format!("job-{n}")).collect();
    for body in &sent {
        send(&mut mq, "jobs", "", body.clone()).await?;
    }
    // The first consumer process dies (SIGKILL) after printing some messages: some of what
    // it was given were never acked.
    let (child, rx) = consumer_process(&node.endpoint(), "jobs", "workers", 300)?;
    let crashed = read_then_kill(child, rx, 70).await?;
    assert!(
        !crashed.is_empty(),
        "the first consumer received messages before it was killed"
    );
    // A second member takes over once the first one's session runs out.
    let mut got: HashSet<String> = crashed.iter().cloned().collect();
    for _ in 0..20 {
        got.extend(drain(&mut mq, "workers", "jobs", "survivor").await?);
        if sent.iter().all(|b| got.contains(b)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let missing: Vec<&String> = sent.iter().filter(|b| !got.contains(*b)).collect();
    assert!(
        missing.is_empty(),
        "{} messages never reached the group, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    println!(
        "consumer killed after {} messages; all 300 reached the group",
        crashed.len()
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_consumer_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    node.wait_ready(READY).await?;
    let mut mq = client::mq(&node.endpoint())?;
    create_topic(&mut mq, "orders", 4, true).await?;
    const KEYS: usize = 6;
    const PER_KEY: usize = 30;
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            send(
                &mut mq,
                "orders",
                &format!("order-{key}"),
                format!("order-{key}:{seq}"),
            )
            .await?;
        }
    }
    // Consumers are killed after a few messages and replaced; what they print, in order,
    // must never run ahead within a key (a redelivery may repeat, never skip).
    let mut printed: Vec<String> = Vec::new();
    let mut kills = 0;
    for round in 0..40 {
        let (child, rx) = consumer_process(&node.endpoint(), "orders", "shippers", 1_000)?;
        let got = read_then_kill(child, rx, 13 + round % 11).await?;
        kills += 1;
        printed.extend(got);
        let done: HashSet<&String> = printed.iter().collect();
        if done.len() == KEYS * PER_KEY {
            break;
        }
    }
    let mut highest: BTreeMap<String, i64> = BTreeMap::new();
    for line in &printed {
        let (key, seq) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?;
        let seq: i64 = seq.parse()?;
        let top = highest.entry(key.to_string()).or_insert(-1);
        assert!(
            seq <= *top + 1,
            "{key}: got {seq} after at most {top} — order broken"
        );
        *top = (*top).max(seq);
    }
    let distinct: HashSet<&String> = printed.iter().collect();
    assert_eq!(
        distinct.len(),
        KEYS * PER_KEY,
        "every message was consumed ({kills} consumers killed)"
    );
    println!(
        "{kills} consumer processes killed; {} lines printed for {} messages, per-key order held",
        printed.len(),
        KEYS * PER_KEY
    );
    node.stop().await?;
    Ok(())
}
