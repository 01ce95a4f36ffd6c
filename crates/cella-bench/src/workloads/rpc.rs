//! rpc-overhead: what the SDK's client RPC stack adds to a unary gRPC call.
//!
//! The bench starts an echo gRPC server on 127.0.0.1 (`cella.bench.Echo/Echo`, which
//! answers with the request's bytes) on a runtime of its own ([`serve_apart`]: a call wakes
//! it as a call to another process would) and registers it in the target's registry as
//! `cella-bench-echo-<pid>`. Two paths then call it, measured side by side at each level:
//!
//! - `tonic`: a plain tonic channel (one HTTP/2 connection) to the server's address;
//! - `sdk`: `cella_sdk::rpc::grpc_channel` with the default settings, as an app builds it:
//!   discovery from the registry, context, deadline (10 s), limits, retry budget (the echo
//!   method is marked idempotent, so the retry layer keeps a copy of each request), the p2c
//!   balancer with outlier ejection and latency tracking, then one connection per endpoint.
//!
//! An operation is one call with a `--value-size` payload whose answer is checked. Both
//! paths call the same server from the same runtime, so the comparison is like for like.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{bail, Context};
use bytes::Bytes;
use cella_sdk::registry::{pb, service_name, Registration};
use cella_sdk::rpc::{self, GrpcChannel, RpcSettings};
use tonic::codegen::{http, Body, StdError};
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use super::{measure, serve_apart, Settings};
use crate::args::Target;
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// The echo method's gRPC path.
const ECHO_PATH: &str = "/cella.bench.Echo/Echo";

/// The echo server, registration and both channels of one run.
pub(crate) struct RpcPaths {
    echo: SocketAddr,
    service: String,
    tonic: Channel,
    sdk: GrpcChannel,
    _registration: Registration,
    /// Stops the echo server (dropping it does too).
    _stop_server: tokio::sync::oneshot::Sender<()>,
}

/// The paths' names, the direct one (the baseline) first.
pub(crate) const NAMES: [&str; 2] = ["tonic", "sdk"];

impl RpcPaths {
    /// Starts the echo server, registers it with `target`'s registry and opens both paths.
    pub(crate) async fn open(target: &Target) -> anyhow::Result<RpcPaths> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let echo = listener.local_addr()?;
        let stop_server = serve_apart("echo-server", move || async move {
            let served = async {
                // Replies are small writes: without TCP_NODELAY they wait for delayed ACKs.
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |stream| {
                        let stream = stream?;
                        stream.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(stream)
                    },
                );
                tonic::transport::Server::builder()
                    .add_service(EchoServer)
                    .serve_with_incoming(incoming)
                    .await
                    .map_err(anyhow::Error::from)
            };
            if let Err(error) = served.await {
                eprintln!("rpc-overhead: the echo server stopped: {error:#}");
            }
        })?;
        let tonic = Endpoint::from_shared(format!("http://{echo}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting to the echo server")?;

        let client = cella_sdk::Client::connect(&target.uri)
            .await
            .with_context(|| format!("connecting to the registry at {}", target.uri))?;
        let registry = client.registry();
        let service = format!("cella-bench-echo-{}", std::process::id());
        let instance = pb::Instance {
            ip: echo.ip().to_string(),
            port: u32::from(echo.port()),
            ..Default::default()
        };
        let registration = registry
            .register(service_name(&service), instance)
            .await
            .context("registering the echo server")?;
        let settings = RpcSettings {
            idempotent_paths: [ECHO_PATH.to_string()].into(),
            ..RpcSettings::default()
        };
        let sdk = rpc::grpc_channel(&registry, &service, settings)
            .await
            .context("building the SDK's channel")?;
        Ok(RpcPaths {
            echo,
            service,
            tonic,
            sdk,
            _registration: registration,
            _stop_server: stop_server,
        })
    }

    /// What each path is, for the report.
    pub(crate) fn describe(&self, target: &Target) -> [String; 2] {
        [
            format!("raw tonic channel to the echo server at {}", self.echo),
            format!(
                "SDK stack (default settings) to `{}`, discovered from the registry at {}",
                self.service, target.uri
            ),
        ]
    }

    /// Measures path `path` (an index into [`NAMES`]) with `clients` callers.
    pub(crate) async fn run_level(
        &self,
        path: usize,
        clients: usize,
        settings: &Settings,
        progress: Option<&Progress>,
    ) -> anyhow::Result<Measurement> {
        let payload = Bytes::from(vec![b'x'; settings.value_size]);
        match path {
            0 => {
                let callers = (0..clients)
                    .map(|_| Caller::new(self.tonic.clone(), payload.clone()))
                    .collect();
                Ok(measure(callers, settings, progress).await?.1)
            }
            _ => {
                let callers = (0..clients)
                    .map(|_| Caller::new(self.sdk.clone(), payload.clone()))
                    .collect();
                Ok(measure(callers, settings, progress).await?.1)
            }
        }
    }
}

/// One caller: echo calls over its own clone of a channel.
struct Caller<T> {
    grpc: tonic::client::Grpc<T>,
    payload: Bytes,
}

impl<T> Caller<T> {
    fn new(channel: T, payload: Bytes) -> Self {
        Caller {
            grpc: tonic::client::Grpc::new(channel),
            payload,
        }
    }
}

impl<T> LoadClient for Caller<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    async fn call(&mut self) -> anyhow::Result<()> {
        self.grpc
            .ready()
            .await
            .map_err(|e| anyhow::anyhow!("channel not ready: {}", e.into()))?;
        let path = http::uri::PathAndQuery::from_static(ECHO_PATH);
        let request = tonic::Request::new(self.payload.clone());
        let reply = self
            .grpc
            .unary(request, path, ProstCodec::<Bytes, Bytes>::default())
            .await?
            .into_inner();
        if reply.len() != self.payload.len() {
            bail!(
                "echo answered {} bytes for {}",
                reply.len(),
                self.payload.len()
            );
        }
        Ok(())
    }
}

/// The echo gRPC service: `Echo` answers with the request's bytes.
#[derive(Clone)]
struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "cella.bench.Echo";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != ECHO_PATH {
                return Ok(tonic::Status::unimplemented("only Echo is served").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Bytes, Bytes>::default());
            Ok(grpc.unary(Echo, request).await)
        })
    }
}

struct Echo;

impl tonic::server::UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}
