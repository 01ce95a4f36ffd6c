//! The config center's one error enum, mapped once to gRPC and HTTP statuses.
//!
//! Messages name the field and the rule; the variants keep the details for tests and logs.

use cella_core::gateway::ApiError;
use cella_core::CoreError;
use tonic::Code;

/// Everything that can go wrong in the config center.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field with a value its rule does not allow.
    #[error("invalid request: field `{field}` {rule}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// The rule it broke.
        rule: String,
    },
    /// Content that does not parse as its declared format.
    #[error("invalid request: field `content` is not valid {format}: {reason}")]
    InvalidContent {
        /// The declared format.
        format: &'static str,
        /// What the parser found.
        reason: String,
    },
    /// Content longer than the limit.
    #[error("invalid request: field `content` is {len} bytes, the limit is {max}")]
    ContentTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A REST body that is not the JSON form of the request message.
    #[error("invalid request: the body must be the JSON form of the request message: {reason}")]
    InvalidBody {
        /// What the JSON parser found.
        reason: String,
    },
    /// A namespace that was never created (or was deleted).
    #[error("namespace {namespace:?} not found; create it first")]
    NamespaceNotFound {
        /// The namespace.
        namespace: String,
    },
    /// Creating a namespace that exists.
    #[error("namespace {namespace:?} already exists")]
    NamespaceExists {
        /// The namespace.
        namespace: String,
    },
    /// Deleting a namespace that still holds configs.
    #[error("namespace {namespace:?} still holds configs; delete them first")]
    NamespaceNotEmpty {
        /// The namespace.
        namespace: String,
    },
    /// A config that does not exist.
    #[error("config {key} not found")]
    ConfigNotFound {
        /// `namespace/group/data_id`.
        key: String,
    },
    /// A release number that a config never had.
    #[error("release {number} of config {key} not found")]
    ReleaseNotFound {
        /// `namespace/group/data_id`.
        key: String,
        /// The release number asked for.
        number: u64,
    },
    /// A publish whose base release is no longer current.
    #[error("stale base: field `base_release` is {base} but the current release is {current}")]
    StaleBase {
        /// The base the client gave.
        base: u64,
        /// The current release (0 = none).
        current: u64,
    },
    /// A publish or rollback while a gray release is running.
    #[error(
        "config {key} has a gray release in progress (release {gray}); promote or abort it first"
    )]
    GrayInProgress {
        /// `namespace/group/data_id`.
        key: String,
        /// The candidate's number.
        gray: u64,
    },
    /// Promote or abort with no gray release running.
    #[error("config {key} has no gray release in progress")]
    NoGray {
        /// `namespace/group/data_id`.
        key: String,
    },
    /// A call without a token on a namespace that has an ACL.
    #[error("namespace {namespace:?} requires a bearer token")]
    Unauthenticated {
        /// The namespace.
        namespace: String,
    },
    /// A token that lacks the permission a call needs.
    #[error("the token has no {permission} permission on namespace {namespace:?}")]
    PermissionDenied {
        /// The namespace.
        namespace: String,
        /// read | write | publish.
        permission: &'static str,
    },
    /// Concurrent writers kept changing the config; the caller may retry.
    #[error("config {key} changed concurrently too often; retry")]
    Contended {
        /// `namespace/group/data_id`.
        key: String,
    },
    /// The consistent core refused or failed.
    #[error("{0}")]
    Core(#[from] CoreError),
    /// A stored record that does not decode; details are in the message.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results in this crate.
pub type ConfigResult<T> = Result<T, ConfigError>;

impl ApiError for ConfigError {
    fn grpc_code(&self) -> Code {
        use ConfigError::*;
        match self {
            InvalidField { .. }
            | InvalidContent { .. }
            | ContentTooLarge { .. }
            | InvalidBody { .. } => Code::InvalidArgument,
            NamespaceNotFound { .. } | ConfigNotFound { .. } | ReleaseNotFound { .. } => {
                Code::NotFound
            }
            NamespaceExists { .. } => Code::AlreadyExists,
            NamespaceNotEmpty { .. } | StaleBase { .. } | GrayInProgress { .. } | NoGray { .. } => {
                Code::FailedPrecondition
            }
            Unauthenticated { .. } => Code::Unauthenticated,
            PermissionDenied { .. } => Code::PermissionDenied,
            Contended { .. } => Code::Aborted,
            Core(e) => e.grpc_code(),
            Internal(_) => Code::Internal,
        }
    }

    fn invalid_body(reason: String) -> Self {
        ConfigError::InvalidBody { reason }
    }
}

impl From<ConfigError> for tonic::Status {
    fn from(err: ConfigError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_grpc_code() {
        let stale = ConfigError::StaleBase {
            base: 1,
            current: 2,
        };
        assert_eq!(stale.grpc_code(), Code::FailedPrecondition);
        let http_status = |e: &ConfigError| cella_core::gateway::http_status(e.grpc_code());
        assert_eq!(http_status(&stale), 409);
        let big = ConfigError::ContentTooLarge { len: 10, max: 5 };
        assert_eq!(http_status(&big), 400);
        assert!(big.to_string().contains("`content`"));
        let ns = ConfigError::NamespaceNotFound {
            namespace: "x".into(),
        };
        assert_eq!(http_status(&ns), 404);
        let denied = ConfigError::PermissionDenied {
            namespace: "x".into(),
            permission: "publish",
        };
        assert_eq!(http_status(&denied), 403);
    }
}
