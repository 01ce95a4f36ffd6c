//! The REST gateway on the same port: etcd's gateway paths, the proto3 JSON mapping,
//! errors as JSON, and the OpenAPI document.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{http, post_json, TestNode, WAIT};

fn b64(s: &str) -> String {
    BASE64.encode(s)
}

fn unb64(v: &Value) -> String {
    let text = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    String::from_utf8(BASE64.decode(text).expect("base64")).expect("utf-8")
}

fn revision(resp: &Value) -> i64 {
    resp["header"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("revision is a string in {resp}"))
        .parse()
        .expect("decimal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_and_lease_over_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let addr = node.addr.as_str();

    let body = json!({ "key": b64("r/a"), "value": b64("1") }).to_string();
    let (status, put) = post_json(addr, "/v3/kv/put", &body).await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(revision(&put), 2);
    assert!(
        put["header"]["cluster_id"].is_string(),
        "uint64 as a string"
    );

    let body = json!({ "key": b64("r/"), "range_end": b64("r0") }).to_string();
    let (status, range) = post_json(addr, "/v3/kv/range", &body).await;
    assert_eq!(status, 200);
    assert_eq!(range["count"], "1");
    let kv = &range["kvs"][0];
    assert_eq!(
        (unb64(&kv["key"]), unb64(&kv["value"])),
        ("r/a".into(), "1".into())
    );
    assert_eq!(kv["create_revision"], "2");
    assert_eq!(kv["version"], "1");

    // Compare-and-swap in the documented form: proto names, enum names, strings for int64.
    let cas = |expect: &str, next: &str| {
        json!({
            "compare": [{ "key": b64("r/a"), "target": "VALUE", "result": "EQUAL", "value": b64(expect) }],
            "success": [{ "request_put": { "key": b64("r/a"), "value": b64(next) } }],
            "failure": [{ "request_range": { "key": b64("r/a") } }]
        })
        .to_string()
    };
    let (status, won) = post_json(addr, "/v3/kv/txn", &cas("1", "2")).await;
    assert_eq!(status, 200, "{won}");
    assert_eq!(won["succeeded"], true);
    assert!(won["responses"][0]["response_put"].is_object(), "{won}");
    let (_, lost) = post_json(addr, "/v3/kv/txn", &cas("1", "3")).await;
    assert!(lost.get("succeeded").is_none(), "false is omitted: {lost}");
    let current = &lost["responses"][0]["response_range"]["kvs"][0];
    assert_eq!(unb64(&current["value"]), "2");

    let (status, lease) = post_json(addr, "/v3/lease/grant", r#"{"TTL":"30"}"#).await;
    assert_eq!(status, 200, "{lease}");
    let id = lease["ID"].as_str().expect("ID as a string").to_string();
    assert_eq!(lease["TTL"], "30");
    let body = json!({ "key": b64("r/leased"), "value": b64("v"), "lease": id }).to_string();
    assert_eq!(post_json(addr, "/v3/kv/put", &body).await.0, 200);
    let body = json!({ "ID": id, "keys": true }).to_string();
    let (status, ttl) = post_json(addr, "/v3/lease/timetolive", &body).await;
    assert_eq!(status, 200);
    assert_eq!(ttl["grantedTTL"], "30");
    assert_eq!(unb64(&ttl["keys"][0]), "r/leased");
    let (_, alive) = post_json(
        addr,
        "/v3/lease/keepalive",
        &json!({ "ID": id }).to_string(),
    )
    .await;
    assert_eq!(alive["result"]["TTL"], "30", "{alive}");
    let (_, listed) = post_json(addr, "/v3/lease/leases", "{}").await;
    assert_eq!(listed["leases"][0]["ID"], id.as_str());
    let (status, _) = post_json(
        addr,
        "/v3/kv/lease/revoke",
        &json!({ "ID": id }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let body = json!({ "key": b64("r/leased") }).to_string();
    let (_, gone) = post_json(addr, "/v3/kv/range", &body).await;
    assert!(gone.get("kvs").is_none(), "revoked with its lease: {gone}");

    let (status, deleted) = post_json(
        addr,
        "/v3/kv/deleterange",
        &json!({ "key": b64("r/"), "range_end": b64("r0"), "prev_kv": true }).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["deleted"], "1");

    let (status, members) = post_json(addr, "/v3/cluster/member/list", "").await;
    assert_eq!(status, 200);
    assert_eq!(members["members"][0]["ID"], "1");
    assert_eq!(
        members["members"][0]["peerURLs"][0],
        format!("http://{addr}").as_str()
    );
    let (status, st) = post_json(addr, "/v3/maintenance/status", "").await;
    assert_eq!(status, 200);
    assert_eq!(st["leader"], "1");
    assert_eq!(st["version"], "3.4.0");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_bad_requests_get_json_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let addr = node.addr.as_str();
    let rev = |addr| async move {
        let (_, r) = post_json(
            addr,
            "/v3/kv/range",
            &json!({ "key": b64("x") }).to_string(),
        )
        .await;
        revision(&r)
    };
    let before = rev(addr).await;

    let cases = [
        ("/v3/kv/put", r#"{"key": "eA==", "value": "#, "EOF"),
        ("/v3/kv/put", r#"{"kye": "eA=="}"#, "kye"),
        ("/v3/kv/put", r#"{"key": 5}"#, "base64 string"),
        ("/v3/kv/put", r#"[1, 2]"#, "etcdserverpb.PutRequest"),
        (
            "/v3/kv/range",
            r#"{"key": "eA==", "limit": "many"}"#,
            "invalid digit",
        ),
        (
            "/v3/kv/txn",
            r#"{"compare": [{"key": "eA==", "target": "COLOUR"}]}"#,
            "COLOUR",
        ),
    ];
    for (path, body, names) in cases {
        let (status, err) = post_json(addr, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {err}");
        assert_eq!(err["code"], 3, "InvalidArgument");
        let message = err["message"].as_str().expect("message");
        assert!(message.contains("JSON form"), "{message}");
        assert!(message.contains(names), "{message:?} should name {names:?}");
        assert_eq!(err["error"], err["message"]);
    }

    let refusals = [
        (
            "/v3/kv/put",
            json!({ "value": b64("v") }),
            400,
            "key is not provided",
        ),
        (
            "/v3/kv/range",
            json!({ "key": b64("b"), "range_end": b64("a") }),
            400,
            "range_end",
        ),
        (
            "/v3/kv/put",
            json!({ "key": b64("x"), "lease": "99" }),
            404,
            "lease not found",
        ),
        (
            "/v3/lease/revoke",
            json!({ "ID": "99" }),
            404,
            "lease not found",
        ),
        (
            "/v3/kv/txn",
            json!({ "compare": [{ "key": b64("x"), "target": "VERSION" }] }),
            400,
            "version",
        ),
    ];
    for (path, body, want, names) in refusals {
        let (status, err) = post_json(addr, path, &body.to_string()).await;
        assert_eq!(status, want, "{path} {body}: {err}");
        let message = err["message"].as_str().expect("message");
        assert!(message.contains(names), "{message:?} should name {names:?}");
    }
    assert_eq!(rev(addr).await, before, "no refusal moved the revision");
    let (status, err) = post_json(addr, "/v3/kv/nope", "{}").await;
    assert_eq!(status, 404, "an unknown path is not an empty 200: {err}");
    assert!(err["message"]
        .as_str()
        .expect("message")
        .contains("/v3/kv/nope"));
    let (status, _) = http(addr, "GET", "/nowhere", "").await.expect("http");
    assert_eq!(status, 404);
    // A gRPC call to an unknown method still gets gRPC's Unimplemented.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /etcdserverpb.Nope/Call HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/grpc\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut raw))
        .await
        .expect("answer within the wait")
        .expect("read");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("grpc-status: 12"),
        "{raw}"
    );
    node.stop().await;
}

/// Every `.route("...")` path in the core's rest.rs.
fn core_routes() -> BTreeSet<String> {
    let file = include_str!("../../../cella-core/src/rest.rs");
    let source = &file[..file.find("#[cfg(test)]").unwrap_or(file.len())];
    let marker = [".route", "("].concat();
    source
        .match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = source[at + marker.len()..].trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if let ("$ref", Value::String(r)) = (k.as_str(), v) {
                    out.push(r.clone());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let (status, body) = http(&node.addr, "GET", "/openapi.json", "")
        .await
        .expect("http");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    let routes = core_routes();
    assert!(routes.len() >= 18, "{routes:?}");
    for route in routes.iter().map(String::as_str).chain([
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ]) {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50);
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            assert!(op["responses"].is_object(), "{method} {path} has responses");
        }
    }
    let (status, text) = http(&node.addr, "GET", "/healthz", "").await.expect("http");
    assert_eq!((status, text.trim()), (200, "ok"));
    let (status, text) = http(&node.addr, "GET", "/metrics", "").await.expect("http");
    assert_eq!(status, 200);
    assert!(text.contains("cella_core"), "core metrics are exported");
    node.stop().await;
}

/// Reads the raw response stream into `seen` until it contains `needle`.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended before {needle:?}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within the wait"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_newline_delimited_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let addr = node.addr.clone();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let body =
        json!({ "create_request": { "key": b64("w/"), "range_end": b64("w0"), "prev_kv": true } })
            .to_string();
    let head = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"created\":true").await;
    for value in ["1", "2"] {
        let body = json!({ "key": b64("w/a"), "value": b64(value) }).to_string();
        assert_eq!(post_json(&addr, "/v3/kv/put", &body).await.0, 200);
    }
    read_until(
        &mut stream,
        &mut seen,
        &format!("\"value\":\"{}\"", b64("2")),
    )
    .await;
    assert!(seen.contains("application/x-ndjson"));
    let lines: Vec<Value> = seen
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let events: Vec<&Value> = lines
        .iter()
        .filter_map(|l| l["result"]["events"].as_array())
        .flatten()
        .collect();
    assert_eq!(events.len(), 2, "{lines:?}");
    assert_eq!(unb64(&events[1]["prev_kv"]["value"]), "1");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.stop().await;
}
