//! REST/JSON for the core, at the paths of etcd's gRPC gateway (`POST /v3/kv/range`, ...),
//! with the proto3 JSON mapping: bytes as base64, 64-bit integers as strings.
//!
//! Errors come back as `{"error": ..., "code": <gRPC code>, "message": ...}` with the HTTP
//! status from [`CoreError::http_status`]. `POST /v3/watch` streams one JSON object per
//! line (`{"result": WatchResponse}`) until the client disconnects.

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use cella_proto::etcdserverpb as pb;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{CoreError, CoreResult};
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

/// An error as the REST gateway returns it.
pub fn error_response(err: &CoreError) -> Response {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": err.to_string(), "code": err.grpc_code() as i32, "message": err.to_string() });
    (status, axum::Json(body)).into_response()
}

/// Parses a JSON request body; an empty body is the default message.
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> CoreResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| CoreError::InvalidBody {
        reason: e.to_string(),
    })
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

async fn call<Req, Resp, F, Fut>(State(core): State<Core>, body: Bytes, op: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Core, Req) -> Fut,
    Fut: Future<Output = CoreResult<Resp>>,
{
    match parse::<Req>(&body) {
        Ok(req) => match op(core, req).await {
            Ok(resp) => json(&resp),
            Err(e) => error_response(&e),
        },
        Err(e) => error_response(&e),
    }
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
        Ok(pb::MemberListResponse {
            header: Some(c.header(c.revision())),
            members: c.members(),
        })
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
    let req: pb::WatchRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let (tx, rx) = mpsc::channel(256);
    // One create request, then keep the session open until the client goes away.
    let inbound = futures::stream::once(async move { req }).chain(futures::stream::pending());
    tokio::spawn(serve_watch_session(core, Box::pin(inbound), tx));
    let lines = ReceiverStream::new(rx).map(|resp| {
        let mut line =
            serde_json::to_vec(&serde_json::json!({ "result": resp })).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The OpenAPI description of these routes (`paths` and `components`).
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("openapi.json"))
        .expect("openapi.json is valid JSON, checked by a test")
}
