//! Cella's lock API over REST/JSON, under `/v1/locks/...` and `/v1/semaphores/...`.
//!
//! Bodies and answers are the proto3 JSON forms of `cella.lock.v1`'s messages (64-bit
//! integers as strings, accepted as numbers too); errors as [`cella_core::gateway`] answers
//! them.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use cella_core::gateway;
use cella_proto::cella::lock::v1 as lockpb;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::LockResult;
use crate::service::LockService;

/// The lock API's REST routes.
pub fn router(service: LockService) -> Router {
    Router::new()
        .route(
            "/v1/locks/acquire",
            post(|s, b| call(s, b, |l, r| async move { l.acquire(r).await })),
        )
        .route(
            "/v1/locks/release",
            post(|s, b| call(s, b, |l, r| async move { l.release(r).await })),
        )
        .route(
            "/v1/locks/status",
            get(|s, q| status(s, q, |l, r| async move { l.status(r).await })),
        )
        .route(
            "/v1/semaphores/acquire",
            post(|s, b| call(s, b, |l, r| async move { l.acquire_permit(r).await })),
        )
        .route(
            "/v1/semaphores/release",
            post(|s, b| call(s, b, |l, r| async move { l.release_permit(r).await })),
        )
        .route(
            "/v1/semaphores/status",
            get(|s, q| status(s, q, |l, r| async move { l.semaphore_status(r).await })),
        )
        .with_state(service)
}

/// [`gateway::call`] on the lock service (naming the state's type lets the routes' closures
/// infer theirs).
async fn call<Req, Resp, Fut>(
    state: State<LockService>,
    body: Bytes,
    op: impl FnOnce(LockService, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = LockResult<Resp>>,
{
    gateway::call(state, body, op).await
}

/// `GET ...?name=NAME`.
#[derive(Debug, serde::Deserialize)]
struct NameQuery {
    #[serde(default)]
    name: String,
}

async fn status<Resp, F, Fut>(
    State(service): State<LockService>,
    Query(query): Query<NameQuery>,
    op: F,
) -> Response
where
    Resp: Serialize,
    F: FnOnce(LockService, lockpb::StatusRequest) -> Fut,
    Fut: Future<Output = LockResult<Resp>>,
{
    gateway::answer(op(service, lockpb::StatusRequest { name: query.name }).await)
}

/// The lock API's part of the OpenAPI document.
pub fn openapi() -> Value {
    let body = |schema: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    let ok = |schema: &str, what: &str| json!({ "description": what, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    let error = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/LockError" } } } });
    let name_param = json!([{ "name": "name", "in": "query", "required": true, "schema": { "type": "string" } }]);
    let int64 = json!({ "type": "string", "format": "int64" });
    let party = json!({ "type": "object", "properties": { "key": { "type": "string" }, "lease": int64, "fencing_token": int64 } });
    json!({
        "paths": {
            "/v1/locks/acquire": { "post": {
                "summary": "Take a lock: wait up to timeout_ms (default 30 s), or fail at once with try_once. lease 0 lets the server grant one of ttl_seconds.",
                "requestBody": body("LockAcquireRequest"),
                "responses": { "200": ok("LockAcquireResponse", "held"), "400": error, "408": error, "409": error }
            } },
            "/v1/locks/release": { "post": {
                "summary": "Release a lock held by lease (and fencing_token, if non-zero); a wrong owner gets 403 and nothing is released.",
                "requestBody": body("LockReleaseRequest"),
                "responses": { "200": ok("LockReleaseResponse", "released"), "400": error, "403": error }
            } },
            "/v1/locks/status": { "get": {
                "summary": "Holder, since which revision (and when, if this node granted it), and waiters in order.",
                "parameters": name_param,
                "responses": { "200": ok("LockStatus", "status"), "400": error }
            } },
            "/v1/semaphores/acquire": { "post": {
                "summary": "Take one of a semaphore's permits (holders are the first `permits` by revision).",
                "requestBody": body("SemaphoreAcquireRequest"),
                "responses": { "200": ok("LockAcquireResponse", "holding a permit"), "400": error, "408": error, "409": error }
            } },
            "/v1/semaphores/release": { "post": {
                "summary": "Give back a permit held by lease; a wrong owner gets 403 and nothing is released.",
                "requestBody": body("LockReleaseRequest"),
                "responses": { "200": ok("LockReleaseResponse", "released"), "400": error, "403": error }
            } },
            "/v1/semaphores/status": { "get": {
                "summary": "Permits, holders and waiters of a semaphore.",
                "parameters": name_param,
                "responses": { "200": ok("SemaphoreStatus", "status"), "400": error }
            } }
        },
        "components": { "schemas": {
            "LockAcquireRequest": { "type": "object", "required": ["name"], "properties": {
                "name": { "type": "string" }, "lease": int64, "ttl_seconds": int64, "timeout_ms": int64, "try_once": { "type": "boolean" } } },
            "SemaphoreAcquireRequest": { "type": "object", "required": ["name", "permits"], "properties": {
                "name": { "type": "string" }, "permits": { "type": "integer" }, "lease": int64, "ttl_seconds": int64, "timeout_ms": int64, "try_once": { "type": "boolean" } } },
            "LockAcquireResponse": { "type": "object", "properties": {
                "name": { "type": "string" }, "key": { "type": "string" }, "lease": int64, "fencing_token": int64, "revision": int64, "lease_granted": { "type": "boolean" }, "ttl_seconds": int64 } },
            "LockReleaseRequest": { "type": "object", "required": ["name", "lease"], "properties": {
                "name": { "type": "string" }, "lease": int64, "fencing_token": int64, "revoke_lease": { "type": "boolean" } } },
            "LockReleaseResponse": { "type": "object", "properties": { "was_holder": { "type": "boolean" }, "revision": int64 } },
            "LockParty": party,
            "LockStatus": { "type": "object", "properties": {
                "name": { "type": "string" }, "holder": { "$ref": "#/components/schemas/LockParty" }, "held_since_revision": int64, "held_since_unix_ms": int64,
                "waiters": { "type": "array", "items": { "$ref": "#/components/schemas/LockParty" } }, "revision": int64 } },
            "SemaphoreStatus": { "type": "object", "properties": {
                "name": { "type": "string" }, "permits": { "type": "integer" },
                "holders": { "type": "array", "items": { "$ref": "#/components/schemas/LockParty" } },
                "waiters": { "type": "array", "items": { "$ref": "#/components/schemas/LockParty" } }, "revision": int64 } },
            "LockError": { "type": "object", "properties": { "error": { "type": "string" }, "code": { "type": "integer" }, "message": { "type": "string" } } }
        } }
    })
}
