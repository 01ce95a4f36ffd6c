//! The crate's one error type.
//!
//! Server errors keep the server's own message; [`From<tonic::Status>`] is the single place
//! where a gRPC status becomes an [`Error`].

use crate::{LeaseId, Revision};

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to Cella's core.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is not `HOST:PORT` or an `http://` URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// The rule it breaks.
        reason: String,
    },
    /// The bearer token contains characters that cannot travel in an HTTP header.
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    /// The server could not be reached, or dropped the connection.
    #[error("server unavailable: {message}")]
    Unavailable {
        /// What failed, with its causes.
        message: String,
    },
    /// The server rejected the request as malformed (empty key, bad range, ...).
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
    },
    /// The thing the request named does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
    /// The request is valid but the server's state does not allow it now.
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
    },
    /// The request carried no valid credentials.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The credentials do not allow this request.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// The call's deadline passed before the server answered.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The server's (or the transport's) message.
        message: String,
    },
    /// The requested revision is older than the compaction point.
    #[error("revision has been compacted; the oldest available revision is {compact_revision}")]
    Compacted {
        /// The revision history was compacted to; watch or read from here on.
        compact_revision: Revision,
    },
    /// The lease does not exist (never granted, revoked or expired).
    #[error("lease {id} not found or expired")]
    LeaseNotFound {
        /// The lease asked about.
        id: LeaseId,
    },
    /// The server canceled a watch for a reason other than compaction.
    #[error("watch canceled by the server: {reason}")]
    WatchCanceled {
        /// The server's reason.
        reason: String,
    },
    /// The server ended a stream that should have stayed open.
    #[error("the server closed the {stream} stream")]
    StreamClosed {
        /// Which stream: `watch` or `lease keep-alive`.
        stream: &'static str,
    },
    /// The server's answer lacks something this client needs.
    #[error("unexpected answer from the server: {message}")]
    Protocol {
        /// What was missing or wrong.
        message: String,
    },
    /// A config's content does not decode into the requested type.
    #[error("config {key} does not decode as {format} into the requested type: {reason}")]
    Decode {
        /// `namespace/group/data_id`.
        key: String,
        /// The config's format.
        format: String,
        /// What the decoder found.
        reason: String,
    },
    /// The local config cache could not be read or written.
    #[error("config cache {path}: {reason}")]
    Cache {
        /// The file or directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The RPC stack has no endpoint of the service to send a call to.
    #[error("no endpoint of {service} is available")]
    NoEndpoints {
        /// The service called.
        service: String,
    },
    /// The RPC stack's rate limit turned the call away.
    #[error("rate limited: the client's calls-per-second limit is reached")]
    RateLimited,
    /// An RPC stack setting breaks its rule.
    #[error("invalid setting {field}: {rule}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Any other gRPC failure, with its code and the server's message.
    #[error("server error ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status_message(&status);
        // A status with a cause was made by tonic from a transport failure during the call
        // (the connection broke), not sent by the server: the server may be gone.
        let broke = std::error::Error::source(&status).is_some();
        match status.code() {
            tonic::Code::Unavailable => Error::Unavailable { message },
            tonic::Code::Unknown if broke => Error::Unavailable { message },
            tonic::Code::InvalidArgument => Error::InvalidArgument { message },
            tonic::Code::NotFound => Error::NotFound { message },
            tonic::Code::FailedPrecondition => Error::FailedPrecondition { message },
            tonic::Code::Unauthenticated => Error::Unauthenticated { message },
            tonic::Code::PermissionDenied => Error::PermissionDenied { message },
            tonic::Code::DeadlineExceeded => Error::DeadlineExceeded { message },
            code => Error::Server { code, message },
        }
    }
}

impl Error {
    /// The connection to `endpoint` could not be established.
    pub(crate) fn connect_failed(endpoint: &str, error: &tonic::transport::Error) -> Error {
        Error::Unavailable {
            message: format!("cannot connect to {endpoint}: {}", error_chain(error)),
        }
    }
}

/// The status message, followed by its transport cause when tonic produced the status
/// itself (its message alone, "tcp connect error", does not say what failed).
fn status_message(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_owned(),
    }
}

/// `error: cause: cause ...`, skipping causes whose text repeats the previous one.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !last.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_the_server_message() {
        let error = Error::from(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        ));
        assert_eq!(
            error.to_string(),
            "not found: etcdserver: requested lease not found"
        );
    }

    #[test]
    fn a_connection_that_broke_during_the_call_is_unavailable() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = tonic::Status::from_error(Box::new(broken));
        assert_eq!(status.code(), tonic::Code::Unknown);
        let error = Error::from(status);
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert!(error.to_string().contains("broken pipe"), "{error}");
        let sent_by_the_server = Error::from(tonic::Status::unknown("handler failed"));
        assert!(matches!(sent_by_the_server, Error::Server { .. }));
    }

    #[test]
    fn unmapped_codes_keep_their_code() {
        let error = Error::from(tonic::Status::out_of_range(
            "mvcc: required revision is a future revision",
        ));
        assert!(matches!(
            error,
            Error::Server {
                code: tonic::Code::OutOfRange,
                ..
            }
        ));
    }
}
