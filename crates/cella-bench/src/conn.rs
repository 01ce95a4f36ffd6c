//! Connections to one target: a fixed set of HTTP/2 connections that the simulated clients
//! share round-robin, each called directly for tonic's generated clients.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use cella_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cella_proto::etcdserverpb::StatusRequest;
use hyper::client::conn::http2;

use crate::args::Target;

/// How long connecting to a target may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The open connections to one target.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    uri: String,
    authority: http::uri::Authority,
    channels: Vec<Channel>,
}

/// One HTTP/2 connection, handed each call straight away (a tonic `Channel` queues every
/// call for a worker task first), its writes coalesced. The bench shares the machine with
/// the server it measures, so every cycle the client saves goes to the server.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    sender: http2::SendRequest<tonic::body::Body>,
    authority: http::uri::Authority,
}

impl Channel {
    async fn connect(authority: &http::uri::Authority) -> anyhow::Result<Channel> {
        Ok(Channel {
            sender: cella_sdk::rpc::connect_http2(authority, CONNECT_TIMEOUT).await?,
            authority: authority.clone(),
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        cella_sdk::rpc::aim(&mut request, &self.authority);
        Box::pin(self.sender.send_request(request))
    }
}

impl Connections {
    /// Opens `n` connections to `target`, failing if any of them cannot be established.
    pub(crate) async fn open(target: &Target, n: u32) -> anyhow::Result<Connections> {
        let mut connections = Connections::http(target)?;
        for _ in 0..n {
            let channel = Channel::connect(&connections.authority)
                .await
                .with_context(|| {
                    format!("target {}: cannot connect to {}", target.name, target.uri)
                })?;
            connections.channels.push(channel);
        }
        Ok(connections)
    }

    /// These connections plus new ones, `n` in all: for workloads holding more streams than
    /// a server lets one connection carry (HTTP/2 servers commonly allow 100-200).
    pub(crate) async fn at_least(&self, n: usize) -> anyhow::Result<Connections> {
        let mut more = self.clone();
        while more.channels.len() < n {
            let channel = Channel::connect(&self.authority)
                .await
                .context("opening another connection")?;
            more.channels.push(channel);
        }
        Ok(more)
    }

    /// Connections for an HTTP/1.1 workload: nothing is opened here; its clients connect to
    /// [`Connections::authority`] themselves.
    pub(crate) fn http(target: &Target) -> anyhow::Result<Connections> {
        let bad = || format!("target {}: bad address {}", target.name, target.uri);
        let uri: http::Uri = target.uri.parse().with_context(bad)?;
        let authority = uri.authority().cloned().with_context(bad)?;
        Ok(Connections {
            uri: target.uri.clone(),
            authority,
            channels: Vec::new(),
        })
    }

    /// The target's URI as given (`http://…`, `nats://…`, `amqp://…`).
    pub(crate) fn uri(&self) -> &str {
        self.uri.as_str()
    }

    /// `HOST:PORT` of the target.
    pub(crate) fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// The connection client number `i` uses.
    pub(crate) fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// The server's version as reported by `Maintenance.Status`.
    pub(crate) async fn server_version(&self) -> anyhow::Result<String> {
        let status = MaintenanceClient::new(self.channel(0))
            .status(StatusRequest {})
            .await?
            .into_inner();
        Ok(status.version)
    }
}
