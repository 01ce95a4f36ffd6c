//! Thin helpers over the core's KV calls: read one key, read a prefix, build txn ops.

use cella_core::Core;
use cella_proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use cella_proto::mvccpb;

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
    Ok(first_value(resp.kvs))
}

/// The order [`list`] returns keys in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Lowest key first.
    KeyAscending,
    /// Highest key first.
    KeyDescending,
    /// Most recently created first (commit order, newest first).
    NewestFirst,
}

/// Values of every key under `prefix` in `order`, at most `limit` (0 = all).
pub(crate) async fn list(
    core: &Core,
    prefix: &str,
    limit: i64,
    order: Order,
) -> ConfigResult<(Vec<(Vec<u8>, Vec<u8>)>, i64)> {
    use pb::range_request::{SortOrder, SortTarget};
    let (sort_order, sort_target) = match order {
        Order::KeyAscending => (SortOrder::None, SortTarget::Key),
        Order::KeyDescending => (SortOrder::Descend, SortTarget::Key),
        Order::NewestFirst => (SortOrder::Descend, SortTarget::Create),
    };
    let resp = core
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix).into(),
            limit,
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
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

/// Values and mod revisions of `keys`, read together at one revision (one read-only txn, so
/// one read barrier and no log entry).
pub(crate) async fn get_many<const N: usize>(
    core: &Core,
    keys: [&str; N],
) -> ConfigResult<[Option<(Vec<u8>, i64)>; N]> {
    let reads = keys
        .iter()
        .map(|key| pb::RequestOp {
            request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        })
        .collect();
    let resp = core
        .txn(pb::TxnRequest {
            compare: Vec::new(),
            success: reads,
            failure: Vec::new(),
        })
        .await?;
    let mut found = resp.responses.into_iter().map(|op| match op.response {
        Some(response_op::Response::ResponseRange(range)) => first_value(range.kvs),
        _ => None,
    });
    Ok(std::array::from_fn(|_| found.next().flatten()))
}

/// The value and mod revision of the first of `kvs`.
fn first_value(kvs: Vec<mvccpb::KeyValue>) -> Option<(Vec<u8>, i64)> {
    kvs.into_iter()
        .next()
        .map(|kv| (kv.value.to_vec(), kv.mod_revision))
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
