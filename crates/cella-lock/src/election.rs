//! Elections on the lock recipe: campaigners queue under `<name>/` (etcd's layout), the
//! first by create revision leads and its key's value is the proclaimed value.
//!
//! Guarantees: at most one leader per election at any revision; a proclaim or resign only
//! acts while the caller's key still has the create revision it campaigned with (a stale
//! proclaim is refused, a stale resign changes nothing and succeeds, as in etcd 3.4); observers
//! see every change of leader or of its value, in revision order (changes that happen
//! between two reads may be coalesced into the newer one).

use bytes::Bytes;
use cella_core::Core;
use cella_proto::etcdserverpb::{self as pb, compare};
use cella_proto::mvccpb::KeyValue;
use cella_proto::v3electionpb::LeaderKey;
use tokio::sync::mpsc;

use crate::error::{LockError, LockResult};
use crate::model::{check_lease, holds_among, prefix_end};
use crate::queue::{create_revision_is, op_delete, op_put, Queue};

/// Checks that a leader key names a key.
fn check_leader_key(leader: &LeaderKey) -> LockResult<()> {
    if leader.key.is_empty() {
        return Err(LockError::InvalidField {
            field: "leader.key",
            rule: "must not be empty",
        });
    }
    Ok(())
}

/// Elections over one core. Cheap to clone.
#[derive(Clone)]
pub struct Elections {
    core: Core,
}

impl Elections {
    /// Elections over `core`.
    pub fn new(core: Core) -> Elections {
        Elections { core }
    }

    /// The core underneath.
    pub fn core(&self) -> &Core {
        &self.core
    }

    fn queue(&self, name: &[u8]) -> LockResult<Queue> {
        if name.is_empty() {
            return Err(LockError::InvalidField {
                field: "name",
                rule: "must not be empty",
            });
        }
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        Ok(Queue::new(
            &self.core,
            Bytes::from(prefix),
            String::from_utf8_lossy(name).into_owned(),
        ))
    }

    /// Campaigns with `lease` and waits (until the call is dropped) to lead; the value is
    /// proclaimed once it leads. Returns the leadership key and the revision confirming it.
    pub async fn campaign(
        &self,
        name: &[u8],
        lease: i64,
        value: Bytes,
    ) -> LockResult<(LeaderKey, i64)> {
        check_lease(lease)?;
        let queue = self.queue(name)?;
        let (entry, head, revision) = queue.join(lease, value.clone(), 1).await?;
        let leader = LeaderKey {
            name: Bytes::copy_from_slice(name),
            key: entry.key.clone(),
            rev: entry.revision,
            lease,
        };
        if entry.value != value {
            // An earlier campaign of the same lease: take over its key with the new value.
            self.proclaim(&leader, value).await?;
        }
        let revision = match holds_among(&head, &entry.key, 1) {
            true => revision,
            false => queue.wait_turn(&entry, 1).await?,
        };
        entry.keep();
        Ok((leader, revision))
    }

    /// Sets the leader's value; refused unless `leader` still holds its key.
    pub async fn proclaim(&self, leader: &LeaderKey, value: Bytes) -> LockResult<i64> {
        check_leader_key(leader)?;
        if leader.rev <= 0 {
            return Err(LockError::InvalidField {
                field: "leader.rev",
                rule: "must be the campaign's create revision (> 0)",
            });
        }
        let (held, revision) = self
            .if_still_leader(leader, op_put(&leader.key, value, leader.lease))
            .await?;
        match held {
            true => Ok(revision),
            false => Err(LockError::NotLeader),
        }
    }

    /// Gives up leadership (or a waiting campaign): deletes `leader.key` if it still has the
    /// create revision `leader.rev`. As in etcd 3.4, a key that is gone or was created again
    /// since (a stale leader key) is not an error: nothing changes and the answer carries
    /// the current revision.
    pub async fn resign(&self, leader: &LeaderKey) -> LockResult<i64> {
        check_leader_key(leader)?;
        let (_, revision) = self.if_still_leader(leader, op_delete(&leader.key)).await?;
        Ok(revision)
    }

    /// Runs `then` if `leader.key` still has create revision `leader.rev`; returns whether
    /// it did and the revision after.
    async fn if_still_leader(
        &self,
        leader: &LeaderKey,
        then: pb::RequestOp,
    ) -> LockResult<(bool, i64)> {
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(
                    &leader.key,
                    compare::CompareResult::Equal,
                    leader.rev,
                )],
                success: vec![then],
                failure: vec![],
            })
            .await?;
        Ok((resp.succeeded, resp.header.map_or(0, |h| h.revision)))
    }

    /// The current leader's key-value and the revision it was read at.
    pub async fn leader(&self, name: &[u8]) -> LockResult<(KeyValue, i64)> {
        let (mut kvs, revision) = self.queue(name)?.read(1).await?;
        match kvs.pop() {
            Some(kv) => Ok((kv, revision)),
            None => Err(LockError::NoLeader),
        }
    }

    /// Streams the leader's key-value on every change of leader or value, starting with the
    /// current one, until the receiver is dropped. A core error ends the stream with it.
    pub fn observe(&self, name: &[u8]) -> LockResult<mpsc::Receiver<LockResult<(KeyValue, i64)>>> {
        let queue = self.queue(name)?;
        let (out, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Option<(Bytes, i64)> = None;
            loop {
                let (kvs, revision) = match queue.read(1).await {
                    Ok(read) => read,
                    Err(e) => {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = kvs.into_iter().next() {
                    let seen = Some((kv.key.clone(), kv.mod_revision));
                    if seen != last {
                        last = seen;
                        if out.send(Ok((kv, revision))).await.is_err() {
                            return;
                        }
                    }
                }
                let changed = queue.wait_for_change(
                    queue.prefix.clone(),
                    prefix_end(&queue.prefix),
                    revision + 1,
                    false,
                );
                tokio::select! {
                    result = changed => if let Err(e) = result {
                        let _ = out.send(Err(e)).await;
                        return;
                    },
                    _ = out.closed() => return,
                }
            }
        });
        Ok(receiver)
    }
}
