//! The resource API over REST/JSON, with resources in their natural form (camelCase
//! envelope, `spec` and `status` as objects), as `kubectl`-style tools expect:
//!
//! - `POST /v1/resources` (a resource) → `{"resource": …, "outcome": "created"|…}`
//! - `GET /v1/resources/{kind}[?namespace=NS]` → `{"items": […]}`
//! - `GET /v1/resources/{kind}/{name}[?namespace=NS]` → the resource
//! - `DELETE /v1/resources/{kind}/{name}[?namespace=NS]` → the deleted resource
//!
//! Errors come back as `{"error", "code": <gRPC code>, "message"}` with
//! [`ResourceError::http_status`].

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ResourceError, ResourceResult};
use crate::model::Resource;
use crate::service::Resources;

/// The resource API's REST routes.
pub fn router(resources: Resources) -> Router {
    Router::new()
        .route("/v1/resources", axum::routing::post(apply))
        .route("/v1/resources/{kind}", get(list))
        .route("/v1/resources/{kind}/{name}", get(get_one).delete(delete))
        .with_state(resources)
}

/// The OpenAPI `paths` of these routes.
pub fn openapi() -> Value {
    let ns = json!({ "name": "namespace", "in": "query", "schema": { "type": "string" } });
    let kind =
        json!({ "name": "kind", "in": "path", "required": true, "schema": { "type": "string" } });
    let name =
        json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let ok = |d: &str| json!({ "200": { "description": d }, "400": { "description": "invalid resource" }, "404": { "description": "not found" } });
    json!({ "paths": {
            "/v1/resources": { "post": { "summary": "Apply a resource (apiVersion, kind, metadata, spec)", "tags": ["resources"], "responses": ok("the stored resource and the outcome") } },
            "/v1/resources/{kind}": { "get": { "summary": "List resources of a kind", "tags": ["resources"], "parameters": [kind, ns], "responses": ok("items") } },
            "/v1/resources/{kind}/{name}": {
                "get": { "summary": "Get a resource", "tags": ["resources"], "parameters": [kind, name, ns], "responses": ok("the resource") },
                "delete": { "summary": "Delete a resource", "tags": ["resources"], "parameters": [kind, name, ns], "responses": ok("the deleted resource") }
            }
    }})
}

#[derive(Deserialize)]
struct Namespace {
    #[serde(default)]
    namespace: String,
}

fn answer(result: ResourceResult<Value>) -> Response {
    match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(err) => {
            let status = StatusCode::from_u16(err.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = json!({ "error": err.to_string(), "code": err.grpc_code() as i32, "message": err.to_string() });
            (status, axum::Json(body)).into_response()
        }
    }
}

fn to_json(resource: &Resource) -> Value {
    serde_json::to_value(resource).unwrap_or(Value::Null)
}

async fn apply(State(resources): State<Resources>, body: Bytes) -> Response {
    let result = async {
        let given: Resource = serde_json::from_slice(&body).map_err(|e| {
            ResourceError::invalid("body", format!("must be a resource as JSON: {e}"))
        })?;
        let (stored, outcome) = resources.apply(given).await?;
        Ok(json!({ "resource": to_json(&stored), "outcome": outcome.as_str() }))
    };
    answer(result.await)
}

async fn list(
    State(resources): State<Resources>,
    Path(kind): Path<String>,
    Query(q): Query<Namespace>,
) -> Response {
    let items = resources.list(&kind, &q.namespace).await;
    answer(items.map(|items| json!({ "items": items.iter().map(to_json).collect::<Vec<_>>() })))
}

async fn get_one(
    State(resources): State<Resources>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Namespace>,
) -> Response {
    answer(
        resources
            .get(&kind, &q.namespace, &name)
            .await
            .map(|r| to_json(&r)),
    )
}

async fn delete(
    State(resources): State<Resources>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Namespace>,
) -> Response {
    answer(
        resources
            .delete(&kind, &q.namespace, &name)
            .await
            .map(|r| to_json(&r)),
    )
}
