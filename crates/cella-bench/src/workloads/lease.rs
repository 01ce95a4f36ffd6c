//! lease-keepalive: keep-alive round trips.
//!
//! Each client grants its own lease ([`LEASE_TTL_SECS`] s) and opens its own `LeaseKeepAlive`
//! stream (streams are spread over the connections). An operation is one round trip on that
//! stream: send a keep-alive for the lease, wait for its answer. An answer for another lease
//! or with a TTL of 0 or less (the lease is gone) counts as an error. Leases are revoked
//! after the run.

use anyhow::Context;
use cella_proto::etcdserverpb::lease_client::LeaseClient;
use cella_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{grant_lease, measure, Settings};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// TTL of the benchmark's leases: long enough to outlive any stall of a run.
const LEASE_TTL_SECS: i64 = 60;

struct KeepAlive {
    leases: LeaseClient<Channel>,
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Grants client `i`'s lease and opens its keep-alive stream.
    async fn new(conns: &Connections, i: usize) -> anyhow::Result<KeepAlive> {
        let mut leases = LeaseClient::new(conns.channel(i));
        let id = grant_lease(&mut leases, i, LEASE_TTL_SECS).await?;
        let (requests, rx) = mpsc::channel(1);
        // Queue the first keep-alive before opening the stream: some servers send the
        // response headers only with the first message.
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| anyhow::anyhow!("keep-alive request queue closed"))?;
        let responses = leases
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening keep-alive stream {i}"))?
            .into_inner();
        let mut client = KeepAlive {
            leases,
            id,
            requests,
            responses,
        };
        client.receive().await?;
        Ok(client)
    }

    async fn receive(&mut self) -> anyhow::Result<()> {
        let response = self
            .responses
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("keep-alive stream ended"))?;
        if response.id != self.id {
            anyhow::bail!(
                "keep-alive answered for lease {} instead of {}",
                response.id,
                self.id
            );
        }
        if response.ttl <= 0 {
            anyhow::bail!("lease expired during keep-alive");
        }
        Ok(())
    }

    /// Closes the stream and revokes the lease (best effort: the TTL cleans up otherwise).
    async fn revoke(self) {
        let KeepAlive {
            mut leases,
            id,
            requests,
            ..
        } = self;
        drop(requests);
        let _ = leases.lease_revoke(LeaseRevokeRequest { id }).await;
    }
}

impl LoadClient for KeepAlive {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| anyhow::anyhow!("keep-alive stream closed"))?;
        self.receive().await
    }
}

/// Runs lease-keepalive at `clients` (one lease and one stream each).
pub(super) async fn run(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let keepalives =
        futures::future::try_join_all((0..clients).map(|i| KeepAlive::new(conns, i))).await?;
    let (keepalives, measurement) = measure(keepalives, settings, progress).await?;
    futures::future::join_all(keepalives.into_iter().map(KeepAlive::revoke)).await;
    Ok(measurement)
}
