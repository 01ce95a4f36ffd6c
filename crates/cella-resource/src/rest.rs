//! The resource API over REST/JSON, with resources in their natural form (camelCase
//! envelope, `spec` and `status` as objects), as `kubectl`-style tools expect:
//!
//! - `POST /v1/resources` (a resource) → `{"resource": …, "outcome": "created"|…}`
//! - `GET /v1/resources/{kind}[?namespace=NS]` → `{"items": […]}`
//! - `GET /v1/resources/{kind}/{name}[?namespace=NS]` → the resource
//! - `DELETE /v1/resources/{kind}/{name}[?namespace=NS]` → the deleted resource
//!
//! Errors as [`cella_core::gateway`] answers them.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cella_core::gateway::{self, ApiError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ResourceError;
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

fn to_json(resource: &Resource) -> Value {
    serde_json::to_value(resource).unwrap_or(Value::Null)
}

async fn apply(State(resources): State<Resources>, body: Bytes) -> Response {
    let result = async {
        let given: Resource = serde_json::from_slice(&body)
            .map_err(|e| ResourceError::invalid_body(e.to_string()))?;
        let (stored, outcome) = resources.apply(given).await?;
        Ok::<_, ResourceError>(json!({ "resource": to_json(&stored), "outcome": outcome.as_str() }))
    };
    gateway::answer(result.await)
}

async fn list(
    State(resources): State<Resources>,
    Path(kind): Path<String>,
    Query(q): Query<Namespace>,
) -> Response {
    let items = resources.list(&kind, &q.namespace).await;
    gateway::answer(
        items.map(|items| json!({ "items": items.iter().map(to_json).collect::<Vec<_>>() })),
    )
}

async fn get_one(
    State(resources): State<Resources>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<Namespace>,
) -> Response {
    gateway::answer(
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
    gateway::answer(
        resources
            .delete(&kind, &q.namespace, &name)
            .await
            .map(|r| to_json(&r)),
    )
}
