//! The core's one error enum, and its single mapping to gRPC and HTTP statuses.
//!
//! Where etcd has the same error, the message is etcd's exact text: etcd clients recognise
//! errors by it (Go's clientv3 maps them to typed errors by string), and etcd's texts name
//! the broken rule. Errors etcd lacks name the field and the rule. The variants keep the
//! details (lengths, limits, ids) for logs and tests.

use tonic::Code;

use crate::gateway::ApiError;

/// Everything that can go wrong in the consistent core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A request named no key where one is required.
    #[error("etcdserver: key is not provided")]
    EmptyKey {
        /// Which field was empty.
        field: &'static str,
    },
    /// A key longer than the configured limit.
    #[error("etcdserver: key is too large: field `{field}` is {len} bytes, the limit is {max}")]
    KeyTooLarge {
        /// Which field held the key.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value longer than the configured limit.
    #[error("etcdserver: request is too large")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A range whose end sorts before its start.
    #[error("etcdserver: invalid range: field `{field}` must sort after `key` (or be empty, or \"\\0\" for all keys from `key`)")]
    RangeEndBeforeKey {
        /// Which field held the range end.
        field: &'static str,
    },
    /// A txn with more operations than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps {
        /// Operations in the request (compares plus ops, per branch).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two puts of one key, or a put inside a deleted range, in one txn branch.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey {
        /// The key, lossily decoded for display.
        key: String,
    },
    /// A compare whose target has no value to compare with.
    #[error("etcdserver: invalid compare: field `compare.target_union` must hold a {target} for target {target}")]
    CompareMissingValue {
        /// The compare target that lacked its value.
        target: &'static str,
    },
    /// An enum field holding a number that names no variant.
    #[error("etcdserver: invalid request: field `{field}` has unknown value {value}")]
    UnknownEnumValue {
        /// Which field.
        field: &'static str,
        /// The value received.
        value: i32,
    },
    /// A field with a value outside its allowed range.
    #[error("etcdserver: invalid request: field `{field}` {rule}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A REST body that is not the JSON form of the request message.
    #[error("etcdserver: invalid request: the body must be the JSON form of the request message: {reason}")]
    InvalidBody {
        /// What the JSON parser found (names the field where it can).
        reason: String,
    },
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A read or watch at a revision that compaction removed.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// Revisions below this are gone.
        compact_revision: i64,
    },
    /// A read or compaction at a revision not yet written.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision {
        /// The newest revision.
        current: i64,
    },
    /// A lease id that does not exist (never granted, revoked or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound {
        /// The lease id.
        id: i64,
    },
    /// A grant asking for an id that is in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists {
        /// The lease id.
        id: i64,
    },
    /// A lease TTL above the maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge {
        /// Requested TTL in seconds.
        ttl: i64,
        /// The limit.
        max: i64,
    },
    /// A member id that is not in the cluster.
    #[error("etcdserver: member not found")]
    MemberNotFound {
        /// The member id.
        id: u64,
    },
    /// A peer URL that cannot be parsed.
    #[error("etcdserver: invalid peer URL {url:?}: expected http://HOST:PORT")]
    InvalidPeerUrl {
        /// The URL given.
        url: String,
    },
    /// No leader is known right now (election in progress or quorum lost).
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request did not finish in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// An error returned by another member (the leader) for a forwarded request, as sent.
    #[error("{message}")]
    Remote {
        /// Its gRPC code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// A storage or replication failure; details are in the server log.
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

/// Shorthand for results in this crate.
pub type CoreResult<T> = Result<T, CoreError>;

impl ApiError for CoreError {
    /// The codes etcd uses.
    fn grpc_code(&self) -> Code {
        use CoreError::*;
        match self {
            EmptyKey { .. }
            | KeyTooLarge { .. }
            | ValueTooLarge { .. }
            | RangeEndBeforeKey { .. }
            | TooManyOps { .. }
            | DuplicateKey { .. }
            | CompareMissingValue { .. }
            | UnknownEnumValue { .. }
            | InvalidField { .. }
            | InvalidBody { .. }
            | KeyNotFound
            | ValueProvided
            | LeaseProvided
            | InvalidPeerUrl { .. } => Code::InvalidArgument,
            Compacted { .. } | FutureRevision { .. } | LeaseTtlTooLarge { .. } => Code::OutOfRange,
            LeaseNotFound { .. } | MemberNotFound { .. } => Code::NotFound,
            LeaseExists { .. } => Code::FailedPrecondition,
            NoLeader | Timeout | Stopped => Code::Unavailable,
            Remote { code, .. } => *code,
            Internal(_) => Code::Internal,
        }
    }

    fn invalid_body(reason: String) -> Self {
        CoreError::InvalidBody { reason }
    }
}

impl From<CoreError> for tonic::Status {
    fn from(err: CoreError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}
