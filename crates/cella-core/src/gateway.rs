//! What every block's REST routes share, so they answer alike: a request body is the JSON
//! form of the request message (empty means all defaults), a success is the response message
//! as JSON, and an error is `{"error": ..., "code": <gRPC code>, "message": ...}` with the
//! HTTP status its gRPC code maps to (the mapping of etcd's and grpc-gateway's gateways).

use std::future::Future;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Code;

/// An error Cella's APIs answer with: its message and a gRPC status code, which also picks
/// the HTTP status on REST.
pub trait ApiError: std::fmt::Display {
    /// The gRPC status code.
    fn grpc_code(&self) -> Code;

    /// The error for a body that is not the JSON form of the request message.
    fn invalid_body(reason: String) -> Self;
}

/// The HTTP status for a gRPC status code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `err` as a REST answer.
pub fn error_response(err: &impl ApiError) -> Response {
    status_response(err.grpc_code(), &err.to_string())
}

/// A refusal with `code` and `message` as a REST answer, for refusals without an error type.
pub fn status_response(code: Code, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": code as i32, "message": message });
    (http_status(code), axum::Json(body)).into_response()
}

/// Parses a JSON request body; an empty (or all-blank) body is the default message.
pub fn parse_body<T: DeserializeOwned + Default, E: ApiError>(body: &[u8]) -> Result<T, E> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| E::invalid_body(e.to_string()))
}

/// A result as a REST answer: the value as JSON, or the error.
pub fn answer<T: Serialize, E: ApiError>(result: Result<T, E>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => error_response(&e),
    }
}

/// Parses `body` as `Req`, runs `op` on it with the route's state, and answers with the
/// outcome.
pub async fn call<S, Req, Resp, E, Fut>(
    State(state): State<S>,
    body: Bytes,
    op: impl FnOnce(S, Req) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    E: ApiError,
    Fut: Future<Output = Result<Resp, E>>,
{
    match parse_body::<Req, E>(&body) {
        Ok(req) => answer(op(state, req).await),
        Err(e) => error_response(&e),
    }
}

/// A streamed answer as etcd's gateway streams one: a `{"result": …}` JSON line per item.
pub fn ndjson<T: Serialize>(items: impl futures::Stream<Item = T> + Send + 'static) -> Response {
    json_lines(items.map(|item| serde_json::json!({ "result": item })))
}

/// A streamed answer of one JSON value per line.
pub fn json_lines(
    values: impl futures::Stream<Item = serde_json::Value> + Send + 'static,
) -> Response {
    let lines = values.map(|value| {
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(line)
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_error_code_has_a_4xx_status_and_the_rest_5xx() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::DeadlineExceeded, 408),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
            (Code::Unknown, 500),
        ] {
            assert_eq!(http_status(code), status, "{code:?}");
        }
    }
}
