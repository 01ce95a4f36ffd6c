//! Connections to one target: a fixed set of tonic channels (one HTTP/2 connection each)
//! that the simulated clients share round-robin.

use std::time::Duration;

use anyhow::Context;
use cella_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use cella_proto::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use crate::args::Target;

/// How long connecting to a target may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The open connections to one target.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    uri: String,
    endpoint: Endpoint,
    channels: Vec<Channel>,
}

impl Connections {
    /// Opens `n` connections to `target`, failing if any of them cannot be established.
    pub(crate) async fn open(target: &Target, n: u32) -> anyhow::Result<Connections> {
        let endpoint = Endpoint::from_shared(target.uri.clone())
            .with_context(|| format!("target {}: bad address {}", target.name, target.uri))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let channel = endpoint.connect().await.with_context(|| {
                format!("target {}: cannot connect to {}", target.name, target.uri)
            })?;
            channels.push(channel);
        }
        Ok(Connections {
            uri: target.uri.clone(),
            endpoint,
            channels,
        })
    }

    /// These connections plus new ones, `n` in all: for workloads holding more streams than
    /// a server lets one connection carry (HTTP/2 servers commonly allow 100-200).
    pub(crate) async fn at_least(&self, n: usize) -> anyhow::Result<Connections> {
        let mut channels = self.channels.clone();
        while channels.len() < n {
            channels.push(
                self.endpoint
                    .connect()
                    .await
                    .context("opening another connection")?,
            );
        }
        Ok(Connections {
            uri: self.uri.clone(),
            endpoint: self.endpoint.clone(),
            channels,
        })
    }

    /// Connections for an HTTP/1.1 workload: nothing is opened here; its clients connect to
    /// [`Connections::authority`] themselves.
    pub(crate) fn http(target: &Target) -> anyhow::Result<Connections> {
        let endpoint = Endpoint::from_shared(target.uri.clone())
            .with_context(|| format!("target {}: bad address {}", target.name, target.uri))?;
        Ok(Connections {
            uri: target.uri.clone(),
            endpoint,
            channels: Vec::new(),
        })
    }

    /// The target's URI as given (`http://…`, `nats://…`, `amqp://…`).
    pub(crate) fn uri(&self) -> &str {
        self.uri.as_str()
    }

    /// `HOST:PORT` of the target.
    pub(crate) fn authority(&self) -> &str {
        self.endpoint.uri().authority().map_or("", |a| a.as_str())
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
