//! The lock API over REST/JSON on the node's port, and its OpenAPI entries.

use std::net::SocketAddr;

use serde_json::Value;

use crate::harness::TestNode;

/// One HTTP/1.1 request on its own connection; returns the status and the JSON body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = cella_testkit::http::json(&addr.to_string(), method, path, body)
        .await
        .expect("HTTP exchange");
    let value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{path}: {body:?}: {e}"));
    (status, value)
}

#[tokio::test]
async fn acquire_status_release_over_rest() {
    let node = TestNode::start().await;
    let (status, held) = http(
        node.addr,
        "POST",
        "/v1/locks/acquire",
        r#"{"name":"inventory","ttl_seconds":30}"#,
    )
    .await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["lease_granted"], true);
    let lease = held["lease"].as_str().expect("int64 as string").to_string();
    let token = held["fencing_token"]
        .as_str()
        .expect("int64 as string")
        .to_string();

    let (status, view) = http(node.addr, "GET", "/v1/locks/status?name=inventory", "").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["holder"]["lease"].as_str(), Some(lease.as_str()));
    assert_eq!(
        view["holder"]["fencing_token"].as_str(),
        Some(token.as_str())
    );

    let (status, refused) = http(
        node.addr,
        "POST",
        "/v1/locks/release",
        r#"{"name":"inventory","lease":"12345"}"#,
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was released")),
        "{refused}"
    );

    let body = format!(
        r#"{{"name":"inventory","lease":"{lease}","fencing_token":"{token}","revoke_lease":true}}"#
    );
    let (status, released) = http(node.addr, "POST", "/v1/locks/release", &body).await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["was_holder"], true);
    let (_, view) = http(node.addr, "GET", "/v1/locks/status?name=inventory", "").await;
    assert!(view.get("holder").is_none_or(Value::is_null), "{view}");
}

#[tokio::test]
async fn bad_rest_input_gets_a_4xx_naming_the_field() {
    let node = TestNode::start().await;
    let (status, err) = http(
        node.addr,
        "POST",
        "/v1/locks/acquire",
        r#"{"name":"","ttl_seconds":30}"#,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("`name` must not be empty")),
        "{err}"
    );
    let (status, err) = http(
        node.addr,
        "POST",
        "/v1/semaphores/acquire",
        r#"{"name":"p","permits":0,"ttl_seconds":5}"#,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = http(node.addr, "POST", "/v1/locks/acquire", r#"{"name":5}"#).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = http(node.addr, "GET", "/v1/locks/status", "").await;
    assert_eq!(status, 400, "{err}");
}

#[tokio::test]
async fn openapi_describes_the_lock_routes() {
    let node = TestNode::start().await;
    let (status, doc) = http(node.addr, "GET", "/openapi.json", "").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/locks/acquire",
        "/v1/locks/release",
        "/v1/locks/status",
        "/v1/semaphores/acquire",
        "/v1/semaphores/status",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
}
