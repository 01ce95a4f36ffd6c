//! The sidecar's one error type, mapped once to an HTTP status and Dapr's error body
//! (`{"errorCode": ..., "message": ...}`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Everything the sidecar can answer with instead of the target app's answer.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A setting breaks its rule.
    #[error("invalid {field}: {rule}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The API address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        message: String,
    },
    /// Registering, serving or deregistering failed.
    #[error("{message}")]
    Lifecycle {
        /// What failed.
        message: String,
    },
    /// The app id in the path or the `dapr-app-id` header breaks its rule.
    #[error("invalid app id {app_id:?}: it must be 1 to 128 characters of letters, digits, '-', '_' and '.'")]
    InvalidAppId {
        /// The id as given.
        app_id: String,
    },
    /// The request body is larger than the sidecar buffers.
    #[error("request body too large: at most {max} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// The path is not a route the sidecar serves and carries no `dapr-app-id` header.
    #[error("no route for {path}: use /v1.0/invoke/{{app-id}}/method/{{method}} or the dapr-app-id header")]
    NoRoute {
        /// The path asked for.
        path: String,
    },
    /// The registry could not be asked about the target app.
    #[error("cannot discover {app_id}: {message}")]
    Discovery {
        /// The target app.
        app_id: String,
        /// What failed.
        message: String,
    },
    /// No instance of the target app is registered and healthy.
    #[error("no instance of app {app_id} is available")]
    NoInstance {
        /// The target app.
        app_id: String,
    },
    /// The call ran out of time.
    #[error("invoking {app_id} timed out: {message}")]
    Timeout {
        /// The target app.
        app_id: String,
        /// The stack's message.
        message: String,
    },
    /// The client-side rate limit turned the call away.
    #[error("invoking {app_id}: rate limited")]
    RateLimited {
        /// The target app.
        app_id: String,
    },
    /// The target app could not be reached, or dropped the call.
    #[error("invoking {app_id} failed: {message}")]
    Upstream {
        /// The target app.
        app_id: String,
        /// What failed.
        message: String,
    },
}

impl SidecarError {
    /// Dapr's error code and the HTTP status for this error.
    fn code_and_status(&self) -> (&'static str, StatusCode) {
        match self {
            SidecarError::InvalidConfig { .. } => {
                ("ERR_MALFORMED_REQUEST", StatusCode::BAD_REQUEST)
            }
            SidecarError::Bind { .. } | SidecarError::Lifecycle { .. } => {
                ("ERR_INTERNAL", StatusCode::INTERNAL_SERVER_ERROR)
            }
            SidecarError::InvalidAppId { .. } => ("ERR_DIRECT_INVOKE", StatusCode::BAD_REQUEST),
            SidecarError::BodyTooLarge { .. } => {
                ("ERR_MALFORMED_REQUEST", StatusCode::PAYLOAD_TOO_LARGE)
            }
            SidecarError::NoRoute { .. } => ("ERR_NOT_FOUND", StatusCode::NOT_FOUND),
            SidecarError::Discovery { .. } => ("ERR_DIRECT_INVOKE", StatusCode::BAD_GATEWAY),
            SidecarError::NoInstance { .. } => {
                ("ERR_DIRECT_INVOKE", StatusCode::SERVICE_UNAVAILABLE)
            }
            SidecarError::Timeout { .. } => ("ERR_DIRECT_INVOKE", StatusCode::GATEWAY_TIMEOUT),
            SidecarError::RateLimited { .. } => {
                ("ERR_DIRECT_INVOKE", StatusCode::TOO_MANY_REQUESTS)
            }
            SidecarError::Upstream { .. } => ("ERR_DIRECT_INVOKE", StatusCode::BAD_GATEWAY),
        }
    }
}

impl IntoResponse for SidecarError {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        let body = serde_json::json!({ "errorCode": code, "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}
