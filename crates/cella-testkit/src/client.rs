//! Thin etcd v3 gRPC calls for tests: a register view of the KV with per-call timeouts and
//! errors classified by whether the call may have taken effect.
//!
//! Keys and values are UTF-8 strings here (tests write text); values read back are decoded
//! lossily. Every call is bounded by its timeout, sent both as the gRPC deadline and as a
//! local timer, so a paused or dead server never hangs a test.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use cella_base::prefix_end;
use cella_proto::cella::mq::v1::message_queue_client::MessageQueueClient;
use cella_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cella_proto::etcdserverpb::request_op::Request as RequestOpKind;
use cella_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, StatusRequest, StatusResponse, TxnRequest,
};
use tonic::transport::{Channel, Endpoint};

/// A KV client over a lazily connecting channel.
pub type Kv = KvClient<Channel>;

/// The broker's gRPC client, as the tests use it.
pub type Mq = MessageQueueClient<Channel>;

/// Largest response a test client accepts (prefix reads of whole test runs).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Keys per page when reading a prefix.
const PAGE: i64 = 2000;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Through the leader's read index: sees every write acknowledged before the call.
    Linearizable,
    /// From the member's local state: may be stale.
    Serializable,
}

/// Why a call did not succeed, classified by whether it may have taken effect.
#[derive(Debug)]
pub enum CallError {
    /// The connection was refused: the request was never sent, so it had no effect.
    NotSent(tonic::Status),
    /// The call did not answer within its timeout; it may or may not have taken effect.
    Timeout(Duration),
    /// The server or the transport reported an error; it may or may not have taken effect.
    Failed(tonic::Status),
}

impl CallError {
    /// Whether the call certainly had no effect on the server.
    pub fn had_no_effect(&self) -> bool {
        matches!(self, CallError::NotSent(_))
    }

    fn from_status(status: tonic::Status) -> Self {
        if was_refused(&status) {
            CallError::NotSent(status)
        } else {
            CallError::Failed(status)
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotSent(status) => {
                write!(f, "not sent (connection refused): {}", status.message())
            }
            CallError::Timeout(after) => write!(f, "timed out after {after:?}"),
            CallError::Failed(status) => write!(f, "{:?}: {}", status.code(), status.message()),
        }
    }
}

impl std::error::Error for CallError {}

/// Whether the status comes from a refused TCP connection anywhere in its source chain.
fn was_refused(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A channel to `endpoint` (`http://127.0.0.1:PORT`) that connects on first use and
/// reconnects after failures.
pub fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// A KV client for `endpoint`; see [`channel`].
pub fn kv(endpoint: &str) -> anyhow::Result<Kv> {
    Ok(KvClient::new(channel(endpoint)?).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// A message-broker client for `endpoint`; see [`channel`].
pub fn mq(endpoint: &str) -> anyhow::Result<Mq> {
    Ok(MessageQueueClient::new(channel(endpoint)?))
}

/// Runs one unary call with `timeout` as both its gRPC deadline and a local limit.
async fn call<T, F>(timeout: Duration, call: F) -> Result<T, CallError>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CallError::from_status(status)),
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sets `key` to `value`; returns the revision of the write.
pub async fn put(kv: &mut Kv, key: &str, value: &str, timeout: Duration) -> Result<i64, CallError> {
    let message = PutRequest {
        key: bytes(key),
        value: bytes(value),
        ..Default::default()
    };
    let response = call(timeout, kv.put(request(message, timeout))).await?;
    Ok(response.header.map_or(0, |header| header.revision))
}

/// Reads `key`'s value (`None`: absent).
pub async fn get(
    kv: &mut Kv,
    key: &str,
    consistency: Consistency,
    timeout: Duration,
) -> Result<Option<String>, CallError> {
    let message = RangeRequest {
        key: bytes(key),
        serializable: consistency == Consistency::Serializable,
        ..Default::default()
    };
    let response = call(timeout, kv.range(request(message, timeout))).await?;
    Ok(response.kvs.first().map(|kv| text(&kv.value)))
}

/// Sets `key` to `new` if its value equals `expected` (`None`: the key is absent, compared
/// as version 0); returns whether it did. One etcd transaction.
pub async fn cas(
    kv: &mut Kv,
    key: &str,
    expected: Option<&str>,
    new: &str,
    timeout: Duration,
) -> Result<bool, CallError> {
    let compare = match expected {
        Some(value) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: bytes(key),
            target_union: Some(TargetUnion::Value(bytes(value))),
            ..Default::default()
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: bytes(key),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        },
    };
    let put = PutRequest {
        key: bytes(key),
        value: bytes(new),
        ..Default::default()
    };
    let message = TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(RequestOpKind::RequestPut(put)),
        }],
        failure: vec![],
    };
    let response = call(timeout, kv.txn(request(message, timeout))).await?;
    Ok(response.succeeded)
}

/// Reads every key under `prefix` with its value, page by page (each page bounded by
/// `timeout`).
pub async fn get_prefix(
    kv: &mut Kv,
    prefix: &str,
    consistency: Consistency,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, CallError> {
    let end = prefix_end(prefix.as_bytes());
    let mut found = BTreeMap::new();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let message = RangeRequest {
            key: Bytes::from(from.clone()),
            range_end: Bytes::from(end.clone()),
            limit: PAGE,
            // Later pages read at the first page's revision, so the result is one snapshot.
            revision,
            serializable: consistency == Consistency::Serializable,
            ..Default::default()
        };
        let response = call(timeout, kv.range(request(message, timeout))).await?;
        if revision == 0 {
            revision = response.header.as_ref().map_or(0, |header| header.revision);
        }
        for pair in &response.kvs {
            found.insert(text(&pair.key), text(&pair.value));
        }
        match response.kvs.last() {
            Some(last) if response.more => {
                from = last.key.to_vec();
                from.push(0);
            }
            _ => return Ok(found),
        }
    }
}

/// Asks the member at `endpoint` for its Maintenance status (its id, the leader it knows,
/// term and indexes).
pub async fn status(endpoint: &str, timeout: Duration) -> Result<StatusResponse, CallError> {
    let mut client = MaintenanceClient::new(
        channel(endpoint)
            .map_err(|err| CallError::Failed(tonic::Status::invalid_argument(err.to_string())))?,
    );
    call(timeout, client.status(request(StatusRequest {}, timeout))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_classified_as_not_sent() {
        let port = crate::free_port().expect("a free port");
        let mut kv = kv(&format!("http://127.0.0.1:{port}")).expect("a lazy channel");
        let err = put(&mut kv, "k", "v", Duration::from_secs(5))
            .await
            .expect_err("nobody listens");
        assert!(err.had_no_effect(), "{err} / {err:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_with_unknown_effect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut kv = kv(&format!("http://{addr}")).expect("a lazy channel");
        let err = put(&mut kv, "k", "v", Duration::from_millis(300))
            .await
            .expect_err("nobody answers");
        assert!(!err.had_no_effect(), "{err}");
        drop(listener);
    }
}
