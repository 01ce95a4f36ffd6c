//! The sidecar's Dapr pub/sub and configuration routes against a real `cella up` and a real
//! app: an axum server in this test that declares its subscriptions in `GET /dapr/subscribe`,
//! takes events on its routes and config changes on `/configuration/{store}/{key}`, all over
//! 127.0.0.1 sockets. (The Dapr Python SDK publishes and reads configuration over gRPC only,
//! so these routes are driven over HTTP as Dapr's API reference describes them.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use cella_sdk::config::{pb as config_pb, ConfigKey, PublishOptions};
use cella_sdk::Client;
use cella_sidecar::{CellaConnection, Sidecar, SidecarConfig};
use cella_testkit::http::http_request;
use cella_testkit::{Node, NodeOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How long any one expected delivery may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
const APP_ID: &str = "shop";

/// What the app received: the route, the Content-Type and the body.
#[derive(Debug)]
struct Received {
    route: String,
    content_type: String,
    body: Value,
}

#[derive(Clone)]
struct AppState {
    received: mpsc::UnboundedSender<Received>,
    flaky_calls: Arc<AtomicUsize>,
    flaky_config_calls: Arc<AtomicUsize>,
}

fn record(state: &AppState, route: String, headers: &HeaderMap, body: &[u8]) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    let _ = state.received.send(Received {
        route,
        content_type,
        body,
    });
}

/// The app: two subscriptions, `orders` always succeeds, `flaky` asks for a retry first;
/// config changes are taken, except that the first one of key `flaky` fails with 500.
async fn start_app() -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let (received, inbox) = mpsc::unbounded_channel();
    let state = AppState {
        received,
        flaky_calls: Arc::new(AtomicUsize::new(0)),
        flaky_config_calls: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route(
            "/dapr/subscribe",
            get(|| async {
                Json(json!([
                    {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
                    {"pubsubname": "pubsub", "topic": "flaky", "routes": {"default": "/flaky"}},
                ]))
            }),
        )
        .route(
            "/orders",
            post(
                |State(state): State<AppState>, headers: HeaderMap, body: bytes::Bytes| async move {
                    record(&state, "/orders".into(), &headers, &body);
                    Json(json!({"status": "SUCCESS"}))
                },
            ),
        )
        .route(
            "/flaky",
            post(
                |State(state): State<AppState>, headers: HeaderMap, body: bytes::Bytes| async move {
                    record(&state, "/flaky".into(), &headers, &body);
                    let first = state.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0;
                    Json(json!({"status": if first { "RETRY" } else { "SUCCESS" }}))
                },
            ),
        )
        .route(
            "/configuration/{store}/{key}",
            post(
                |State(state): State<AppState>,
                 Path((store, key)): Path<(String, String)>,
                 headers: HeaderMap,
                 body: bytes::Bytes| async move {
                    record(
                        &state,
                        format!("/configuration/{store}/{key}"),
                        &headers,
                        &body,
                    );
                    let first = key == "flaky"
                        && state.flaky_config_calls.fetch_add(1, Ordering::SeqCst) == 0;
                    if first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, inbox)
}

async fn next(inbox: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a delivery within the wait")
        .expect("the app is running")
}

async fn call(
    sidecar: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let headers = [("Content-Type", content_type)];
    let answer = http_request(sidecar, method, path, &headers, body.as_bytes(), WAIT)
        .await
        .unwrap();
    let body = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    (answer.status, body)
}

async fn get_from(sidecar: &str, path: &str) -> (u16, Value) {
    call(sidecar, "GET", path, "text/plain", "").await
}

/// Sends a request that must fail with 400 and Dapr's error `code`; returns the error body.
async fn refused(
    sidecar: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    code: &str,
) -> Value {
    let (status, answer) = call(sidecar, method, path, content_type, body).await;
    assert_eq!(
        (status, answer["errorCode"].as_str()),
        (400, Some(code)),
        "{method} {path}: {answer}"
    );
    answer
}

#[tokio::test]
async fn publish_subscribe_and_configuration_reach_a_real_app() {
    let mut node = Node::embedded(NodeOptions::default()).unwrap();
    node.wait_ready(Duration::from_secs(30)).await.unwrap();
    let endpoint = node.endpoint();
    let client = Client::connect(&endpoint).await.unwrap();
    let configs = client.config();
    configs.create_namespace("prod", "").await.unwrap();
    let flag = ConfigKey::new("prod", "DEFAULT_GROUP", "feature");
    let text = || PublishOptions {
        format: "text".into(),
        ..Default::default()
    };
    configs.publish(&flag, "on", text()).await.unwrap();

    let (app_addr, mut inbox) = start_app().await;
    let mut config = SidecarConfig::new(APP_ID, app_addr.port(), "127.0.0.1:0".parse().unwrap());
    config.labels = vec![("zone".into(), "eu-1".into())];
    let sidecar = Sidecar::bind(config, client.registry())
        .await
        .unwrap()
        .with_cella(CellaConnection {
            client: client.clone(),
            endpoint: endpoint.clone(),
            token: None,
        });
    let sidecar_addr = sidecar.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));
    let s = sidecar_addr.as_str();

    // The sidecar read the app's subscriptions (bounded wait).
    let mut subscriptions = Value::Null;
    for _ in 0..300 {
        let (_, metadata) = get_from(s, "/v1.0/metadata").await;
        subscriptions = metadata["subscriptions"].clone();
        if subscriptions.as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(subscriptions[0]["topic"], "orders", "{subscriptions}");
    assert_eq!(subscriptions[1]["route"], "/flaky", "{subscriptions}");

    // A JSON publish arrives as a CloudEvent carrying the JSON as its data.
    let (status, body) = call(
        s,
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.partitionKey=order-7",
        "application/json",
        r#"{"orderId": 7}"#,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let event = next(&mut inbox).await;
    assert_eq!(event.route, "/orders");
    assert_eq!(event.content_type, "application/cloudevents+json");
    assert_eq!(event.body["data"], json!({"orderId": 7}));
    assert_eq!(event.body["datacontenttype"], "application/json");
    assert_eq!(event.body["topic"], "orders");
    assert_eq!(event.body["pubsubname"], "pubsub");
    assert_eq!(event.body["source"], APP_ID);
    assert_eq!(event.body["specversion"], "1.0");
    assert_eq!(event.body["type"], "com.dapr.event.sent");

    // A raw text payload is stored unwrapped and reaches the app as a CloudEvent of text.
    let (status, _) = call(
        s,
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.rawPayload=true",
        "text/plain",
        "hello",
    )
    .await;
    assert_eq!(status, 204);
    let event = next(&mut inbox).await;
    assert_eq!(event.body["data"], "hello");
    assert_eq!(event.body["datacontenttype"], "text/plain");

    // RETRY makes the broker deliver the same event again.
    let (status, _) = call(
        s,
        "POST",
        "/v1.0/publish/pubsub/flaky",
        "text/plain",
        "try me",
    )
    .await;
    assert_eq!(status, 204);
    let first = next(&mut inbox).await;
    let second = next(&mut inbox).await;
    assert_eq!(
        (first.route.as_str(), second.route.as_str()),
        ("/flaky", "/flaky")
    );
    assert_eq!(first.body["data"], "try me");
    assert_eq!(
        first.body["id"], second.body["id"],
        "the same event, redelivered"
    );

    // Publish errors, Dapr's way; nothing reaches the app.
    refused(
        s,
        "POST",
        "/v1.0/publish/kafka/orders",
        "text/plain",
        "x",
        "ERR_PUBSUB_NOT_FOUND",
    )
    .await;
    let body = refused(
        s,
        "POST",
        "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=5",
        "text/plain",
        "x",
        "ERR_MALFORMED_REQUEST",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("ttlInSeconds"),
        "{body}"
    );
    refused(
        s,
        "POST",
        "/v1.0/publish/pubsub/orders",
        "application/cloudevents+json",
        "[1]",
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
    )
    .await;
    refused(
        s,
        "POST",
        "/v1.0/publish/pubsub/bad%20topic",
        "text/plain",
        "x",
        "ERR_PUBSUB_PUBLISH_MESSAGE",
    )
    .await;

    // Configuration: get by key, all keys, unknown keys left out, unknown store refused.
    let (status, items) = get_from(s, "/v1.0/configuration/prod?key=feature&key=nope").await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["feature"]["value"], "on");
    assert_eq!(items["feature"]["version"], "1");
    assert_eq!(items["feature"]["metadata"]["format"], "text");
    assert!(items.get("nope").is_none(), "{items}");
    let (_, all) = get_from(s, "/v1.0/configuration/prod").await;
    assert_eq!(all["feature"]["value"], "on", "{all}");
    refused(
        s,
        "GET",
        "/v1.0/configuration/staging?key=feature",
        "text/plain",
        "",
        "ERR_CONFIGURATION_STORE_NOT_FOUND",
    )
    .await;
    refused(
        s,
        "GET",
        "/v1.0/configuration/staging/subscribe",
        "text/plain",
        "",
        "ERR_CONFIGURATION_STORE_NOT_FOUND",
    )
    .await;

    // Subscribe: a published change is POSTed to the app; the value it had is not resent.
    let (status, subscribed) = get_from(s, "/v1.0/configuration/prod/subscribe?key=feature").await;
    assert_eq!(status, 200, "{subscribed}");
    let id = subscribed["id"].as_str().expect("an id").to_owned();
    configs.publish(&flag, "off", text()).await.unwrap();
    let change = next(&mut inbox).await;
    assert_eq!(change.route, "/configuration/prod/feature");
    assert_eq!(change.body["id"], id.as_str());
    assert_eq!(change.body["items"]["feature"]["value"], "off");
    assert_eq!(change.body["items"]["feature"]["version"], "2");

    // A gray release selecting the sidecar's labels reaches this app, on get and on push.
    let target = config_pb::GrayTarget {
        labels: [("zone".to_string(), "eu-1".to_string())].into(),
        ..Default::default()
    };
    configs
        .start_gray(&flag, "canary", target, text())
        .await
        .unwrap();
    let change = next(&mut inbox).await;
    assert_eq!(change.body["items"]["feature"]["value"], "canary");
    assert_eq!(change.body["items"]["feature"]["version"], "3");
    let (_, items) = get_from(s, "/v1.0/configuration/prod?key=feature").await;
    assert_eq!(items["feature"]["value"], "canary");
    assert_eq!(items["feature"]["metadata"]["gray"], "true");

    // Deleting the config reaches the app as an empty item marked deleted.
    configs.delete(&flag, "").await.unwrap();
    let change = next(&mut inbox).await;
    assert_eq!(change.route, "/configuration/prod/feature");
    let gone = &change.body["items"]["feature"];
    assert_eq!((&gone["value"], &gone["version"]), (&json!(""), &json!("")));
    assert_eq!(gone["metadata"]["deleted"], "true", "{gone}");

    // Unsubscribe once; a second time the id is unknown.
    let path = format!("/v1.0/configuration/prod/{id}/unsubscribe");
    let (status, body) = get_from(s, &path).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    refused(
        s,
        "GET",
        &path,
        "text/plain",
        "",
        "ERR_CONFIGURATION_UNSUBSCRIBE",
    )
    .await;

    // A keyless subscribe covers the whole store: configs created later in its group are
    // pushed (one in another group is not), and a delivery the app fails is retried.
    let (status, subscribed) = get_from(s, "/v1.0/configuration/prod/subscribe").await;
    assert_eq!(status, 200, "{subscribed}");
    let elsewhere = ConfigKey::new("prod", "other", "late");
    configs.publish(&elsewhere, "no", text()).await.unwrap();
    let late = ConfigKey::new("prod", "DEFAULT_GROUP", "late");
    configs.publish(&late, "hello", text()).await.unwrap();
    let change = next(&mut inbox).await;
    assert_eq!(change.route, "/configuration/prod/late");
    assert_eq!(change.body["id"], subscribed["id"]);
    assert_eq!(change.body["items"]["late"]["value"], "hello");
    let flaky = ConfigKey::new("prod", "DEFAULT_GROUP", "flaky");
    configs.publish(&flaky, "v1", text()).await.unwrap();
    let refused_once = next(&mut inbox).await;
    let retried = next(&mut inbox).await;
    assert_eq!(
        (refused_once.route.as_str(), retried.route.as_str()),
        ("/configuration/prod/flaky", "/configuration/prod/flaky")
    );
    assert_eq!(retried.body, refused_once.body, "the same change, again");
    assert_eq!(retried.body["items"]["flaky"]["value"], "v1");
    let path = format!(
        "/v1.0/configuration/prod/{}/unsubscribe",
        subscribed["id"].as_str().expect("an id")
    );
    assert_eq!(get_from(s, &path).await.0, 200);

    let _ = stop.send(());
    running.await.unwrap().expect("the sidecar stops cleanly");
    assert!(inbox.try_recv().is_err(), "no unexpected delivery");
}
