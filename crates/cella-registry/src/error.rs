//! The registry's one error enum, and its single mapping to gRPC and HTTP statuses.

use axum::http::StatusCode;
use tonic::Code;

/// Everything that can go wrong in the registry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// A field that breaks its rule.
    #[error("invalid request: field `{field}` {rule}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// The rule it broke.
        rule: String,
    },
    /// A namespace that was never created.
    #[error("namespace {namespace:?} does not exist; create it first (the default is \"public\")")]
    NamespaceNotFound {
        /// The namespace asked for.
        namespace: String,
    },
    /// An instance the service does not have.
    #[error("instance {id:?} is not registered in service {service}")]
    InstanceNotFound {
        /// The service, `namespace/group/name`.
        service: String,
        /// The instance id asked for.
        id: String,
    },
    /// The consistent core refused or failed (namespaces and persistent instances live there).
    #[error("consistent core: {0}")]
    Core(String),
}

/// Results of registry operations.
pub type RegistryResult<T> = Result<T, RegistryError>;

impl RegistryError {
    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidField { .. } => Code::InvalidArgument,
            Self::NamespaceNotFound { .. } | Self::InstanceNotFound { .. } => Code::NotFound,
            Self::Core(_) => Code::Unavailable,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidField { .. } => StatusCode::BAD_REQUEST,
            Self::NamespaceNotFound { .. } | Self::InstanceNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Core(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

impl From<cella_core::CoreError> for RegistryError {
    fn from(err: cella_core::CoreError) -> Self {
        Self::Core(err.to_string())
    }
}
