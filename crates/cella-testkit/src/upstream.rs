//! Upstreams for RPC tests: real HTTP (axum) and gRPC (tonic) servers on 127.0.0.1 whose
//! behaviour the test steers while they run (delay, failing) and which record what they
//! received (hit count, last request headers).
//!
//! The gRPC one serves `cella.test.Echo/Echo` (`ECHO_PATH`), a unary call whose reply names
//! the upstream and echoes the deadline header it saw; [`echo`] calls it over any channel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The gRPC path of the echo method.
pub const ECHO_PATH: &str = "/cella.test.Echo/Echo";

/// The echo call's request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Any text.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The echo call's reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The upstream's name.
    #[prost(string, tag = "1")]
    pub upstream: String,
    /// The request's text.
    #[prost(string, tag = "2")]
    pub text: String,
    /// The `grpc-timeout` header the upstream received (empty if none).
    #[prost(string, tag = "3")]
    pub grpc_timeout: String,
}

#[derive(Debug, Default)]
struct State {
    name: String,
    hits: AtomicU64,
    delay_us: AtomicU64,
    failing: AtomicBool,
    last_headers: Mutex<Option<HeaderMap>>,
}

impl State {
    /// Counts the call, records its headers, waits the delay; `false` if it must fail.
    async fn serve(&self, headers: &HeaderMap) -> bool {
        self.hits.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut last) = self.last_headers.lock() {
            *last = Some(headers.clone());
        }
        let delay = Duration::from_micros(self.delay_us.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        !self.failing.load(Ordering::SeqCst)
    }
}

/// A running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An HTTP/1.1 upstream: any method and path; answers 200 with
    /// `<name> <METHOD> <path?query> <body>`, or 503 while failing.
    pub async fn http(name: &str) -> anyhow::Result<Upstream> {
        let state = Arc::new(State {
            name: name.to_owned(),
            ..State::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = state.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let state = served.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                if !state.serve(&parts.headers).await {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "failing on purpose".to_string(),
                    )
                        .into_response();
                }
                let target = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let text = format!(
                    "{} {} {target} {}",
                    state.name,
                    parts.method,
                    String::from_utf8_lossy(&body)
                );
                (StatusCode::OK, text).into_response()
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream { addr, state, task })
    }

    /// A gRPC upstream serving `cella.test.Echo/Echo`; UNAVAILABLE while failing.
    pub async fn grpc(name: &str) -> anyhow::Result<Upstream> {
        let state = Arc::new(State {
            name: name.to_owned(),
            ..State::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = EchoService {
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Upstream { addr, state, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls received so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Makes every later call wait `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Makes later calls fail (HTTP 503 / gRPC UNAVAILABLE) or succeed.
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// The headers of the last call received.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.state.last_headers.lock().ok().and_then(|h| h.clone())
    }

    /// This upstream as a registry instance (id `name`, its address, healthy).
    pub fn instance(&self) -> cella_proto::cella::registry::v1::Instance {
        cella_proto::cella::registry::v1::Instance {
            id: self.state.name.clone(),
            ip: self.addr.ip().to_string(),
            port: u32::from(self.addr.port()),
            healthy: true,
            ..Default::default()
        }
    }
}

#[derive(Clone)]
struct EchoService {
    state: Arc<State>,
}

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "cella.test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            if request.uri().path() != ECHO_PATH {
                return Ok(tonic::Status::unimplemented("only Echo is served").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                EchoReply,
                EchoRequest,
            >::default());
            Ok(grpc.unary(EchoHandler { state }, request).await)
        })
    }
}

struct EchoHandler {
    state: Arc<State>,
}

impl tonic::server::UnaryService<EchoRequest> for EchoHandler {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let headers = request.metadata().clone().into_headers();
            if !state.serve(&headers).await {
                return Err(tonic::Status::unavailable("failing on purpose"));
            }
            let grpc_timeout = headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok(tonic::Response::new(EchoReply {
                upstream: state.name.clone(),
                text: request.into_inner().text,
                grpc_timeout,
            }))
        })
    }
}

/// Calls `cella.test.Echo/Echo` over `channel` (a tonic channel, or the SDK's stack), with
/// `request`'s metadata and extensions.
pub async fn echo<T>(
    channel: T,
    request: tonic::Request<EchoRequest>,
) -> Result<EchoReply, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::from_static(ECHO_PATH);
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
    Ok(client.unary(request, path, codec).await?.into_inner())
}
