//! Keys and values: range reads, puts, deletes, transactions and compaction.
//!
//! Every write transaction bumps the store's revision once; each result carries the revision
//! the server answered at. Reads are linearizable unless [`RangeOptions::serializable`] asks
//! for a possibly stale local read.

use bytes::Bytes;
use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::mvccpb;

use crate::client::Transport;
use crate::{LeaseId, Result, Revision};

/// A key with its value and metadata, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// The value; empty when the read asked for keys only.
    pub value: Bytes,
    /// Revision of the write that created this generation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Writes to the key since it was created; deletion resets it.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: Revision(kv.create_revision),
            mod_revision: Revision(kv.mod_revision),
            version: kv.version,
            lease: LeaseId::from_wire(kv.lease),
        }
    }
}

/// The keys a request covers: one key, a prefix, or a half-open interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    key: Bytes,
    range_end: Bytes,
}

impl KeyRange {
    /// Exactly `key`.
    pub fn key(key: impl Into<Bytes>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: Bytes::new(),
        }
    }

    /// Every key starting with `prefix`; the empty prefix means every key.
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let prefix = prefix.into();
        if prefix.is_empty() {
            return KeyRange::from_key(Bytes::from_static(b"\0"));
        }
        KeyRange {
            range_end: prefix_end(&prefix),
            key: prefix,
        }
    }

    /// Every key greater than or equal to `key`.
    pub fn from_key(key: impl Into<Bytes>) -> Self {
        KeyRange {
            key: key.into(),
            range_end: Bytes::from_static(b"\0"),
        }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Bytes>, end: impl Into<Bytes>) -> Self {
        KeyRange {
            key: start.into(),
            range_end: end.into(),
        }
    }

    /// The wire form: `(key, range_end)`, where an empty `range_end` means the single key.
    pub(crate) fn into_wire(self) -> (Bytes, Bytes) {
        (self.key, self.range_end)
    }
}

/// The smallest key greater than every key starting with `prefix`: its last byte incremented
/// after dropping trailing `0xff` bytes; `"\0"` (no upper bound) when nothing is left.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bytes {
    Bytes::from(cella_base::prefix_end(prefix))
}

/// How to read a range; the defaults read every matching key and value at the newest revision.
#[derive(Debug, Clone, Default)]
pub struct RangeOptions {
    revision: Option<Revision>,
    limit: u64,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
}

impl RangeOptions {
    /// The defaults: newest revision, no limit, keys and values, linearizable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the store as it was at `revision`.
    pub fn revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }

    /// Returns at most `limit` keys (0: no limit); `more` tells whether others matched.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Returns keys and metadata without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Returns only the number of matching keys.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Answers from the contacted node without a read-index round; may be stale.
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }

    fn into_request(self, keys: KeyRange) -> pb::RangeRequest {
        let (key, range_end) = keys.into_wire();
        pb::RangeRequest {
            key,
            range_end,
            limit: i64::try_from(self.limit).unwrap_or(i64::MAX),
            revision: self.revision.map_or(0, |revision| revision.0),
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// How to write a key.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    lease: Option<LeaseId>,
    prev_kv: bool,
}

impl PutOptions {
    /// The defaults: no lease, no previous value returned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches the key to `lease`; the key is deleted when the lease ends.
    pub fn lease(mut self, lease: LeaseId) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Returns the key as it was before this write.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn into_request(self, key: Bytes, value: Bytes) -> pb::PutRequest {
        pb::PutRequest {
            key,
            value,
            lease: self.lease.map_or(0, |lease| lease.0),
            prev_kv: self.prev_kv,
            ..Default::default()
        }
    }
}

/// How to delete keys.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    prev_kv: bool,
}

impl DeleteOptions {
    /// The defaults: deleted keys are not returned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the deleted keys with their last values.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn into_request(self, keys: KeyRange) -> pb::DeleteRangeRequest {
        let (key, range_end) = keys.into_wire();
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// The outcome of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// The store's revision when the read was served.
    pub revision: Revision,
    /// The matching keys, in key order, up to the limit (none when counting only).
    pub kvs: Vec<KeyValue>,
    /// More keys matched than the limit let through.
    pub more: bool,
    /// How many keys matched in total.
    pub count: i64,
}

impl From<pb::RangeResponse> for RangeResult {
    fn from(response: pb::RangeResponse) -> Self {
        RangeResult {
            revision: header_revision(response.header.as_ref()),
            kvs: response.kvs.into_iter().map(KeyValue::from).collect(),
            more: response.more,
            count: response.count,
        }
    }
}

/// The outcome of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The revision of this write.
    pub revision: Revision,
    /// The key before the write, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl From<pb::PutResponse> for PutResult {
    fn from(response: pb::PutResponse) -> Self {
        PutResult {
            revision: header_revision(response.header.as_ref()),
            prev_kv: response.prev_kv.map(KeyValue::from),
        }
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteResult {
    /// The revision of this write (unchanged when nothing was deleted).
    pub revision: Revision,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted keys, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

impl From<pb::DeleteRangeResponse> for DeleteResult {
    fn from(response: pb::DeleteRangeResponse) -> Self {
        DeleteResult {
            revision: header_revision(response.header.as_ref()),
            deleted: response.deleted,
            prev_kvs: response.prev_kvs.into_iter().map(KeyValue::from).collect(),
        }
    }
}

/// How a [`Compare`] relates the key's current field to the given operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// Field == operand.
    Equal,
    /// Field != operand.
    NotEqual,
    /// Field > operand.
    Greater,
    /// Field < operand.
    Less,
}

/// One condition of a [`Txn`], on a key's value, version, revisions or lease.
///
/// A missing key has version, revisions and lease 0 and an empty value.
#[derive(Debug, Clone)]
pub struct Compare(pb::Compare);

impl Compare {
    /// The compare of `key`'s field named by `operand`'s kind with `operand`'s value.
    fn new(key: impl Into<Bytes>, op: CompareOp, operand: TargetUnion) -> Self {
        let result = match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        };
        let target = match operand {
            TargetUnion::Version(_) => CompareTarget::Version,
            TargetUnion::CreateRevision(_) => CompareTarget::Create,
            TargetUnion::ModRevision(_) => CompareTarget::Mod,
            TargetUnion::Value(_) => CompareTarget::Value,
            TargetUnion::Lease(_) => CompareTarget::Lease,
        };
        Compare(pb::Compare {
            result: result.into(),
            target: target.into(),
            key: key.into(),
            target_union: Some(operand),
            range_end: Bytes::new(),
        })
    }

    /// Compares the key's value with `value`.
    pub fn value(key: impl Into<Bytes>, op: CompareOp, value: impl Into<Bytes>) -> Self {
        Compare::new(key, op, TargetUnion::Value(value.into()))
    }

    /// Compares the key's version (0 when the key does not exist).
    pub fn version(key: impl Into<Bytes>, op: CompareOp, version: i64) -> Self {
        Compare::new(key, op, TargetUnion::Version(version))
    }

    /// Compares the revision that created the key (0 when it does not exist).
    pub fn create_revision(key: impl Into<Bytes>, op: CompareOp, revision: Revision) -> Self {
        Compare::new(key, op, TargetUnion::CreateRevision(revision.0))
    }

    /// Compares the revision of the key's last write (0 when it does not exist).
    pub fn mod_revision(key: impl Into<Bytes>, op: CompareOp, revision: Revision) -> Self {
        Compare::new(key, op, TargetUnion::ModRevision(revision.0))
    }

    /// Compares the key's lease; `None` stands for "no lease".
    pub fn lease(key: impl Into<Bytes>, op: CompareOp, lease: Option<LeaseId>) -> Self {
        Compare::new(
            key,
            op,
            TargetUnion::Lease(lease.map_or(0, |lease| lease.0)),
        )
    }
}

/// One operation inside a [`Txn`] branch.
#[derive(Debug, Clone)]
pub struct Op(pb::RequestOp);

impl Op {
    /// Reads `keys`.
    pub fn range(keys: KeyRange, options: RangeOptions) -> Self {
        Op::from(pb::request_op::Request::RequestRange(
            options.into_request(keys),
        ))
    }

    /// Writes `key`.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>, options: PutOptions) -> Self {
        let request = options.into_request(key.into(), value.into());
        Op::from(pb::request_op::Request::RequestPut(request))
    }

    /// Deletes `keys`.
    pub fn delete(keys: KeyRange, options: DeleteOptions) -> Self {
        Op::from(pb::request_op::Request::RequestDeleteRange(
            options.into_request(keys),
        ))
    }

    /// Runs a nested transaction.
    pub fn txn(txn: Txn) -> Self {
        Op::from(pb::request_op::Request::RequestTxn(txn.into_request()))
    }
}

impl From<pb::request_op::Request> for Op {
    fn from(request: pb::request_op::Request) -> Self {
        Op(pb::RequestOp {
            request: Some(request),
        })
    }
}

/// An atomic if/then/else: when every compare holds, the `and_then` ops run, else `or_else`'s.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
}

impl Txn {
    /// An empty transaction: no compares (so it succeeds), no ops.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds conditions; all of them must hold for the success branch.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare
            .extend(compares.into_iter().map(|compare| compare.0));
        self
    }

    /// Adds ops to run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops.into_iter().map(|op| op.0));
        self
    }

    /// Adds ops to run when some condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops.into_iter().map(|op| op.0));
        self
    }

    fn into_request(self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compare,
            success: self.success,
            failure: self.failure,
        }
    }
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// Whether every compare held (so the `and_then` branch ran).
    pub succeeded: bool,
    /// One result per op of the branch that ran, in order.
    pub responses: Vec<OpResult>,
}

impl From<pb::TxnResponse> for TxnResult {
    fn from(response: pb::TxnResponse) -> Self {
        TxnResult {
            revision: header_revision(response.header.as_ref()),
            succeeded: response.succeeded,
            responses: response
                .responses
                .into_iter()
                .filter_map(|op| op.response)
                .map(OpResult::from)
                .collect(),
        }
    }
}

/// The result of one [`Op`] of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// From [`Op::range`].
    Range(RangeResult),
    /// From [`Op::put`].
    Put(PutResult),
    /// From [`Op::delete`].
    Delete(DeleteResult),
    /// From [`Op::txn`].
    Txn(TxnResult),
}

impl From<pb::response_op::Response> for OpResult {
    fn from(response: pb::response_op::Response) -> Self {
        use pb::response_op::Response;
        match response {
            Response::ResponseRange(range) => OpResult::Range(range.into()),
            Response::ResponsePut(put) => OpResult::Put(put.into()),
            Response::ResponseDeleteRange(delete) => OpResult::Delete(delete.into()),
            Response::ResponseTxn(txn) => OpResult::Txn(txn.into()),
        }
    }
}

/// The revision a response header reports (0 if the server sent no header).
pub(crate) fn header_revision(header: Option<&pb::ResponseHeader>) -> Revision {
    Revision(header.map_or(0, |header| header.revision))
}

/// The KV service: reads, writes, transactions and compaction.
#[derive(Debug, Clone)]
pub struct Kv {
    client: KvClient<Transport>,
}

impl Kv {
    pub(crate) fn new(transport: Transport) -> Self {
        Kv {
            client: KvClient::new(transport),
        }
    }

    /// Reads one key; `None` when it does not exist.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<KeyValue>> {
        let result = self.range(KeyRange::key(key), RangeOptions::new()).await?;
        Ok(result.kvs.into_iter().next())
    }

    /// Reads every key starting with `prefix`.
    pub async fn get_prefix(&self, prefix: impl Into<Bytes>) -> Result<RangeResult> {
        self.range(KeyRange::prefix(prefix), RangeOptions::new())
            .await
    }

    /// Reads `keys` as `options` say.
    pub async fn range(&self, keys: KeyRange, options: RangeOptions) -> Result<RangeResult> {
        let request = options.into_request(keys);
        let response = self.client.clone().range(request).await?;
        Ok(response.into_inner().into())
    }

    /// Writes `key` = `value`.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<PutResult> {
        self.put_with(key, value, PutOptions::new()).await
    }

    /// Writes `key` = `value` as `options` say (lease, previous value).
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<PutResult> {
        let request = options.into_request(key.into(), value.into());
        let response = self.client.clone().put(request).await?;
        Ok(response.into_inner().into())
    }

    /// Deletes one key.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<DeleteResult> {
        self.delete_range(KeyRange::key(key), DeleteOptions::new())
            .await
    }

    /// Deletes every key starting with `prefix`.
    pub async fn delete_prefix(&self, prefix: impl Into<Bytes>) -> Result<DeleteResult> {
        self.delete_range(KeyRange::prefix(prefix), DeleteOptions::new())
            .await
    }

    /// Deletes `keys` as `options` say.
    pub async fn delete_range(
        &self,
        keys: KeyRange,
        options: DeleteOptions,
    ) -> Result<DeleteResult> {
        let request = options.into_request(keys);
        let response = self.client.clone().delete_range(request).await?;
        Ok(response.into_inner().into())
    }

    /// Runs `txn` atomically.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let response = self.client.clone().txn(txn.into_request()).await?;
        Ok(response.into_inner().into())
    }

    /// Discards the history before `revision`; reads and watches below it then fail.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let request = pb::CompactionRequest {
            revision: revision.0,
            physical: false,
        };
        self.client.clone().compact(request).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_end(b"a\x00"), Bytes::from_static(b"a\x01"));
    }

    #[test]
    fn prefix_end_drops_trailing_ff_bytes() {
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"a\xfe\xff\xff"), Bytes::from_static(b"a\xff"));
    }

    #[test]
    fn prefix_end_without_an_upper_bound_is_nul() {
        assert_eq!(prefix_end(b""), Bytes::from_static(b"\0"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }

    #[test]
    fn empty_prefix_covers_every_key() {
        let (key, range_end) = KeyRange::prefix("").into_wire();
        assert_eq!((&key[..], &range_end[..]), (&b"\0"[..], &b"\0"[..]));
    }

    #[test]
    fn single_key_has_no_range_end() {
        let (key, range_end) = KeyRange::key("k").into_wire();
        assert_eq!((&key[..], range_end.is_empty()), (&b"k"[..], true));
    }

    #[test]
    fn missing_lease_reads_as_none() {
        let kv = KeyValue::from(mvccpb::KeyValue {
            key: Bytes::from_static(b"k"),
            lease: 0,
            ..Default::default()
        });
        assert_eq!(kv.lease, None);
    }

    #[test]
    fn compare_target_follows_the_operand() {
        let Compare(compare) = Compare::mod_revision("k", CompareOp::Less, Revision(5));
        assert_eq!(compare.target(), CompareTarget::Mod);
        assert_eq!(compare.result(), CompareResult::Less);
        assert_eq!(compare.target_union, Some(TargetUnion::ModRevision(5)));
    }

    #[test]
    fn huge_limits_saturate() {
        let request = RangeOptions::new()
            .limit(u64::MAX)
            .into_request(KeyRange::key("k"));
        assert_eq!(request.limit, i64::MAX);
    }

    #[test]
    fn txn_results_follow_the_branch_order() {
        use pb::response_op::Response;
        let response = pb::TxnResponse {
            header: Some(pb::ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            succeeded: false,
            responses: vec![
                pb::ResponseOp {
                    response: Some(Response::ResponseRange(pb::RangeResponse::default())),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponsePut(pb::PutResponse::default())),
                },
            ],
        };
        let result = TxnResult::from(response);
        assert_eq!(result.revision, Revision(7));
        assert!(matches!(
            result.responses.as_slice(),
            [OpResult::Range(_), OpResult::Put(_)]
        ));
    }
}
