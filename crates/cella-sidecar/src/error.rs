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
    /// The pub/sub component name is not one this sidecar serves.
    #[error("pubsub {name:?} not found: this sidecar serves {served}")]
    PubsubNotFound {
        /// The name asked for.
        name: String,
        /// The names it serves (or why none).
        served: String,
    },
    /// A `metadata.*` query parameter of a publish breaks its rule.
    #[error("invalid metadata.{name}: {rule}")]
    InvalidMetadata {
        /// The parameter, without the `metadata.` prefix.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The body sent as a CloudEvent is not one.
    #[error("invalid CloudEvent: {message}")]
    InvalidCloudEvent {
        /// What is wrong.
        message: String,
    },
    /// The broker refused the message (bad topic name, body too large, ...).
    #[error("publishing to topic {topic} refused: {message}")]
    PublishRejected {
        /// The topic.
        topic: String,
        /// The broker's reason.
        message: String,
    },
    /// The broker could not be reached or failed to store the message.
    #[error("publishing to topic {topic} failed: {message}")]
    PublishFailed {
        /// The topic.
        topic: String,
        /// What failed.
        message: String,
    },
    /// This sidecar has no connection to Cella's config center.
    #[error("no configuration store is configured: the sidecar runs without a Cella connection")]
    ConfigNotConfigured,
    /// The store (a config namespace) does not exist.
    #[error("configuration store {store:?} not found: store names are config namespaces")]
    ConfigStoreNotFound {
        /// The store asked for.
        store: String,
    },
    /// A key or store name breaks the config center's rules.
    #[error("invalid configuration request: {message}")]
    InvalidConfigRequest {
        /// The config center's reason.
        message: String,
    },
    /// Reading configuration failed.
    #[error("getting configuration from store {store}: {message}")]
    ConfigGet {
        /// The store.
        store: String,
        /// What failed.
        message: String,
    },
    /// No subscription with this id exists in this store.
    #[error("no configuration subscription {id:?} in store {store:?}")]
    ConfigSubscriptionNotFound {
        /// The store.
        store: String,
        /// The subscription id.
        id: String,
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
            SidecarError::PubsubNotFound { .. } => {
                ("ERR_PUBSUB_NOT_FOUND", StatusCode::BAD_REQUEST)
            }
            SidecarError::InvalidMetadata { .. } => {
                ("ERR_MALFORMED_REQUEST", StatusCode::BAD_REQUEST)
            }
            SidecarError::InvalidCloudEvent { .. } => {
                ("ERR_PUBSUB_CLOUD_EVENTS_SER", StatusCode::BAD_REQUEST)
            }
            SidecarError::PublishRejected { .. } => {
                ("ERR_PUBSUB_PUBLISH_MESSAGE", StatusCode::BAD_REQUEST)
            }
            SidecarError::PublishFailed { .. } => (
                "ERR_PUBSUB_PUBLISH_MESSAGE",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            SidecarError::ConfigNotConfigured => (
                "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            SidecarError::ConfigStoreNotFound { .. } => {
                ("ERR_CONFIGURATION_STORE_NOT_FOUND", StatusCode::BAD_REQUEST)
            }
            SidecarError::InvalidConfigRequest { .. } => {
                ("ERR_MALFORMED_REQUEST", StatusCode::BAD_REQUEST)
            }
            SidecarError::ConfigGet { .. } => {
                ("ERR_CONFIGURATION_GET", StatusCode::INTERNAL_SERVER_ERROR)
            }
            SidecarError::ConfigSubscriptionNotFound { .. } => {
                ("ERR_CONFIGURATION_UNSUBSCRIBE", StatusCode::BAD_REQUEST)
            }
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
