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

    /// History before this revision is compacted away; reads at it still work (as in etcd).
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
        // Compaction keeps every key's state at the compact revision, so etcd serves it.
        if revision < self.compact_revision {
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
        let mut path = Vec::new();
        self.txn_path(req, &mut path);
        self.check_txn(req, &mut path.iter().copied())?;
        let mut batch = self.begin();
        let resp = self.txn_in(&mut batch, req, &mut path.into_iter());
        self.commit(batch);
        Ok(resp)
    }

    /// Serves a txn that holds only reads ([`is_read_only`]) without writing anything: the
    /// compares, then the taken branch's ranges at the newest revision, as [`Store::txn`]
    /// would answer it.
    pub fn read_txn(&self, req: &pb::TxnRequest) -> CoreResult<pb::TxnResponse> {
        let mut path = Vec::new();
        self.txn_path(req, &mut path);
        self.check_txn(req, &mut path.iter().copied())?;
        Ok(self.read_txn_in(req, &mut path.into_iter()))
    }

    fn read_txn_in(
        &self,
        req: &pb::TxnRequest,
        path: &mut dyn Iterator<Item = bool>,
    ) -> pb::TxnResponse {
        let succeeded = path
            .next()
            .expect("txn_path holds a branch for every txn on the path");
        let mut responses = Vec::new();
        for op in branch(req, succeeded) {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let at = if r.revision > 0 {
                        r.revision
                    } else {
                        self.revision
                    };
                    response_op::Response::ResponseRange(self.range_at(r, at))
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.read_txn_in(t, path))
                }
                // A read-only txn holds neither (see `is_read_only`).
                Some(request_op::Request::RequestPut(_))
                | Some(request_op::Request::RequestDeleteRange(_))
                | None => continue,
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

    /// Which branch each txn takes, this one first and then its nested txns in op order,
    /// decided against the state before the txn writes anything (etcd's `compareToPath`).
    fn txn_path(&self, req: &pb::TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        for op in branch(req, succeeded) {
            if let Some(request_op::Request::RequestTxn(txn)) = &op.request {
                self.txn_path(txn, path);
            }
        }
    }

    /// Checks the ops the txn will run along `path`; like etcd, ops of a branch that is
    /// not taken are not checked.
    fn check_txn(
        &self,
        req: &pb::TxnRequest,
        path: &mut dyn Iterator<Item = bool>,
    ) -> CoreResult<()> {
        let succeeded = path
            .next()
            .expect("txn_path holds a branch for every txn on the path");
        for op in branch(req, succeeded) {
            match &op.request {
                Some(request_op::Request::RequestPut(put)) => self.check_put(put)?,
                Some(request_op::Request::RequestTxn(txn)) => self.check_txn(txn, path)?,
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

    fn txn_in(
        &mut self,
        batch: &mut WriteBatch,
        req: &pb::TxnRequest,
        path: &mut dyn Iterator<Item = bool>,
    ) -> pb::TxnResponse {
        let succeeded = path
            .next()
            .expect("txn_path holds a branch for every txn on the path");
        let ops = branch(req, succeeded);
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
                    response_op::Response::ResponseTxn(self.txn_in(batch, t, path))
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

    /// The keys changed at `from_revision` or later, by revision (a key once per change).
    pub fn changed_since(&self, from_revision: i64) -> impl Iterator<Item = &Bytes> + Clone {
        self.changes
            .range(from_revision..)
            .flat_map(|(_, keys)| keys)
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

/// Whether a txn only reads: every op of both branches, nested txns included, is a range.
/// Such a txn is served like a range, without a log entry (as etcd does).
pub fn is_read_only(req: &pb::TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
        })
}

/// The ops a txn runs when its compares gave `succeeded`.
fn branch(req: &pb::TxnRequest, succeeded: bool) -> &[pb::RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use compare::{CompareResult, CompareTarget, TargetUnion};
    use mvccpb::event::EventType;
    use range_request::{SortOrder, SortTarget};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put_req(key: &str, value: &str) -> pb::PutRequest {
        pb::PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        }
    }

    fn put(store: &mut Store, key: &str, value: &str) -> pb::PutResponse {
        store.put(&put_req(key, value)).expect("put is accepted")
    }

    fn put_with_lease(store: &mut Store, key: &str, value: &str, lease: i64) {
        store
            .put(&pb::PutRequest {
                lease,
                ..put_req(key, value)
            })
            .expect("put with a granted lease is accepted");
    }

    fn del_req(key: &str, range_end: &str) -> pb::DeleteRangeRequest {
        pb::DeleteRangeRequest {
            key: b(key),
            range_end: b(range_end),
            prev_kv: true,
        }
    }

    fn range_req(key: &str, range_end: &str) -> pb::RangeRequest {
        pb::RangeRequest {
            key: b(key),
            range_end: b(range_end),
            ..Default::default()
        }
    }

    fn get(store: &Store, key: &str) -> Option<mvccpb::KeyValue> {
        let resp = store.range(&range_req(key, "")).expect("read at newest");
        assert!(resp.kvs.len() <= 1);
        resp.kvs.into_iter().next()
    }

    fn keys(kvs: &[mvccpb::KeyValue]) -> Vec<String> {
        kvs.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn op_put(key: &str, value: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(put_req(key, value))),
        }
    }

    fn op_range(key: &str, range_end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestRange(range_req(key, range_end))),
        }
    }

    fn op_del(key: &str, range_end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(del_req(
                key, range_end,
            ))),
        }
    }

    fn op_txn(txn: pb::TxnRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(txn)),
        }
    }

    fn cmp(key: &str, result: CompareResult, target: TargetUnion) -> pb::Compare {
        let t = match &target {
            TargetUnion::Version(_) => CompareTarget::Version,
            TargetUnion::CreateRevision(_) => CompareTarget::Create,
            TargetUnion::ModRevision(_) => CompareTarget::Mod,
            TargetUnion::Value(_) => CompareTarget::Value,
            TargetUnion::Lease(_) => CompareTarget::Lease,
        };
        pb::Compare {
            result: result as i32,
            target: t as i32,
            key: b(key),
            range_end: Bytes::new(),
            target_union: Some(target),
        }
    }

    fn txn(
        compare: Vec<pb::Compare>,
        success: Vec<pb::RequestOp>,
        failure: Vec<pb::RequestOp>,
    ) -> pb::TxnRequest {
        pb::TxnRequest {
            compare,
            success,
            failure,
        }
    }

    /// Whether the compares of a one-compare txn hold, without writing.
    fn holds(store: &mut Store, c: pb::Compare) -> bool {
        let before = store.revision();
        let resp = store.txn(&txn(vec![c], vec![], vec![])).expect("txn");
        assert_eq!(store.revision(), before, "a read-only txn must not bump");
        resp.succeeded
    }

    fn all_events(store: &Store, from: i64, filter: &EventFilter) -> Vec<mvccpb::Event> {
        store.events_since(from, filter, usize::MAX).0
    }

    fn everything() -> EventFilter {
        EventFilter {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        }
    }

    /// A store with some history: puts, overwrites, deletes, a lease, a txn.
    fn store_with_history() -> Store {
        let mut s = Store::default();
        s.lease_grant(7, 30).expect("grant");
        put(&mut s, "a", "1"); // 2
        put(&mut s, "b", "1"); // 3
        put(&mut s, "a", "2"); // 4
        s.delete_range(&del_req("b", "")); // 5
        put_with_lease(&mut s, "c", "leased", 7); // 6
        s.txn(&txn(
            vec![],
            vec![op_put("d", "x"), op_put("e", "y"), op_del("a", "")],
            vec![],
        ))
        .expect("txn"); // 7
        put(&mut s, "b", "again"); // 8
        s
    }

    // ---- revisions ------------------------------------------------------------------

    #[test]
    fn fresh_store_is_at_revision_one_and_each_write_bumps_once() {
        let mut s = Store::default();
        assert_eq!(s.revision(), 1);
        assert_eq!(s.compact_revision(), 0);
        assert_eq!(put(&mut s, "a", "1").header.map(|h| h.revision), None);
        assert_eq!(s.revision(), 2);
        s.txn(&txn(
            vec![],
            vec![op_put("a", "2"), op_put("b", "1"), op_del("c", "")],
            vec![],
        ))
        .expect("txn");
        assert_eq!(s.revision(), 3, "one txn, one revision");
        let a = get(&s, "a").expect("a");
        let b_ = get(&s, "b").expect("b");
        assert_eq!((a.mod_revision, b_.mod_revision), (3, 3));
        assert_eq!(s.delete_range(&del_req("a", "c")).deleted, 2);
        assert_eq!(s.revision(), 4, "one delete of two keys, one revision");
    }

    #[test]
    fn deleting_nothing_and_read_only_txns_do_not_bump() {
        let mut s = Store::default();
        put(&mut s, "a", "1");
        let resp = s.delete_range(&del_req("zz", ""));
        assert_eq!((resp.deleted, s.revision()), (0, 2));
        s.delete_range(&del_req("b", "c"));
        assert_eq!(s.revision(), 2);
        let resp = s
            .txn(&txn(
                vec![],
                vec![op_range("a", ""), op_del("x", "")],
                vec![],
            ))
            .expect("txn");
        assert!(resp.succeeded);
        assert_eq!(s.revision(), 2);
        // A failed compare with an empty failure branch writes nothing either.
        let resp = s
            .txn(&txn(
                vec![cmp("a", CompareResult::Equal, TargetUnion::Value(b("no")))],
                vec![op_put("a", "x")],
                vec![],
            ))
            .expect("txn");
        assert!(!resp.succeeded);
        assert_eq!(s.revision(), 2);
        // Revoking a lease without keys deletes nothing.
        s.lease_grant(1, 10).expect("grant");
        s.lease_revoke(1).expect("revoke");
        assert_eq!(s.revision(), 2);
    }

    #[test]
    fn create_mod_and_version_follow_etcd() {
        let mut s = Store::default();
        put(&mut s, "k", "v1"); // 2
        put(&mut s, "other", "x"); // 3
        let resp = s
            .put(&pb::PutRequest {
                prev_kv: true,
                ..put_req("k", "v2")
            })
            .expect("put"); // 4
        let prev = resp.prev_kv.expect("prev_kv asked for");
        assert_eq!(
            (prev.value.as_ref(), prev.version, prev.mod_revision),
            (&b"v1"[..], 1, 2)
        );
        let kv = get(&s, "k").expect("k");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
        // Without prev_kv asked for, none is returned.
        assert!(put(&mut s, "k", "v3").prev_kv.is_none()); // 5
        let resp = s.delete_range(&del_req("k", "")); // 6
        assert_eq!(resp.prev_kvs[0].version, 3);
        assert!(get(&s, "k").is_none());
        put(&mut s, "k", "new life"); // 7
        let kv = get(&s, "k").expect("k");
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (7, 7, 1),
            "version and create_revision restart after a delete"
        );
    }

    // ---- range ----------------------------------------------------------------------

    fn abc_store() -> Store {
        let mut s = Store::default();
        for (k, v) in [
            ("a", "3"),
            ("ab", "1"),
            ("abc", "2"),
            ("b", "5"),
            ("c", "4"),
        ] {
            put(&mut s, k, v);
        }
        put(&mut s, "b", "0"); // b: version 2, mod 7
        s
    }

    #[test]
    fn range_selects_a_key_a_prefix_a_range_or_everything_from_a_key() {
        let s = abc_store();
        let r = |k: &str, e: &str| keys(&s.range(&range_req(k, e)).expect("range").kvs);
        assert_eq!(r("ab", ""), ["ab"]);
        assert_eq!(r("a", "b"), ["a", "ab", "abc"], "prefix a");
        assert_eq!(r("ab", "ac"), ["ab", "abc"], "prefix ab");
        assert_eq!(r("ab", "b\0"), ["ab", "abc", "b"]);
        assert_eq!(r("b", "\0"), ["b", "c"], "\\0 means every key from `key`");
        assert_eq!(r("\0", "\0"), ["a", "ab", "abc", "b", "c"]);
        assert!(r("zz", "").is_empty());
        let resp = s.range(&range_req("a", "\0")).expect("range");
        assert_eq!((resp.count, resp.more), (5, false));
        assert_eq!(resp.header.map(|h| h.revision), Some(s.revision()));
    }

    #[test]
    fn limit_sets_more_and_count_counts_everything() {
        let s = abc_store();
        let resp = s
            .range(&pb::RangeRequest {
                limit: 2,
                ..range_req("a", "\0")
            })
            .expect("range");
        assert_eq!(keys(&resp.kvs), ["a", "ab"]);
        assert_eq!((resp.count, resp.more), (5, true));
        let resp = s
            .range(&pb::RangeRequest {
                limit: 5,
                ..range_req("a", "\0")
            })
            .expect("range");
        assert_eq!((resp.kvs.len(), resp.more), (5, false));
    }

    #[test]
    fn keys_only_and_count_only() {
        let s = abc_store();
        let resp = s
            .range(&pb::RangeRequest {
                keys_only: true,
                ..range_req("a", "b")
            })
            .expect("range");
        assert_eq!(keys(&resp.kvs), ["a", "ab", "abc"]);
        assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));
        assert!(resp
            .kvs
            .iter()
            .all(|kv| kv.version == 1 && kv.mod_revision > 0));
        let resp = s
            .range(&pb::RangeRequest {
                count_only: true,
                limit: 1,
                ..range_req("a", "\0")
            })
            .expect("range");
        assert!(resp.kvs.is_empty());
        assert_eq!((resp.count, resp.more), (5, false));
    }

    #[test]
    fn range_sorts_by_every_target_both_ways() {
        let s = abc_store();
        let sorted = |order: SortOrder, target: SortTarget| {
            keys(
                &s.range(&pb::RangeRequest {
                    sort_order: order as i32,
                    sort_target: target as i32,
                    ..range_req("a", "\0")
                })
                .expect("range")
                .kvs,
            )
        };
        assert_eq!(
            sorted(SortOrder::None, SortTarget::Key),
            ["a", "ab", "abc", "b", "c"]
        );
        assert_eq!(
            sorted(SortOrder::Ascend, SortTarget::Key),
            ["a", "ab", "abc", "b", "c"]
        );
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Key),
            ["c", "b", "abc", "ab", "a"]
        );
        // Values: a=3 ab=1 abc=2 b=0 c=4.
        assert_eq!(
            sorted(SortOrder::Ascend, SortTarget::Value),
            ["b", "ab", "abc", "a", "c"]
        );
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Value),
            ["c", "a", "abc", "ab", "b"]
        );
        // A target other than the key with no order sorts ascending, as etcd does.
        assert_eq!(
            sorted(SortOrder::None, SortTarget::Value),
            ["b", "ab", "abc", "a", "c"]
        );
        // Create revisions follow put order: a ab abc b c; b was rewritten last.
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Create),
            ["c", "b", "abc", "ab", "a"]
        );
        assert_eq!(
            sorted(SortOrder::Descend, SortTarget::Mod),
            ["b", "c", "abc", "ab", "a"]
        );
        assert_eq!(sorted(SortOrder::Descend, SortTarget::Version)[0], "b");
        assert_eq!(sorted(SortOrder::Ascend, SortTarget::Version)[4], "b");
        // Sorting happens before the limit.
        let resp = s
            .range(&pb::RangeRequest {
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Mod as i32,
                limit: 1,
                ..range_req("a", "\0")
            })
            .expect("range");
        assert_eq!((keys(&resp.kvs), resp.more), (vec!["b".to_string()], true));
    }

    #[test]
    fn revision_filters_select_by_create_and_mod_revision() {
        // a@2 ab@3 abc@4 b created@5 mod@7, c@6.
        let s = abc_store();
        let filtered = |f: fn(&mut pb::RangeRequest)| {
            let mut req = range_req("a", "\0");
            f(&mut req);
            keys(&s.range(&req).expect("range").kvs)
        };
        assert_eq!(filtered(|r| r.min_mod_revision = 6), ["b", "c"]);
        assert_eq!(filtered(|r| r.max_mod_revision = 3), ["a", "ab"]);
        assert_eq!(filtered(|r| r.min_create_revision = 5), ["b", "c"]);
        assert_eq!(
            filtered(|r| r.max_create_revision = 5),
            ["a", "ab", "abc", "b"]
        );
        assert_eq!(
            filtered(|r| {
                r.min_mod_revision = 3;
                r.max_mod_revision = 6;
            }),
            ["ab", "abc", "c"]
        );
    }

    #[test]
    fn reads_at_an_old_revision_see_the_state_then() {
        let s = store_with_history();
        let at = |rev: i64| {
            keys(
                &s.range(&pb::RangeRequest {
                    revision: rev,
                    ..range_req("\0", "\0")
                })
                .expect("range")
                .kvs,
            )
        };
        assert!(at(1).is_empty());
        assert_eq!(at(2), ["a"]);
        assert_eq!(at(3), ["a", "b"]);
        assert_eq!(at(5), ["a"]);
        assert_eq!(at(6), ["a", "c"]);
        assert_eq!(at(7), ["c", "d", "e"]);
        assert_eq!(at(8), ["b", "c", "d", "e"]);
        assert_eq!(at(0), at(8), "revision 0 means the newest");
        let old_a = s
            .range(&pb::RangeRequest {
                revision: 3,
                ..range_req("a", "")
            })
            .expect("range");
        assert_eq!(old_a.kvs[0].value, b("1"));
        assert_eq!(
            old_a.header.map(|h| h.revision),
            Some(8),
            "the header carries the newest revision, as etcd's does"
        );
        assert_eq!(
            s.range(&pb::RangeRequest {
                revision: 9,
                ..range_req("a", "")
            }),
            Err(CoreError::FutureRevision { current: 8 })
        );
    }

    // ---- compaction -----------------------------------------------------------------

    #[test]
    fn compaction_keeps_each_keys_state_at_the_compact_revision() {
        let mut s = store_with_history();
        let read = |s: &Store, rev: i64| {
            s.range(&pb::RangeRequest {
                revision: rev,
                ..range_req("\0", "\0")
            })
        };
        let before: Vec<_> = (5..=8).map(|r| read(&s, r).expect("read")).collect();
        let size_before = s.size_bytes();
        s.compact(5).expect("compact");
        assert_eq!(s.compact_revision(), 5);
        assert!(s.size_bytes() < size_before);
        for (i, rev) in (5..=8).enumerate() {
            assert_eq!(
                read(&s, rev).expect("still readable"),
                before[i],
                "rev {rev}"
            );
        }
        assert_eq!(
            read(&s, 4),
            Err(CoreError::Compacted {
                compact_revision: 5
            })
        );
        // Key b's state at 5 was a tombstone: its history before 8 is gone entirely.
        assert_eq!(s.keys[&b("b")].len(), 1);
        assert_eq!(s.keys[&b("a")].len(), 2, "a@4 kept, then its tombstone @7");
        s.compact(7).expect("compact further");
        assert!(!s.keys.contains_key(&b("a")), "a was deleted at 7: dropped");
        assert_eq!(
            s.compact(7),
            Err(CoreError::Compacted {
                compact_revision: 7
            })
        );
        assert_eq!(
            s.compact(6),
            Err(CoreError::Compacted {
                compact_revision: 7
            })
        );
        assert_eq!(s.compact(9), Err(CoreError::FutureRevision { current: 8 }));
        // Compaction is not a write.
        assert_eq!(s.revision(), 8);
        // Events before the compact revision are gone; later ones remain.
        let events = all_events(&s, 8, &everything());
        assert_eq!(events.len(), 1);
        assert_eq!(s.changes.keys().copied().collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn compacting_everything_keeps_the_live_keys() {
        let mut s = store_with_history();
        let now = s.range(&range_req("\0", "\0")).expect("read");
        s.compact(8).expect("compact at newest");
        assert_eq!(s.range(&range_req("\0", "\0")).expect("read"), now);
        let expected: i64 = now
            .kvs
            .iter()
            .map(|kv| (kv.key.len() + kv.value.len()) as i64)
            .sum();
        assert_eq!(s.size_bytes(), expected, "only the live revisions remain");
    }

    // ---- txn ------------------------------------------------------------------------

    #[test]
    fn compares_on_value_version_create_mod_and_lease() {
        use CompareResult::*;
        let mut s = Store::default();
        s.lease_grant(9, 60).expect("grant");
        put(&mut s, "k", "m"); // 2
        put_with_lease(&mut s, "k", "m", 9); // 3: version 2, create 2, mod 3, lease 9
        let cases = [
            (Equal, TargetUnion::Value(b("m")), true),
            (NotEqual, TargetUnion::Value(b("m")), false),
            (Greater, TargetUnion::Value(b("l")), true),
            (Less, TargetUnion::Value(b("ma")), true),
            (Equal, TargetUnion::Version(2), true),
            (Greater, TargetUnion::Version(2), false),
            (Less, TargetUnion::Version(3), true),
            (Equal, TargetUnion::CreateRevision(2), true),
            (NotEqual, TargetUnion::CreateRevision(2), false),
            (Equal, TargetUnion::ModRevision(3), true),
            (Greater, TargetUnion::ModRevision(2), true),
            (Equal, TargetUnion::Lease(9), true),
            (Equal, TargetUnion::Lease(0), false),
        ];
        for (result, target, want) in cases {
            let c = cmp("k", result, target.clone());
            assert_eq!(holds(&mut s, c), want, "{result:?} {target:?}");
        }
        // All compares must hold.
        let resp = s
            .txn(&txn(
                vec![
                    cmp("k", Equal, TargetUnion::Version(2)),
                    cmp("k", Equal, TargetUnion::Value(b("nope"))),
                ],
                vec![],
                vec![],
            ))
            .expect("txn");
        assert!(!resp.succeeded);
    }

    #[test]
    fn an_absent_key_compares_as_zeros_but_never_by_value() {
        use CompareResult::*;
        let mut s = Store::default();
        put(&mut s, "gone", "x");
        s.delete_range(&del_req("gone", ""));
        for key in ["missing", "gone"] {
            assert!(holds(&mut s, cmp(key, Equal, TargetUnion::Version(0))));
            assert!(holds(
                &mut s,
                cmp(key, Equal, TargetUnion::CreateRevision(0))
            ));
            assert!(holds(&mut s, cmp(key, Equal, TargetUnion::ModRevision(0))));
            assert!(holds(&mut s, cmp(key, Equal, TargetUnion::Lease(0))));
            assert!(holds(&mut s, cmp(key, Less, TargetUnion::Version(1))));
            assert!(!holds(&mut s, cmp(key, Equal, TargetUnion::Value(b("")))));
            assert!(!holds(
                &mut s,
                cmp(key, NotEqual, TargetUnion::Value(b("x")))
            ));
        }
    }

    #[test]
    fn a_range_compare_holds_only_if_it_holds_for_every_key() {
        use CompareResult::*;
        let mut s = Store::default();
        put(&mut s, "p/1", "a");
        put(&mut s, "p/2", "a");
        put(&mut s, "q", "b");
        let over = |mut c: pb::Compare, end: &str| {
            c.range_end = b(end);
            c
        };
        let v = |x: &str| TargetUnion::Value(b(x));
        assert!(holds(&mut s, over(cmp("p/", Equal, v("a")), "p0")));
        assert!(
            !holds(&mut s, over(cmp("p/", Equal, v("a")), "\0")),
            "q differs"
        );
        assert!(holds(
            &mut s,
            over(cmp("p/", Equal, TargetUnion::Version(1)), "\0")
        ));
        assert!(holds(
            &mut s,
            over(cmp("p/", Less, TargetUnion::ModRevision(4)), "p0")
        ));
        put(&mut s, "p/2", "c");
        assert!(!holds(&mut s, over(cmp("p/", Equal, v("a")), "p0")));
        // An empty range compares like an absent key.
        assert!(holds(
            &mut s,
            over(cmp("x/", Equal, TargetUnion::Version(0)), "x0")
        ));
        assert!(!holds(&mut s, over(cmp("x/", NotEqual, v("z")), "x0")));
    }

    #[test]
    fn a_read_only_txn_is_answered_without_a_write_as_the_write_path_would() {
        let mut s = Store::default();
        put(&mut s, "counter", "1");
        put(&mut s, "log", "a");
        let nested = txn(
            vec![cmp("log", CompareResult::Equal, TargetUnion::Value(b("a")))],
            vec![op_range("log", "")],
            vec![],
        );
        for expect in ["1", "9"] {
            let req = txn(
                vec![cmp(
                    "counter",
                    CompareResult::Equal,
                    TargetUnion::Value(b(expect)),
                )],
                vec![op_range("counter", ""), op_txn(nested.clone())],
                vec![op_range("a", "z")],
            );
            assert!(is_read_only(&req));
            let revision = s.revision();
            let read = s.read_txn(&req).expect("read-only txn");
            assert_eq!(read, s.txn(&req).expect("txn"), "expect {expect}");
            assert_eq!(s.revision(), revision, "nothing was written");
        }
        let writes = txn(
            vec![],
            vec![op_txn(txn(vec![], vec![op_del("log", "")], vec![]))],
            vec![],
        );
        assert!(!is_read_only(&writes));
    }

    #[test]
    fn txn_runs_one_branch_and_its_reads_see_its_earlier_writes() {
        let mut s = Store::default();
        put(&mut s, "counter", "1"); // 2
        let cas = |expect: &str, next: &str| {
            txn(
                vec![cmp(
                    "counter",
                    CompareResult::Equal,
                    TargetUnion::Value(b(expect)),
                )],
                vec![
                    op_put("counter", next),
                    op_range("counter", ""),
                    op_put("log", next),
                ],
                vec![op_range("counter", "")],
            )
        };
        let resp = s.txn(&cas("1", "2")).expect("txn"); // 3
        assert!(resp.succeeded);
        assert_eq!(resp.responses.len(), 3);
        let Some(response_op::Response::ResponseRange(read)) = &resp.responses[1].response else {
            panic!("second response is the range: {resp:?}");
        };
        assert_eq!(read.kvs[0].value, b("2"));
        assert_eq!(read.kvs[0].mod_revision, 3);
        assert_eq!(s.revision(), 3);
        let resp = s.txn(&cas("1", "3")).expect("txn");
        assert!(!resp.succeeded);
        assert_eq!(s.revision(), 3);
        let Some(response_op::Response::ResponseRange(read)) = &resp.responses[0].response else {
            panic!("failure branch answers with its range: {resp:?}");
        };
        assert_eq!(read.kvs[0].value, b("2"));
        // A delete then a read in one txn: the read sees the key gone.
        let resp = s
            .txn(&txn(
                vec![],
                vec![op_del("log", ""), op_range("log", "")],
                vec![],
            ))
            .expect("txn");
        let Some(response_op::Response::ResponseRange(read)) = &resp.responses[1].response else {
            panic!("range response");
        };
        assert!(read.kvs.is_empty());
        // A read inside a txn may ask for an older revision.
        let mut old = range_req("counter", "");
        old.revision = 2;
        let resp = s
            .txn(&txn(
                vec![],
                vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(old.clone())),
                }],
                vec![],
            ))
            .expect("txn");
        let Some(response_op::Response::ResponseRange(read)) = &resp.responses[0].response else {
            panic!("range response");
        };
        assert_eq!(read.kvs[0].value, b("1"));
        old.revision = 99;
        let future = txn(
            vec![],
            vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(old)),
            }],
            vec![],
        );
        assert_eq!(
            s.txn(&future),
            Err(CoreError::FutureRevision {
                current: s.revision()
            })
        );
    }

    #[test]
    fn nested_txns_share_the_revision_and_decide_branches_before_writing() {
        let mut s = Store::default();
        put(&mut s, "a", "1"); // 2
        let inner = txn(
            vec![cmp("a", CompareResult::Equal, TargetUnion::Value(b("1")))],
            vec![op_put("b", "then")],
            vec![op_put("b", "else")],
        );
        let outer = txn(vec![], vec![op_put("a", "2"), op_txn(inner)], vec![]);
        let resp = s.txn(&outer).expect("txn");
        assert_eq!(s.revision(), 3);
        let Some(response_op::Response::ResponseTxn(nested)) = &resp.responses[1].response else {
            panic!("nested txn response: {resp:?}");
        };
        // As in etcd, the inner compare sees the state before the outer txn's writes.
        assert!(nested.succeeded);
        assert_eq!(get(&s, "b").expect("b").value, b("then"));
        assert_eq!(get(&s, "b").expect("b").mod_revision, 3);
        let events = all_events(&s, 3, &everything());
        assert_eq!(
            keys(
                &events
                    .iter()
                    .filter_map(|e| e.kv.clone())
                    .collect::<Vec<_>>()
            ),
            ["a", "b"]
        );
    }

    #[test]
    fn a_refused_request_changes_nothing() {
        let mut s = store_with_history();
        let image_before = format!("{:?}", s.image());
        let rev = s.revision();
        let unknown_lease = pb::PutRequest {
            lease: 12345,
            ..put_req("x", "y")
        };
        assert_eq!(
            s.put(&unknown_lease),
            Err(CoreError::LeaseNotFound { id: 12345 })
        );
        // A refused txn branch undoes nothing because nothing ran: the check comes first.
        let refused = txn(
            vec![],
            vec![
                op_put("first", "ran?"),
                op_del("c", ""),
                pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(unknown_lease.clone())),
                },
            ],
            vec![],
        );
        assert_eq!(s.txn(&refused), Err(CoreError::LeaseNotFound { id: 12345 }));
        let nested = txn(vec![], vec![op_put("first", "x"), op_txn(refused)], vec![]);
        assert_eq!(s.txn(&nested), Err(CoreError::LeaseNotFound { id: 12345 }));
        let ignore_value = pb::PutRequest {
            ignore_value: true,
            ..put_req("missing", "")
        };
        assert_eq!(s.put(&ignore_value), Err(CoreError::KeyNotFound));
        let ignore_lease = pb::PutRequest {
            ignore_lease: true,
            ..put_req("missing", "v")
        };
        assert_eq!(s.put(&ignore_lease), Err(CoreError::KeyNotFound));
        assert_eq!(
            s.lease_revoke(404),
            Err(CoreError::LeaseNotFound { id: 404 })
        );
        assert_eq!(s.lease_grant(7, 5), Err(CoreError::LeaseExists { id: 7 }));
        assert_eq!(s.revision(), rev);
        assert_eq!(format!("{:?}", s.image()), image_before);
    }

    #[test]
    fn ops_of_the_branch_not_taken_are_not_checked() {
        // etcd checks only the branch its compares pick (`checkRequests` on `txnPath`):
        // "keep the value if the key exists, else create it" must work on a missing key.
        let mut s = Store::default();
        s.lease_grant(5, 60).expect("grant");
        let keep_or_create = txn(
            vec![cmp("k", CompareResult::Greater, TargetUnion::Version(0))],
            vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key: b("k"),
                    ignore_value: true,
                    lease: 5,
                    ..Default::default()
                })),
            }],
            vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    lease: 5,
                    ..put_req("k", "initial")
                })),
            }],
        );
        assert!(!s.txn(&keep_or_create).expect("else branch runs").succeeded);
        assert_eq!(get(&s, "k").expect("created").value, b("initial"));
        assert!(s.txn(&keep_or_create).expect("then branch runs").succeeded);
        let kv = get(&s, "k").expect("k");
        assert_eq!((kv.value, kv.version, kv.lease), (b("initial"), 2, 5));
        // The same for a nested txn whose untaken branch names an unknown lease.
        let nested = txn(
            vec![],
            vec![op_txn(txn(
                vec![cmp("k", CompareResult::Equal, TargetUnion::Version(0))],
                vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(pb::PutRequest {
                        lease: 999,
                        ..put_req("k", "x")
                    })),
                }],
                vec![op_put("other", "ok")],
            ))],
            vec![],
        );
        s.txn(&nested)
            .expect("the unknown lease is in the untaken branch");
        assert_eq!(get(&s, "other").expect("other").value, b("ok"));
    }

    #[test]
    fn ignore_value_and_ignore_lease_keep_what_the_key_has() {
        let mut s = Store::default();
        s.lease_grant(3, 60).expect("grant");
        put_with_lease(&mut s, "k", "v", 3);
        s.put(&pb::PutRequest {
            ignore_value: true,
            ..put_req("k", "")
        })
        .expect("ignore_value");
        let kv = get(&s, "k").expect("k");
        assert_eq!(
            (kv.value, kv.lease, kv.version),
            (b("v"), 0, 2),
            "lease 0 detaches"
        );
        assert!(s.lease(3).expect("lease").keys.is_empty());
        put_with_lease(&mut s, "k", "v2", 3);
        s.put(&pb::PutRequest {
            ignore_lease: true,
            ..put_req("k", "v3")
        })
        .expect("ignore_lease");
        let kv = get(&s, "k").expect("k");
        assert_eq!((kv.value, kv.lease), (b("v3"), 3));
        assert!(s.lease(3).expect("lease").keys.contains(&b("k")));
    }

    // ---- leases ---------------------------------------------------------------------

    #[test]
    fn revoking_a_lease_deletes_its_keys_at_one_revision() {
        let mut s = Store::default();
        s.lease_grant(1, 10).expect("grant");
        s.lease_grant(2, 10).expect("grant");
        put_with_lease(&mut s, "l/a", "1", 1);
        put_with_lease(&mut s, "l/b", "1", 1);
        put_with_lease(&mut s, "l/c", "1", 2);
        put(&mut s, "free", "1");
        let rev = s.revision();
        s.lease_revoke(1).expect("revoke");
        assert_eq!(s.revision(), rev + 1);
        assert!(s.lease(1).is_none());
        assert!(get(&s, "l/a").is_none() && get(&s, "l/b").is_none());
        assert!(get(&s, "l/c").is_some() && get(&s, "free").is_some());
        let events = all_events(&s, rev + 1, &everything());
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.r#type == EventType::Delete as i32
            && e.kv.as_ref().map(|kv| kv.mod_revision) == Some(rev + 1)));
        assert_eq!(s.leases().map(|(id, _)| id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_key_moves_between_leases_and_leaves_them_when_deleted() {
        let mut s = Store::default();
        s.lease_grant(1, 10).expect("grant");
        s.lease_grant(2, 10).expect("grant");
        put_with_lease(&mut s, "k", "v", 1);
        put_with_lease(&mut s, "gone", "v", 1);
        put_with_lease(&mut s, "k", "v", 2);
        assert!(!s.lease(1).expect("1").keys.contains(&b("k")));
        assert!(s.lease(2).expect("2").keys.contains(&b("k")));
        s.delete_range(&del_req("gone", ""));
        assert!(s.lease(1).expect("1").keys.is_empty());
        let rev = s.revision();
        s.lease_revoke(1).expect("revoke");
        assert_eq!(s.revision(), rev, "lease 1 holds no keys any more");
        assert_eq!(get(&s, "k").expect("k still there").lease, 2);
        s.lease_revoke(2).expect("revoke");
        assert!(get(&s, "k").is_none());
    }

    // ---- events ---------------------------------------------------------------------

    #[test]
    fn events_come_in_revision_then_op_order_with_filters_and_prev_kv() {
        let s = store_with_history();
        let events = all_events(&s, 2, &everything());
        let seen: Vec<(i32, String, i64)> = events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().expect("kv");
                (
                    e.r#type,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                )
            })
            .collect();
        let (p, d) = (EventType::Put as i32, EventType::Delete as i32);
        assert_eq!(
            seen,
            [
                (p, "a".into(), 2),
                (p, "b".into(), 3),
                (p, "a".into(), 4),
                (d, "b".into(), 5),
                (p, "c".into(), 6),
                (p, "d".into(), 7),
                (p, "e".into(), 7),
                (d, "a".into(), 7),
                (p, "b".into(), 8),
            ]
        );
        assert!(events.iter().all(|e| e.prev_kv.is_none()));
        let delete = &events[3];
        let kv = delete.kv.as_ref().expect("kv");
        assert_eq!((kv.version, kv.create_revision, kv.value.len()), (0, 0, 0));

        let only_a = EventFilter {
            key: b("a"),
            prev_kv: true,
            ..Default::default()
        };
        let events = all_events(&s, 3, &only_a);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].prev_kv.as_ref().expect("prev").value, b("1"));
        assert_eq!(events[1].prev_kv.as_ref().expect("prev").value, b("2"));
        let b_again = all_events(
            &s,
            8,
            &EventFilter {
                key: b("b"),
                prev_kv: true,
                ..Default::default()
            },
        );
        assert!(b_again[0].prev_kv.is_none(), "no prev_kv across a delete");

        let no_put = EventFilter {
            no_put: true,
            ..everything()
        };
        assert!(all_events(&s, 1, &no_put)
            .iter()
            .all(|e| e.r#type == EventType::Delete as i32));
        assert_eq!(all_events(&s, 1, &no_put).len(), 2);
        let no_delete = EventFilter {
            no_delete: true,
            key: b("a"),
            range_end: b("c"),
            ..Default::default()
        };
        assert_eq!(all_events(&s, 1, &no_delete).len(), 4, "a@2 b@3 a@4 b@8");
        // Nothing new: the answer is empty, at the newest revision.
        assert_eq!(s.events_since(9, &everything(), 10), (vec![], 8));
    }

    #[test]
    fn events_come_in_batches_of_whole_revisions() {
        let s = store_with_history();
        let (events, last) = s.events_since(2, &everything(), 2);
        assert_eq!((events.len(), last), (2, 3));
        // Revision 7 holds three events; a batch never splits it.
        let (events, last) = s.events_since(6, &everything(), 2);
        assert_eq!((events.len(), last), (4, 7));
        let (events, last) = s.events_since(8, &everything(), 1);
        assert_eq!((events.len(), last), (1, 8));
        // A filter that matches nothing in a revision still advances past it.
        let (events, last) = s.events_since(
            2,
            &EventFilter {
                key: b("e"),
                ..Default::default()
            },
            1,
        );
        assert_eq!((events.len(), last), (1, 7));
    }

    // ---- snapshots ------------------------------------------------------------------

    fn assert_same_answers(a: &Store, b_: &Store) {
        assert_eq!(a.revision(), b_.revision());
        assert_eq!(a.compact_revision(), b_.compact_revision());
        assert_eq!(a.size_bytes(), b_.size_bytes());
        assert_eq!(a.leases, b_.leases);
        for rev in (a.compact_revision() - 1).max(0)..=a.revision() + 1 {
            let req = pb::RangeRequest {
                revision: rev,
                ..range_req("\0", "\0")
            };
            assert_eq!(a.range(&req), b_.range(&req), "range at {rev}");
            let filter = EventFilter {
                prev_kv: true,
                ..everything()
            };
            if rev > a.compact_revision() {
                assert_eq!(
                    a.events_since(rev, &filter, usize::MAX),
                    b_.events_since(rev, &filter, usize::MAX),
                    "events from {rev}"
                );
            }
        }
    }

    fn through_snapshot(s: &Store) -> Store {
        let bytes = postcard::to_allocvec(&s.image()).expect("encode image");
        Store::from_image(postcard::from_bytes(&bytes).expect("decode image"))
    }

    #[test]
    fn an_image_restores_identical_answers() {
        let mut s = store_with_history();
        assert_same_answers(&s, &through_snapshot(&s));
        s.compact(6).expect("compact");
        let mut restored = through_snapshot(&s);
        assert_same_answers(&s, &restored);
        // Both go on identically, lease index included.
        for store in [&mut s, &mut restored] {
            store
                .lease_revoke(7)
                .expect("revoke restores the lease's keys");
            put(store, "z", "after");
        }
        assert_same_answers(&s, &restored);
        assert!(get(&restored, "c").is_none());
        assert_same_answers(&Store::default(), &through_snapshot(&Store::default()));
    }

    // ---- model-based ----------------------------------------------------------------

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Debug, Clone, PartialEq)]
        struct ModelKv {
            value: Bytes,
            create: i64,
            modified: i64,
            version: i64,
        }

        type Snapshot = BTreeMap<Bytes, ModelKv>;

        /// The whole state at every revision, plus each revision's changes in op order.
        struct Model {
            snaps: Vec<Snapshot>,
            changes: Vec<Vec<(Bytes, Option<ModelKv>)>>,
            compacted: i64,
        }

        impl Model {
            fn new() -> Self {
                Model {
                    snaps: vec![Snapshot::new()],
                    changes: vec![vec![]],
                    compacted: 0,
                }
            }
            fn revision(&self) -> i64 {
                self.snaps.len() as i64
            }
            fn at(&self, rev: i64) -> &Snapshot {
                &self.snaps[rev as usize - 1]
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            Put(u8, u8),
            Delete(u8, Option<u8>),
            Txn {
                key: u8,
                by_value: bool,
                expect: u8,
                success: Vec<(u8, Option<u8>)>,
                failure: Vec<(u8, Option<u8>)>,
            },
            Compact(i64),
        }

        fn key_of(k: u8) -> Bytes {
            Bytes::from(vec![b'a' + k])
        }

        fn write_op(k: u8, v: Option<u8>) -> pb::RequestOp {
            let key = key_of(k);
            let request = match v {
                Some(v) => request_op::Request::RequestPut(pb::PutRequest {
                    key,
                    value: Bytes::from(vec![v]),
                    ..Default::default()
                }),
                None => request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key,
                    ..Default::default()
                }),
            };
            pb::RequestOp {
                request: Some(request),
            }
        }

        fn op_strategy() -> impl Strategy<Value = Op> {
            let key = 0u8..6;
            let write = (0u8..6, prop::option::weighted(0.7, 0u8..4));
            prop_oneof![
                4 => (key.clone(), 0u8..4).prop_map(|(k, v)| Op::Put(k, v)),
                2 => (key.clone(), prop::option::of(0u8..7)).prop_map(|(k, e)| Op::Delete(k, e)),
                3 => (
                    key,
                    any::<bool>(),
                    0u8..4,
                    prop::collection::vec(write.clone(), 0..4),
                    prop::collection::vec(write, 0..4),
                )
                    .prop_map(|(key, by_value, expect, success, failure)| Op::Txn {
                        key,
                        by_value,
                        expect,
                        success,
                        failure,
                    }),
                1 => (-2i64..30).prop_map(Op::Compact),
            ]
        }

        /// Applies writes to the model's newest state as one revision.
        fn model_write(model: &mut Model, writes: &[(u8, Option<u8>)], end: Option<u8>) {
            let rev = model.revision() + 1;
            let mut next = model.at(model.revision()).clone();
            let mut changed = Vec::new();
            for (k, v) in writes {
                let key = key_of(*k);
                match v {
                    Some(v) => {
                        let prev = next.get(&key);
                        let kv = ModelKv {
                            value: Bytes::from(vec![*v]),
                            create: prev.map_or(rev, |p| p.create),
                            modified: rev,
                            version: prev.map_or(1, |p| p.version + 1),
                        };
                        next.insert(key.clone(), kv.clone());
                        changed.push((key, Some(kv)));
                    }
                    None => {
                        let end = end.map(key_of);
                        let doomed: Vec<Bytes> = next
                            .keys()
                            .filter(|k| match &end {
                                None => **k == key,
                                Some(e) => **k >= key && k < &e,
                            })
                            .cloned()
                            .collect();
                        for k in doomed {
                            next.remove(&k);
                            changed.push((k, None));
                        }
                    }
                }
            }
            if !changed.is_empty() {
                model.snaps.push(next);
                model.changes.push(changed);
            }
        }

        fn apply(store: &mut Store, model: &mut Model, op: &Op) {
            match op {
                Op::Put(k, v) => {
                    let req = pb::PutRequest {
                        key: key_of(*k),
                        value: Bytes::from(vec![*v]),
                        ..Default::default()
                    };
                    store.put(&req).expect("put");
                    model_write(model, &[(*k, Some(*v))], None);
                }
                Op::Delete(k, end) => {
                    let req = pb::DeleteRangeRequest {
                        key: key_of(*k),
                        range_end: end.map(key_of).unwrap_or_default(),
                        prev_kv: false,
                    };
                    if crate::validate::delete_range(&req, &Default::default()).is_err() {
                        return;
                    }
                    store.delete_range(&req);
                    model_write(model, &[(*k, None)], *end);
                }
                Op::Txn {
                    key,
                    by_value,
                    expect,
                    success,
                    failure,
                } => {
                    let target = if *by_value {
                        TargetUnion::Value(Bytes::from(vec![*expect]))
                    } else {
                        TargetUnion::Version(*expect as i64)
                    };
                    let req = pb::TxnRequest {
                        compare: vec![pb::Compare {
                            key: key_of(*key),
                            target: if *by_value {
                                CompareTarget::Value
                            } else {
                                CompareTarget::Version
                            } as i32,
                            result: CompareResult::Equal as i32,
                            range_end: Bytes::new(),
                            target_union: Some(target),
                        }],
                        success: success.iter().map(|(k, v)| write_op(*k, *v)).collect(),
                        failure: failure.iter().map(|(k, v)| write_op(*k, *v)).collect(),
                    };
                    if crate::validate::txn(&req, &Default::default()).is_err() {
                        return;
                    }
                    let current = model.at(model.revision()).get(&key_of(*key));
                    let holds = match (by_value, current) {
                        (true, Some(kv)) => kv.value.as_ref() == [*expect],
                        (true, None) => false,
                        (false, kv) => kv.map_or(0, |kv| kv.version) == *expect as i64,
                    };
                    let resp = store.txn(&req).expect("txn");
                    assert_eq!(resp.succeeded, holds);
                    model_write(model, if holds { success } else { failure }, None);
                }
                Op::Compact(rev) => {
                    let got = store.compact(*rev);
                    let want = if *rev > model.revision() {
                        Err(CoreError::FutureRevision {
                            current: model.revision(),
                        })
                    } else if *rev <= model.compacted {
                        Err(CoreError::Compacted {
                            compact_revision: model.compacted,
                        })
                    } else {
                        model.compacted = *rev;
                        Ok(())
                    };
                    assert_eq!(got, want);
                }
            }
        }

        fn check(store: &Store, model: &Model) {
            assert_eq!(store.revision(), model.revision());
            assert_eq!(store.compact_revision(), model.compacted);
            for rev in 1..=model.revision() {
                let req = pb::RangeRequest {
                    key: Bytes::from_static(b"\0"),
                    range_end: Bytes::from_static(b"\0"),
                    revision: rev,
                    ..Default::default()
                };
                let got = store.range(&req);
                if rev < model.compacted {
                    assert_eq!(
                        got,
                        Err(CoreError::Compacted {
                            compact_revision: model.compacted
                        })
                    );
                    continue;
                }
                let got: Vec<(Bytes, ModelKv)> = got
                    .expect("readable revision")
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            kv.key,
                            ModelKv {
                                value: kv.value,
                                create: kv.create_revision,
                                modified: kv.mod_revision,
                                version: kv.version,
                            },
                        )
                    })
                    .collect();
                let want: Vec<(Bytes, ModelKv)> = model
                    .at(rev)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "range at revision {rev}");
            }
            // Events after the compact revision, in order, match the model's changes.
            let from = model.compacted + 1;
            let got: Vec<(Bytes, Option<ModelKv>, i64)> = store
                .events_since(from, &everything(), usize::MAX)
                .0
                .into_iter()
                .map(|e| {
                    let kv = e.kv.expect("kv");
                    let state = (e.r#type == EventType::Put as i32).then(|| ModelKv {
                        value: kv.value.clone(),
                        create: kv.create_revision,
                        modified: kv.mod_revision,
                        version: kv.version,
                    });
                    (kv.key, state, kv.mod_revision)
                })
                .collect();
            let want: Vec<(Bytes, Option<ModelKv>, i64)> = (from.max(2)..=model.revision())
                .flat_map(|rev| {
                    model.changes[rev as usize - 1]
                        .iter()
                        .map(move |(k, v)| (k.clone(), v.clone(), rev))
                })
                .collect();
            assert_eq!(got, want, "events from {from}");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

            #[test]
            fn store_matches_a_snapshot_per_revision_model(
                ops in prop::collection::vec(op_strategy(), 1..40)
            ) {
                let mut store = Store::default();
                let mut model = Model::new();
                for op in &ops {
                    apply(&mut store, &mut model, op);
                    check(&store, &model);
                }
                let restored = through_snapshot(&store);
                check(&restored, &model);
                assert_same_answers(&store, &restored);
            }
        }
    }
}
