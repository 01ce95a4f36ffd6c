//! The id service over REST/JSON, under `/v1/ids/`. Bodies and answers are the proto3 JSON
//! form of `cella.idgen.v1` messages (64-bit integers as strings); errors come back as
//! `{"error", "code", "message"}` with the HTTP status from [`IdgenError::http_status`].
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
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

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
            get(|State(svc): State<Shared>| async move { json(&svc.list_layouts()) }),
        )
        .with_state(service)
}

/// An error as the REST API returns it.
fn error_response(err: &IdgenError) -> Response {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": err.to_string(), "code": err.grpc_code() as i32, "message": err.to_string() });
    (status, axum::Json(body)).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

/// A body that is not the JSON form of the request message.
fn bad_body(reason: String) -> Response {
    let message =
        format!("invalid request: the body must be the JSON form of the request message: {reason}");
    let body = serde_json::json!({ "error": message, "code": tonic::Code::InvalidArgument as i32, "message": message });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

async fn call<Req, Resp, F, Fut>(State(service): State<Shared>, body: Bytes, op: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Shared, Req) -> Fut,
    Fut: Future<Output = IdgenResult<Resp>>,
{
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(req) => req,
            Err(e) => return bad_body(e.to_string()),
        }
    };
    match op(service, req).await {
        Ok(resp) => json(&resp),
        Err(e) => error_response(&e),
    }
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
