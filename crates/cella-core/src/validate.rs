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

/// Refuses a branch that writes a key twice (two puts, or a put inside a range it also
/// deletes): the result would depend on op order within one revision. The rule is etcd's
/// (`checkIntervals`): a nested txn's two branches exclude each other, so each may write
/// the same key, but what either writes must not clash with the rest of the branch.
fn no_double_writes(ops: &[pb::RequestOp]) -> CoreResult<()> {
    branch_writes(ops).map(|_| ())
}

type KeyRange<'a> = (&'a [u8], &'a [u8]);

/// The keys a branch puts and the ranges it deletes, nested txns included.
fn branch_writes(ops: &[pb::RequestOp]) -> CoreResult<(BTreeSet<&[u8]>, Vec<KeyRange<'_>>)> {
    let duplicate = |key: &[u8]| CoreError::DuplicateKey {
        key: String::from_utf8_lossy(key).into_owned(),
    };
    let deleted = |dels: &[KeyRange<'_>], key: &[u8]| dels.iter().any(|(s, e)| in_range(key, s, e));
    let mut dels: Vec<KeyRange<'_>> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some((&d.key[..], &d.range_end[..]))
            }
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = branch_writes(&t.success)?;
        let (puts_else, dels_else) = branch_writes(&t.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&dels, key) {
                return Err(duplicate(key));
            }
            puts.insert(*key);
        }
        for key in puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deleted(&dels, key) {
                return Err(duplicate(key));
            }
            puts.insert(key);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if deleted(&dels, &p.key) || !puts.insert(&p.key[..]) {
                return Err(duplicate(&p.key));
            }
        }
    }
    Ok((puts, dels))
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use compare::{CompareResult, CompareTarget, TargetUnion};

    fn limits() -> Limits {
        Limits::default()
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![b'k'; n])
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn range_req(key: &str, range_end: &str) -> pb::RangeRequest {
        pb::RangeRequest {
            key: b(key),
            range_end: b(range_end),
            ..Default::default()
        }
    }

    fn put_req(key: &str) -> pb::PutRequest {
        pb::PutRequest {
            key: b(key),
            value: b("v"),
            ..Default::default()
        }
    }

    fn op_put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(put_req(key))),
        }
    }

    fn op_del(key: &str, range_end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key: b(key),
                    range_end: b(range_end),
                    prev_kv: false,
                },
            )),
        }
    }

    fn op_txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn txn_of(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            success,
            ..Default::default()
        }
    }

    fn cmp(target: CompareTarget, union: Option<TargetUnion>) -> pb::Compare {
        pb::Compare {
            result: CompareResult::Equal as i32,
            target: target as i32,
            key: b("k"),
            range_end: Bytes::new(),
            target_union: union,
        }
    }

    fn dup(key: &str) -> CoreResult<()> {
        Err(CoreError::DuplicateKey { key: key.into() })
    }

    #[test]
    fn range_checks_key_range_end_limit_and_sort() {
        let l = limits();
        assert_eq!(range(&range_req("a", ""), &l), Ok(()));
        assert_eq!(range(&range_req("a", "b"), &l), Ok(()));
        assert_eq!(range(&range_req("a", "\0"), &l), Ok(()));
        assert_eq!(range(&range_req("\0", "\0"), &l), Ok(()));
        assert_eq!(
            range(&range_req("", ""), &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
        let long = pb::RangeRequest {
            key: bytes(4097),
            ..Default::default()
        };
        assert_eq!(
            range(&long, &l),
            Err(CoreError::KeyTooLarge {
                field: "key",
                len: 4097,
                max: 4096
            })
        );
        let at_limit = pb::RangeRequest {
            key: bytes(4096),
            ..Default::default()
        };
        assert_eq!(range(&at_limit, &l), Ok(()));
        let long_end = pb::RangeRequest {
            key: b("a"),
            range_end: bytes(4097),
            ..Default::default()
        };
        assert_eq!(
            range(&long_end, &l),
            Err(CoreError::KeyTooLarge {
                field: "range_end",
                len: 4097,
                max: 4096
            })
        );
        for end in ["a", "Z", "0"] {
            assert_eq!(
                range(&range_req("b", end), &l),
                Err(CoreError::RangeEndBeforeKey { field: "range_end" }),
                "range_end {end:?}"
            );
        }
        assert_eq!(
            range(&range_req("b", "b"), &l),
            Err(CoreError::RangeEndBeforeKey { field: "range_end" }),
            "an empty interval is refused too"
        );
        let negative = pb::RangeRequest {
            limit: -1,
            ..range_req("a", "")
        };
        assert_eq!(
            range(&negative, &l),
            Err(CoreError::InvalidField {
                field: "limit",
                rule: "must be >= 0"
            })
        );
        let order = pb::RangeRequest {
            sort_order: 3,
            ..range_req("a", "")
        };
        assert_eq!(
            range(&order, &l),
            Err(CoreError::UnknownEnumValue {
                field: "sort_order",
                value: 3
            })
        );
        let target = pb::RangeRequest {
            sort_target: 5,
            ..range_req("a", "")
        };
        assert_eq!(
            range(&target, &l),
            Err(CoreError::UnknownEnumValue {
                field: "sort_target",
                value: 5
            })
        );
    }

    #[test]
    fn put_checks_key_value_size_and_ignore_flags() {
        let l = limits();
        assert_eq!(put(&put_req("k"), &l), Ok(()));
        assert_eq!(
            put(&put_req(""), &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
        let long_key = pb::PutRequest {
            key: bytes(4097),
            ..Default::default()
        };
        assert!(matches!(
            put(&long_key, &l),
            Err(CoreError::KeyTooLarge { field: "key", .. })
        ));
        let max_value = pb::PutRequest {
            value: bytes(1536 * 1024),
            ..put_req("k")
        };
        assert_eq!(put(&max_value, &l), Ok(()));
        let too_big = pb::PutRequest {
            value: bytes(1536 * 1024 + 1),
            ..put_req("k")
        };
        assert_eq!(
            put(&too_big, &l),
            Err(CoreError::ValueTooLarge {
                len: 1536 * 1024 + 1,
                max: 1536 * 1024
            })
        );
        let ignore_value = pb::PutRequest {
            ignore_value: true,
            ..put_req("k")
        };
        assert_eq!(put(&ignore_value, &l), Err(CoreError::ValueProvided));
        let ignore_value_ok = pb::PutRequest {
            ignore_value: true,
            value: Bytes::new(),
            lease: 5,
            ..put_req("k")
        };
        assert_eq!(put(&ignore_value_ok, &l), Ok(()));
        let ignore_lease = pb::PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put_req("k")
        };
        assert_eq!(put(&ignore_lease, &l), Err(CoreError::LeaseProvided));
    }

    #[test]
    fn delete_range_checks_key_and_range_end() {
        let l = limits();
        let req = |k: &str, e: &str| pb::DeleteRangeRequest {
            key: b(k),
            range_end: b(e),
            prev_kv: false,
        };
        assert_eq!(delete_range(&req("a", "b"), &l), Ok(()));
        assert_eq!(delete_range(&req("a", "\0"), &l), Ok(()));
        assert_eq!(
            delete_range(&req("", ""), &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
        assert_eq!(
            delete_range(&req("b", "a"), &l),
            Err(CoreError::RangeEndBeforeKey { field: "range_end" })
        );
    }

    #[test]
    fn txn_counts_compares_and_each_branch_against_the_limit() {
        let l = Limits {
            max_txn_ops: 3,
            ..limits()
        };
        let ops = |n: usize| (0..n).map(|i| op_put(&format!("k{i}"))).collect::<Vec<_>>();
        let compares = |n: usize| {
            (0..n)
                .map(|_| cmp(CompareTarget::Version, Some(TargetUnion::Version(0))))
                .collect::<Vec<_>>()
        };
        let at_limit = pb::TxnRequest {
            compare: compares(3),
            success: ops(3),
            failure: ops(3),
        };
        assert_eq!(txn(&at_limit, &l), Ok(()));
        let too_many = Err(CoreError::TooManyOps { count: 4, max: 3 });
        for req in [
            pb::TxnRequest {
                compare: compares(4),
                ..Default::default()
            },
            pb::TxnRequest {
                success: ops(4),
                ..Default::default()
            },
            pb::TxnRequest {
                failure: ops(4),
                ..Default::default()
            },
        ] {
            assert_eq!(txn(&req, &l), too_many);
        }
        assert_eq!(
            txn(&txn_of(vec![op_txn(ops(4), vec![])]), &l),
            too_many,
            "a nested txn is held to the limit too"
        );
    }

    #[test]
    fn txn_compares_need_a_key_known_enums_and_a_value_for_their_target() {
        let l = limits();
        let with = |c: pb::Compare| pb::TxnRequest {
            compare: vec![c],
            ..Default::default()
        };
        let good = [
            (CompareTarget::Version, TargetUnion::Version(1)),
            (CompareTarget::Create, TargetUnion::CreateRevision(1)),
            (CompareTarget::Mod, TargetUnion::ModRevision(1)),
            (CompareTarget::Value, TargetUnion::Value(b("v"))),
            (CompareTarget::Lease, TargetUnion::Lease(1)),
        ];
        for (target, union) in good.clone() {
            assert_eq!(txn(&with(cmp(target, Some(union))), &l), Ok(()));
        }
        let names = [
            "version",
            "create_revision",
            "mod_revision",
            "value",
            "lease",
        ];
        for ((target, _), name) in good.iter().zip(names) {
            assert_eq!(
                txn(&with(cmp(*target, None)), &l),
                Err(CoreError::CompareMissingValue { target: name })
            );
        }
        // A value for another target is as good as none.
        let mismatched = cmp(CompareTarget::Version, Some(TargetUnion::Value(b("v"))));
        assert_eq!(
            txn(&with(mismatched), &l),
            Err(CoreError::CompareMissingValue { target: "version" })
        );
        let mut c = cmp(CompareTarget::Version, Some(TargetUnion::Version(0)));
        c.key = Bytes::new();
        assert_eq!(
            txn(&with(c.clone()), &l),
            Err(CoreError::EmptyKey {
                field: "compare.key"
            })
        );
        c.key = b("b");
        c.range_end = b("a");
        assert_eq!(
            txn(&with(c.clone()), &l),
            Err(CoreError::RangeEndBeforeKey {
                field: "compare.range_end"
            })
        );
        c.range_end = Bytes::new();
        c.result = 9;
        assert_eq!(
            txn(&with(c.clone()), &l),
            Err(CoreError::UnknownEnumValue {
                field: "compare.result",
                value: 9
            })
        );
        c.result = 0;
        c.target = 7;
        assert_eq!(
            txn(&with(c), &l),
            Err(CoreError::UnknownEnumValue {
                field: "compare.target",
                value: 7
            })
        );
        let message = CoreError::CompareMissingValue { target: "value" }.to_string();
        assert!(message.contains("compare.target_union") && message.contains("value"));
    }

    #[test]
    fn txn_checks_every_op_in_both_branches_and_nested_txns() {
        let l = limits();
        let empty_op = pb::RequestOp { request: None };
        assert_eq!(
            txn(&txn_of(vec![empty_op.clone()]), &l),
            Err(CoreError::InvalidField {
                field: "request_op.request",
                rule: "must hold one operation"
            })
        );
        let bad_put = pb::RequestOp {
            request: Some(request_op::Request::RequestPut(put_req(""))),
        };
        let in_failure = pb::TxnRequest {
            failure: vec![bad_put.clone()],
            ..Default::default()
        };
        assert_eq!(
            txn(&in_failure, &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
        assert_eq!(
            txn(&txn_of(vec![op_txn(vec![], vec![bad_put])]), &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
        let bad_range = pb::RequestOp {
            request: Some(request_op::Request::RequestRange(range_req("b", "a"))),
        };
        assert_eq!(
            txn(&txn_of(vec![bad_range]), &l),
            Err(CoreError::RangeEndBeforeKey { field: "range_end" })
        );
        assert_eq!(
            txn(&txn_of(vec![op_del("", "")]), &l),
            Err(CoreError::EmptyKey { field: "key" })
        );
    }

    #[test]
    fn txn_refuses_a_key_written_twice_in_one_branch_as_etcd_does() {
        let l = limits();
        let check = |ops: Vec<pb::RequestOp>| txn(&txn_of(ops), &l);
        assert_eq!(check(vec![op_put("a"), op_put("b")]), Ok(()));
        assert_eq!(check(vec![op_put("a"), op_put("a")]), dup("a"));
        assert_eq!(check(vec![op_put("b"), op_del("a", "c")]), dup("b"));
        assert_eq!(check(vec![op_del("a", ""), op_put("a")]), dup("a"));
        assert_eq!(check(vec![op_del("a", "\0"), op_put("z")]), dup("z"));
        assert_eq!(check(vec![op_del("a", "b"), op_put("b")]), Ok(()));
        assert_eq!(check(vec![op_del("a", ""), op_del("a", "")]), Ok(()));
        // Branches of one txn are separate.
        let split = pb::TxnRequest {
            success: vec![op_put("a")],
            failure: vec![op_put("a")],
            ..Default::default()
        };
        assert_eq!(txn(&split, &l), Ok(()));
        // A nested txn's branches exclude each other...
        assert_eq!(
            check(vec![op_txn(vec![op_put("a")], vec![op_put("a")])]),
            Ok(())
        );
        assert_eq!(
            check(vec![op_txn(vec![op_del("a", "")], vec![op_put("a")])]),
            Ok(())
        );
        // ...but each clashes with the rest of the branch around it.
        assert_eq!(
            check(vec![op_put("a"), op_txn(vec![op_put("a")], vec![])]),
            dup("a")
        );
        assert_eq!(
            check(vec![op_txn(vec![], vec![op_put("a")]), op_put("a")]),
            dup("a")
        );
        assert_eq!(
            check(vec![op_del("a", "c"), op_txn(vec![op_put("b")], vec![])]),
            dup("b")
        );
        assert_eq!(
            check(vec![op_txn(vec![op_del("a", "c")], vec![]), op_put("b")]),
            dup("b")
        );
        assert_eq!(
            check(vec![
                op_txn(vec![op_put("a")], vec![]),
                op_txn(vec![], vec![op_put("a")])
            ]),
            dup("a"),
            "two nested txns may both run"
        );
        assert_eq!(
            check(vec![op_txn(
                vec![op_txn(vec![op_put("x")], vec![]), op_put("x")],
                vec![]
            )]),
            dup("x"),
            "deeper levels are checked too"
        );
    }

    #[test]
    fn lease_grant_checks_ttl_and_id() {
        let l = limits();
        let req = |id: i64, ttl: i64| pb::LeaseGrantRequest { id, ttl };
        assert_eq!(lease_grant(&req(0, 10), &l), Ok(()));
        assert_eq!(lease_grant(&req(42, 9_000_000_000), &l), Ok(()));
        assert_eq!(
            lease_grant(&req(0, 9_000_000_001), &l),
            Err(CoreError::LeaseTtlTooLarge {
                ttl: 9_000_000_001,
                max: 9_000_000_000
            })
        );
        assert_eq!(
            lease_grant(&req(-1, 10), &l),
            Err(CoreError::InvalidField {
                field: "ID",
                rule: "must be >= 0 (0 lets the server choose)"
            })
        );
    }

    #[test]
    fn compaction_needs_a_positive_revision() {
        for revision in [0, -5] {
            assert_eq!(
                compaction(&pb::CompactionRequest {
                    revision,
                    physical: false
                }),
                Err(CoreError::InvalidField {
                    field: "revision",
                    rule: "must be > 0"
                })
            );
        }
        assert_eq!(
            compaction(&pb::CompactionRequest {
                revision: 1,
                physical: true
            }),
            Ok(())
        );
    }

    #[test]
    fn configured_limits_apply() {
        let l = Limits {
            max_key_bytes: 2,
            max_value_bytes: 3,
            ..limits()
        };
        assert!(matches!(
            put(&put_req("abc"), &l),
            Err(CoreError::KeyTooLarge { len: 3, max: 2, .. })
        ));
        let value = pb::PutRequest {
            value: b("four"),
            ..put_req("k")
        };
        assert_eq!(
            put(&value, &l),
            Err(CoreError::ValueTooLarge { len: 4, max: 3 })
        );
    }

    #[test]
    fn every_refusal_maps_to_invalid_argument_or_out_of_range() {
        use tonic::Code;

        use crate::gateway::{http_status, ApiError};
        assert_eq!(
            CoreError::EmptyKey { field: "key" }.grpc_code(),
            Code::InvalidArgument
        );
        assert_eq!(
            CoreError::LeaseTtlTooLarge { ttl: 1, max: 0 }.grpc_code(),
            Code::OutOfRange
        );
        let status = |e: CoreError| http_status(e.grpc_code());
        assert_eq!(status(CoreError::EmptyKey { field: "key" }), 400);
        assert_eq!(status(CoreError::LeaseNotFound { id: 1 }), 404);
        let message = CoreError::RangeEndBeforeKey { field: "range_end" }.to_string();
        assert!(message.contains("`range_end`"), "{message}");
    }
}
