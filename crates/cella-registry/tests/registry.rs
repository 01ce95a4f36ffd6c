//! The registry against a live `cella up`: the SDK over gRPC, the REST routes, and Nacos's v1
//! naming API, with heartbeat windows shortened per service so expiry is observed quickly.

use std::time::Duration;

use cella_sdk::registry::{pb, service_name};
use cella_sdk::{Client, Error};
use cella_testkit::{http, Node, NodeOptions};
use serde_json::Value;

const READY: Duration = Duration::from_secs(20);
/// Upper bound for any wait on the registry's background work in these tests.
const WAIT: Duration = Duration::from_secs(15);

/// Starts `cella up` with the registry sweeping every 50 ms (so the short windows below are
/// observed step by step) plus `extra` TOML for the `[registry]` section.
async fn start_with(extra: &str) -> (Node, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cella.toml");
    std::fs::write(
        &config,
        format!("[registry]\nsweep_interval_ms = 50\n{extra}"),
    )
    .expect("write config");
    let options = NodeOptions::default().env("CELLA_CONFIG", config.display());
    let mut node = Node::embedded(options).expect("cella up starts");
    node.wait_ready(READY)
        .await
        .expect("cella up becomes ready");
    let client = Client::connect(&node.endpoint())
        .await
        .expect("client connects");
    (node, client, dir)
}

async fn start() -> (Node, Client, tempfile::TempDir) {
    start_with("").await
}

fn instance(port: u32, zone: &str) -> pb::Instance {
    pb::Instance {
        ip: "127.0.0.1".into(),
        port,
        labels: [("zone".to_string(), zone.to_string())].into(),
        ..Default::default()
    }
}

/// Short windows: beat every 100 ms, unhealthy after 400 ms, removed after 800 ms.
async fn fast_windows(client: &Client, service: &str, protect_threshold: f64) {
    client
        .registry()
        .configure(
            service_name(service),
            pb::Settings {
                beat_interval_ms: 100,
                unhealthy_after_ms: 400,
                remove_after_ms: 800,
                protect_threshold,
            },
        )
        .await
        .expect("configure");
}

/// Polls `list` until `done` holds for it.
async fn eventually(
    client: &Client,
    service: &str,
    what: &str,
    done: impl Fn(&pb::ServiceView) -> bool,
) -> pb::ServiceView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = client
            .registry()
            .list(service_name(service), false, "")
            .await
            .expect("list");
        if done(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_instance_whose_heartbeat_stops_turns_unhealthy_then_disappears_and_subscribers_see_it()
{
    let (_node, client, _dir) = start().await;
    let registry = client.registry();
    fast_windows(&client, "orders", 0.0).await;
    let mut watch = registry
        .subscribe(service_name("orders"))
        .await
        .expect("subscribe");
    watch.next().await.expect("snapshot").expect("stream open");
    assert!(watch.instances().is_empty());

    let stays = registry
        .register(service_name("orders"), instance(8001, "z1"))
        .await
        .expect("register");
    let goes = registry
        .register(service_name("orders"), instance(8002, "z2"))
        .await
        .expect("register");
    let gone_id = goes.instance.id.clone();
    while watch.instances().len() < 2 {
        watch.next().await.expect("delta").expect("stream open");
    }
    let selected = registry
        .list(service_name("orders"), true, "zone=z2")
        .await
        .expect("list");
    assert_eq!(selected.instances.len(), 1, "selector zone=z2");

    drop(goes); // the heartbeat stops, as when its process dies
    eventually(&client, "orders", "the silent instance is unhealthy", |v| {
        v.instances.iter().any(|i| i.id == gone_id && !i.healthy)
    })
    .await;
    let healthy = registry
        .list(service_name("orders"), true, "")
        .await
        .expect("list");
    assert_eq!(healthy.instances.len(), 1);
    eventually(&client, "orders", "the silent instance is removed", |v| {
        v.instances.len() == 1
    })
    .await;
    while watch.instances().contains_key(&gone_id) {
        watch.next().await.expect("delta").expect("stream open");
    }
    assert!(
        watch.instances().contains_key(&stays.instance.id),
        "the beating instance stays"
    );
    stays.deregister().await.expect("deregister");
    eventually(&client, "orders", "deregistered", |v| {
        v.instances.is_empty()
    })
    .await;
}

#[tokio::test]
async fn protection_keeps_the_last_good_set_when_most_instances_go_silent_at_once() {
    let (node, client, _dir) = start().await;
    let registry = client.registry();
    fast_windows(&client, "pay", 0.5).await;
    let mut registrations = Vec::new();
    for port in 9001..=9004 {
        registrations.push(
            registry
                .register(service_name("pay"), instance(port, "z1"))
                .await
                .expect("register"),
        );
    }
    let survivor = registrations.pop().expect("four registered");
    drop(registrations); // three of four go silent together: 75% > 50%
    tokio::time::sleep(Duration::from_millis(1500)).await; // well past the removal window
    let view = registry
        .list(service_name("pay"), true, "")
        .await
        .expect("list");
    assert_eq!(
        view.instances.len(),
        4,
        "protection holds the last good set: {view:?}"
    );
    assert!(view.protecting, "the alarm is raised in the answer");
    let (_, metrics) = http::request(
        &node.addr().to_string(),
        "GET",
        "/metrics",
        "text/plain",
        "",
    )
    .await
    .expect("metrics");
    assert!(
        metrics.contains("cella_registry_protecting_services 1"),
        "alarm metric:\n{metrics}"
    );
    drop(survivor);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let (node, client, _dir) = start().await;
    let registry = client.registry();
    registry
        .register(service_name("cart"), instance(7001, "z1"))
        .await
        .expect("register");
    let before = registry
        .list(service_name("cart"), false, "")
        .await
        .expect("list");

    let missing_port = pb::Instance {
        port: 0,
        ..instance(7002, "z1")
    };
    let heavy = pb::Instance {
        weight: Some(20_000.0),
        ..instance(7003, "z1")
    };
    let mut bad_label = instance(7004, "z1");
    bad_label.labels.insert("zone".into(), "not valid!".into());
    for (bad, field) in [
        (missing_port, "port"),
        (heavy, "weight"),
        (bad_label, "labels"),
    ] {
        match registry.register(service_name("cart"), bad).await {
            Err(Error::InvalidArgument { message }) => {
                assert!(message.contains(field), "{message}")
            }
            other => panic!("expected InvalidArgument naming {field}, got {other:?}"),
        }
    }
    match registry
        .register(
            service_name("nowhere/DEFAULT_GROUP/cart"),
            instance(7005, "z1"),
        )
        .await
    {
        Err(Error::NotFound { message }) => assert!(message.contains("nowhere"), "{message}"),
        other => panic!("expected NotFound for the namespace, got {other:?}"),
    }
    match registry.list(service_name("cart"), false, "zone").await {
        Err(Error::InvalidArgument { message }) => {
            assert!(message.contains("selector"), "{message}")
        }
        other => panic!("expected InvalidArgument for the selector, got {other:?}"),
    }
    let (status, body) = http::request(
        &node.addr().to_string(),
        "POST",
        "/nacos/v1/ns/instance?serviceName=cart&ip=10.0.0.1",
        "text/plain",
        "",
    )
    .await
    .expect("nacos register");
    assert_eq!(status, 400);
    assert!(body.contains("port"), "{body}");
    let (status, body) = http::json(&node.addr().to_string(), "POST", "/v1/registry/configure", r#"{"service":{"name":"cart"},"settings":{"beat_interval_ms":"5000","unhealthy_after_ms":"1000","remove_after_ms":"2000"}}"#)
        .await
        .expect("rest configure");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unhealthy_after_ms"), "{body}");

    let after = registry
        .list(service_name("cart"), false, "")
        .await
        .expect("list");
    assert_eq!(before, after, "refused requests changed nothing");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn nacos_v1_naming_api_registers_beats_lists_and_deregisters() {
    let (node, client, _dir) = start().await;
    let addr = node.addr().to_string();
    let form = "application/x-www-form-urlencoded";
    let (status, body) = http::request(&addr, "POST", "/nacos/v1/ns/instance", form, "serviceName=DEFAULT_GROUP%40%40users&ip=10.1.0.1&port=8080&weight=2&metadata=%7B%22zone%22%3A%22z1%22%7D")
        .await
        .expect("register");
    assert_eq!((status, body.as_str()), (200, "ok"));
    http::request(
        &addr,
        "POST",
        "/nacos/v1/ns/instance?serviceName=users&ip=10.1.0.2&port=8080",
        form,
        "",
    )
    .await
    .expect("register");

    let (status, body) = http::request(
        &addr,
        "GET",
        "/nacos/v1/ns/instance/list?serviceName=users&healthyOnly=true",
        form,
        "",
    )
    .await
    .expect("list");
    assert_eq!(status, 200);
    let list = json(&body);
    assert_eq!(list["name"], "DEFAULT_GROUP@@users");
    let hosts = list["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["ip"], "10.1.0.1");
    assert_eq!(hosts[0]["weight"], 2.0);
    assert_eq!(hosts[0]["metadata"]["zone"], "z1");
    assert_eq!(
        hosts[0]["instanceId"],
        "10.1.0.1#8080#DEFAULT#DEFAULT_GROUP@@users"
    );

    // The SDK sees the same instance, with the topology label taken from the metadata.
    let view = client
        .registry()
        .list(service_name("users"), false, "zone=z1")
        .await
        .expect("list");
    assert_eq!(view.instances.len(), 1);

    let beat = r#"{"ip":"10.1.0.1","port":8080,"cluster":"DEFAULT","serviceName":"users"}"#;
    let (status, body) = http::request(
        &addr,
        "PUT",
        &format!(
            "/nacos/v1/ns/instance/beat?serviceName=users&beat={}",
            encode(beat)
        ),
        form,
        "",
    )
    .await
    .expect("beat");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["code"], 10200);
    let (_, body) = http::request(
        &addr,
        "PUT",
        "/nacos/v1/ns/instance/beat?serviceName=users&ip=10.9.9.9&port=1",
        form,
        "",
    )
    .await
    .expect("beat");
    assert_eq!(
        json(&body)["code"],
        20404,
        "an unknown instance without beat info must re-register"
    );

    let (status, body) = http::request(
        &addr,
        "GET",
        "/nacos/v1/ns/instance?serviceName=users&ip=10.1.0.2&port=8080",
        form,
        "",
    )
    .await
    .expect("detail");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["port"], 8080);
    let (_, body) = http::request(
        &addr,
        "GET",
        "/nacos/v1/ns/service/list?pageNo=1&pageSize=10",
        form,
        "",
    )
    .await
    .expect("services");
    assert_eq!(
        json(&body),
        serde_json::json!({"count": 1, "doms": ["users"]})
    );

    let (status, _) = http::request(
        &addr,
        "DELETE",
        "/nacos/v1/ns/instance?serviceName=users&ip=10.1.0.2&port=8080",
        form,
        "",
    )
    .await
    .expect("deregister");
    assert_eq!(status, 200);
    let (_, body) = http::request(
        &addr,
        "GET",
        "/nacos/v1/ns/instance/list?serviceName=users",
        form,
        "",
    )
    .await
    .expect("list");
    assert_eq!(json(&body)["hosts"].as_array().map(Vec::len), Some(1));
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn persistent_instances_survive_a_restart_and_follow_their_probe() {
    let (mut node, client, _dir) =
        start_with("probe_interval_ms = 100\nprobe_timeout_ms = 500\n").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = u32::from(listener.local_addr().expect("addr").port());
    let stored = client
        .registry()
        .register_persistent(
            service_name("db"),
            pb::Instance {
                ip: "127.0.0.1".into(),
                port,
                ..Default::default()
            },
        )
        .await
        .expect("register persistent");
    assert!(!stored.ephemeral);

    node.kill9().expect("kill");
    node.restart().expect("restart");
    node.wait_ready(READY).await.expect("ready again");
    let client = Client::connect(&node.endpoint()).await.expect("reconnect");
    let view = eventually(
        &client,
        "db",
        "the stored instance is back and probed healthy",
        |v| v.instances.len() == 1 && v.instances[0].healthy,
    )
    .await;
    assert_eq!(view.instances[0].id, stored.id);

    drop(listener);
    eventually(&client, "db", "the probe marks it unhealthy", |v| {
        v.instances.iter().all(|i| !i.healthy)
    })
    .await;
    client
        .registry()
        .deregister(service_name("db"), &stored.id)
        .await
        .expect("deregister");
    eventually(&client, "db", "deregistered", |v| v.instances.is_empty()).await;
}
