//! Locks and elections: Cella's lock API (`cella.lock.v1`) and etcd's Election service.
//!
//! [`Locks::acquire`] grants a lease for the hold, keeps it alive in the background while the
//! [`LockGuard`] lives, and releases (and revokes the lease) on [`LockGuard::release`].
//! Renewal stops when the guard is released or dropped, or when the lease is lost (expired
//! while the holder was paused or cut off); [`LockGuard::is_lost`] and
//! [`LockGuard::lost`] expose that loss. After a loss the hold may already belong to someone
//! else: use [`LockGuard::fencing_token`] with the guarded resource, which must refuse a token
//! lower than the last one it saw.

use std::time::Duration;

use bytes::Bytes;
use cella_proto::cella::lock::v1 as lockpb;
use cella_proto::cella::lock::v1::locks_client::LocksClient;
use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::v3electionpb as electionpb;
use cella_proto::v3electionpb::election_client::ElectionClient;
use futures::{Stream, StreamExt};

use crate::client::Transport;
use crate::lease::{KeepAlive, Leases};
use crate::{Error, LeaseId, Result, Revision};

/// How long to hold a lock's lease and to wait for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    /// TTL of the hold's lease in seconds: how long a silent holder keeps the lock.
    pub ttl_secs: i64,
    /// How long to wait for the lock.
    pub timeout: Duration,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions {
            ttl_secs: 10,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A lock's holder and queue, as the server reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockStatus {
    /// The lock.
    pub name: String,
    /// The holder, if any.
    pub holder: Option<LockParty>,
    /// Revision since which the holder holds.
    pub held_since: Revision,
    /// When the holder was granted, in ms since 1970, if the answering node granted it.
    pub held_since_unix_ms: Option<u64>,
    /// Waiters, first in line first.
    pub waiters: Vec<LockParty>,
    /// The revision the status was read at.
    pub revision: Revision,
}

/// A holder or waiter of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockParty {
    /// Its ownership key.
    pub key: String,
    /// Its lease.
    pub lease: LeaseId,
    /// Its fencing token (the key's create revision).
    pub fencing_token: i64,
}

impl From<lockpb::Party> for LockParty {
    fn from(p: lockpb::Party) -> Self {
        LockParty {
            key: p.key,
            lease: LeaseId(p.lease),
            fencing_token: p.fencing_token,
        }
    }
}

/// The lock API.
#[derive(Debug, Clone)]
pub struct Locks {
    client: LocksClient<Transport>,
    leases: Leases,
}

impl Locks {
    pub(crate) fn new(transport: Transport) -> Self {
        Locks {
            client: LocksClient::new(transport.clone()),
            leases: Leases::new(transport),
        }
    }

    /// Waits (up to `options.timeout`) for the lock and holds it while the guard lives.
    pub async fn acquire(&self, name: &str, options: AcquireOptions) -> Result<LockGuard> {
        self.take(name, options, false).await
    }

    /// Waits for the lock under a lease the server grants and nobody renews: the hold lasts
    /// `options.ttl_secs` unless released first ([`Locks::release`] with the returned lease).
    pub async fn acquire_for_ttl(
        &self,
        name: &str,
        options: AcquireOptions,
        try_once: bool,
    ) -> Result<LockParty> {
        let request = lockpb::AcquireRequest {
            name: name.to_owned(),
            lease: 0,
            ttl_seconds: options.ttl_secs,
            timeout_ms: i64::try_from(options.timeout.as_millis()).unwrap_or(i64::MAX),
            try_once,
        };
        let held = self.client.clone().acquire(request).await?.into_inner();
        Ok(LockParty {
            key: held.key,
            lease: LeaseId(held.lease),
            fencing_token: held.fencing_token,
        })
    }

    /// Takes the lock if it is free now; `Ok(None)` if someone holds it.
    pub async fn try_acquire(&self, name: &str, ttl_secs: i64) -> Result<Option<LockGuard>> {
        let options = AcquireOptions {
            ttl_secs,
            ..AcquireOptions::default()
        };
        match self.take(name, options, true).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::FailedPrecondition { message }) if message.contains("is held by") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn take(&self, name: &str, options: AcquireOptions, try_once: bool) -> Result<LockGuard> {
        let lease = self.leases.grant(options.ttl_secs).await?;
        let keep_alive = self.leases.keep_alive(lease.id).await?;
        let request = lockpb::AcquireRequest {
            name: name.to_owned(),
            lease: lease.id.0,
            ttl_seconds: 0,
            timeout_ms: i64::try_from(options.timeout.as_millis()).unwrap_or(i64::MAX),
            try_once,
        };
        match self.client.clone().acquire(request).await {
            Ok(held) => {
                let held = held.into_inner();
                Ok(LockGuard {
                    locks: self.clone(),
                    name: held.name,
                    key: held.key,
                    fencing_token: held.fencing_token,
                    keep_alive: Some(keep_alive),
                })
            }
            Err(status) => {
                drop(keep_alive);
                let _ = self.leases.revoke(lease.id).await;
                Err(status.into())
            }
        }
    }

    /// Releases the hold of `lease` on `name` (checked against `fencing_token` unless 0) and
    /// revokes the lease. A lease that does not own the lock gets `PermissionDenied`.
    pub async fn release(&self, name: &str, lease: LeaseId, fencing_token: i64) -> Result<bool> {
        let request = lockpb::ReleaseRequest {
            name: name.to_owned(),
            lease: lease.0,
            fencing_token,
            revoke_lease: true,
        };
        let released = self.client.clone().release(request).await?.into_inner();
        Ok(released.was_holder)
    }

    /// Who holds `name`, since when, and who waits.
    pub async fn status(&self, name: &str) -> Result<LockStatus> {
        let request = lockpb::StatusRequest {
            name: name.to_owned(),
        };
        let status = self.client.clone().status(request).await?.into_inner();
        Ok(LockStatus {
            name: status.name,
            holder: status.holder.map(LockParty::from),
            held_since: Revision(status.held_since_revision),
            held_since_unix_ms: u64::try_from(status.held_since_unix_ms)
                .ok()
                .filter(|ms| *ms > 0),
            waiters: status.waiters.into_iter().map(LockParty::from).collect(),
            revision: Revision(status.revision),
        })
    }
}

/// A held lock; its lease is kept alive until [`LockGuard::release`] or drop. Dropping the
/// guard stops renewal, so the lock ends when its lease runs out.
#[derive(Debug)]
pub struct LockGuard {
    locks: Locks,
    name: String,
    key: String,
    fencing_token: i64,
    keep_alive: Option<KeepAlive>,
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ownership key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease that owns the hold.
    pub fn lease(&self) -> Option<LeaseId> {
        self.keep_alive.as_ref().map(KeepAlive::id)
    }

    /// This hold's fencing token: higher than every earlier hold's.
    pub fn fencing_token(&self) -> i64 {
        self.fencing_token
    }

    /// True once renewal has failed for good: the lease is gone, and so is the hold.
    pub fn is_lost(&self) -> bool {
        self.keep_alive.as_ref().is_none_or(|k| k.latest().is_err())
    }

    /// Waits until the hold is lost (the lease expired or could not be renewed in time) and
    /// returns why.
    pub async fn lost(&mut self) -> Error {
        match self.keep_alive.as_mut() {
            Some(keep_alive) => keep_alive.ended().await,
            None => Error::StreamClosed {
                stream: "lease keep-alive",
            },
        }
    }

    /// Releases the lock and revokes its lease; returns whether it still held the lock.
    pub async fn release(mut self) -> Result<bool> {
        let keep_alive = self.keep_alive.take();
        let lease = keep_alive.as_ref().map(KeepAlive::id);
        drop(keep_alive);
        match lease {
            Some(lease) => {
                self.locks
                    .release(&self.name, lease, self.fencing_token)
                    .await
            }
            None => Ok(false),
        }
    }
}

/// A leadership won in an election; its lease is kept alive until resigned or dropped.
#[derive(Debug)]
pub struct Leadership {
    elections: Elections,
    leader: electionpb::LeaderKey,
    keep_alive: KeepAlive,
}

impl Leadership {
    /// The leadership key.
    pub fn key(&self) -> &[u8] {
        &self.leader.key
    }

    /// The lease that owns it.
    pub fn lease(&self) -> LeaseId {
        LeaseId(self.leader.lease)
    }

    /// Waits until the leadership is lost (its lease expired or could not be renewed in
    /// time) and returns why.
    pub async fn lost(&mut self) -> Error {
        self.keep_alive.ended().await
    }

    /// Proclaims a new value while still leading.
    pub async fn proclaim(&self, value: impl Into<Bytes>) -> Result<()> {
        let request = electionpb::ProclaimRequest {
            leader: Some(self.leader.clone()),
            value: value.into(),
        };
        self.elections.client.clone().proclaim(request).await?;
        Ok(())
    }

    /// Gives up leadership and revokes its lease.
    pub async fn resign(self) -> Result<()> {
        self.elections.resign_key(self.leader.clone()).await?;
        let _ = self.elections.leases.revoke(self.lease()).await;
        Ok(())
    }
}

/// Elections: campaign, leader, observe, resign (etcd's Election service).
#[derive(Debug, Clone)]
pub struct Elections {
    client: ElectionClient<Transport>,
    kv: KvClient<Transport>,
    leases: Leases,
}

impl Elections {
    pub(crate) fn new(transport: Transport) -> Self {
        Elections {
            client: ElectionClient::new(transport.clone()),
            kv: KvClient::new(transport.clone()),
            leases: Leases::new(transport),
        }
    }

    /// Campaigns with `value` under a lease of `ttl_secs` (kept alive meanwhile) and waits
    /// until this campaign leads.
    pub async fn campaign(
        &self,
        name: &str,
        value: impl Into<Bytes>,
        ttl_secs: i64,
    ) -> Result<Leadership> {
        let lease = self.leases.grant(ttl_secs).await?;
        let keep_alive = self.leases.keep_alive(lease.id).await?;
        let request = electionpb::CampaignRequest {
            name: Bytes::copy_from_slice(name.as_bytes()),
            lease: lease.id.0,
            value: value.into(),
        };
        match self.client.clone().campaign(request).await {
            Ok(won) => match won.into_inner().leader {
                Some(leader) => Ok(Leadership {
                    elections: self.clone(),
                    leader,
                    keep_alive,
                }),
                None => Err(Error::Server {
                    code: tonic::Code::Internal,
                    message: "campaign answered without a leader key".into(),
                }),
            },
            Err(status) => {
                let _ = self.leases.revoke(lease.id).await;
                Err(status.into())
            }
        }
    }

    /// The current leader's value, or `None` when nobody campaigns.
    pub async fn leader(&self, name: &str) -> Result<Option<Bytes>> {
        let request = electionpb::LeaderRequest {
            name: Bytes::copy_from_slice(name.as_bytes()),
        };
        match self.client.clone().leader(request).await {
            Ok(resp) => Ok(resp.into_inner().kv.map(|kv| kv.value)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    /// The leader's value now and after every change of leader or value.
    pub async fn observe(&self, name: &str) -> Result<impl Stream<Item = Result<Bytes>>> {
        let request = electionpb::LeaderRequest {
            name: Bytes::copy_from_slice(name.as_bytes()),
        };
        let stream = self.client.clone().observe(request).await?.into_inner();
        Ok(stream.map(|item| match item {
            Ok(resp) => Ok(resp.kv.map(|kv| kv.value).unwrap_or_default()),
            Err(status) => Err(status.into()),
        }))
    }

    /// Ends the campaign (leading or waiting) that `lease` runs in `name`, from any process.
    pub async fn resign(&self, name: &str, lease: LeaseId) -> Result<()> {
        let key = Bytes::from(format!("{name}/{:x}", lease.0));
        let found = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let Some(kv) = found.kvs.into_iter().next() else {
            return Err(Error::NotFound {
                message: format!("lease {lease} does not campaign in election {name:?}"),
            });
        };
        self.resign_key(electionpb::LeaderKey {
            name: Bytes::copy_from_slice(name.as_bytes()),
            key,
            rev: kv.create_revision,
            lease: lease.0,
        })
        .await
    }

    async fn resign_key(&self, leader: electionpb::LeaderKey) -> Result<()> {
        let request = electionpb::ResignRequest {
            leader: Some(leader),
        };
        self.client.clone().resign(request).await?;
        Ok(())
    }
}
