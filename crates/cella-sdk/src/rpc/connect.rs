//! Connections: the innermost layer, one per endpoint.
//!
//! [`GrpcConnect`] gives each endpoint a lazily made HTTP/2 connection; [`HttpConnect`] a
//! pool of HTTP/1.1 ones (for apps behind the sidecar). Both take the stack's buffered
//! request ([`RpcRequest`]) and aim it at the endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use cella_base::CoalescedWrites;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{BoxError, Service};

use super::RpcRequest;
use crate::registry::pb;
use crate::{Error, Result};

/// How long a connection attempt to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Makes the connection for a discovered instance.
pub trait Connect: Clone + Send + Sync + 'static {
    /// The connection type.
    type Connection: Clone + Send + 'static;
    /// The connection to `instance` (connecting may happen on first use).
    fn connect(&self, instance: &pb::Instance) -> Result<Self::Connection>;
}

fn authority(instance: &pb::Instance) -> Result<http::uri::Authority> {
    let port = u16::try_from(instance.port).map_err(|_| Error::InvalidEndpoint {
        endpoint: format!("{}:{}", instance.ip, instance.port),
        reason: "port must be 1..65535".into(),
    })?;
    let text = if instance.ip.contains(':') {
        format!("[{}]:{port}", instance.ip)
    } else {
        format!("{}:{port}", instance.ip)
    };
    text.parse()
        .map_err(|error: http::uri::InvalidUri| Error::InvalidEndpoint {
            endpoint: text.clone(),
            reason: error.to_string(),
        })
}

/// Puts `authority` (and `http`) into the request's URI, keeping path and query: HTTP/2
/// needs them, and tonic's generated clients send the path only.
pub fn aim<B>(request: &mut http::Request<B>, authority: &http::uri::Authority) {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// HTTP/2 connections for gRPC: each endpoint gets one multiplexed connection, made on first
/// use and remade after it breaks. Calls go straight to hyper's connection task, without
/// the request queue (and its task hop) a tonic `Channel` puts in front, and without
/// hyper-util's pool, whose checkout made 16 callers ~20% slower (rpc-overhead p50);
/// concurrent calls share writes ([`CoalescedWrites`]).
#[derive(Debug, Clone, Default)]
pub struct GrpcConnect;

/// HTTP/1.1 connections (for apps behind the sidecar): a pool of keep-alive connections
/// per endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpConnect;

/// One endpoint's connection: HTTP/2 (from [`GrpcConnect`]) or a pool of HTTP/1.1 ones
/// (from [`HttpConnect`]).
#[derive(Clone)]
pub struct HttpConnection {
    transport: Transport,
    authority: http::uri::Authority,
}

#[derive(Clone)]
enum Transport {
    /// The HTTP/2 sender, shared by every call to the endpoint; `None` until the first call
    /// connects, and replaced when the connection has closed (calls racing a connect each
    /// make one; the last is kept, the others close after their call).
    Http2(Arc<Mutex<Option<http2::SendRequest<Full<Bytes>>>>>),
    Http1(Box<HyperClient<HttpConnector, Full<Bytes>>>),
}

impl std::fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnection")
            .field("authority", &self.authority)
            .finish()
    }
}

impl HttpConnection {
    fn http1(instance: &pb::Instance) -> Result<HttpConnection> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(HttpConnection {
            transport: Transport::Http1(Box::new(client)),
            authority: authority(instance)?,
        })
    }

    fn http2(instance: &pb::Instance) -> Result<HttpConnection> {
        Ok(HttpConnection {
            transport: Transport::Http2(Arc::default()),
            authority: authority(instance)?,
        })
    }
}

/// A new HTTP/2 connection to `authority` (connecting within `timeout`), its writes
/// coalesced ([`CoalescedWrites`]) and its driver spawned.
pub async fn connect_http2<B>(
    authority: &http::uri::Authority,
    timeout: Duration,
) -> Result<http2::SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let unavailable = |e: &dyn std::fmt::Display| Error::Unavailable {
        message: format!("connecting to {authority}: {e}"),
    };
    let address = authority.as_str();
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|e| unavailable(&e))?
        .map_err(|e| unavailable(&e))?;
    stream.set_nodelay(true).map_err(|e| unavailable(&e))?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(CoalescedWrites::new(stream)))
        .await
        .map_err(|e| unavailable(&e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "rpc: an HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

impl Connect for GrpcConnect {
    type Connection = HttpConnection;
    fn connect(&self, instance: &pb::Instance) -> Result<HttpConnection> {
        HttpConnection::http2(instance)
    }
}

impl Connect for HttpConnect {
    type Connection = HttpConnection;
    fn connect(&self, instance: &pb::Instance) -> Result<HttpConnection> {
        HttpConnection::http1(instance)
    }
}

impl Service<RpcRequest> for HttpConnection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: RpcRequest) -> Self::Future {
        aim(&mut request, &self.authority);
        let request = request.map(Full::new);
        match &self.transport {
            Transport::Http1(client) => {
                let call = client.request(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Transport::Http2(slot) => {
                let (slot, authority) = (slot.clone(), self.authority.clone());
                let open = slot
                    .lock()
                    .expect("sender lock is never poisoned")
                    .clone()
                    .filter(|sender| !sender.is_closed());
                Box::pin(async move {
                    let mut sender = match open {
                        Some(sender) => sender,
                        None => {
                            let sender = connect_http2(&authority, CONNECT_TIMEOUT).await?;
                            let mut slot = slot.lock().expect("sender lock is never poisoned");
                            slot.insert(sender).clone()
                        }
                    };
                    sender.ready().await?;
                    Ok(sender.send_request(request).await?)
                })
            }
        }
    }
}
