//! Connections: the innermost layer, one per endpoint.
//!
//! [`GrpcConnect`] gives each endpoint a lazily made HTTP/2 connection; [`HttpConnect`] a
//! pool of HTTP/1.1 ones (for apps behind the sidecar). Both take the stack's buffered
//! request ([`RpcRequest`]) and aim it at the endpoint.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
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

/// Puts `authority` (and `http`) into the request's URI, keeping path and query.
fn aim(request: &mut RpcRequest, authority: &http::uri::Authority) {
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
/// the request queue (and its task hop) a tonic `Channel` puts in front.
#[derive(Debug, Clone, Default)]
pub struct GrpcConnect;

/// HTTP/1.1 connections (for apps behind the sidecar): a pool of keep-alive connections
/// per endpoint.
#[derive(Debug, Clone, Default)]
pub struct HttpConnect;

/// One endpoint's hyper client, speaking HTTP/2 (from [`GrpcConnect`]) or HTTP/1.1 (from
/// [`HttpConnect`]).
#[derive(Clone)]
pub struct HttpConnection {
    client: HyperClient<HttpConnector, Full<Bytes>>,
    authority: http::uri::Authority,
}

impl std::fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnection")
            .field("authority", &self.authority)
            .finish()
    }
}

impl HttpConnection {
    fn new(instance: &pb::Instance, http2_only: bool) -> Result<HttpConnection> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = HyperClient::builder(TokioExecutor::new())
            .http2_only(http2_only)
            .build(connector);
        Ok(HttpConnection {
            client,
            authority: authority(instance)?,
        })
    }
}

impl Connect for GrpcConnect {
    type Connection = HttpConnection;
    fn connect(&self, instance: &pb::Instance) -> Result<HttpConnection> {
        HttpConnection::new(instance, true)
    }
}

impl Connect for HttpConnect {
    type Connection = HttpConnection;
    fn connect(&self, instance: &pb::Instance) -> Result<HttpConnection> {
        HttpConnection::new(instance, false)
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
        let call = self.client.request(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}
