//! Stateless checks of client requests, made before anything is proposed.
//!
//! Each check names the field and the rule it enforces. Checks that depend on the store
//! (does the lease exist?) live in `mvcc.rs` and run at apply time.

use std::collections::BTreeSet;

use cella_proto::etcdserverpb::{self as pb, compare, range_request, request_op};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, CoreResult};
use crate::mvcc::in_range;

/// Size and count limits of the core's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most operations (or compares) in one txn branch.
    pub max_txn_ops: usize,
    /// Longest lease TTL, in seconds.
    pub max_lease_ttl: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1536 * 1024,
            max_txn_ops: 128,
            max_lease_ttl: 9_000_000_000,
        }
    }
}

fn key(key: &[u8], field: &'static str, limits: &Limits) -> CoreResult<()> {
    if key.is_empty() {
        return Err(CoreError::EmptyKey { field });
    }
    if key.len() > limits.max_key_bytes {
        return Err(CoreError::KeyTooLarge {
            field,
            len: key.len(),
            max: limits.max_key_bytes,
        });
    }
    Ok(())
}

fn range_end(key: &[u8], range_end: &[u8], field: &'static str, limits: &Limits) -> CoreResult<()> {
    if range_end.len() > limits.max_key_bytes {
        return Err(CoreError::KeyTooLarge {
            field,
            len: range_end.len(),
            max: limits.max_key_bytes,
        });
    }
    if !range_end.is_empty() && range_end != [0] && range_end <= key {
        return Err(CoreError::RangeEndBeforeKey { field });
    }
    Ok(())
}

fn known_enum<E: TryFrom<i32>>(value: i32, field: &'static str) -> CoreResult<()> {
    E::try_from(value)
        .map(|_| ())
        .map_err(|_| CoreError::UnknownEnumValue { field, value })
}

/// Checks a Range.
pub fn range(req: &pb::RangeRequest, limits: &Limits) -> CoreResult<()> {
    key(&req.key, "key", limits)?;
    range_end(&req.key, &req.range_end, "range_end", limits)?;
    if req.limit < 0 {
        return Err(CoreError::InvalidField {
            field: "limit",
            rule: "must be >= 0",
        });
    }
    known_enum::<range_request::SortOrder>(req.sort_order, "sort_order")?;
    known_enum::<range_request::SortTarget>(req.sort_target, "sort_target")
}

/// Checks a Put.
pub fn put(req: &pb::PutRequest, limits: &Limits) -> CoreResult<()> {
    key(&req.key, "key", limits)?;
    if req.value.len() > limits.max_value_bytes {
        return Err(CoreError::ValueTooLarge {
            len: req.value.len(),
            max: limits.max_value_bytes,
        });
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(CoreError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(CoreError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange.
pub fn delete_range(req: &pb::DeleteRangeRequest, limits: &Limits) -> CoreResult<()> {
    key(&req.key, "key", limits)?;
    range_end(&req.key, &req.range_end, "range_end", limits)
}

/// Checks a Txn: sizes, compares, every op, and no key written twice in one branch.
pub fn txn(req: &pb::TxnRequest, limits: &Limits) -> CoreResult<()> {
    for count in [req.compare.len(), req.success.len(), req.failure.len()] {
        if count > limits.max_txn_ops {
            return Err(CoreError::TooManyOps {
                count,
                max: limits.max_txn_ops,
            });
        }
    }
    for c in &req.compare {
        compare(c, limits)?;
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => range(r, limits)?,
            Some(request_op::Request::RequestPut(p)) => put(p, limits)?,
            Some(request_op::Request::RequestDeleteRange(d)) => delete_range(d, limits)?,
            Some(request_op::Request::RequestTxn(t)) => txn(t, limits)?,
            None => {
                return Err(CoreError::InvalidField {
                    field: "request_op.request",
                    rule: "must hold one operation",
                })
            }
        }
    }
    no_double_writes(&req.success)?;
    no_double_writes(&req.failure)
}

fn compare(c: &pb::Compare, limits: &Limits) -> CoreResult<()> {
    use compare::{CompareTarget, TargetUnion};
    key(&c.key, "compare.key", limits)?;
    range_end(&c.key, &c.range_end, "compare.range_end", limits)?;
    known_enum::<compare::CompareResult>(c.result, "compare.result")?;
    let target = CompareTarget::try_from(c.target).map_err(|_| CoreError::UnknownEnumValue {
        field: "compare.target",
        value: c.target,
    })?;
    let matches = matches!(
        (target, &c.target_union),
        (CompareTarget::Version, Some(TargetUnion::Version(_)))
            | (CompareTarget::Create, Some(TargetUnion::CreateRevision(_)))
            | (CompareTarget::Mod, Some(TargetUnion::ModRevision(_)))
            | (CompareTarget::Value, Some(TargetUnion::Value(_)))
            | (CompareTarget::Lease, Some(TargetUnion::Lease(_)))
    );
    if !matches {
        let target = match target {
            CompareTarget::Version => "version",
            CompareTarget::Create => "create_revision",
            CompareTarget::Mod => "mod_revision",
            CompareTarget::Value => "value",
            CompareTarget::Lease => "lease",
        };
        return Err(CoreError::CompareMissingValue { target });
    }
    Ok(())
}

/// Refuses a branch (nested txns included) that puts one key twice or puts inside a
/// range it also deletes: the result would depend on op order within one revision.
fn no_double_writes(ops: &[pb::RequestOp]) -> CoreResult<()> {
    let mut puts = BTreeSet::new();
    let mut deletes = Vec::new();
    collect_writes(ops, &mut puts, &mut deletes)?;
    for key in &puts {
        if deletes
            .iter()
            .any(|(start, end): &(&[u8], &[u8])| in_range(key, start, end))
        {
            return Err(CoreError::DuplicateKey {
                key: String::from_utf8_lossy(key).into_owned(),
            });
        }
    }
    Ok(())
}

fn collect_writes<'a>(
    ops: &'a [pb::RequestOp],
    puts: &mut BTreeSet<&'a [u8]>,
    deletes: &mut Vec<(&'a [u8], &'a [u8])>,
) -> CoreResult<()> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if !puts.insert(&p.key) {
                    return Err(CoreError::DuplicateKey {
                        key: String::from_utf8_lossy(&p.key).into_owned(),
                    });
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                deletes.push((&d.key, &d.range_end))
            }
            Some(request_op::Request::RequestTxn(t)) => {
                collect_writes(&t.success, puts, deletes)?;
                collect_writes(&t.failure, puts, deletes)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a LeaseGrant.
pub fn lease_grant(req: &pb::LeaseGrantRequest, limits: &Limits) -> CoreResult<()> {
    if req.ttl > limits.max_lease_ttl {
        return Err(CoreError::LeaseTtlTooLarge {
            ttl: req.ttl,
            max: limits.max_lease_ttl,
        });
    }
    if req.id < 0 {
        return Err(CoreError::InvalidField {
            field: "ID",
            rule: "must be >= 0 (0 lets the server choose)",
        });
    }
    Ok(())
}

/// Checks a Compaction.
pub fn compaction(req: &pb::CompactionRequest) -> CoreResult<()> {
    if req.revision <= 0 {
        return Err(CoreError::InvalidField {
            field: "revision",
            rule: "must be > 0",
        });
    }
    Ok(())
}
