//! What the id generators need from the core, as one small trait, and the keys they use.
//!
//! The node implements [`CoreStore`] over its in-process `Core` (feature `server`); the SDK
//! implements it over the network with etcd's KV and Lease API. Both then run the same
//! worker-id, high-water-mark and segment protocols, so a node and an SDK process never
//! hold the same worker id or the same segment.
//!
//! Keys (all under `/cella/idgen/`):
//! - `workers/<layout>/<worker>`: who holds a worker id; bound to the holder's lease, so it
//!   disappears when the holder dies. Created only if absent.
//! - `clock/<layout>/<worker>`: the worker id's high-water mark, ms since 1970 (decimal
//!   text): no id of that worker carries this timestamp or a later one. No lease: it
//!   outlives holders, so the next holder of the worker id starts after it.
//! - `segments/<tag>`: the next unallocated value of a segment tag (decimal text).

use std::future::Future;

use bytes::Bytes;
use cella_proto::etcdserverpb as pb;

use crate::error::{IdgenError, IdgenResult};

/// Common prefix of every key this crate writes.
pub const KEY_PREFIX: &str = "/cella/idgen/";

/// The core operations the generators use; see the module docs.
pub trait CoreStore: Clone + Send + Sync + 'static {
    /// Runs a transaction.
    fn txn(&self, req: pb::TxnRequest)
        -> impl Future<Output = IdgenResult<pb::TxnResponse>> + Send;
    /// Reads a key or range (linearizable).
    fn range(
        &self,
        req: pb::RangeRequest,
    ) -> impl Future<Output = IdgenResult<pb::RangeResponse>> + Send;
    /// Grants a lease of `ttl_secs`; returns its id and granted TTL.
    fn grant_lease(&self, ttl_secs: i64) -> impl Future<Output = IdgenResult<(i64, i64)>> + Send;
    /// Refreshes a lease; returns its remaining TTL, 0 when the lease is gone.
    fn keep_alive(&self, lease: i64) -> impl Future<Output = IdgenResult<i64>> + Send;
    /// Ends a lease, deleting its keys.
    fn revoke_lease(&self, lease: i64) -> impl Future<Output = IdgenResult<()>> + Send;
}

/// The key recording who holds `worker` of `layout`.
pub(crate) fn worker_key(layout: &str, worker: u64) -> String {
    format!("{KEY_PREFIX}workers/{layout}/{worker}")
}

/// The prefix of every worker key of `layout`.
pub(crate) fn workers_prefix(layout: &str) -> String {
    format!("{KEY_PREFIX}workers/{layout}/")
}

/// The key of `worker`'s high-water mark in `layout`.
pub(crate) fn clock_key(layout: &str, worker: u64) -> String {
    format!("{KEY_PREFIX}clock/{layout}/{worker}")
}

/// The key of a segment tag's next unallocated value.
pub(crate) fn segment_key(tag: &str) -> String {
    format!("{KEY_PREFIX}segments/{tag}")
}

/// The end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Bytes {
    Bytes::from(cella_base::prefix_end(prefix.as_bytes()))
}

/// Reads one key: its value and mod revision, if it exists.
pub(crate) async fn get<S: CoreStore>(store: &S, key: &str) -> IdgenResult<Option<(Bytes, i64)>> {
    let resp = store
        .range(pb::RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .into_iter()
        .next()
        .map(|kv| (kv.value, kv.mod_revision)))
}

/// Parses a stored decimal number.
pub(crate) fn parse_u64(key: &str, value: &[u8]) -> IdgenResult<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| IdgenError::CorruptState {
            key: key.into(),
            reason: format!(
                "value {:?} is not a decimal number",
                String::from_utf8_lossy(value)
            ),
        })
}

/// A compare on `key`'s create revision (0: the key does not exist).
pub(crate) fn created_at(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// A compare on `key`'s mod revision.
pub(crate) fn modified_at(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
        ..Default::default()
    }
}

/// A compare that `key` is attached to `lease`.
pub(crate) fn held_by(key: &str, lease: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Lease as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        target_union: Some(pb::compare::TargetUnion::Lease(lease)),
        ..Default::default()
    }
}

/// A put of `value` at `key`, attached to `lease` (0: none).
pub(crate) fn put(key: &str, value: impl Into<Bytes>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: value.into(),
            lease,
            ..Default::default()
        })),
    }
}

/// Runs `compare → success` and reports whether the compares held.
pub(crate) async fn swap<S: CoreStore>(
    store: &S,
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
) -> IdgenResult<bool> {
    let resp = store
        .txn(pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        })
        .await?;
    Ok(resp.succeeded)
}
