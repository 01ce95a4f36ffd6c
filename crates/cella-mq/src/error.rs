//! The broker's one error enum, and its single mapping to gRPC and HTTP statuses.
//!
//! Messages name the field and the rule that was broken; the variants keep the details.

use cella_core::gateway::ApiError;
use tonic::Code;

/// Everything that can go wrong in the broker.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    /// A field failing a validation rule.
    #[error("invalid request: field `{field}` {rule}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// The rule it broke.
        rule: String,
    },
    /// A message body above the limit.
    #[error("invalid request: field `body` is {len} bytes, the limit is {max}")]
    BodyTooLarge {
        /// The body's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A delay above the maximum.
    #[error("invalid request: field `delay_ms` is {delay_ms}, the maximum is {max_ms}")]
    DelayTooLong {
        /// Requested delay.
        delay_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// A topic that does not exist (and auto-create is off).
    #[error(
        "topic `{topic}` not found (auto-create is off: create it with `cella mq topic create`)"
    )]
    TopicNotFound {
        /// The topic.
        topic: String,
    },
    /// A topic that already exists with other settings.
    #[error("topic `{topic}` already exists")]
    TopicExists {
        /// The topic.
        topic: String,
    },
    /// A queue id outside the topic's queues.
    #[error(
        "invalid request: field `queue_id` is {queue_id}, topic `{topic}` has {queues} queues"
    )]
    QueueNotFound {
        /// The topic.
        topic: String,
        /// The queue asked for.
        queue_id: u32,
        /// How many the topic has.
        queues: u32,
    },
    /// A consumer group that has never been seen.
    #[error("consumer group `{group}` not found")]
    GroupNotFound {
        /// The group.
        group: String,
    },
    /// A member that is not (or no longer) in its group.
    #[error("member `{member}` is not in group `{group}` (it left or missed its heartbeats): join again")]
    MemberNotFound {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// An ack or nack of an offset that was not delivered to this member.
    #[error("invalid request: field `offset` {offset} of queue {queue_id} of topic `{topic}` is not an unacked delivery to this member")]
    UnknownOffset {
        /// The topic.
        topic: String,
        /// The queue.
        queue_id: u32,
        /// The offset.
        offset: u64,
    },
    /// An end-transaction for a message that is not a pending half message.
    #[error("transaction of message {id} not found: it is not a half message waiting for a decision (never sent as one, or already decided)")]
    TransactionNotFound {
        /// The message id.
        id: String,
    },
    /// One entry of a batch (a message of a batched send, a delivery of a batched ack)
    /// broke a rule; the whole batch was refused and nothing of it applied.
    #[error("{}; the whole batch was refused", in_batch(list, *index, source))]
    InBatch {
        /// The batch's list field (`messages`, `deliveries`).
        list: &'static str,
        /// The entry's index in it.
        index: usize,
        /// What was wrong with the entry.
        source: Box<MqError>,
    },
    /// The on-disk data is not what the format says; details in the message.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// An I/O failure in the store.
    #[error("storage i/o error while {context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The consistent core failed a metadata read or write.
    #[error("metadata store: {0}")]
    Core(#[from] cella_core::CoreError),
    /// The broker is shutting down.
    #[error("broker stopped")]
    Stopped,
}

/// Shorthand for results in this crate.
pub type MqResult<T> = Result<T, MqError>;

impl MqError {
    /// Wraps an I/O error with what the store was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MqError {
        let context = context.into();
        move |source| MqError::Io { context, source }
    }
}

/// An entry's error with its field named by its place in the batch: field `body` of message 3
/// becomes field `messages[3].body`; an error naming no field is prefixed with the entry.
fn in_batch(list: &str, index: usize, source: &MqError) -> String {
    let text = source.to_string();
    if text.contains("field `") {
        text.replacen("field `", &format!("field `{list}[{index}]."), 1)
    } else {
        format!("{list}[{index}]: {text}")
    }
}

impl ApiError for MqError {
    fn grpc_code(&self) -> Code {
        use MqError::*;
        match self {
            InvalidField { .. }
            | BodyTooLarge { .. }
            | DelayTooLong { .. }
            | QueueNotFound { .. }
            | UnknownOffset { .. } => Code::InvalidArgument,
            TopicNotFound { .. }
            | GroupNotFound { .. }
            | MemberNotFound { .. }
            | TransactionNotFound { .. } => Code::NotFound,
            TopicExists { .. } => Code::AlreadyExists,
            Core(e) => match e.grpc_code() {
                Code::Unavailable | Code::DeadlineExceeded => Code::Unavailable,
                _ => Code::Internal,
            },
            InBatch { source, .. } => source.grpc_code(),
            Stopped => Code::Unavailable,
            Corrupt(_) | Io { .. } => Code::Internal,
        }
    }

    fn invalid_body(reason: String) -> Self {
        MqError::InvalidField {
            field: "body",
            rule: format!("must be the JSON form of the request message: {reason}"),
        }
    }
}

impl From<MqError> for tonic::Status {
    fn from(err: MqError) -> Self {
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}
