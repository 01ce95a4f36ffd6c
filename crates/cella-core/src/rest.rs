//! REST/JSON for the core, at the paths of etcd's gRPC gateway (`POST /v3/kv/range`, ...),
//! with the proto3 JSON mapping: bytes as base64, 64-bit integers as strings.
//!
//! Bodies and errors follow [`crate::gateway`]. `POST /v3/watch` streams one JSON object per
//! line (`{"result": WatchResponse}`) until the client disconnects.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use cella_proto::etcdserverpb as pb;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{CoreError, CoreResult};
use crate::gateway;
use crate::grpc::serve_watch_session;
use crate::node::Core;

/// The core's REST routes.
pub fn router(core: Core) -> Router {
    Router::new()
        .route(
            "/v3/kv/range",
            post(|s, b| call(s, b, |c, r| async move { c.range(r).await })),
        )
        .route(
            "/v3/kv/put",
            post(|s, b| call(s, b, |c, r| async move { c.put(r).await })),
        )
        .route(
            "/v3/kv/deleterange",
            post(|s, b| call(s, b, |c, r| async move { c.delete_range(r).await })),
        )
        .route(
            "/v3/kv/txn",
            post(|s, b| call(s, b, |c, r| async move { c.txn(r).await })),
        )
        .route(
            "/v3/kv/compaction",
            post(|s, b| call(s, b, |c, r| async move { c.compact(r).await })),
        )
        .route(
            "/v3/lease/grant",
            post(|s, b| call(s, b, |c, r| async move { c.lease_grant(r).await })),
        )
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/timetolive", post(lease_time_to_live))
        .route("/v3/kv/lease/timetolive", post(lease_time_to_live))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/kv/lease/leases", post(lease_leases))
        .route("/v3/lease/keepalive", post(lease_keep_alive))
        .route("/v3/cluster/member/list", post(member_list))
        .route(
            "/v3/cluster/member/add",
            post(|s, b| call(s, b, |c, r| async move { c.member_add(r).await })),
        )
        .route(
            "/v3/cluster/member/remove",
            post(|s, b| call(s, b, |c, r| async move { c.member_remove(r).await })),
        )
        .route("/v3/maintenance/status", post(status))
        .route("/v3/watch", post(watch))
        .with_state(core)
}

/// [`gateway::call`] on the core (naming the state's type lets the routes' closures infer theirs).
async fn call<Req, Resp, Fut>(
    state: State<Core>,
    body: Bytes,
    op: impl FnOnce(Core, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = CoreResult<Resp>>,
{
    gateway::call(state, body, op).await
}

async fn lease_revoke(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, r: pb::LeaseRevokeRequest| async move {
        c.lease_revoke(r).await
    })
    .await
}

async fn lease_time_to_live(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, r: pb::LeaseTimeToLiveRequest| async move {
        c.lease_time_to_live(r).await
    })
    .await
}

async fn lease_leases(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, _: pb::LeaseLeasesRequest| async move {
        Ok(c.lease_leases())
    })
    .await
}

async fn lease_keep_alive(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, r: pb::LeaseKeepAliveRequest| async move {
        let resp = c.lease_keep_alive(r.id).await?;
        Ok(serde_json::json!({ "result": resp }))
    })
    .await
}

async fn member_list(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, _: pb::MemberListRequest| async move {
        Ok(c.member_list())
    })
    .await
}

async fn status(state: State<Core>, body: Bytes) -> Response {
    call(state, body, |c, _: pb::StatusRequest| async move {
        Ok(c.status())
    })
    .await
}

async fn watch(State(core): State<Core>, body: Bytes) -> Response {
    let req: pb::WatchRequest = match gateway::parse_body::<_, CoreError>(&body) {
        Ok(r) => r,
        Err(e) => return gateway::error_response(&e),
    };
    let (tx, rx) = mpsc::channel(256);
    // One create request, then keep the session open until the client goes away.
    let inbound = futures::stream::once(async move { req }).chain(futures::stream::pending());
    tokio::spawn(serve_watch_session(core, Box::pin(inbound), tx));
    gateway::ndjson(ReceiverStream::new(rx))
}

/// The OpenAPI description of these routes (`paths` and `components`).
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("openapi.json"))
        .expect("openapi.json is valid JSON, checked by a test")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use cella_proto::etcdserverpb::{
        compare, request_op, response_op, watch_create_request, watch_request,
    };
    use cella_proto::mvccpb;
    use serde_json::Value;

    use super::*;

    fn parse<T: DeserializeOwned + Default>(body: Bytes) -> Result<T, CoreError> {
        gateway::parse_body(&body)
    }

    /// Every path this file mounts with `.route("...")`.
    fn routes_in_source() -> BTreeSet<String> {
        let file = include_str!("rest.rs");
        let source = &file[..file.find("#[cfg(test)]").unwrap_or(file.len())];
        let marker = [".route", "("].concat();
        source
            .match_indices(&marker)
            .filter_map(|(at, _)| {
                let rest = source[at + marker.len()..].trim_start();
                let rest = rest.strip_prefix('"')?;
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    }

    fn schema<'a>(doc: &'a Value, reference: &str) -> &'a Value {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference} is not a local schema reference"));
        doc.pointer(&format!("/components/schemas/{name}"))
            .unwrap_or_else(|| panic!("{reference} does not resolve"))
    }

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn openapi_documents_every_route_and_every_ref_resolves() {
        let doc = openapi();
        let routes = routes_in_source();
        assert!(routes.len() >= 18, "found the routes: {routes:?}");
        for route in &routes {
            let op = doc
                .pointer(&format!("/paths/{}/post", route.replace('/', "~1")))
                .unwrap_or_else(|| panic!("{route} is not documented as a POST"));
            assert!(op.get("summary").is_some(), "{route} has a summary");
            assert!(
                op.pointer("/responses/200").is_some(),
                "{route} documents its answer"
            );
        }
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        assert_eq!(documented, routes, "no documented path without a route");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            schema(&doc, &r);
        }
    }

    /// Checks that `value` (as the gateway emits it) fits `schema`; returns the properties
    /// of objects seen, by schema name, to check coverage.
    fn conforms(doc: &Value, schema_value: &Value, value: &Value, at: &str) {
        if let Some(Value::String(r)) = schema_value.get("$ref") {
            return conforms(doc, schema(doc, r), value, at);
        }
        let kind = schema_value["type"].as_str().unwrap_or_else(|| {
            panic!("{at}: schema without a type: {schema_value}");
        });
        match (kind, value) {
            ("object", Value::Object(map)) => {
                let props = schema_value["properties"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: object schema without properties"));
                for (k, v) in map {
                    let p = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}: property {k:?} is not documented"));
                    conforms(doc, p, v, &format!("{at}.{k}"));
                }
            }
            ("array", Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    conforms(doc, &schema_value["items"], v, &format!("{at}[{i}]"));
                }
            }
            ("boolean", Value::Bool(_)) => {}
            ("string", Value::String(s)) => {
                if let Some(Value::Array(names)) = schema_value.get("enum") {
                    assert!(
                        names.iter().any(|n| n == s),
                        "{at}: {s:?} is not among {names:?}"
                    );
                }
                match schema_value.get("format").and_then(Value::as_str) {
                    Some("int64") => assert!(s.parse::<i64>().is_ok(), "{at}: {s:?} not int64"),
                    Some("uint64") => {
                        assert!(s.parse::<u64>().is_ok(), "{at}: {s:?} not uint64")
                    }
                    Some("byte") => assert!(
                        s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)),
                        "{at}: {s:?} not base64"
                    ),
                    _ => {}
                }
            }
            _ => panic!("{at}: {value} is not a {kind}"),
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn header() -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: u64::MAX,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        })
    }

    fn kv() -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: b("k"),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            value: b("v"),
            lease: 5,
        }
    }

    fn member() -> pb::Member {
        pb::Member {
            id: 1,
            name: "cella-1".into(),
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            client_ur_ls: vec!["http://127.0.0.1:1".into()],
            is_learner: true,
        }
    }

    fn range_request() -> pb::RangeRequest {
        pb::RangeRequest {
            key: b("a"),
            range_end: b("b"),
            limit: 1,
            revision: 2,
            sort_order: 2,
            sort_target: 4,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 1,
            max_mod_revision: 1,
            min_create_revision: 1,
            max_create_revision: 1,
        }
    }

    fn put_request() -> pb::PutRequest {
        pb::PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 1,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        }
    }

    fn delete_request() -> pb::DeleteRangeRequest {
        pb::DeleteRangeRequest {
            key: b("a"),
            range_end: b("b"),
            prev_kv: true,
        }
    }

    fn range_response() -> pb::RangeResponse {
        pb::RangeResponse {
            header: header(),
            kvs: vec![kv()],
            more: true,
            count: 2,
        }
    }

    fn put_response() -> pb::PutResponse {
        pb::PutResponse {
            header: header(),
            prev_kv: Some(kv()),
        }
    }

    fn delete_response() -> pb::DeleteRangeResponse {
        pb::DeleteRangeResponse {
            header: header(),
            deleted: 1,
            prev_kvs: vec![kv()],
        }
    }

    fn compares() -> Vec<pb::Compare> {
        use compare::TargetUnion::*;
        [
            Version(1),
            CreateRevision(1),
            ModRevision(1),
            Value(b("v")),
            Lease(1),
        ]
        .into_iter()
        .enumerate()
        .map(|(target, union)| pb::Compare {
            result: 3,
            target: target as i32,
            key: b("k"),
            range_end: b("l"),
            target_union: Some(union),
        })
        .collect()
    }

    fn txn_request() -> pb::TxnRequest {
        use request_op::Request::*;
        let ops = |nested: bool| {
            let mut ops = vec![
                RequestRange(range_request()),
                RequestPut(put_request()),
                RequestDeleteRange(delete_request()),
            ];
            if nested {
                ops.push(RequestTxn(pb::TxnRequest::default()));
            }
            ops.into_iter()
                .map(|r| pb::RequestOp { request: Some(r) })
                .collect::<Vec<_>>()
        };
        pb::TxnRequest {
            compare: compares(),
            success: ops(true),
            failure: ops(false),
        }
    }

    fn txn_response() -> pb::TxnResponse {
        use response_op::Response::*;
        pb::TxnResponse {
            header: header(),
            succeeded: true,
            responses: [
                ResponseRange(range_response()),
                ResponsePut(put_response()),
                ResponseDeleteRange(delete_response()),
                ResponseTxn(pb::TxnResponse {
                    header: header(),
                    succeeded: true,
                    responses: vec![],
                }),
            ]
            .into_iter()
            .map(|r| pb::ResponseOp { response: Some(r) })
            .collect(),
        }
    }

    fn watch_requests() -> Vec<pb::WatchRequest> {
        use watch_request::RequestUnion::*;
        [
            CreateRequest(pb::WatchCreateRequest {
                key: b("a"),
                range_end: b("b"),
                start_revision: 1,
                progress_notify: true,
                filters: vec![
                    watch_create_request::FilterType::Noput as i32,
                    watch_create_request::FilterType::Nodelete as i32,
                ],
                prev_kv: true,
                watch_id: 3,
                fragment: true,
            }),
            CancelRequest(pb::WatchCancelRequest { watch_id: 3 }),
            ProgressRequest(pb::WatchProgressRequest {}),
        ]
        .into_iter()
        .map(|r| pb::WatchRequest {
            request_union: Some(r),
        })
        .collect()
    }

    fn watch_response() -> pb::WatchResponse {
        pb::WatchResponse {
            header: header(),
            watch_id: -1,
            created: true,
            canceled: true,
            compact_revision: 4,
            cancel_reason: "why".into(),
            fragment: true,
            events: vec![
                mvccpb::Event {
                    r#type: mvccpb::event::EventType::Delete as i32,
                    kv: Some(kv()),
                    prev_kv: Some(kv()),
                },
                mvccpb::Event {
                    r#type: mvccpb::event::EventType::Put as i32,
                    kv: Some(kv()),
                    prev_kv: None,
                },
            ],
        }
    }

    /// Fully populated samples of every documented message, as the gateway writes them.
    fn samples() -> Vec<(&'static str, Value)> {
        fn v<T: Serialize>(t: T) -> Value {
            serde_json::to_value(t).expect("proto messages serialize")
        }
        let mut out = vec![
            ("ResponseHeader", v(header())),
            ("KeyValue", v(kv())),
            ("RangeRequest", v(range_request())),
            ("RangeResponse", v(range_response())),
            ("PutRequest", v(put_request())),
            ("PutResponse", v(put_response())),
            ("DeleteRangeRequest", v(delete_request())),
            ("DeleteRangeResponse", v(delete_response())),
            ("TxnRequest", v(txn_request())),
            ("TxnResponse", v(txn_response())),
            (
                "CompactionRequest",
                v(pb::CompactionRequest {
                    revision: 3,
                    physical: true,
                }),
            ),
            (
                "CompactionResponse",
                v(pb::CompactionResponse { header: header() }),
            ),
            ("WatchResponse", v(watch_response())),
            (
                "WatchStreamLine",
                serde_json::json!({ "result": watch_response() }),
            ),
            (
                "LeaseGrantRequest",
                v(pb::LeaseGrantRequest { ttl: 5, id: 6 }),
            ),
            (
                "LeaseGrantResponse",
                v(pb::LeaseGrantResponse {
                    header: header(),
                    id: 6,
                    ttl: 5,
                    error: "e".into(),
                }),
            ),
            ("LeaseRevokeRequest", v(pb::LeaseRevokeRequest { id: 6 })),
            (
                "LeaseRevokeResponse",
                v(pb::LeaseRevokeResponse { header: header() }),
            ),
            (
                "LeaseKeepAliveRequest",
                v(pb::LeaseKeepAliveRequest { id: 6 }),
            ),
            (
                "LeaseKeepAliveResult",
                serde_json::json!({ "result": pb::LeaseKeepAliveResponse {
                    header: header(),
                    id: 6,
                    ttl: 5,
                } }),
            ),
            (
                "LeaseTimeToLiveRequest",
                v(pb::LeaseTimeToLiveRequest { id: 6, keys: true }),
            ),
            (
                "LeaseTimeToLiveResponse",
                v(pb::LeaseTimeToLiveResponse {
                    header: header(),
                    id: 6,
                    ttl: -1,
                    granted_ttl: 5,
                    keys: vec![b("k")],
                }),
            ),
            ("LeaseLeasesRequest", v(pb::LeaseLeasesRequest {})),
            (
                "LeaseLeasesResponse",
                v(pb::LeaseLeasesResponse {
                    header: header(),
                    leases: vec![pb::LeaseStatus { id: 6 }],
                }),
            ),
            (
                "MemberAddRequest",
                v(pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:2".into()],
                    is_learner: true,
                }),
            ),
            (
                "MemberAddResponse",
                v(pb::MemberAddResponse {
                    header: header(),
                    member: Some(member()),
                    members: vec![member()],
                }),
            ),
            ("MemberRemoveRequest", v(pb::MemberRemoveRequest { id: 2 })),
            (
                "MemberRemoveResponse",
                v(pb::MemberRemoveResponse {
                    header: header(),
                    members: vec![member()],
                }),
            ),
            (
                "MemberListRequest",
                v(pb::MemberListRequest { linearizable: true }),
            ),
            (
                "MemberListResponse",
                v(pb::MemberListResponse {
                    header: header(),
                    members: vec![member()],
                }),
            ),
            ("StatusRequest", v(pb::StatusRequest {})),
            (
                "StatusResponse",
                v(pb::StatusResponse {
                    header: header(),
                    version: "3.4.0".into(),
                    db_size: 1,
                    leader: 1,
                    raft_index: 1,
                    raft_term: 1,
                    raft_applied_index: 1,
                    errors: vec!["none".into()],
                    db_size_in_use: 1,
                    is_learner: true,
                }),
            ),
        ];
        for req in watch_requests() {
            out.push(("WatchRequest", v(req)));
        }
        out
    }

    #[test]
    fn schemas_describe_the_json_the_gateway_writes() {
        let doc = openapi();
        let mut seen: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
        for (name, value) in samples() {
            let reference = format!("#/components/schemas/{name}");
            conforms(&doc, schema(&doc, &reference), &value, name);
            seen.entry(name)
                .or_default()
                .extend(value.as_object().expect("object").keys().cloned());
        }
        // Every property of a sampled message is one the gateway writes: no invented names.
        for (name, keys) in seen {
            let documented: BTreeSet<String> =
                schema(&doc, &format!("#/components/schemas/{name}"))["properties"]
                    .as_object()
                    .expect("properties")
                    .keys()
                    .cloned()
                    .collect();
            assert_eq!(keys, documented, "{name}");
        }
        // Every message schema is sampled here or nested in a sample.
        let names: BTreeSet<&str> = doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
            .map(String::as_str)
            .collect();
        let nested = [
            "Error",
            "Event",
            "Compare",
            "RequestOp",
            "ResponseOp",
            "Member",
            "LeaseStatus",
            "LeaseKeepAliveResponse",
            "WatchCreateRequest",
            "WatchCancelRequest",
            "WatchProgressRequest",
        ];
        let sampled: BTreeSet<&str> = samples().iter().map(|(n, _)| *n).chain(nested).collect();
        assert_eq!(names, sampled);
    }

    #[test]
    fn documented_requests_parse_back() {
        // Requests in the documented form (proto names, strings for 64-bit, enum names).
        let txn: pb::TxnRequest = parse(Bytes::from_static(
            br#"{"compare":[{"result":"NOT_EQUAL","target":"VALUE","key":"aw==","value":"dg=="}],
                 "success":[{"request_put":{"key":"aw==","value":"dg==","lease":"0"}}],
                 "failure":[{"request_range":{"key":"aw==","sort_order":"DESCEND","limit":"5"}}]}"#,
        ))
        .expect("parses");
        assert_eq!(txn, {
            let mut t = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: compare::CompareResult::NotEqual as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: b("k"),
                    range_end: Bytes::new(),
                    target_union: Some(compare::TargetUnion::Value(b("v"))),
                }],
                ..Default::default()
            };
            t.success.push(pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: b("k"),
                    value: b("v"),
                    ..Default::default()
                })),
            });
            t.failure.push(pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key: b("k"),
                    sort_order: 2,
                    limit: 5,
                    ..Default::default()
                })),
            });
            t
        });
        // Every request sample, written as documented, reads back as the same message.
        fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Value {
            let parsed: T = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{value} does not parse: {e}"));
            serde_json::to_value(parsed).expect("serializes")
        }
        let mut requests = 0;
        for (name, value) in samples() {
            let back = match name {
                "RangeRequest" => round_trip::<pb::RangeRequest>(&value),
                "PutRequest" => round_trip::<pb::PutRequest>(&value),
                "DeleteRangeRequest" => round_trip::<pb::DeleteRangeRequest>(&value),
                "TxnRequest" => round_trip::<pb::TxnRequest>(&value),
                "CompactionRequest" => round_trip::<pb::CompactionRequest>(&value),
                "WatchRequest" => round_trip::<pb::WatchRequest>(&value),
                "LeaseGrantRequest" => round_trip::<pb::LeaseGrantRequest>(&value),
                "LeaseRevokeRequest" => round_trip::<pb::LeaseRevokeRequest>(&value),
                "LeaseKeepAliveRequest" => round_trip::<pb::LeaseKeepAliveRequest>(&value),
                "LeaseTimeToLiveRequest" => round_trip::<pb::LeaseTimeToLiveRequest>(&value),
                "LeaseLeasesRequest" => round_trip::<pb::LeaseLeasesRequest>(&value),
                "MemberAddRequest" => round_trip::<pb::MemberAddRequest>(&value),
                "MemberRemoveRequest" => round_trip::<pb::MemberRemoveRequest>(&value),
                "MemberListRequest" => round_trip::<pb::MemberListRequest>(&value),
                "StatusRequest" => round_trip::<pb::StatusRequest>(&value),
                _ => continue,
            };
            assert_eq!(back, value, "{name}");
            requests += 1;
        }
        let documented = openapi()["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
            .filter(|n| n.ends_with("Request"))
            .count();
        // Watch requests are sampled once per oneof case; the three sub-messages are nested.
        assert_eq!(requests, documented - 3 + 2);
        assert_eq!(
            parse::<pb::RangeRequest>(Bytes::from_static(b"  ")),
            Ok(pb::RangeRequest::default())
        );
        let err = parse::<pb::PutRequest>(Bytes::from_static(br#"{"key": 5}"#))
            .expect_err("a number is no base64 string");
        assert!(matches!(err, CoreError::InvalidBody { .. }));
        let err = parse::<pb::PutRequest>(Bytes::from_static(br#"{"kye":"aw=="}"#))
            .expect_err("unknown field");
        assert!(err.to_string().contains("kye"), "{err}");
    }
}
