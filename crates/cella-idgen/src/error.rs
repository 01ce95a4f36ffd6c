//! The crate's one error enum, and its single mapping to gRPC and HTTP statuses.
//!
//! Messages name the field and the rule, so a client can fix its request from the text alone.

use tonic::Code;

/// Everything that can go wrong generating, decoding or allocating ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdgenError {
    /// A layout definition breaks a rule (names, field kinds, widths).
    #[error("invalid layout {layout:?}: field `{field}` {rule}")]
    InvalidLayout {
        /// The layout's name.
        layout: String,
        /// Which field (or `name`, `fields`) broke the rule.
        field: String,
        /// The rule, in words.
        rule: String,
    },
    /// A layout whose fields together need more room than its id type has.
    #[error("invalid layout {layout:?}: field widths add up to {total} {unit}, more than the {max} {unit} an id of this radix holds")]
    LayoutTooWide {
        /// The layout's name.
        layout: String,
        /// The sum of the field widths.
        total: u32,
        /// The most the radix allows.
        max: u32,
        /// `bits` or `digits`.
        unit: &'static str,
    },
    /// A layout name that is neither built in nor configured.
    #[error("unknown layout {name:?}: field `layout` must name a configured layout ({known})")]
    UnknownLayout {
        /// The name asked for.
        name: String,
        /// The layouts there are, comma-separated.
        known: String,
    },
    /// A value too large for its field.
    #[error("field `{field}` is {value}, but layout {layout:?} holds at most {max} there")]
    FieldOverflow {
        /// The layout.
        layout: String,
        /// Which field.
        field: String,
        /// The value given.
        value: u64,
        /// The largest value the field holds.
        max: u64,
    },
    /// A request gave a value for a field the layout fills itself, or one it lacks.
    #[error("field `{field}` cannot be set in layout {layout:?}: {rule}")]
    UnknownField {
        /// The layout.
        layout: String,
        /// The field named.
        field: String,
        /// Why it is refused.
        rule: String,
    },
    /// A string that is not an id of the layout.
    #[error("field `id` {id:?} is not an id of layout {layout:?}: {rule}")]
    InvalidId {
        /// The layout.
        layout: String,
        /// The text given.
        id: String,
        /// The rule it broke.
        rule: String,
    },
    /// A batch asking for too many (or zero) ids.
    #[error("field `count` is {count}; it must be between 1 and {max}")]
    BadCount {
        /// Ids asked for.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// The clock is before the layout's epoch or past what its timestamp field holds.
    #[error(
        "the clock reads {unix_ms} ms since 1970, outside layout {layout:?}'s timestamp range"
    )]
    TimestampOutOfRange {
        /// The layout.
        layout: String,
        /// The clock's reading.
        unix_ms: u64,
    },
    /// The clock went back further than the generator waits out; it refuses until it catches up.
    #[error("clock moved backwards by {behind_ms} ms (more than the {max_wait_ms} ms waited out); refusing to issue ids until it catches up")]
    ClockMovedBackwards {
        /// How far behind the last issued timestamp the clock is.
        behind_ms: u64,
        /// The most that is waited out.
        max_wait_ms: u64,
    },
    /// Every worker id of a layout is held by someone.
    #[error("all {capacity} worker ids of layout {layout:?} are held")]
    WorkersExhausted {
        /// The layout.
        layout: String,
        /// How many worker ids it has.
        capacity: u64,
    },
    /// This generator's worker id lease ended, so it may no longer issue ids.
    #[error("worker id {worker} of layout {layout:?} was lost (its lease ended); a new worker id is needed")]
    WorkerLost {
        /// The layout.
        layout: String,
        /// The worker id that was held.
        worker: u64,
    },
    /// A segment tag that breaks the naming rule.
    #[error("field `tag` {tag:?} {rule}")]
    InvalidTag {
        /// The tag given.
        tag: String,
        /// The rule.
        rule: &'static str,
    },
    /// A REST body that is not the JSON form of the request message.
    #[error("invalid request: the body must be the JSON form of the request message: {reason}")]
    InvalidBody {
        /// What the JSON parser found.
        reason: String,
    },
    /// A stored value under `/cella/idgen/` that this code cannot read.
    #[error("corrupt idgen state at key {key:?}: {reason}")]
    CorruptState {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A compare-and-swap lost too many races in a row.
    #[error("too much contention on key {key:?}: {attempts} compare-and-swap attempts lost")]
    Contention {
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The core refused or failed a call; its code and message are kept.
    #[error("core: {message}")]
    Core {
        /// The core's gRPC code.
        code: Code,
        /// The core's message.
        message: String,
    },
}

/// Shorthand for results in this crate.
pub type IdgenResult<T> = Result<T, IdgenError>;

impl IdgenError {
    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> Code {
        use IdgenError::*;
        match self {
            InvalidLayout { .. }
            | LayoutTooWide { .. }
            | FieldOverflow { .. }
            | UnknownField { .. }
            | InvalidId { .. }
            | BadCount { .. }
            | InvalidTag { .. }
            | InvalidBody { .. } => Code::InvalidArgument,
            UnknownLayout { .. } => Code::NotFound,
            TimestampOutOfRange { .. } | ClockMovedBackwards { .. } | WorkerLost { .. } => {
                Code::FailedPrecondition
            }
            WorkersExhausted { .. } => Code::ResourceExhausted,
            Contention { .. } => Code::Aborted,
            CorruptState { .. } => Code::Internal,
            Core { code, .. } => *code,
        }
    }
}

impl From<IdgenError> for tonic::Status {
    fn from(err: IdgenError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

impl From<tonic::Status> for IdgenError {
    fn from(status: tonic::Status) -> Self {
        IdgenError::Core {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}
