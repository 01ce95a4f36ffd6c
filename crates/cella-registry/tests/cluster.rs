//! The registry across a 3-node cluster: instances registered on any node reach every node,
//! beats sent to a non-owner keep an instance alive, and the owner's expiry verdict reaches
//! every node.

use std::time::Duration;

use cella_sdk::registry::{pb, service_name};
use cella_sdk::Client;
use cella_testkit::{Cluster, NodeOptions};

const READY: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(15);

fn instance(port: u32) -> pb::Instance {
    pb::Instance {
        ip: "127.0.0.1".into(),
        port,
        ..Default::default()
    }
}

/// Polls every client until `done` holds for each one's view of `service`.
async fn on_every_node(
    clients: &[Client],
    service: &str,
    what: &str,
    done: impl Fn(&pb::ServiceView) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for (n, client) in clients.iter().enumerate() {
        loop {
            let view = client
                .registry()
                .list(service_name(service), false, "")
                .await
                .expect("list");
            if done(&view) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {}: not {what}: {view:?}",
                n + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_beats_and_expiry_reach_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cella.toml");
    std::fs::write(&config, "[registry]\nsweep_interval_ms = 50\n").expect("config");
    let mut cluster = Cluster::start_with(
        3,
        NodeOptions::default().env("CELLA_CONFIG", config.display()),
    )
    .expect("cluster starts");
    cluster.wait_ready(READY).await.expect("cluster ready");
    let mut clients = Vec::new();
    for endpoint in cluster.endpoints() {
        clients.push(Client::connect(&endpoint).await.expect("connect"));
    }
    clients[0]
        .registry()
        .configure(
            service_name("inventory"),
            pb::Settings {
                beat_interval_ms: 100,
                unhealthy_after_ms: 500,
                remove_after_ms: 1000,
                protect_threshold: 0.0,
            },
        )
        .await
        .expect("configure");
    // Settings live in the core: every node applies them before the windows matter.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let on_first = clients[0]
        .registry()
        .register(service_name("inventory"), instance(6001))
        .await
        .expect("register");
    let on_second = clients[1]
        .registry()
        .register(service_name("inventory"), instance(6002))
        .await
        .expect("register");
    on_every_node(&clients, "inventory", "showing both instances", |v| {
        v.instances.len() == 2
    })
    .await;

    // Well past the removal window: beats to either node keep both alive wherever the owner is.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    on_every_node(&clients, "inventory", "keeping both healthy", |v| {
        v.instances.len() == 2 && v.instances.iter().all(|i| i.healthy)
    })
    .await;

    let gone = on_first.instance.id.clone();
    drop(on_first);
    on_every_node(&clients, "inventory", "without the silent instance", |v| {
        v.instances.len() == 1 && v.instances.iter().all(|i| i.id != gone)
    })
    .await;
    on_second.deregister().await.expect("deregister");
    on_every_node(&clients, "inventory", "empty", |v| v.instances.is_empty()).await;
}
