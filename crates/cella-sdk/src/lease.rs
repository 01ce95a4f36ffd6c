//! Leases: time-bound grants that keys attach to; when a lease ends, its keys are deleted.
//!
//! [`Leases::keep_alive`] refreshes a lease from a background task every third of its TTL
//! until the [`KeepAlive`] handle is dropped or the lease is gone. A broken stream is reopened
//! until the lease's last granted TTL runs out.

use std::time::Duration;

use bytes::Bytes;
use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::lease_client::LeaseClient;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Transport;
use crate::{Error, LeaseId, Result};

/// Shortest pause between two refreshes, whatever the TTL.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// Pause before reopening a broken keep-alive stream.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's id, for attaching keys and refreshing.
    pub id: LeaseId,
    /// The TTL the server granted, in seconds (it may raise a too-short request).
    pub ttl_secs: i64,
}

/// A lease's remaining time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// The lease.
    pub id: LeaseId,
    /// Seconds left before it expires.
    pub ttl_secs: i64,
    /// The TTL it was granted, in seconds.
    pub granted_ttl_secs: i64,
    /// Keys attached to it, when asked for.
    pub keys: Vec<Bytes>,
}

/// The Lease service.
#[derive(Debug, Clone)]
pub struct Leases {
    client: LeaseClient<Transport>,
}

impl Leases {
    pub(crate) fn new(transport: Transport) -> Self {
        Leases {
            client: LeaseClient::new(transport),
        }
    }

    /// Grants a lease that lives `ttl_secs` seconds unless refreshed.
    pub async fn grant(&self, ttl_secs: i64) -> Result<LeaseGrant> {
        let request = pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        let response = self.client.clone().lease_grant(request).await?.into_inner();
        if !response.error.is_empty() {
            return Err(Error::Server {
                code: tonic::Code::Unknown,
                message: response.error,
            });
        }
        Ok(LeaseGrant {
            id: LeaseId(response.id),
            ttl_secs: response.ttl,
        })
    }

    /// Ends a lease now, deleting every key attached to it.
    pub async fn revoke(&self, id: LeaseId) -> Result<()> {
        let request = pb::LeaseRevokeRequest { id: id.0 };
        let result = self.client.clone().lease_revoke(request).await;
        result.map_err(|status| lease_error(id, status))?;
        Ok(())
    }

    /// Reports a lease's remaining TTL, and its attached keys when `attached_keys` is set.
    pub async fn time_to_live(&self, id: LeaseId, attached_keys: bool) -> Result<LeaseTimeToLive> {
        let request = pb::LeaseTimeToLiveRequest {
            id: id.0,
            keys: attached_keys,
        };
        let result = self.client.clone().lease_time_to_live(request).await;
        let response = result
            .map_err(|status| lease_error(id, status))?
            .into_inner();
        if response.ttl < 0 {
            return Err(Error::LeaseNotFound { id });
        }
        Ok(LeaseTimeToLive {
            id,
            ttl_secs: response.ttl,
            granted_ttl_secs: response.granted_ttl,
            keys: response.keys,
        })
    }

    /// Lists every live lease.
    pub async fn leases(&self) -> Result<Vec<LeaseId>> {
        let response = self
            .client
            .clone()
            .lease_leases(pb::LeaseLeasesRequest {})
            .await?;
        let leases = response.into_inner().leases;
        Ok(leases.into_iter().map(|lease| LeaseId(lease.id)).collect())
    }

    /// Refreshes the lease once now, then every third of its TTL in the background.
    ///
    /// Fails at once if the lease does not exist. Dropping the handle stops the refreshes.
    pub async fn keep_alive(&self, id: LeaseId) -> Result<KeepAlive> {
        let (stream, ttl_secs) = KeepAliveStream::open(&self.client, id).await?;
        let (state, receiver) = watch::channel(Ok(ttl_secs));
        let task = tokio::spawn(keep_refreshing(
            self.client.clone(),
            id,
            stream,
            ttl_secs,
            state,
        ));
        Ok(KeepAlive {
            id,
            state: receiver,
            task: task.abort_handle(),
        })
    }
}

/// A lease being kept alive in the background; dropping it stops the refreshes.
#[derive(Debug)]
pub struct KeepAlive {
    id: LeaseId,
    state: watch::Receiver<Result<i64>>,
    task: AbortHandle,
}

impl KeepAlive {
    /// The lease being refreshed.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The TTL (seconds) granted by the latest refresh, or the error that ended keep-alive.
    pub fn latest(&self) -> Result<i64> {
        self.state.borrow().clone()
    }

    /// Waits for the next refresh and returns its TTL; once keep-alive has ended (the lease is
    /// gone or the server stayed unreachable past the TTL), returns why.
    pub async fn refreshed(&mut self) -> Result<i64> {
        let running = self.state.borrow().is_ok();
        if running && self.state.changed().await.is_err() {
            return Err(Error::StreamClosed {
                stream: "lease keep-alive",
            });
        }
        self.state.borrow_and_update().clone()
    }

    /// Waits until keep-alive has ended and returns why.
    pub async fn ended(&mut self) -> Error {
        loop {
            if let Err(e) = self.refreshed().await {
                return e;
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background loop: refresh, publish the TTL, sleep; reopen the stream on failure until the
/// lease's granted time is up; stop for good when the lease is gone.
async fn keep_refreshing(
    client: LeaseClient<Transport>,
    id: LeaseId,
    stream: KeepAliveStream,
    ttl_secs: i64,
    state: watch::Sender<Result<i64>>,
) {
    let mut stream = Some(stream);
    let mut expires = Instant::now() + secs(ttl_secs);
    let mut wait = refresh_interval(ttl_secs);
    loop {
        tokio::time::sleep(wait).await;
        let outcome = match stream.take() {
            Some(mut open) => open.refresh().await.map(|ttl| (open, ttl)),
            None => KeepAliveStream::open(&client, id).await,
        };
        match outcome {
            Ok((open, ttl_secs)) => {
                stream = Some(open);
                expires = Instant::now() + secs(ttl_secs);
                wait = refresh_interval(ttl_secs);
                if state.send(Ok(ttl_secs)).is_err() {
                    return; // the handle is gone
                }
            }
            Err(error)
                if matches!(error, Error::LeaseNotFound { .. }) || Instant::now() >= expires =>
            {
                // Whether or not anyone still listens, keep-alive is over.
                let _ = state.send(Err(error));
                return;
            }
            Err(error) => {
                tracing::warn!(lease = %id, %error, "lease keep-alive failed; retrying");
                wait = RETRY_INTERVAL;
            }
        }
    }
}

/// How long to wait before refreshing a lease granted `ttl_secs`: a third of it.
fn refresh_interval(ttl_secs: i64) -> Duration {
    (secs(ttl_secs) / 3).max(MIN_REFRESH_INTERVAL)
}

fn secs(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

/// One open LeaseKeepAlive stream for one lease.
struct KeepAliveStream {
    id: LeaseId,
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    /// Opens the stream with a first refresh and returns the TTL it granted.
    async fn open(client: &LeaseClient<Transport>, id: LeaseId) -> Result<(Self, i64)> {
        // The first request is queued before the call: servers send response headers with
        // their first message, so the call would not complete otherwise.
        let (requests, queued) = mpsc::channel(1);
        requests
            .try_send(pb::LeaseKeepAliveRequest { id: id.0 })
            .expect("a new channel has room for one request");
        let call = client
            .clone()
            .lease_keep_alive(ReceiverStream::new(queued))
            .await;
        let responses = call.map_err(|status| lease_error(id, status))?.into_inner();
        let mut stream = KeepAliveStream {
            id,
            requests,
            responses,
        };
        let ttl_secs = stream.receive().await?;
        Ok((stream, ttl_secs))
    }

    /// Refreshes the lease and returns the TTL granted.
    async fn refresh(&mut self) -> Result<i64> {
        let request = pb::LeaseKeepAliveRequest { id: self.id.0 };
        if self.requests.send(request).await.is_err() {
            return Err(Error::StreamClosed {
                stream: "lease keep-alive",
            });
        }
        self.receive().await
    }

    async fn receive(&mut self) -> Result<i64> {
        let id = self.id;
        match self.responses.message().await {
            Ok(Some(response)) if response.ttl > 0 => Ok(response.ttl),
            Ok(Some(_)) => Err(Error::LeaseNotFound { id }),
            Ok(None) => Err(Error::StreamClosed {
                stream: "lease keep-alive",
            }),
            Err(status) => Err(lease_error(id, status)),
        }
    }
}

/// A status about lease `id`: "not found" becomes [`Error::LeaseNotFound`].
fn lease_error(id: LeaseId, status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::NotFound => Error::LeaseNotFound { id },
        _ => status.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_at_a_third_of_the_ttl() {
        assert_eq!(refresh_interval(9), Duration::from_secs(3));
        assert_eq!(refresh_interval(2), Duration::from_secs(2) / 3);
    }

    #[test]
    fn refresh_never_spins() {
        assert_eq!(refresh_interval(0), MIN_REFRESH_INTERVAL);
        assert_eq!(refresh_interval(-5), MIN_REFRESH_INTERVAL);
    }

    #[test]
    fn not_found_names_the_lease() {
        let error = lease_error(
            LeaseId(0x1f),
            tonic::Status::not_found("etcdserver: requested lease not found"),
        );
        assert!(matches!(error, Error::LeaseNotFound { id: LeaseId(0x1f) }));
    }
}
