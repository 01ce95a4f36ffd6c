//! The queue driver: the I/O half of the recipe in [`crate::model`], over the core.
//!
//! Joining puts `<prefix><lease-hex>` with the caller's lease in one txn (or finds the key
//! the lease already has there). Waiting re-reads the queue and, while the caller is not
//! among the holders, watches in-process for its predecessor's deletion (for a semaphore,
//! any deletion under the prefix), from the revision just after the read, so no release is
//! missed. A join whose caller stops waiting (try failed, timeout, cancelled call) is
//! withdrawn: its key is deleted only if it still has the create revision it was put with.

use std::time::Duration;

use bytes::Bytes;
use cella_core::watch::{run_watcher, WatchSpec};
use cella_core::{Core, CoreError};
use cella_proto::etcdserverpb::{
    self as pb, compare, range_request, request_op, response_op, watch_create_request,
};
use cella_proto::mvccpb::KeyValue;
use tokio::sync::mpsc;

use crate::error::{LockError, LockResult};
use crate::metrics;
use crate::model::{prefix_end, queue_key, standing, Party, Standing};

/// Idle watchers get no progress notifications (they are only waiting for a delete).
const NO_PROGRESS: Duration = Duration::from_secs(24 * 3600);

/// One queue (a lock, election or semaphore) in the core.
#[derive(Clone)]
pub(crate) struct Queue {
    pub core: Core,
    pub prefix: Bytes,
    /// The name, for error messages.
    pub name: String,
}

/// A key this caller put (or found) in a queue; withdrawn on drop unless kept.
pub(crate) struct Entry {
    pub key: Bytes,
    pub lease: i64,
    /// Create revision: place in the queue and fencing token.
    pub revision: i64,
    /// The value the key had when joined.
    pub value: Bytes,
    /// Whether this call created the key (only then is it withdrawn on failure).
    created: bool,
    core: Option<Core>,
}

impl Entry {
    /// The caller holds: keep the key past this call.
    pub fn keep(mut self) {
        self.core = None;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        if !self.created {
            return;
        }
        let (key, revision) = (self.key.clone(), self.revision);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = core.txn(withdraw_txn(&key, revision)).await {
                    tracing::debug!(error = %e, key = %String::from_utf8_lossy(&key), "withdrawing an abandoned lock waiter");
                }
            });
        }
    }
}

/// A compare on a key's create revision.
pub(crate) fn create_revision_is(
    key: &Bytes,
    result: compare::CompareResult,
    revision: i64,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
    }
}

/// A compare on a key's lease.
pub(crate) fn lease_is(key: &Bytes, lease: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Lease as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(compare::TargetUnion::Lease(lease)),
    }
}

pub(crate) fn op_range(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(req)),
    }
}

pub(crate) fn op_delete(key: &Bytes) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            },
        )),
    }
}

pub(crate) fn op_put(key: &Bytes, value: Bytes, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// Deletes `key` only if it still has create revision `revision`.
fn withdraw_txn(key: &Bytes, revision: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![create_revision_is(
            key,
            compare::CompareResult::Equal,
            revision,
        )],
        success: vec![op_delete(key)],
        failure: vec![],
    }
}

/// The key-values of the `i`th response of a txn, if it was a range.
pub(crate) fn txn_range(resp: &pb::TxnResponse, i: usize) -> Vec<KeyValue> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => r.kvs.clone(),
        _ => Vec::new(),
    }
}

impl Queue {
    pub fn new(core: &Core, prefix: Bytes, name: String) -> Queue {
        Queue {
            core: core.clone(),
            prefix,
            name,
        }
    }

    /// The whole queue, ordered by create revision, first `limit` only if `limit > 0`.
    pub fn range_request(&self, limit: i64) -> pb::RangeRequest {
        pb::RangeRequest {
            key: self.prefix.clone(),
            range_end: prefix_end(&self.prefix),
            limit,
            sort_order: range_request::SortOrder::Ascend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..Default::default()
        }
    }

    /// Reads the queue (linearizably) and the revision it was read at.
    pub async fn read(&self, limit: i64) -> LockResult<(Vec<KeyValue>, i64)> {
        let resp = self.core.range(self.range_request(limit)).await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        Ok((resp.kvs, revision))
    }

    /// Puts the lease's key with `value` unless it is there already, and reads the first
    /// `head` parties of the queue in the same txn (so an uncontended caller learns that it
    /// holds without another read). Returns the entry, that head and the txn's revision.
    pub async fn join(
        &self,
        lease: i64,
        value: Bytes,
        head: usize,
    ) -> LockResult<(Entry, Vec<KeyValue>, i64)> {
        let key = queue_key(&self.prefix, lease);
        let head_range = op_range(self.range_request(head.max(1) as i64));
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![create_revision_is(&key, compare::CompareResult::Equal, 0)],
                success: vec![op_put(&key, value.clone(), lease), head_range.clone()],
                failure: vec![
                    op_range(pb::RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }),
                    head_range,
                ],
            })
            .await?;
        let txn_revision = resp.header.map_or(0, |h| h.revision);
        let (revision, value, created) = if resp.succeeded {
            (txn_revision, value, true)
        } else {
            let Some(kv) = txn_range(&resp, 0).pop() else {
                return Err(self.lost(lease));
            };
            (kv.create_revision, kv.value, false)
        };
        let entry = Entry {
            key,
            lease,
            revision,
            value,
            created,
            core: Some(self.core.clone()),
        };
        Ok((entry, txn_range(&resp, 1), txn_revision))
    }

    /// Where `entry` stands now, with the queue and the revision it was read at.
    pub async fn standing(
        &self,
        entry: &Entry,
        permits: usize,
    ) -> LockResult<(Standing, Vec<KeyValue>, i64)> {
        let (kvs, revision) = self.read(0).await?;
        let queue: Vec<Party> = kvs.iter().map(Party::from).collect();
        Ok((standing(&queue, &entry.key, permits), kvs, revision))
    }

    /// Waits until `entry` is among the first `permits`; returns the revision confirming it.
    pub async fn wait_turn(&self, entry: &Entry, permits: usize) -> LockResult<i64> {
        let _waiting = metrics::Waiting::start();
        loop {
            let (standing, _, revision) = self.standing(entry, permits).await?;
            match standing {
                Standing::Holds => return Ok(revision),
                Standing::Gone => return Err(self.lost(entry.lease)),
                // A lock waiter needs only its predecessor gone; a semaphore waiter moves up
                // when anyone ahead leaves.
                Standing::Waits { predecessor, .. } if permits <= 1 => {
                    self.wait_for_change(predecessor.key, Bytes::new(), revision + 1, true)
                        .await?
                }
                Standing::Waits { .. } => {
                    self.wait_for_change(
                        self.prefix.clone(),
                        prefix_end(&self.prefix),
                        revision + 1,
                        true,
                    )
                    .await?
                }
            }
        }
    }

    /// Waits for an event on `key..range_end` from `from_revision` (deletes only when
    /// `deletes_only`). A compacted start revision also ends the wait: the caller re-reads.
    pub async fn wait_for_change(
        &self,
        key: Bytes,
        range_end: Bytes,
        from_revision: i64,
        deletes_only: bool,
    ) -> LockResult<()> {
        let filters = if deletes_only {
            vec![watch_create_request::FilterType::Noput as i32]
        } else {
            Vec::new()
        };
        let spec = WatchSpec::new(
            &self.core,
            &pb::WatchCreateRequest {
                key,
                range_end,
                start_revision: from_revision,
                filters,
                ..Default::default()
            },
        )?;
        let (events, mut received) = mpsc::channel(2);
        let watcher = tokio::spawn(run_watcher(self.core.clone(), 0, spec, events, NO_PROGRESS));
        let _stop = AbortOnDrop(watcher);
        loop {
            match received.recv().await {
                Some(resp) if resp.canceled || !resp.events.is_empty() => return Ok(()),
                Some(_) => continue,
                None => return Err(LockError::Core(CoreError::Stopped)),
            }
        }
    }

    /// Withdraws `entry` now (if this call created it) and waits for the delete.
    pub async fn withdraw(&self, mut entry: Entry) -> LockResult<()> {
        entry.core = None;
        if entry.created {
            self.core
                .txn(withdraw_txn(&entry.key, entry.revision))
                .await?;
        }
        Ok(())
    }

    /// The revision since which the holder with create revision `holder` holds: the first
    /// revision at which no key created before it is left. Keys created before the holder only
    /// ever leave, so that count falls monotonically and a binary search over serializable
    /// count-only reads finds it. Where compaction removed the history, the answer is the
    /// earliest revision that can still be told apart (so "at or before").
    pub async fn held_since(&self, holder: i64, now: i64) -> i64 {
        if holder <= 1 {
            return holder;
        }
        let (mut low, mut high) = (holder, now.max(holder));
        while low < high {
            let middle = low + (high - low) / 2;
            let ahead = self
                .core
                .range(pb::RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end(&self.prefix),
                    revision: middle,
                    serializable: true,
                    count_only: true,
                    max_create_revision: holder - 1,
                    ..Default::default()
                })
                .await
                .map_or(0, |r| r.count);
            if ahead == 0 {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        low
    }

    pub fn lost(&self, lease: i64) -> LockError {
        LockError::SessionLost {
            name: self.name.clone(),
            lease,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
