//! txn-cas: compare-and-swap transactions.
//!
//! Each client owns one key (so no two clients contend). It puts the key once, remembers its
//! `mod_revision`, and then each operation is one `Txn`: compare `mod_revision` equal to the
//! remembered one, then put a new value. A committed swap is a success and moves the
//! remembered revision to the transaction's revision; a failed compare would mean a lost or
//! misordered write, so it counts as an error.

use anyhow::Context;
use bytes::Bytes;
use cella_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::request_op::Request;
use cella_proto::etcdserverpb::{Compare, PutRequest, RequestOp, ResponseHeader, TxnRequest};

use super::{measure, value_with_head, Settings, KEY_PREFIX};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

struct Swapper {
    kv: KvClient<Channel>,
    key: Bytes,
    value: Bytes,
    mod_revision: i64,
}

impl Swapper {
    /// Creates client `i`'s key and learns its revision.
    async fn new(conns: &Connections, i: usize, value: Bytes) -> anyhow::Result<Swapper> {
        let mut kv = KvClient::new(conns.channel(i));
        let key = Bytes::from(format!("{KEY_PREFIX}txn/{i:06}"));
        let response = kv
            .put(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating txn-cas key {i}"))?
            .into_inner();
        Ok(Swapper {
            kv,
            key,
            value,
            mod_revision: revision(response.header.as_ref())?,
        })
    }
}

impl LoadClient for Swapper {
    async fn call(&mut self) -> anyhow::Result<()> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: self.key.clone(),
                target_union: Some(TargetUnion::ModRevision(self.mod_revision)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: self.key.clone(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let response = self.kv.txn(txn).await?.into_inner();
        if !response.succeeded {
            anyhow::bail!("compare on mod_revision failed on a key only this client writes");
        }
        self.mod_revision = revision(response.header.as_ref())?;
        Ok(())
    }
}

fn revision(header: Option<&ResponseHeader>) -> anyhow::Result<i64> {
    header
        .map(|h| h.revision)
        .ok_or_else(|| anyhow::anyhow!("response has no header"))
}

/// Runs txn-cas at `clients`.
pub(super) async fn run(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let value = value_with_head(b"", settings.value_size);
    let swappers =
        futures::future::try_join_all((0..clients).map(|i| Swapper::new(conns, i, value.clone())))
            .await?;
    Ok(measure(swappers, settings, progress).await?.1)
}
