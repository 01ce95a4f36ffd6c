//! The registry's REST/JSON routes under `/v1/registry/`: each takes the JSON form of its
//! `cella.registry.v1` request (proto field names, 64-bit integers as strings) and answers
//! with the JSON form of the response; `subscribe` streams newline-delimited events.
//! Errors are `{"error", "code", "message"}` with the HTTP status of the error.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use cella_proto::cella::registry::v1 as rpb;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api;
use crate::error::{RegistryError, RegistryResult};
use crate::registry::Registry;

/// The registry's REST routes.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/v1/registry/namespaces",
            post(|s, b| {
                call(
                    s,
                    b,
                    |r, q| async move { api::create_namespace(&r, q).await },
                )
            }),
        )
        .route(
            "/v1/registry/register",
            post(|s, b| call(s, b, |r, q| async move { api::register(&r, q).await })),
        )
        .route(
            "/v1/registry/deregister",
            post(|s, b| call(s, b, |r, q| async move { api::deregister(&r, q).await })),
        )
        .route(
            "/v1/registry/heartbeat",
            post(|s, b| call(s, b, |r, q| async move { api::heartbeat(&r, q) })),
        )
        .route(
            "/v1/registry/list",
            post(|s, b| call(s, b, |r, q| async move { api::list(&r, q) })),
        )
        .route(
            "/v1/registry/services",
            post(|s, b| call(s, b, |r, q| async move { api::list_services(&r, q) })),
        )
        .route(
            "/v1/registry/configure",
            post(|s, b| call(s, b, |r, q| async move { api::configure(&r, q).await })),
        )
        .route("/v1/registry/subscribe", post(subscribe))
        .with_state(registry)
}

/// An error as these routes return it.
pub fn error_response(err: &RegistryError) -> Response {
    let body = serde_json::json!({ "error": err.to_string(), "code": err.grpc_code() as i32, "message": err.to_string() });
    (err.http_status(), axum::Json(body)).into_response()
}

/// Parses a JSON request body; an empty body is the default message.
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> RegistryResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| RegistryError::InvalidField {
        field: "body",
        rule: format!("must be the JSON form of the request message: {e}"),
    })
}

async fn call<Req, Resp, F, Fut>(State(registry): State<Registry>, body: Bytes, op: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Registry, Req) -> Fut,
    Fut: Future<Output = RegistryResult<Resp>>,
{
    let result = match parse::<Req>(&body) {
        Ok(req) => op(registry, req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn subscribe(State(registry): State<Registry>, body: Bytes) -> Response {
    let subscription = match parse::<rpb::SubscribeRequest>(&body)
        .and_then(|req| api::subscribe(&registry, req))
    {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    cella_core::rest::ndjson(api::events(registry, subscription))
}

/// The OpenAPI description of these routes and the Nacos ones (`paths` and `components`).
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("openapi.json"))
        .expect("openapi.json is valid JSON, checked by a test")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_route() {
        let doc = openapi();
        let sources = [include_str!("rest.rs"), include_str!("nacos.rs")];
        let marker = [".route", "("].concat();
        for source in sources {
            let code = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
            for part in code.split(marker.as_str()).skip(1) {
                let path = part.trim_start().trim_start_matches('"');
                let path = &path[..path.find('"').unwrap_or(0)];
                assert!(
                    doc["paths"].get(path).is_some(),
                    "{path} is not in openapi.json"
                );
            }
        }
    }
}
