//! The lock domain service: locks and counting semaphores over the core, transport-free.
//!
//! Guarantees: at most one lease holds a lock (at most `permits` a semaphore) at any
//! revision; waiters are served in create-revision order; a hold's fencing token (its key's
//! create revision) is higher than every earlier hold's; a release only deletes the key of
//! the lease (and fencing token) that asked, in one txn, and otherwise changes nothing.
//! A hold ends when released or when its lease ends: the core deletes the key with it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_base::{Clock, UnixClock};
use cella_core::Core;
use cella_proto::cella::lock::v1 as lockpb;
use cella_proto::etcdserverpb::{self as pb, compare};

use crate::error::{LockError, LockResult};
use crate::grants::Grants;
use crate::model::{
    self, check_lease, check_name, check_permits, check_ttl, declared_permits, holds_among,
    lock_prefix, queue_key, semaphore_prefix, split_holders, Party, Standing,
};
use crate::queue::{create_revision_is, lease_is, op_delete, op_range, txn_range, Entry, Queue};

/// How long an acquire waits when the request names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait an acquire may ask for (an hour).
const MAX_TIMEOUT_MS: i64 = 3_600_000;

/// How long an acquire may wait for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: fail if the lock is held.
    Try,
    /// Up to this long.
    For(Duration),
    /// Until the call is dropped (etcd's Lock and Campaign).
    Forever,
}

/// Locks and semaphores over one core. Cheap to clone.
#[derive(Clone)]
pub struct LockService {
    core: Core,
    grants: Arc<Grants>,
}

/// What a queue is: a lock (one holder) or a semaphore with a permit count.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Lock,
    Semaphore { permits: u32 },
}

impl LockService {
    /// A service over `core`, with grant times from the system clock.
    pub fn new(core: Core) -> LockService {
        LockService::with_clock(core, Arc::new(UnixClock))
    }

    /// A service over `core` reading grant times from `clock` (origin: the Unix epoch).
    pub fn with_clock(core: Core, clock: Arc<dyn Clock>) -> LockService {
        LockService {
            core,
            grants: Arc::new(Grants::new(clock)),
        }
    }

    /// The core underneath.
    pub fn core(&self) -> &Core {
        &self.core
    }

    fn lock_queue(&self, name: &str) -> Queue {
        Queue::new(&self.core, lock_prefix(name), name.to_string())
    }

    fn semaphore_queue(&self, name: &str) -> Queue {
        Queue::new(&self.core, semaphore_prefix(name), name.to_string())
    }

    /// Takes a lock (Cella's API): waits up to the timeout, or fails at once with `try_once`.
    pub async fn acquire(
        &self,
        req: lockpb::AcquireRequest,
    ) -> LockResult<lockpb::AcquireResponse> {
        check_name(&req.name)?;
        let wait = wait_of(req.timeout_ms, req.try_once)?;
        let queue = self.lock_queue(&req.name);
        self.acquire_in(queue, Kind::Lock, req.lease, req.ttl_seconds, wait)
            .await
    }

    /// Takes a semaphore permit: holders are the first `permits` parties by revision.
    pub async fn acquire_permit(
        &self,
        req: lockpb::AcquirePermitRequest,
    ) -> LockResult<lockpb::AcquireResponse> {
        check_name(&req.name)?;
        check_permits(req.permits)?;
        let wait = wait_of(req.timeout_ms, req.try_once)?;
        let queue = self.semaphore_queue(&req.name);
        let kind = Kind::Semaphore {
            permits: req.permits,
        };
        self.acquire_in(queue, kind, req.lease, req.ttl_seconds, wait)
            .await
    }

    /// etcd's v3lock Lock: waits (until the call is dropped) and returns the holder's key.
    pub async fn lock(&self, name: &[u8], lease: i64) -> LockResult<(Bytes, i64)> {
        if name.is_empty() {
            return Err(LockError::InvalidField {
                field: "name",
                rule: "must not be empty",
            });
        }
        check_lease(lease)?;
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let queue = Queue::new(
            &self.core,
            Bytes::from(prefix),
            String::from_utf8_lossy(name).into_owned(),
        );
        let (entry, revision) = self.take(&queue, Kind::Lock, lease, Wait::Forever).await?;
        let key = entry.key.clone();
        entry.keep();
        Ok((key, revision))
    }

    /// etcd's v3lock Unlock: deletes the ownership key; returns the revision after.
    pub async fn unlock(&self, key: Bytes) -> LockResult<i64> {
        if key.is_empty() {
            return Err(LockError::InvalidField {
                field: "key",
                rule: "must not be empty",
            });
        }
        let mark = self.grants.releasing(&key);
        let resp = self
            .core
            .delete_range(pb::DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
            .inspect_err(|_| self.grants.release_abandoned(&key, mark))?;
        self.grants.released(&key);
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    async fn acquire_in(
        &self,
        queue: Queue,
        kind: Kind,
        lease: i64,
        ttl_seconds: i64,
        wait: Wait,
    ) -> LockResult<lockpb::AcquireResponse> {
        let granted = if lease == 0 {
            check_ttl(ttl_seconds)?;
            let resp = self
                .core
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: ttl_seconds,
                    id: 0,
                })
                .await?;
            Some((resp.id, resp.ttl))
        } else {
            check_lease(lease)?;
            None
        };
        let lease = granted.map_or(lease, |(id, _)| id);
        let taken = self.take(&queue, kind, lease, wait).await;
        if taken.is_err() && granted.is_some() {
            // The lease was made for this call only; it must not outlive a failed acquire.
            let _ = self
                .core
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await;
        }
        let (entry, revision) = taken?;
        let resp = lockpb::AcquireResponse {
            name: queue.name.clone(),
            key: String::from_utf8_lossy(&entry.key).into_owned(),
            lease,
            fencing_token: entry.revision,
            revision,
            lease_granted: granted.is_some(),
            ttl_seconds: granted.map_or(0, |(_, ttl)| ttl),
        };
        entry.keep();
        Ok(resp)
    }

    /// Joins the queue and waits for a hold as `wait` allows; leaves the queue on failure.
    /// A grant is recorded (metrics, grant time for the status).
    async fn take(
        &self,
        queue: &Queue,
        kind: Kind,
        lease: i64,
        wait: Wait,
    ) -> LockResult<(Entry, i64)> {
        let mut waited_since = None;
        let (entry, revision) = self
            .join_and_take(queue, kind, lease, wait, &mut waited_since)
            .await?;
        self.grants
            .granted(&entry.key, entry.revision, waited_since);
        Ok((entry, revision))
    }

    /// [`LockService::take`] without the record; notes in `waited_since` when a wait began.
    async fn join_and_take(
        &self,
        queue: &Queue,
        kind: Kind,
        lease: i64,
        wait: Wait,
        waited_since: &mut Option<Duration>,
    ) -> LockResult<(Entry, i64)> {
        let (value, permits) = match kind {
            Kind::Lock => (Bytes::new(), 1),
            Kind::Semaphore { permits } => (Bytes::from(permits.to_string()), permits as usize),
        };
        let (entry, head, revision) = queue.join(lease, value, permits).await?;
        if let Kind::Semaphore { permits } = kind {
            if let Some(declared) = declared_permits(head.first()).filter(|d| *d != permits) {
                queue.withdraw(entry).await?;
                return Err(LockError::PermitsMismatch {
                    name: queue.name.clone(),
                    declared,
                    requested: permits,
                });
            }
        }
        if holds_among(&head, &entry.key, permits) {
            return Ok((entry, revision));
        }
        if wait != Wait::Try {
            *waited_since = Some(self.grants.now());
        }
        match wait {
            Wait::Try => {
                queue.withdraw(entry).await?;
                Err(LockError::Held {
                    name: queue.name.clone(),
                    holder: head.first().map_or(0, |kv| kv.lease),
                })
            }
            Wait::Forever => {
                let revision = queue.wait_turn(&entry, permits).await?;
                Ok((entry, revision))
            }
            Wait::For(limit) => {
                match tokio::time::timeout(limit, queue.wait_turn(&entry, permits)).await {
                    Ok(Ok(revision)) => Ok((entry, revision)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => {
                        queue.withdraw(entry).await?;
                        Err(LockError::Timeout {
                            name: queue.name.clone(),
                            waited_ms: limit.as_millis() as u64,
                        })
                    }
                }
            }
        }
    }

    /// Releases a lock held (or waited for) by the request's lease.
    pub async fn release(
        &self,
        req: lockpb::ReleaseRequest,
    ) -> LockResult<lockpb::ReleaseResponse> {
        check_name(&req.name)?;
        self.release_in(self.lock_queue(&req.name), &req).await
    }

    /// Gives back a semaphore permit held (or waited for) by the request's lease.
    pub async fn release_permit(
        &self,
        req: lockpb::ReleaseRequest,
    ) -> LockResult<lockpb::ReleaseResponse> {
        check_name(&req.name)?;
        self.release_in(self.semaphore_queue(&req.name), &req).await
    }

    async fn release_in(
        &self,
        queue: Queue,
        req: &lockpb::ReleaseRequest,
    ) -> LockResult<lockpb::ReleaseResponse> {
        check_lease(req.lease)?;
        if req.fencing_token < 0 {
            return Err(LockError::InvalidField {
                field: "fencing_token",
                rule: "must be >= 0 (0: not checked)",
            });
        }
        let key = queue_key(&queue.prefix, req.lease);
        let owned = if req.fencing_token > 0 {
            create_revision_is(&key, compare::CompareResult::Equal, req.fencing_token)
        } else {
            create_revision_is(&key, compare::CompareResult::Greater, 0)
        };
        let mark = self.grants.releasing(&key);
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![owned, lease_is(&key, req.lease)],
                // The queue as it was just before the delete tells whether the key held.
                success: vec![op_range(queue.range_request(0)), op_delete(&key)],
                failure: vec![op_range(queue.range_request(1))],
            })
            .await
            .inspect_err(|_| self.grants.release_abandoned(&key, mark))?;
        let kvs = txn_range(&resp, 0);
        if !resp.succeeded {
            self.grants.release_abandoned(&key, mark);
            return Err(LockError::NotOwner {
                name: queue.name.clone(),
                lease: req.lease,
                holder: kvs.first().map(|kv| kv.lease),
            });
        }
        self.grants.released(&key);
        let permits = declared_permits(kvs.first()).unwrap_or(1).max(1) as usize;
        let parties: Vec<Party> = kvs.iter().map(Party::from).collect();
        let was_holder = model::standing(&parties, &key, permits) == Standing::Holds;
        if req.revoke_lease {
            self.core
                .lease_revoke(pb::LeaseRevokeRequest { id: req.lease })
                .await?;
        }
        Ok(lockpb::ReleaseResponse {
            was_holder,
            revision: resp.header.map_or(0, |h| h.revision),
        })
    }

    /// Who holds a lock, since when, and who waits.
    pub async fn status(&self, req: lockpb::StatusRequest) -> LockResult<lockpb::LockStatus> {
        check_name(&req.name)?;
        let queue = self.lock_queue(&req.name);
        let (kvs, revision) = queue.read(0).await?;
        let parties: Vec<Party> = kvs.iter().map(Party::from).collect();
        let (holders, waiters) = split_holders(parties, 1);
        let holder = holders.into_iter().next();
        let held_since_revision = match &holder {
            Some(h) => queue.held_since(h.revision, revision).await,
            None => 0,
        };
        let held_since_unix_ms = holder
            .as_ref()
            .and_then(|h| self.grants.granted_at(&h.key, h.revision))
            .unwrap_or(0) as i64;
        Ok(lockpb::LockStatus {
            name: req.name,
            holder: holder.as_ref().map(party_view),
            held_since_revision,
            held_since_unix_ms,
            waiters: waiters.iter().map(party_view).collect(),
            revision,
        })
    }

    /// A semaphore's permits, holders and waiters.
    pub async fn semaphore_status(
        &self,
        req: lockpb::StatusRequest,
    ) -> LockResult<lockpb::SemaphoreStatus> {
        check_name(&req.name)?;
        let (kvs, revision) = self.semaphore_queue(&req.name).read(0).await?;
        let permits = declared_permits(kvs.first()).unwrap_or(0);
        let parties: Vec<Party> = kvs.iter().map(Party::from).collect();
        let (holders, waiters) = split_holders(parties, permits as usize);
        Ok(lockpb::SemaphoreStatus {
            name: req.name,
            permits,
            holders: holders.iter().map(party_view).collect(),
            waiters: waiters.iter().map(party_view).collect(),
            revision,
        })
    }
}

/// The wait an acquire asks for.
fn wait_of(timeout_ms: i64, try_once: bool) -> LockResult<Wait> {
    if !(0..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(LockError::InvalidField {
            field: "timeout_ms",
            rule: "must be between 0 (the default, 30 s) and 3600000",
        });
    }
    Ok(match (try_once, timeout_ms) {
        (true, _) => Wait::Try,
        (false, 0) => Wait::For(DEFAULT_TIMEOUT),
        (false, ms) => Wait::For(Duration::from_millis(ms as u64)),
    })
}

fn party_view(party: &Party) -> lockpb::Party {
    lockpb::Party {
        key: String::from_utf8_lossy(&party.key).into_owned(),
        lease: party.lease,
        fencing_token: party.revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_the_request() {
        assert_eq!(wait_of(0, true), Ok(Wait::Try));
        assert_eq!(wait_of(0, false), Ok(Wait::For(DEFAULT_TIMEOUT)));
        assert_eq!(
            wait_of(250, false),
            Ok(Wait::For(Duration::from_millis(250)))
        );
        assert!(matches!(
            wait_of(-1, false),
            Err(LockError::InvalidField {
                field: "timeout_ms",
                ..
            })
        ));
        assert!(wait_of(MAX_TIMEOUT_MS + 1, false).is_err());
    }
}
