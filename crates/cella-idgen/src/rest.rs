//! The id service over REST/JSON, under `/v1/ids/`. Bodies and answers are the proto3 JSON
//! form of `cella.idgen.v1` messages (64-bit integers as strings); errors as
//! [`cella_core::gateway`] answers them.
//!
//! - `POST /v1/ids/next` — `NextRequest` → `NextResponse`
//! - `POST /v1/ids/batch` — `BatchRequest` → `BatchResponse`
//! - `POST /v1/ids/decode` — `DecodeRequest` → `DecodeResponse`
//! - `POST /v1/ids/segments/next` — `SegmentNextRequest` → `SegmentNextResponse`
//! - `GET /v1/ids/layouts` — `ListLayoutsResponse`

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use cella_core::gateway::{self, ApiError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Code;

use crate::error::{IdgenError, IdgenResult};
use crate::service::IdService;

type Shared = Arc<IdService>;

/// The id service's REST routes.
pub fn router(service: Shared) -> Router {
    Router::new()
        .route(
            "/v1/ids/next",
            post(|s, b| call(s, b, |svc, r| async move { svc.next(r).await })),
        )
        .route(
            "/v1/ids/batch",
            post(|s, b| call(s, b, |svc, r| async move { svc.batch(r).await })),
        )
        .route(
            "/v1/ids/decode",
            post(|s, b| call(s, b, |svc, r| async move { svc.decode(&r) })),
        )
        .route(
            "/v1/ids/segments/next",
            post(|s, b| call(s, b, |svc, r| async move { svc.segment_next(r).await })),
        )
        .route(
            "/v1/ids/layouts",
            get(|State(svc): State<Shared>| async move { axum::Json(svc.list_layouts()) }),
        )
        .with_state(service)
}

impl ApiError for IdgenError {
    fn grpc_code(&self) -> Code {
        // The inherent method, which the crate has without the server feature too.
        IdgenError::grpc_code(self)
    }

    fn invalid_body(reason: String) -> Self {
        IdgenError::InvalidBody { reason }
    }
}

/// [`gateway::call`] on the id service (naming the state's type lets the routes' closures
/// infer theirs).
async fn call<Req, Resp, Fut>(
    state: State<Shared>,
    body: Bytes,
    op: impl FnOnce(Shared, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = IdgenResult<Resp>>,
{
    gateway::call(state, body, op).await
}

/// The OpenAPI description of these routes (`paths` and `components`).
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("openapi.json"))
        .expect("openapi.json is valid JSON, checked by a test")
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_lists_every_route() {
        let doc = super::openapi();
        let paths = doc["paths"].as_object().expect("paths");
        let source = include_str!("rest.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let mut mounted = 0;
        for part in source.split("\"/v1/ids/").skip(1) {
            let path = format!(
                "/v1/ids/{}",
                &part[..part.find('"').expect("closing quote")]
            );
            if source.contains(&format!(".route(\n            \"{path}\"")) {
                mounted += 1;
                assert!(
                    paths.contains_key(&path),
                    "{path} missing from openapi.json"
                );
            }
        }
        assert_eq!(
            mounted,
            paths.len(),
            "openapi.json lists exactly the mounted routes"
        );
    }
}
