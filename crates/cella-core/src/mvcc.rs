//! The revisioned key-value store: etcd's data model, in memory, decisions only.
//!
//! Every key keeps its history: one [`KeyRevision`] per write, a tombstone per delete. One
//! global revision counts write transactions: a transaction that changes anything gets
//! `revision + 1`, and each change inside it a sub-revision, so watchers see changes in
//! order. Reads at an older revision walk the history; compaction drops history at or
//! below a revision, keeping each key's state at that revision.
//!
//! The store performs no I/O. The Raft state machine drives it with already-validated
//! requests in log order, so every replica reaches the same state and the same answers.
//! Checks that depend on state (does the lease exist?) happen here before anything is
//! changed, so a refused request leaves the store untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;
use cella_proto::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use cella_proto::mvccpb;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, CoreResult};

/// One write of one key: its state as of `mod_revision`. A tombstone has `version == 0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRevision {
    pub mod_revision: i64,
    pub sub: u32,
    pub create_revision: i64,
    pub version: i64,
    pub value: Bytes,
    pub lease: i64,
}

impl KeyRevision {
    fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    fn to_kv(&self, key: &Bytes, keys_only: bool) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: key.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: if keys_only {
                Bytes::new()
            } else {
                self.value.clone()
            },
            lease: self.lease,
        }
    }
}

/// A lease as replicated: its TTL and the keys attached to it. Expiry timing is not
/// replicated; the leader decides it (see `lease.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaseEntry {
    pub ttl: i64,
    pub keys: BTreeSet<Bytes>,
}

/// The whole store as written to a snapshot. Derived indexes are rebuilt on load.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoreImage {
    revision: i64,
    compact_revision: i64,
    keys: Vec<(Bytes, Vec<KeyRevision>)>,
    leases: Vec<(i64, i64)>,
}

/// The key-value store with history, leases and a change index for watchers.
#[derive(Debug)]
pub(crate) struct Store {
    keys: BTreeMap<Bytes, Vec<KeyRevision>>,
    /// Keys changed at each revision, in sub-revision order (derived from `keys`).
    changes: BTreeMap<i64, Vec<Bytes>>,
    revision: i64,
    compact_revision: i64,
    leases: BTreeMap<i64, LeaseEntry>,
    /// Bytes of keys and values held, all revisions included.
    size_bytes: i64,
}

impl Default for Store {
    fn default() -> Self {
        // A fresh etcd starts at revision 1; clients compare against that.
        Self {
            keys: BTreeMap::new(),
            changes: BTreeMap::new(),
            revision: 1,
            compact_revision: 0,
            leases: BTreeMap::new(),
            size_bytes: 0,
        }
    }
}

/// The writes of one transaction in progress: all share one main revision.
struct WriteBatch {
    revision: i64,
    changed: Vec<Bytes>,
}

impl WriteBatch {
    fn next_sub(&self) -> u32 {
        self.changed.len() as u32
    }
}

/// How a key/range_end pair selects keys.
pub(crate) fn key_bounds<'a>(
    key: &'a [u8],
    range_end: &'a [u8],
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    }
}

/// Whether `key` falls in the key/range_end selection.
pub(crate) fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == [0] {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

impl Store {
    /// The newest revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Revisions at or below this one are compacted away.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Bytes of keys and values held, all revisions included.
    pub fn size_bytes(&self) -> i64 {
        self.size_bytes
    }

    /// Ids and TTLs of all leases.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &LeaseEntry)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    /// One lease, if it exists.
    pub fn lease(&self, id: i64) -> Option<&LeaseEntry> {
        self.leases.get(&id)
    }

    fn live(&self, key: &[u8]) -> Option<&KeyRevision> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .filter(|r| !r.is_tombstone())
    }

    fn check_read_revision(&self, revision: i64) -> CoreResult<i64> {
        if revision <= 0 {
            return Ok(self.revision);
        }
        if revision > self.revision {
            return Err(CoreError::FutureRevision {
                current: self.revision,
            });
        }
        if revision <= self.compact_revision {
            return Err(CoreError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        Ok(revision)
    }

    /// Serves a Range at its revision (0: newest). The header is left for the caller.
    pub fn range(&self, req: &pb::RangeRequest) -> CoreResult<pb::RangeResponse> {
        let at = self.check_read_revision(req.revision)?;
        let header = pb::ResponseHeader {
            revision: self.revision,
            ..Default::default()
        };
        Ok(pb::RangeResponse {
            header: Some(header),
            ..self.range_at(req, at)
        })
    }

    fn range_at(&self, req: &pb::RangeRequest, at: i64) -> pb::RangeResponse {
        let filtered = |r: &KeyRevision| {
            (req.min_mod_revision == 0 || r.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || r.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || r.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || r.create_revision <= req.max_create_revision)
        };
        let mut matched: Vec<(&Bytes, &KeyRevision)> = self
            .keys
            .range::<[u8], _>(key_bounds(&req.key, &req.range_end))
            .filter_map(|(key, history)| revision_at(history, at).map(|r| (key, r)))
            .filter(|(_, r)| filtered(r))
            .collect();
        let count = matched.len() as i64;
        if req.count_only {
            return pb::RangeResponse {
                header: None,
                kvs: Vec::new(),
                more: false,
                count,
            };
        }
        sort_range(&mut matched, req);
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let more = matched.len() > limit;
        let kvs = matched
            .into_iter()
            .take(limit)
            .map(|(k, r)| r.to_kv(k, req.keys_only))
            .collect();
        pb::RangeResponse {
            header: None,
            kvs,
            more,
            count,
        }
    }

    /// Applies a Put. On error nothing changed.
    pub fn put(&mut self, req: &pb::PutRequest) -> CoreResult<pb::PutResponse> {
        self.check_put(req)?;
        let mut batch = self.begin();
        let resp = self.put_in(&mut batch, req);
        self.commit(batch);
        Ok(resp)
    }

    /// Applies a DeleteRange. On error nothing changed.
    pub fn delete_range(&mut self, req: &pb::DeleteRangeRequest) -> pb::DeleteRangeResponse {
        let mut batch = self.begin();
        let resp = self.delete_in(&mut batch, req);
        self.commit(batch);
        resp
    }

    /// Applies a Txn: compares, then one branch. On error nothing changed.
    pub fn txn(&mut self, req: &pb::TxnRequest) -> CoreResult<pb::TxnResponse> {
        self.check_txn(req)?;
        let mut batch = self.begin();
        let resp = self.txn_in(&mut batch, req);
        self.commit(batch);
        Ok(resp)
    }

    /// Drops history at or below `revision`, keeping each key's state there.
    pub fn compact(&mut self, revision: i64) -> CoreResult<()> {
        if revision > self.revision {
            return Err(CoreError::FutureRevision {
                current: self.revision,
            });
        }
        if revision <= self.compact_revision {
            return Err(CoreError::Compacted {
                compact_revision: self.compact_revision,
            });
        }
        let mut freed = 0i64;
        self.keys.retain(|key, history| {
            // Keep the newest revision <= `revision` unless it is a tombstone, and all newer.
            let split = history.partition_point(|r| r.mod_revision <= revision);
            let keep_from = match split.checked_sub(1) {
                Some(i) if !history[i].is_tombstone() => i,
                _ => split,
            };
            for r in &history[..keep_from] {
                freed += (key.len() + r.value.len()) as i64;
            }
            history.drain(..keep_from);
            !history.is_empty()
        });
        self.size_bytes -= freed;
        self.changes = self.changes.split_off(&(revision + 1));
        self.compact_revision = revision;
        Ok(())
    }

    /// Grants a lease with a leader-chosen id.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> CoreResult<()> {
        if self.leases.contains_key(&id) {
            return Err(CoreError::LeaseExists { id });
        }
        self.leases.insert(
            id,
            LeaseEntry {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Revokes a lease, deleting its keys in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> CoreResult<()> {
        let lease = self
            .leases
            .get(&id)
            .ok_or(CoreError::LeaseNotFound { id })?;
        let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
        let mut batch = self.begin();
        for key in keys {
            let req = pb::DeleteRangeRequest {
                key,
                range_end: Bytes::new(),
                prev_kv: false,
            };
            self.delete_in(&mut batch, &req);
        }
        self.commit(batch);
        self.leases.remove(&id);
        Ok(())
    }

    fn begin(&self) -> WriteBatch {
        WriteBatch {
            revision: self.revision + 1,
            changed: Vec::new(),
        }
    }

    fn commit(&mut self, batch: WriteBatch) {
        if !batch.changed.is_empty() {
            self.revision = batch.revision;
            self.changes.insert(batch.revision, batch.changed);
        }
    }

    /// State-dependent checks of a put, made before anything changes.
    fn check_put(&self, req: &pb::PutRequest) -> CoreResult<()> {
        if (req.ignore_value || req.ignore_lease) && self.live(&req.key).is_none() {
            return Err(CoreError::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(CoreError::LeaseNotFound { id: req.lease });
        }
        Ok(())
    }

    /// Checks every put the txn could run, whichever branch its compares pick.
    fn check_txn(&self, req: &pb::TxnRequest) -> CoreResult<()> {
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(request_op::Request::RequestPut(put)) => self.check_put(put)?,
                Some(request_op::Request::RequestTxn(txn)) => self.check_txn(txn)?,
                Some(request_op::Request::RequestRange(range)) => {
                    self.check_read_revision(range.revision)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn put_in(&mut self, batch: &mut WriteBatch, req: &pb::PutRequest) -> pb::PutResponse {
        let prev = self.live(&req.key).cloned();
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let entry = KeyRevision {
            mod_revision: batch.revision,
            sub: batch.next_sub(),
            create_revision: prev.as_ref().map_or(batch.revision, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        if let Some(old) = prev
            .as_ref()
            .map(|p| p.lease)
            .filter(|l| *l != 0 && *l != lease)
        {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(&req.key);
            }
        }
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.insert(req.key.clone());
            }
        }
        self.size_bytes += (req.key.len() + entry.value.len()) as i64;
        self.keys.entry(req.key.clone()).or_default().push(entry);
        batch.changed.push(req.key.clone());
        pb::PutResponse {
            header: None,
            prev_kv: prev
                .filter(|_| req.prev_kv)
                .map(|p| p.to_kv(&req.key, false)),
        }
    }

    fn delete_in(
        &mut self,
        batch: &mut WriteBatch,
        req: &pb::DeleteRangeRequest,
    ) -> pb::DeleteRangeResponse {
        let doomed: Vec<(Bytes, KeyRevision)> = self
            .keys
            .range::<[u8], _>(key_bounds(&req.key, &req.range_end))
            .filter_map(|(k, h)| {
                h.last()
                    .filter(|r| !r.is_tombstone())
                    .map(|r| (k.clone(), r.clone()))
            })
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, prev) in &doomed {
            if prev.lease != 0 {
                if let Some(l) = self.leases.get_mut(&prev.lease) {
                    l.keys.remove(key);
                }
            }
            let tombstone = KeyRevision {
                mod_revision: batch.revision,
                sub: batch.next_sub(),
                create_revision: 0,
                version: 0,
                value: Bytes::new(),
                lease: 0,
            };
            self.size_bytes += key.len() as i64;
            self.keys.entry(key.clone()).or_default().push(tombstone);
            batch.changed.push(key.clone());
            if req.prev_kv {
                prev_kvs.push(prev.to_kv(key, false));
            }
        }
        pb::DeleteRangeResponse {
            header: None,
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    fn txn_in(&mut self, batch: &mut WriteBatch, req: &pb::TxnRequest) -> pb::TxnResponse {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    // Reads inside a txn see the txn's earlier writes.
                    let at = if r.revision > 0 {
                        r.revision
                    } else {
                        batch.revision
                    };
                    response_op::Response::ResponseRange(self.range_at(r, at))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put_in(batch, p))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_in(batch, d))
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.txn_in(batch, t))
                }
                None => continue,
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        pb::TxnResponse {
            header: None,
            succeeded,
            responses,
        }
    }

    /// Evaluates one compare against the newest state; a range compare holds if it holds for
    /// every key in the range, and an absent key compares as all zeros (never equal by value).
    fn compare(&self, c: &pb::Compare) -> bool {
        let target =
            compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
        let live: Vec<&KeyRevision> = if c.range_end.is_empty() {
            self.live(&c.key).into_iter().collect()
        } else {
            self.keys
                .range::<[u8], _>(key_bounds(&c.key, &c.range_end))
                .filter_map(|(_, h)| h.last().filter(|r| !r.is_tombstone()))
                .collect()
        };
        if live.is_empty() {
            if target == compare::CompareTarget::Value {
                return false;
            }
            return compare_one(c, target, &KeyRevision::absent());
        }
        live.iter().all(|r| compare_one(c, target, r))
    }

    /// Events after `from_revision - 1` for keys in the range, whole revisions at a time,
    /// stopping once `max_events` is reached. Returns the events and the last revision read.
    pub fn events_since(
        &self,
        from_revision: i64,
        watch: &EventFilter,
        max_events: usize,
    ) -> (Vec<mvccpb::Event>, i64) {
        let mut events = Vec::new();
        for (&rev, keys) in self.changes.range(from_revision..) {
            for key in keys
                .iter()
                .filter(|k| in_range(k, &watch.key, &watch.range_end))
            {
                let Some(history) = self.keys.get(key) else {
                    continue;
                };
                let at = history.partition_point(|r| r.mod_revision < rev);
                let Some(entry) = history.get(at).filter(|r| r.mod_revision == rev) else {
                    continue;
                };
                let kind = if entry.is_tombstone() {
                    mvccpb::event::EventType::Delete
                } else {
                    mvccpb::event::EventType::Put
                };
                if (kind == mvccpb::event::EventType::Put && watch.no_put)
                    || (kind == mvccpb::event::EventType::Delete && watch.no_delete)
                {
                    continue;
                }
                let kv = if entry.is_tombstone() {
                    mvccpb::KeyValue {
                        key: key.clone(),
                        mod_revision: rev,
                        ..Default::default()
                    }
                } else {
                    entry.to_kv(key, false)
                };
                let prev_kv = if watch.prev_kv {
                    at.checked_sub(1)
                        .and_then(|i| history.get(i))
                        .filter(|r| !r.is_tombstone())
                        .map(|r| r.to_kv(key, false))
                } else {
                    None
                };
                events.push(mvccpb::Event {
                    r#type: kind as i32,
                    kv: Some(kv),
                    prev_kv,
                });
            }
            if events.len() >= max_events {
                return (events, rev);
            }
        }
        (events, self.revision)
    }

    /// A copy of the whole store for a snapshot.
    pub fn image(&self) -> StoreImage {
        StoreImage {
            revision: self.revision,
            compact_revision: self.compact_revision,
            keys: self
                .keys
                .iter()
                .map(|(k, h)| (k.clone(), h.clone()))
                .collect(),
            leases: self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect(),
        }
    }

    /// Rebuilds a store, with its derived indexes, from a snapshot image.
    pub fn from_image(image: StoreImage) -> Self {
        let mut store = Store {
            keys: BTreeMap::new(),
            changes: BTreeMap::new(),
            revision: image.revision,
            compact_revision: image.compact_revision,
            leases: image
                .leases
                .into_iter()
                .map(|(id, ttl)| {
                    (
                        id,
                        LeaseEntry {
                            ttl,
                            keys: BTreeSet::new(),
                        },
                    )
                })
                .collect(),
            size_bytes: 0,
        };
        let mut changes: BTreeMap<i64, Vec<(u32, Bytes)>> = BTreeMap::new();
        for (key, history) in image.keys {
            for r in &history {
                store.size_bytes += (key.len() + r.value.len()) as i64;
                if r.mod_revision > store.compact_revision {
                    changes
                        .entry(r.mod_revision)
                        .or_default()
                        .push((r.sub, key.clone()));
                }
            }
            if let Some(last) = history.last().filter(|r| !r.is_tombstone() && r.lease != 0) {
                if let Some(l) = store.leases.get_mut(&last.lease) {
                    l.keys.insert(key.clone());
                }
            }
            store.keys.insert(key, history);
        }
        store.changes = changes
            .into_iter()
            .map(|(rev, mut subs)| {
                subs.sort();
                (rev, subs.into_iter().map(|(_, k)| k).collect())
            })
            .collect();
        store
    }
}

impl KeyRevision {
    fn absent() -> Self {
        KeyRevision {
            mod_revision: 0,
            sub: 0,
            create_revision: 0,
            version: 0,
            value: Bytes::new(),
            lease: 0,
        }
    }
}

/// What a watcher selects: a key or range, with event-type filters.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventFilter {
    pub key: Bytes,
    pub range_end: Bytes,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

fn revision_at(history: &[KeyRevision], at: i64) -> Option<&KeyRevision> {
    let i = history.partition_point(|r| r.mod_revision <= at);
    i.checked_sub(1)
        .map(|i| &history[i])
        .filter(|r| !r.is_tombstone())
}

fn compare_one(c: &pb::Compare, target: compare::CompareTarget, r: &KeyRevision) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ordering = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => r.value.as_ref().cmp(v.as_ref()),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => r.version.cmp(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => r.create_revision.cmp(v),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => r.mod_revision.cmp(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => r.lease.cmp(v),
        // Validation refuses a compare whose value does not match its target.
        _ => return false,
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

fn sort_range(matched: &mut [(&Bytes, &KeyRevision)], req: &pb::RangeRequest) {
    use range_request::{SortOrder, SortTarget};
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let order = match (order, target) {
        // Keys already come in ascending order.
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    matched.sort_by(|(ka, a), (kb, b)| {
        let o = match target {
            SortTarget::Key => ka.cmp(kb),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            o.reverse()
        } else {
            o
        }
    });
}
