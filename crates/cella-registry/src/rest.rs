//! The registry's REST/JSON routes under `/v1/registry/`: each takes the JSON form of its
//! `cella.registry.v1` request (proto field names, 64-bit integers as strings) and answers
//! with the JSON form of the response; `subscribe` streams newline-delimited events.
//! Errors as [`cella_core::gateway`] answers them.

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use cella_core::gateway;
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

/// [`gateway::call`] on the registry (naming the state's type lets the routes' closures
/// infer theirs).
async fn call<Req, Resp, Fut>(
    state: State<Registry>,
    body: Bytes,
    op: impl FnOnce(Registry, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = RegistryResult<Resp>>,
{
    gateway::call(state, body, op).await
}

async fn subscribe(State(registry): State<Registry>, body: Bytes) -> Response {
    let subscription = match gateway::parse_body::<rpb::SubscribeRequest, RegistryError>(&body)
        .and_then(|req| api::subscribe(&registry, req))
    {
        Ok(s) => s,
        Err(e) => return gateway::error_response(&e),
    };
    gateway::ndjson(api::events(registry, subscription))
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
