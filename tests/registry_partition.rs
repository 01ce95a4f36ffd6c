//! The registry across a partition (SPEC §2, Cluster): a 3-node cluster whose members talk
//! through `PartitionProxy`s is split {1, 2} | {3}. Both sides keep taking registrations and
//! answering discovery; after the heal every node converges on the same instances.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use cella_sdk::registry::{pb, service_name, Registration};
use cella_sdk::Client;
use cella_testkit::{free_port, Node, NodeOptions, PartitionProxy};

const READY: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "catalog";

fn ip(node: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20 + node as u8))
}

async fn ids_on(client: &Client) -> Vec<String> {
    let view = client
        .registry()
        .list(service_name(SERVICE), true, "")
        .await
        .expect("list");
    view.instances.into_iter().map(|i| i.id).collect()
}

/// Waits until node `n`'s healthy instances are exactly `want`.
async fn wait_ids(clients: &[Client], n: usize, want: &[&str], what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let have = ids_on(&clients[n]).await;
        if have == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {}: {what}: have {have:?}, want {want:?}",
            n + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(client: &Client, port: u32) -> Registration {
    let instance = pb::Instance {
        ip: "127.0.0.1".into(),
        port,
        ..Default::default()
    };
    client
        .registry()
        .register(service_name(SERVICE), instance)
        .await
        .expect("register")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_serve_during_a_partition_and_converge_after_it_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cella.toml");
    std::fs::write(&config, "[registry]\nsweep_interval_ms = 50\n").expect("config");
    let options = NodeOptions::default()
        .election_timeout(Duration::from_millis(1000))
        .env("CELLA_CONFIG", config.display());

    let listen: Vec<SocketAddr> = (1..=3)
        .map(|n| SocketAddr::new(ip(n), free_port().expect("port")))
        .collect();
    let mut proxies = Vec::new();
    for (n, upstream) in listen.iter().enumerate() {
        let front = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 21 + n as u8)), 0);
        proxies.push(
            PartitionProxy::start(front, *upstream)
                .await
                .expect("proxy"),
        );
    }
    let peers: Vec<(u64, SocketAddr)> = proxies
        .iter()
        .enumerate()
        .map(|(n, p)| (n as u64 + 1, p.addr()))
        .collect();
    let mut nodes = Vec::new();
    for (n, addr) in listen.iter().enumerate() {
        nodes.push(
            Node::member_at(n as u64 + 1, *addr, &peers, options.clone()).expect("member starts"),
        );
    }
    for node in &mut nodes {
        node.wait_ready(READY).await.expect("member ready");
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Client::connect(&node.endpoint()).await.expect("connect"));
    }
    clients[0]
        .registry()
        .configure(
            service_name(SERVICE),
            pb::Settings {
                beat_interval_ms: 100,
                unhealthy_after_ms: 500,
                remove_after_ms: 1000,
                protect_threshold: 0.0,
            },
        )
        .await
        .expect("configure");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let _a = register(&clients[0], 5001).await;
    let _b = register(&clients[2], 5002).await;
    for n in 0..3 {
        wait_ids(
            &clients,
            n,
            &["127.0.0.1#5001#DEFAULT", "127.0.0.1#5002#DEFAULT"],
            "before the partition",
        )
        .await;
    }

    // Cut {3} off from {1, 2}, both ways.
    proxies[2].block([ip(1), ip(2)]);
    proxies[0].block([ip(3)]);
    proxies[1].block([ip(3)]);
    let _c = register(&clients[0], 5003).await; // majority side
    let _d = register(&clients[2], 5004).await; // minority side: the core has no quorum here
                                                // Each side serves what beats on its side; the other side's instances expire there.
    wait_ids(
        &clients,
        0,
        &["127.0.0.1#5001#DEFAULT", "127.0.0.1#5003#DEFAULT"],
        "majority side during the partition",
    )
    .await;
    wait_ids(
        &clients,
        1,
        &["127.0.0.1#5001#DEFAULT", "127.0.0.1#5003#DEFAULT"],
        "majority side during the partition",
    )
    .await;
    wait_ids(
        &clients,
        2,
        &["127.0.0.1#5002#DEFAULT", "127.0.0.1#5004#DEFAULT"],
        "minority side during the partition",
    )
    .await;

    for proxy in &proxies {
        proxy.heal();
    }
    let all = [
        "127.0.0.1#5001#DEFAULT",
        "127.0.0.1#5002#DEFAULT",
        "127.0.0.1#5003#DEFAULT",
        "127.0.0.1#5004#DEFAULT",
    ];
    for n in 0..3 {
        wait_ids(&clients, n, &all, "after the heal").await;
    }
    for node in &mut nodes {
        node.stop().await.expect("clean stop");
    }
}
