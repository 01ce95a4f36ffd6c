//! The resource API's one error enum and its mapping to gRPC and HTTP statuses.

use cella_core::gateway::ApiError;
use cella_core::CoreError;
use tonic::Code;

/// Everything that can go wrong applying, reading or deleting a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// A field of the resource breaks its rule.
    #[error("invalid resource: field `{field}` {rule}")]
    InvalidField {
        /// Which field, as a path (`metadata.name`, `spec.queues`).
        field: String,
        /// The rule it broke.
        rule: String,
    },
    /// A kind no block serves.
    #[error("unknown kind {kind:?}: this node serves {known}")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// The kinds served, comma-separated.
        known: String,
    },
    /// No such resource.
    #[error("{kind} {name:?} not found{}", in_namespace(namespace))]
    NotFound {
        /// Its kind.
        kind: String,
        /// Its namespace (empty when not namespaced).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The resource changed since the version the caller based its apply on.
    #[error("{kind} {name:?} is at resource version {stored}, not {expected}: re-read it and apply again")]
    Conflict {
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The version the caller expected.
        expected: i64,
        /// The stored version.
        stored: i64,
    },
    /// The owning block refused the spec or the change; its code and message.
    #[error("{message}")]
    Rejected {
        /// The block's status code.
        code: Code,
        /// The block's message, naming the field and rule.
        message: String,
    },
    /// A stored resource that cannot be read back.
    #[error("stored resource {key} is unreadable: {reason}")]
    Corrupt {
        /// Its core key.
        key: String,
        /// What the decoder said.
        reason: String,
    },
    /// The core refused or failed the underlying operation.
    #[error(transparent)]
    Core(#[from] CoreError),
}

fn in_namespace(namespace: &str) -> String {
    match namespace {
        "" => String::new(),
        ns => format!(" in namespace {ns:?}"),
    }
}

/// Shorthand for results in this crate.
pub type ResourceResult<T> = Result<T, ResourceError>;

impl ResourceError {
    /// An invalid-field error.
    pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Self {
        ResourceError::InvalidField {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

impl ApiError for ResourceError {
    fn grpc_code(&self) -> Code {
        match self {
            ResourceError::InvalidField { .. } | ResourceError::UnknownKind { .. } => {
                Code::InvalidArgument
            }
            ResourceError::NotFound { .. } => Code::NotFound,
            ResourceError::Conflict { .. } => Code::Aborted,
            ResourceError::Rejected { code, .. } => *code,
            ResourceError::Corrupt { .. } => Code::DataLoss,
            ResourceError::Core(e) => e.grpc_code(),
        }
    }

    fn invalid_body(reason: String) -> Self {
        ResourceError::invalid("body", format!("must be a resource as JSON: {reason}"))
    }
}

impl From<ResourceError> for tonic::Status {
    fn from(err: ResourceError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}
