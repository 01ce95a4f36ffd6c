//! Seed 004's drill: a registry must evict killed instances. Real instance processes
//! (`cella registry register --keep-alive`, which heart-beats like an app's SDK) register
//! with a real `cella up`; one is killed with kill -9 and must turn unhealthy, then vanish
//! from discovery, within its service's configured windows, while the others stay.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_testkit::{cella_binary, http, Node, NodeOptions};

const READY: Duration = Duration::from_secs(20);
const BEAT_MS: u64 = 200;
const UNHEALTHY_MS: u64 = 1_000;
const REMOVE_MS: u64 = 2_000;
/// Slack over a window: the sweep (every 500 ms by default) and polling.
const SLACK: Duration = Duration::from_millis(1_500);

/// A `cella registry register --keep-alive` process, killed on drop.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cella(endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(cella_binary().expect("the cella binary is built"));
    cmd.arg("--endpoint").arg(endpoint).args(args);
    cmd
}

fn spawn_instance(endpoint: &str, port: u16) -> Instance {
    let child = cella(
        endpoint,
        &[
            "registry",
            "register",
            "shop",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--keep-alive",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn an instance process");
    Instance(child)
}

/// The registry's view of `shop`: (id, healthy) pairs.
async fn instances(addr: &str) -> Vec<(String, bool)> {
    let (status, body) = http::json(
        addr,
        "POST",
        "/v1/registry/list",
        r#"{"service":{"name":"shop"}}"#,
    )
    .await
    .expect("list");
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    view["view"]["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_string(),
                        i["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for(
    addr: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&[(String, bool)]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = instances(addr).await;
        if done(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not {what} within {limit:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_disappears_from_discovery_within_its_windows() {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(READY).await.expect("ready");
    let endpoint = node.endpoint();
    let addr = node.addr().to_string();
    let configured = cella(
        &endpoint,
        &[
            "registry",
            "configure",
            "shop",
            "--beat-ms",
            &BEAT_MS.to_string(),
            "--unhealthy-ms",
            &UNHEALTHY_MS.to_string(),
            "--remove-ms",
            &REMOVE_MS.to_string(),
        ],
    )
    .status()
    .expect("cella registry configure");
    assert!(configured.success());

    let mut fleet: Vec<Instance> = (0..3)
        .map(|i| spawn_instance(&endpoint, 18_000 + i))
        .collect();
    wait_for(&addr, "all three registered", READY, |now| {
        now.len() == 3 && now.iter().all(|(_, h)| *h)
    })
    .await;
    // Past several beats and a whole unhealthy window: beating instances stay healthy.
    tokio::time::sleep(Duration::from_millis(UNHEALTHY_MS + 500)).await;
    assert!(
        instances(&addr).await.iter().all(|(_, healthy)| *healthy),
        "beating instances stay healthy"
    );

    let victim = fleet.remove(0);
    let pid = victim.0.id() as i32;
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 {pid}"
    );
    let killed_at = Instant::now();
    let victim_id = "127.0.0.1#18000#DEFAULT";
    let unhealthy = wait_for(
        &addr,
        "the killed instance unhealthy",
        Duration::from_millis(UNHEALTHY_MS) + SLACK,
        |now| now.iter().any(|(id, healthy)| id == victim_id && !healthy),
    )
    .await;
    wait_for(
        &addr,
        "the killed instance removed",
        Duration::from_millis(REMOVE_MS) + SLACK,
        |now| now.iter().all(|(id, _)| id != victim_id),
    )
    .await;
    let removed = killed_at.elapsed();
    let now = instances(&addr).await;
    println!(
        "after kill -9: unhealthy within {unhealthy:?}, removed within {removed:?} (windows {UNHEALTHY_MS} ms / {REMOVE_MS} ms)"
    );
    assert_eq!(now.len(), 2, "the other instances stay: {now:?}");
    assert!(now.iter().all(|(_, healthy)| *healthy));
    drop(victim);
    drop(fleet);
    node.stop().await.expect("clean stop");
}
