//! Thin helpers over the core's KV calls: read one key, read a prefix, build txn ops.

use cella_core::Core;
use cella_proto::etcdserverpb::{self as pb, compare, request_op};

use crate::error::ConfigResult;
use crate::model::prefix_end;

/// A key's value and mod revision, or None.
pub(crate) async fn get(core: &Core, key: &str) -> ConfigResult<Option<(Vec<u8>, i64)>> {
    let resp = core
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .into_iter()
        .next()
        .map(|kv| (kv.value.to_vec(), kv.mod_revision)))
}

/// Values of every key under `prefix`, in key order, at most `limit` (0 = all);
/// `descend` returns the highest keys first.
pub(crate) async fn list(
    core: &Core,
    prefix: &str,
    limit: i64,
    descend: bool,
) -> ConfigResult<(Vec<(Vec<u8>, Vec<u8>)>, i64)> {
    let resp = core
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix).into(),
            limit,
            sort_order: if descend {
                pb::range_request::SortOrder::Descend as i32
            } else {
                pb::range_request::SortOrder::None as i32
            },
            sort_target: pb::range_request::SortTarget::Key as i32,
            ..Default::default()
        })
        .await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    Ok((
        resp.kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect(),
        revision,
    ))
}

/// Whether any key exists under `prefix`.
pub(crate) async fn any_under(core: &Core, prefix: &str) -> ConfigResult<bool> {
    let resp = core
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix).into(),
            count_only: true,
            ..Default::default()
        })
        .await?;
    Ok(resp.count > 0)
}

pub(crate) fn put(key: &str, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

pub(crate) fn delete(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            },
        )),
    }
}

pub(crate) fn delete_prefix(prefix: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: prefix_end(prefix).into(),
                ..Default::default()
            },
        )),
    }
}

pub(crate) fn read(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec().into(),
            count_only: true,
            ..Default::default()
        })),
    }
}

/// Holds if `key`'s mod revision is `rev` (0 = the key is absent).
pub(crate) fn mod_is(key: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// Holds if `key` exists.
pub(crate) fn exists(key: &str) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Version as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    }
}
