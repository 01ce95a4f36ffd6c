//! REST/JSON for the config center: `POST /v1/config/<call>` with the proto3 JSON form of
//! the gRPC request (64-bit integers as strings, proto field names), answering the JSON form
//! of the response. The bearer token comes from the `Authorization` header. Errors are
//! answered as [`cella_core::gateway`] answers them.
//! `POST /v1/config/watch` streams one `{"result": WatchResponse}` JSON object per line.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use cella_core::gateway::{self, ApiError};
use cella_proto::cella::config::v1 as cpb;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::acl::Caller;
use crate::api::ConfigApi;
use crate::error::{ConfigError, ConfigResult};

/// Every REST call: path, summary, request message, response message.
const CALLS: &[(&str, &str, &str, &str)] = &[
    (
        "/v1/config/namespaces/create",
        "Create a namespace",
        "CreateNamespaceRequest",
        "Namespace",
    ),
    (
        "/v1/config/namespaces/list",
        "List namespaces",
        "ListNamespacesRequest",
        "ListNamespacesResponse",
    ),
    (
        "/v1/config/namespaces/delete",
        "Delete an empty namespace",
        "DeleteNamespaceRequest",
        "DeleteNamespaceResponse",
    ),
    (
        "/v1/config/publish",
        "Publish a new release (optionally on a base release)",
        "PublishRequest",
        "Release",
    ),
    (
        "/v1/config/get",
        "Get what a client receives, or a given release",
        "GetConfigRequest",
        "GetConfigResponse",
    ),
    (
        "/v1/config/state",
        "Current release and gray candidate of a config",
        "GetStateRequest",
        "ConfigState",
    ),
    (
        "/v1/config/list",
        "Configs of a namespace",
        "ListConfigsRequest",
        "ListConfigsResponse",
    ),
    (
        "/v1/config/history",
        "Releases of a config, newest first, without content",
        "HistoryRequest",
        "HistoryResponse",
    ),
    (
        "/v1/config/diff",
        "Line diff between two releases",
        "DiffRequest",
        "DiffResponse",
    ),
    (
        "/v1/config/rollback",
        "Publish a new release equal to an old one",
        "RollbackRequest",
        "Release",
    ),
    (
        "/v1/config/gray/start",
        "Start a gray release for labels, client ids or a percentage",
        "StartGrayRequest",
        "Release",
    ),
    (
        "/v1/config/gray/promote",
        "Make the gray candidate current",
        "GrayActionRequest",
        "Release",
    ),
    (
        "/v1/config/gray/abort",
        "Drop the gray candidate",
        "GrayActionRequest",
        "ConfigState",
    ),
    (
        "/v1/config/delete",
        "Delete a config and its history",
        "DeleteConfigRequest",
        "DeleteConfigResponse",
    ),
    (
        "/v1/config/acl/set",
        "Set (or clear) a namespace's ACL",
        "SetAclRequest",
        "AclResponse",
    ),
    (
        "/v1/config/acl/get",
        "A namespace's ACL, without tokens",
        "GetAclRequest",
        "AclResponse",
    ),
    (
        "/v1/config/audit",
        "A namespace's audit log, newest first",
        "AuditRequest",
        "AuditResponse",
    ),
    (
        "/v1/config/watch",
        "Stream changes (NDJSON lines {\"result\": WatchResponse})",
        "WatchRequest",
        "WatchResponse",
    ),
];

/// The config center's REST routes.
pub fn router(api: ConfigApi) -> Router {
    Router::new()
        .route(
            "/v1/config/namespaces/create",
            post(|s, h, b| {
                call(
                    s,
                    h,
                    b,
                    |a, _, r| async move { a.create_namespace(r).await },
                )
            }),
        )
        .route(
            "/v1/config/namespaces/list",
            post(|s, h, b| {
                call(s, h, b, |a, _, _: cpb::ListNamespacesRequest| async move {
                    a.list_namespaces().await
                })
            }),
        )
        .route(
            "/v1/config/namespaces/delete",
            post(|s, h, b| {
                call(
                    s,
                    h,
                    b,
                    |a, c, r| async move { a.delete_namespace(&c, r).await },
                )
            }),
        )
        .route(
            "/v1/config/publish",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.publish(&c, r).await })),
        )
        .route(
            "/v1/config/get",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.get(&c, r).await })),
        )
        .route(
            "/v1/config/state",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.get_state(&c, r).await })),
        )
        .route(
            "/v1/config/list",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.list(&c, r).await })),
        )
        .route(
            "/v1/config/history",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.history(&c, r).await })),
        )
        .route(
            "/v1/config/diff",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.diff(&c, r).await })),
        )
        .route(
            "/v1/config/rollback",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.rollback(&c, r).await })),
        )
        .route(
            "/v1/config/gray/start",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.start_gray(&c, r).await })),
        )
        .route(
            "/v1/config/gray/promote",
            post(|s, h, b| {
                call(
                    s,
                    h,
                    b,
                    |a, c, r| async move { a.promote_gray(&c, r).await },
                )
            }),
        )
        .route(
            "/v1/config/gray/abort",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.abort_gray(&c, r).await })),
        )
        .route(
            "/v1/config/delete",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.delete(&c, r).await })),
        )
        .route(
            "/v1/config/acl/set",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.set_acl(&c, r).await })),
        )
        .route(
            "/v1/config/acl/get",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.get_acl(&c, r).await })),
        )
        .route(
            "/v1/config/audit",
            post(|s, h, b| call(s, h, b, |a, c, r| async move { a.audit(&c, r).await })),
        )
        .route("/v1/config/watch", post(watch))
        .with_state(api)
}

pub(crate) fn caller_of(headers: &HeaderMap) -> Caller {
    Caller::from_authorization(headers.get("authorization").and_then(|v| v.to_str().ok()))
}

/// [`gateway::call`] for the caller the request's token names.
async fn call<Req, Resp, F, Fut>(
    state: State<ConfigApi>,
    headers: HeaderMap,
    body: Bytes,
    op: F,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(ConfigApi, Caller, Req) -> Fut,
    Fut: Future<Output = ConfigResult<Resp>>,
{
    let caller = caller_of(&headers);
    gateway::call(state, body, |api, req| op(api, caller, req)).await
}

async fn watch(State(api): State<ConfigApi>, headers: HeaderMap, body: Bytes) -> Response {
    let caller = caller_of(&headers);
    let req: cpb::WatchRequest = match gateway::parse_body::<_, ConfigError>(&body) {
        Ok(r) => r,
        Err(e) => return gateway::error_response(&e),
    };
    let stream = match api.watch(&caller, req).await {
        Ok(s) => s,
        Err(e) => return gateway::error_response(&e),
    };
    gateway::json_lines(stream.map(|item| match item {
        Ok(resp) => json!({ "result": resp }),
        Err(e) => json!({ "error": e.to_string(), "code": e.grpc_code() as i32 }),
    }))
}

/// The OpenAPI description of these routes and the Nacos ones (`paths` and `components`).
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for (path, summary, req, resp) in CALLS {
        let request_ref = format!("#/components/schemas/cella.config.v1.{req}");
        let response_ref = format!("#/components/schemas/cella.config.v1.{resp}");
        paths.insert(
            path.to_string(),
            json!({ "post": {
                "summary": summary,
                "tags": ["config"],
                "requestBody": { "content": { "application/json": { "schema": { "$ref": request_ref } } } },
                "responses": {
                    "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": response_ref } } } },
                    "default": { "description": "Error: {\"error\", \"code\" (gRPC code), \"message\"}" }
                }
            }}),
        );
        for name in [req, resp] {
            schemas.insert(
                format!("cella.config.v1.{name}"),
                json!({ "type": "object", "description": format!("JSON form (proto3 mapping) of cella.config.v1.{name}; see proto/cella/v1/config.proto") }),
            );
        }
    }
    for (path, item) in crate::nacos::openapi_paths() {
        paths.insert(path, item);
    }
    json!({ "paths": paths, "components": { "schemas": schemas } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_call_is_routed_in_the_router_source() {
        let source = include_str!("rest.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        // rustfmt may break `.route(` and its path over lines.
        let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
        for (path, ..) in CALLS {
            assert!(
                source.contains(&format!(".route(\"{path}\"")),
                "{path} is not routed"
            );
        }
        let routed = source.matches(".route(\"").count();
        assert_eq!(routed, CALLS.len(), "a route is missing from CALLS");
        let doc = openapi();
        assert!(doc["paths"]["/v1/config/publish"]["post"].is_object());
        assert!(doc["paths"]["/nacos/v1/cs/configs"]["get"].is_object());
    }
}
