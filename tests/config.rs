//! Config center across processes (SPEC §3): a subscribed app keeps serving its last config
//! from its disk cache while the server is down (also when the app itself restarts then),
//! and picks up changes when the server returns; a publish acknowledged right before
//! kill -9 of the server is never lost; a subscription to a whole group follows configs
//! created later and deletions, also those made while no subscriber ran.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cella_sdk::config::{ConfigKey, Identity, PublishOptions, Subscription};
use cella_sdk::Client;
use cella_testkit::{fault_iterations, Node, NodeOptions};

const READY: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);

fn content_is<'a>(
    expected: &'static str,
    key: &'a ConfigKey,
) -> impl Fn(&Subscription) -> bool + 'a {
    move |s: &Subscription| s.get(key).is_some_and(|c| c.content == expected)
}

async fn publish(endpoint: &str, key: &ConfigKey, content: &str) -> anyhow::Result<u64> {
    let client = Client::connect(endpoint).await?;
    let options = PublishOptions {
        format: "json".into(),
        ..Default::default()
    };
    Ok(client.config().publish(key, content, options).await?.number)
}

/// A `cella up` process, ready, with namespace `ns` created.
async fn node_with_namespace(ns: &str) -> anyhow::Result<(Node, String)> {
    let mut node = Node::embedded(NodeOptions::default())?;
    node.wait_ready(READY).await?;
    let endpoint = node.endpoint();
    let configs = Client::connect(&endpoint).await?.config();
    configs.create_namespace(ns, "").await?;
    Ok((node, endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_serves_its_disk_cache_while_the_server_is_down_and_catches_up(
) -> anyhow::Result<()> {
    let (mut node, endpoint) = node_with_namespace("prod").await?;
    let key = ConfigKey::new("prod", "web", "app.json");
    publish(&endpoint, &key, r#"{"port": 1}"#).await?;

    let cache = tempfile::tempdir()?;
    let subscribe = || {
        Subscription::builder(&endpoint)
            .client("pod-1", [("zone", "eu")])
            .cache_dir(cache.path())
            .retry_pause(Duration::from_millis(200))
            .watch(key.clone())
            .start()
    };
    let running = subscribe().await?;
    let notified = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = notified.clone();
    running.on_change(move |update| {
        if let Ok(mut seen) = sink.lock() {
            seen.push(update.number);
        }
    });
    assert!(
        running
            .wait_until(WAIT, content_is(r#"{"port": 1}"#, &key))
            .await,
        "first config arrives"
    );

    node.kill9()?;
    // The running app keeps its config...
    #[derive(serde::Deserialize)]
    struct App {
        port: u16,
    }
    let app: Option<App> = running.get_typed(&key)?;
    assert_eq!(app.map(|a| a.port), Some(1));
    // ...and an app started while the server is down starts from the disk cache.
    let restarted = subscribe().await?;
    assert!(
        !restarted.wait_connected(Duration::from_millis(500)).await,
        "the server is down"
    );
    assert_eq!(
        restarted.get(&key).map(|c| c.content),
        Some(r#"{"port": 1}"#.to_string())
    );

    node.restart()?;
    node.wait_ready(READY).await?;
    assert_eq!(publish(&endpoint, &key, r#"{"port": 2}"#).await?, 2);
    for (name, sub) in [("running", &running), ("restarted", &restarted)] {
        assert!(
            sub.wait_until(WAIT, content_is(r#"{"port": 2}"#, &key))
                .await,
            "{name} app catches up"
        );
    }
    let seen = notified.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen.last(),
        Some(&2),
        "the change callback saw release 2: {seen:?}"
    );
    // The cache holds the new config too: a third app started now, offline, sees it.
    drop((running, restarted));
    let offline = Subscription::builder("127.0.0.1:1")
        .cache_dir(cache.path())
        .watch(key.clone())
        .start()
        .await?;
    assert_eq!(offline.get(&key).map(|c| c.number), Some(2));
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_subscription_follows_new_configs_and_deletions_also_made_while_away(
) -> anyhow::Result<()> {
    let (mut node, endpoint) = node_with_namespace("prod").await?;
    let configs = Client::connect(&endpoint).await?.config();
    let old = ConfigKey::new("prod", "web", "old.json");
    publish(&endpoint, &old, "{}").await?;
    let cache = tempfile::tempdir()?;
    let subscribe = |endpoint: &str| {
        Subscription::builder(endpoint)
            .cache_dir(cache.path())
            .retry_pause(Duration::from_millis(200))
            .watch_group("prod", "web")
            .start()
    };
    let running = subscribe(&endpoint).await?;
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let sink = deleted.clone();
    running.on_delete(move |key| {
        if let Ok(mut seen) = sink.lock() {
            seen.push(key.clone());
        }
    });
    assert!(running.wait_until(WAIT, content_is("{}", &old)).await);
    let later = ConfigKey::new("prod", "web", "later.json");
    publish(&endpoint, &later, r#"{"a": 1}"#).await?;
    assert!(
        running
            .wait_until(WAIT, content_is(r#"{"a": 1}"#, &later))
            .await,
        "a config created after the subscription started arrives"
    );
    configs.delete(&later, "").await?;
    let reported = |_: &Subscription| {
        deleted
            .lock()
            .is_ok_and(|d| d.as_slice() == [later.clone()])
    };
    assert!(running.wait_until(WAIT, reported).await, "on_delete saw it");
    assert!(running.get(&later).is_none());
    drop(running);

    // Deleted while no subscriber runs: the cache still holds it, the next subscriber
    // starts from the cache and learns of the deletion, and the cache forgets it.
    configs.delete(&old, "").await?;
    let offline = subscribe("127.0.0.1:1").await?;
    assert!(
        offline.get(&old).is_some(),
        "the group is served from the cache"
    );
    let restarted = subscribe(&endpoint).await?;
    assert!(restarted.wait_connected(WAIT).await);
    assert!(
        restarted.get(&old).is_none(),
        "the first answer reports the deletion"
    );
    assert!(subscribe("127.0.0.1:1").await?.get(&old).is_none());
    drop((offline, restarted));
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_acknowledged_before_kill9_is_not_lost() -> anyhow::Result<()> {
    let iterations = fault_iterations(5) as u64;
    let (mut node, endpoint) = node_with_namespace("prod").await?;
    let key = ConfigKey::new("prod", "web", "flags.json");
    for i in 1..=iterations {
        let content = format!(r#"{{"release": {i}}}"#);
        assert_eq!(publish(&endpoint, &key, &content).await?, i);
        node.kill9()?;
        node.restart()?;
        node.wait_ready(READY).await?;
        let configs = Client::connect(&endpoint).await?.config();
        let current = configs.get(&key, &Identity::default()).await?;
        assert_eq!(
            (current.number, current.content.as_str()),
            (i, content.as_str()),
            "iteration {i}"
        );
        let history = configs.history(&key, 0).await?;
        assert_eq!(
            history.len() as u64,
            i,
            "iteration {i}: every release survives"
        );
    }
    node.stop().await?;
    Ok(())
}
