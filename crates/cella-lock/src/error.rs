//! The lock block's one error enum, and its single mapping to gRPC and HTTP statuses.
//!
//! Messages name the field and the rule, or the lock and who holds it. Errors of the core
//! underneath keep the core's own code and message.

use cella_core::gateway::ApiError;
use cella_core::CoreError;
use tonic::Code;

/// Everything that can go wrong taking, releasing or inspecting a lock, election or semaphore.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A request field breaks its rule (empty name, TTL out of range, ...).
    #[error("invalid request: field `{field}` {rule}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A REST body that is not the JSON form of the request message.
    #[error("invalid request: the body must be the JSON form of the request message: {reason}")]
    InvalidBody {
        /// What the JSON parser found (names the field where it can).
        reason: String,
    },
    /// A try-acquire found the lock (or every permit) held.
    #[error("lock {name:?} is held by lease {holder:x}; try_once does not wait")]
    Held {
        /// The lock or semaphore.
        name: String,
        /// The lease of the (first) holder.
        holder: i64,
    },
    /// The wait for the lock ran out; the caller left the queue.
    #[error("timed out after {waited_ms} ms waiting for lock {name:?}")]
    Timeout {
        /// The lock or semaphore.
        name: String,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// A release by a lease (or fencing token) that does not own the named hold.
    #[error("lease {lease:x} does not own lock {name:?}{}: nothing was released", holder_text(*holder))]
    NotOwner {
        /// The lock or semaphore.
        name: String,
        /// The lease that asked.
        lease: i64,
        /// The current holder's lease, if any.
        holder: Option<i64>,
    },
    /// The caller's key vanished while it waited (its lease expired or was revoked).
    #[error("lease {lease:x} lost its place for lock {name:?}: the lease expired or was revoked")]
    SessionLost {
        /// The lock, semaphore or election.
        name: String,
        /// The caller's lease.
        lease: i64,
    },
    /// A semaphore asked for with a permit count other than the one it has.
    #[error(
        "semaphore {name:?} has {declared} permits; field `permits` must match (got {requested})"
    )]
    PermitsMismatch {
        /// The semaphore.
        name: String,
        /// Permits declared by the semaphore's first party.
        declared: u32,
        /// Permits in the request.
        requested: u32,
    },
    /// A proclaim or resign by a key that is no longer the election's leader.
    #[error("election: not leader")]
    NotLeader,
    /// An election with no campaigner at all.
    #[error("election: no leader")]
    NoLeader,
    /// The core refused or failed the underlying operation.
    #[error(transparent)]
    Core(#[from] CoreError),
}

fn holder_text(holder: Option<i64>) -> String {
    match holder {
        Some(lease) => format!(" (it is held by lease {lease:x})"),
        None => " (it is not held)".to_string(),
    }
}

/// Shorthand for results in this crate.
pub type LockResult<T> = Result<T, LockError>;

impl ApiError for LockError {
    fn grpc_code(&self) -> Code {
        match self {
            LockError::InvalidField { .. } | LockError::InvalidBody { .. } => Code::InvalidArgument,
            LockError::Held { .. }
            | LockError::SessionLost { .. }
            | LockError::PermitsMismatch { .. }
            | LockError::NotLeader => Code::FailedPrecondition,
            LockError::Timeout { .. } => Code::DeadlineExceeded,
            LockError::NotOwner { .. } => Code::PermissionDenied,
            LockError::NoLeader => Code::NotFound,
            LockError::Core(e) => e.grpc_code(),
        }
    }

    fn invalid_body(reason: String) -> Self {
        LockError::InvalidBody { reason }
    }
}

impl From<LockError> for tonic::Status {
    fn from(err: LockError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_owner_names_lock_lease_and_holder() {
        let err = LockError::NotOwner {
            name: "orders".into(),
            lease: 0xab,
            holder: Some(0xcd),
        };
        assert_eq!(
            err.to_string(),
            "lease ab does not own lock \"orders\" (it is held by lease cd): nothing was released"
        );
        assert_eq!(err.grpc_code(), Code::PermissionDenied);
        assert_eq!(cella_core::gateway::http_status(err.grpc_code()), 403);
    }

    #[test]
    fn core_errors_keep_their_code() {
        let err = LockError::from(CoreError::LeaseNotFound { id: 7 });
        assert_eq!(err.grpc_code(), Code::NotFound);
        assert_eq!(err.to_string(), "etcdserver: requested lease not found");
    }
}
