//! kv-put and kv-get.
//!
//! kv-put measures durable single-key writes: each client puts `--value-size` values, walking
//! the `--key-space` keys from its own offset, and an operation is one acknowledged `Put`.
//!
//! kv-get measures single-key reads: the key space is preloaded (in transactions of
//! [`PRELOAD_BATCH`] puts), then each client reads the keys in turn with `Range`,
//! linearizable by default or serializable with `--serializable`; a read that finds no key
//! counts as an error.

use anyhow::Context;
use bytes::Bytes;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::request_op::Request;
use cella_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::{measure, numbered_key, value_with_head, Settings};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// Puts per preload transaction (etcd's default limit of operations per txn is 128).
const PRELOAD_BATCH: u64 = 100;

/// Walks the key space: client `i` of `n` visits keys i, i+n, i+2n, ... (mod key space).
struct KeyWalk {
    next: u64,
    stride: u64,
    key_space: u64,
}

impl KeyWalk {
    fn new(client: usize, clients: usize, key_space: u64) -> Self {
        KeyWalk {
            next: client as u64,
            stride: clients as u64,
            key_space,
        }
    }

    fn next_key(&mut self, workload: &str) -> Bytes {
        let n = self.next % self.key_space;
        self.next = self.next.wrapping_add(self.stride);
        numbered_key(workload, n)
    }
}

struct Putter {
    kv: KvClient<Channel>,
    keys: KeyWalk,
    value: Bytes,
}

impl LoadClient for Putter {
    async fn call(&mut self) -> anyhow::Result<()> {
        let request = PutRequest {
            key: self.keys.next_key("kv"),
            value: self.value.clone(),
            ..Default::default()
        };
        self.kv.put(request).await?;
        Ok(())
    }
}

/// Runs kv-put at `clients`.
pub(super) async fn run_put(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let value = value_with_head(b"", settings.value_size);
    let putters = (0..clients)
        .map(|i| Putter {
            kv: KvClient::new(conns.channel(i)),
            keys: KeyWalk::new(i, clients, settings.key_space),
            value: value.clone(),
        })
        .collect();
    Ok(measure(putters, settings, progress).await?.1)
}

struct Getter {
    kv: KvClient<Channel>,
    keys: KeyWalk,
    serializable: bool,
}

impl LoadClient for Getter {
    async fn call(&mut self) -> anyhow::Result<()> {
        let key = self.keys.next_key("kv");
        let request = RangeRequest {
            key: key.clone(),
            serializable: self.serializable,
            ..Default::default()
        };
        let response = self.kv.range(request).await?.into_inner();
        if response.kvs.len() != 1 {
            anyhow::bail!(
                "range of preloaded key {} returned {} keys",
                String::from_utf8_lossy(&key),
                response.kvs.len()
            );
        }
        Ok(())
    }
}

/// Runs kv-get at `clients`, preloading the key space first.
pub(super) async fn run_get(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    preload(conns, settings).await?;
    let getters = (0..clients)
        .map(|i| Getter {
            kv: KvClient::new(conns.channel(i)),
            keys: KeyWalk::new(i, clients, settings.key_space),
            serializable: settings.serializable,
        })
        .collect();
    Ok(measure(getters, settings, progress).await?.1)
}

/// Writes every key of the key space, in transactions of [`PRELOAD_BATCH`] puts.
async fn preload(conns: &Connections, settings: &Settings) -> anyhow::Result<()> {
    let mut kv = KvClient::new(conns.channel(0));
    let value = value_with_head(b"", settings.value_size);
    let mut start = 0;
    while start < settings.key_space {
        let end = (start + PRELOAD_BATCH).min(settings.key_space);
        let success = (start..end)
            .map(|n| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: numbered_key("kv", n),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        kv.txn(txn)
            .await
            .with_context(|| format!("preloading keys {start}..{end}"))?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_walk_disjoint_keys_that_wrap_around() {
        let mut a = KeyWalk::new(0, 2, 3);
        let mut b = KeyWalk::new(1, 2, 3);
        let a_keys: Vec<_> = (0..3).map(|_| a.next_key("t")).collect();
        let b_keys: Vec<_> = (0..2).map(|_| b.next_key("t")).collect();
        assert_eq!(a_keys[0], numbered_key("t", 0));
        assert_eq!(a_keys[1], numbered_key("t", 2));
        assert_eq!(a_keys[2], numbered_key("t", 1));
        assert_eq!(b_keys[0], numbered_key("t", 1));
        assert_eq!(b_keys[1], numbered_key("t", 0));
    }
}
