//! The registry's one error enum, and its single mapping to gRPC and HTTP statuses.

use cella_core::gateway::ApiError;
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

impl ApiError for RegistryError {
    fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidField { .. } => Code::InvalidArgument,
            Self::NamespaceNotFound { .. } | Self::InstanceNotFound { .. } => Code::NotFound,
            Self::Core(_) => Code::Unavailable,
        }
    }

    fn invalid_body(reason: String) -> Self {
        RegistryError::InvalidField {
            field: "body",
            rule: format!("must be the JSON form of the request message: {reason}"),
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
