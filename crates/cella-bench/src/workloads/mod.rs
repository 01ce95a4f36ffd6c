//! The workloads. Each builds its clients (and any fixture: preloaded keys, leases,
//! watchers), then hands them to the shared driver through [`measure`]; none has a load loop
//! of its own. rpc-overhead and sidecar-hop compare paths to one server ([`Paths`]).

mod beat;
mod config;
mod fanout;
mod id;
mod kv;
mod lease;
mod lock;
pub(crate) mod mq;
mod mq_peers;
mod nacos;
mod nacos_config;
mod registry;
mod rpc;
mod sidecar;
mod txn;
mod watch;

use std::time::Duration;

use bytes::Bytes;

use crate::args::{Target, Workload};
use crate::conn::Connections;
use crate::driver::{drive, Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::Measurement;
use crate::usage;

pub(crate) use config::DEFAULT_PUSH_RATE as DEFAULT_CONFIG_PUSH_RATE;
pub(crate) use watch::DEFAULT_RATE as DEFAULT_WATCH_RATE;

/// Key prefix every workload writes under, so benchmark data is easy to find and delete.
const KEY_PREFIX: &str = "/cella-bench/";

/// Everything a workload needs besides its connections and client count.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Bounds of the measured run.
    pub bounds: Bounds,
    /// Length of the unmeasured warm-up run (bounded by `bounds.count` too).
    pub warmup: Duration,
    /// Size of every value written.
    pub value_size: usize,
    /// Distinct keys for kv-put and kv-get.
    pub key_space: u64,
    /// kv-get reads serializably.
    pub serializable: bool,
    /// watch-fanout's watch streams.
    pub streams: usize,
    /// lock-cycle: every client contends for one lock.
    pub one_lock: bool,
    /// id-batch and id-single: the id layout.
    pub id_layout: String,
    /// id-batch: ids per call.
    pub id_batch: u32,
    /// registry-heartbeat(-grpc): instances in all (None: 10 per client).
    pub instances: Option<u32>,
    /// registry-heartbeat-grpc: beats per call.
    pub beat_batch: u32,
    /// A server process whose CPU share and memory each measured run reports.
    pub server_pid: Option<u32>,
    /// mq-*: connections to a NATS or RabbitMQ target, and Cella producer connections.
    pub connections: usize,
    /// mq-*: body size of every message.
    pub message_size: usize,
    /// mq-*: durability of the run's topic, stream or queue.
    pub flush: crate::args::Flush,
    /// mq-*: queues of the Cella topic.
    pub queues: u32,
    /// mq-consume: messages sent before the consumers start.
    pub backlog: u64,
    /// mq-e2e: receivers.
    pub consumers: usize,
    /// mq-produce and mq-e2e: messages per send call.
    pub batch: usize,
    /// sidecar-hop: the echo app's port (None: any free one).
    pub app_port: Option<u16>,
    /// sidecar-hop: reverse proxies to the echo app, measured as further paths.
    pub proxies: Vec<Target>,
}

/// Runs `workload` once at `clients` against `conns`; `progress` labels the progress line.
pub(crate) async fn run_level(
    workload: Workload,
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    match workload {
        Workload::KvPut => kv::run_put(conns, clients, settings, progress).await,
        Workload::KvGet => kv::run_get(conns, clients, settings, progress).await,
        Workload::TxnCas => txn::run(conns, clients, settings, progress).await,
        Workload::LeaseKeepalive => lease::run(conns, clients, settings, progress).await,
        Workload::WatchFanout => watch::run(conns, clients, settings, progress).await,
        Workload::RegistryPush => registry::run_push(conns, clients, settings, progress).await,
        Workload::RegistryRegister => nacos::run_register(conns, clients, settings, progress).await,
        Workload::RegistryHeartbeat => {
            nacos::run_heartbeat(conns, clients, settings, progress).await
        }
        Workload::RegistryHeartbeatGrpc => beat::run(conns, clients, settings, progress).await,
        Workload::RpcOverhead | Workload::SidecarHop => {
            anyhow::bail!(
                "{} compares two paths: run it through Paths",
                workload.name()
            )
        }
        Workload::LockCycle => lock::run(conns, clients, settings, progress).await,
        Workload::IdBatch => {
            id::run(conns, clients, settings, Some(settings.id_batch), progress).await
        }
        Workload::IdSingle => id::run(conns, clients, settings, None, progress).await,
        Workload::ConfigPush => config::run_push(conns, clients, settings, progress).await,
        Workload::ConfigRead => config::run_read(conns, clients, settings, progress).await,
        Workload::ConfigPublishNacos => {
            nacos_config::run_publish(conns, clients, settings, progress).await
        }
        Workload::ConfigReadNacos => {
            nacos_config::run_read(conns, clients, settings, progress).await
        }
        Workload::MqProduce => mq::run_produce(conns, clients, settings, progress).await,
        Workload::MqConsume => mq::run_consume(conns, clients, settings, progress).await,
        Workload::MqE2e => mq::run_e2e(conns, clients, settings, progress).await,
    }
}

/// Runs the server `serve` makes on a runtime (and threads) of its own, as a server process
/// has, until the returned sender is used or dropped. A call to it then wakes it, and its
/// answer wakes the caller, as between two processes; on the callers' runtime a call could
/// skip both.
pub(crate) fn serve_apart<F, Fut>(
    name: &str,
    serve: F,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = serve() => {}
                    _ = stopped => {}
                }
            })
        })?;
    Ok(stop)
}

/// Paths to one server measured side by side in one run, the direct path first (the
/// baseline): rpc-overhead (raw tonic vs the SDK stack) and sidecar-hop (direct vs through
/// the sidecar, and through any reference proxies).
pub(crate) enum Paths {
    /// rpc-overhead's echo server and channels.
    Rpc(Box<rpc::RpcPaths>),
    /// sidecar-hop's echo app and sidecar.
    Sidecar(Box<sidecar::SidecarPaths>),
}

impl Paths {
    /// Sets up `workload`'s paths against `target`; `None` for workloads that measure targets.
    pub(crate) async fn open(
        workload: Workload,
        target: &Target,
        settings: &Settings,
    ) -> anyhow::Result<Option<Paths>> {
        Ok(match workload {
            Workload::RpcOverhead => Some(Paths::Rpc(Box::new(rpc::RpcPaths::open(target).await?))),
            Workload::SidecarHop => Some(Paths::Sidecar(Box::new(
                sidecar::SidecarPaths::open(target, settings).await?,
            ))),
            _ => None,
        })
    }

    /// (name, what it is) of each path, the baseline first.
    pub(crate) fn describe(&self, target: &Target) -> Vec<(String, String)> {
        match self {
            Paths::Rpc(p) => rpc::NAMES
                .iter()
                .map(|n| n.to_string())
                .zip(p.describe(target))
                .collect(),
            Paths::Sidecar(p) => p.describe(target),
        }
    }

    /// Measures path number `path` with `clients` callers.
    pub(crate) async fn run_level(
        &self,
        path: usize,
        clients: usize,
        settings: &Settings,
        progress: Option<&Progress>,
    ) -> anyhow::Result<Measurement> {
        match self {
            Paths::Rpc(p) => p.run_level(path, clients, settings, progress).await,
            Paths::Sidecar(p) => p.run_level(path, clients, settings, progress).await,
        }
    }
}

/// Warms up with `clients`, then measures them: the one path from clients to numbers.
async fn measure<C: LoadClient>(
    clients: Vec<C>,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<(Vec<C>, Measurement)> {
    let mut clients = clients;
    if !settings.warmup.is_zero() {
        let warmup = Bounds {
            duration: settings.warmup,
            ..settings.bounds
        };
        clients = drive(clients, warmup, None).await?.0;
    }
    for client in &mut clients {
        client.start_measuring();
    }
    let Some(pid) = settings.server_pid else {
        return drive(clients, settings.bounds, progress).await;
    };
    let start = usage::sample(pid)?;
    let (clients, mut measured) = drive(clients, settings.bounds, progress).await?;
    measured.server = Some(usage::since(pid, start)?);
    Ok((clients, measured))
}

/// Grants client `i` a lease of `ttl_secs` seconds and returns its id.
async fn grant_lease(
    leases: &mut cella_proto::etcdserverpb::lease_client::LeaseClient<crate::conn::Channel>,
    i: usize,
    ttl_secs: i64,
) -> anyhow::Result<i64> {
    use anyhow::Context;
    let grant = leases
        .lease_grant(cella_proto::etcdserverpb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        })
        .await
        .with_context(|| format!("granting lease {i}"))?
        .into_inner();
    if !grant.error.is_empty() {
        anyhow::bail!("granting lease {i}: {}", grant.error);
    }
    Ok(grant.id)
}

/// Instances each heartbeat client keeps alive when `--instances` is not given.
const INSTANCES_PER_CLIENT: u64 = 10;

/// How many of `instances` (default: 10 per client) each of `clients` registers and beats:
/// an even split, the first clients taking one more when it does not divide.
fn instance_shares(instances: Option<u32>, clients: usize) -> Vec<u64> {
    let clients = clients.max(1) as u64;
    let total = instances.map_or(INSTANCES_PER_CLIENT * clients, u64::from);
    (0..clients)
        .map(|i| total / clients + u64::from(i < total % clients))
        .collect()
}

/// A value of `size` bytes that starts with `head` (filler after it).
fn value_with_head(head: &[u8], size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size.max(head.len()));
    v.extend_from_slice(head);
    v.resize(size.max(head.len()), b'x');
    Bytes::from(v)
}

/// The key `n` of a workload's key space, fixed width so keys sort numerically.
fn numbered_key(workload: &str, n: u64) -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}{workload}/{n:010}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_split_evenly_over_clients() {
        assert_eq!(instance_shares(None, 3), vec![10, 10, 10]);
        assert_eq!(instance_shares(Some(10), 4), vec![3, 3, 2, 2]);
        assert_eq!(
            instance_shares(Some(100_000), 64).iter().sum::<u64>(),
            100_000
        );
        assert_eq!(instance_shares(Some(2), 3), vec![1, 1, 0]);
    }

    #[test]
    fn values_and_keys() {
        assert_eq!(value_with_head(b"ab", 4), Bytes::from_static(b"abxx"));
        assert_eq!(value_with_head(b"abcd", 2), Bytes::from_static(b"abcd"));
        assert_eq!(
            numbered_key("kv", 42),
            Bytes::from_static(b"/cella-bench/kv/0000000042")
        );
    }
}
