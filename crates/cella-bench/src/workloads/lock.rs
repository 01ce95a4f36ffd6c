//! lock-cycle: acquire and release through etcd's v3lock service (`Lock`, then `Unlock`).
//!
//! Each client grants its own lease ([`LEASE_TTL_SECS`] s) once. By default every client
//! cycles on a lock of its own, so an operation is one uncontended acquire+release and its
//! latency is that round trip pair. With `--one-lock` all clients contend for one lock; an
//! operation is then one hand-over, and its latency is the time from the previous holder
//! starting its release to this client's `Lock` returning (the first grant of a run, which
//! hands over from nobody, is not timed). Leases are revoked after the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cella_proto::etcdserverpb::lease_client::LeaseClient;
use cella_proto::etcdserverpb::LeaseRevokeRequest;
use cella_proto::v3lockpb::lock_client::LockClient;
use cella_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio::time::Instant;

use super::{grant_lease, measure, Settings, KEY_PREFIX};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// TTL of the benchmark's leases: long enough to outlive any stall of a run.
const LEASE_TTL_SECS: i64 = 60;

/// When the last holder of the shared lock began releasing it.
type LastRelease = Arc<Mutex<Option<Instant>>>;

struct Locker {
    locks: LockClient<Channel>,
    leases: LeaseClient<Channel>,
    name: Bytes,
    lease: i64,
    /// Set when all clients share one lock: hand-overs are timed through it.
    shared: Option<LastRelease>,
    handover: Option<Duration>,
}

impl Locker {
    async fn new(
        conns: &Connections,
        i: usize,
        name: Bytes,
        shared: Option<LastRelease>,
    ) -> anyhow::Result<Locker> {
        let channel = conns.channel(i);
        let mut leases = LeaseClient::new(channel.clone());
        let lease = grant_lease(&mut leases, i, LEASE_TTL_SECS).await?;
        Ok(Locker {
            locks: LockClient::new(channel),
            leases,
            name,
            lease,
            shared,
            handover: None,
        })
    }

    async fn revoke(mut self) {
        let _ = self
            .leases
            .lease_revoke(LeaseRevokeRequest { id: self.lease })
            .await;
    }
}

impl LoadClient for Locker {
    async fn call(&mut self) -> anyhow::Result<()> {
        let held = self
            .locks
            .lock(LockRequest {
                name: self.name.clone(),
                lease: self.lease,
            })
            .await?
            .into_inner();
        if let Some(shared) = &self.shared {
            let mut last = shared.lock().expect("poisoned only by a panic");
            self.handover = last.map(|released| released.elapsed());
            *last = Some(Instant::now());
        }
        self.locks.unlock(UnlockRequest { key: held.key }).await?;
        Ok(())
    }

    fn measured_latency(&mut self) -> Option<Option<Duration>> {
        self.shared.as_ref().map(|_| self.handover.take())
    }
}

/// Runs lock-cycle at `clients`: a lock each, or one shared lock with `settings.one_lock`.
pub(super) async fn run(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let shared = settings.one_lock.then(LastRelease::default);
    let lockers = futures::future::try_join_all((0..clients).map(|i| {
        let name = match settings.one_lock {
            true => format!("{KEY_PREFIX}lock/{run}/shared"),
            false => format!("{KEY_PREFIX}lock/{run}/{i}"),
        };
        Locker::new(conns, i, Bytes::from(name), shared.clone())
    }))
    .await?;
    let (lockers, measurement) = measure(lockers, settings, progress).await?;
    futures::future::join_all(lockers.into_iter().map(Locker::revoke)).await;
    Ok(measurement)
}
