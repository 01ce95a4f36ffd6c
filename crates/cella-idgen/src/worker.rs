//! Worker ids leased from the core, like ZooKeeper's ephemeral nodes.
//!
//! A worker id of a layout is held by the key `/cella/idgen/workers/<layout>/<id>`, created
//! only if absent, attached to the holder's lease. While the lease lives nobody else can
//! create the key, so the id is never handed out twice at once; when the holder stops (drop
//! revokes the lease) or dies (the lease expires) the key goes and the id is free again.
//! A background task refreshes the lease every third of its TTL; if the lease is found gone,
//! or cannot be refreshed for a whole TTL, the holder is marked lost and generators refuse
//! to issue more ids from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_proto::etcdserverpb as pb;
use tokio::task::JoinHandle;

use crate::error::{IdgenError, IdgenResult};
use crate::layout::Layout;
use crate::store::{self, CoreStore};

/// Most create-if-absent attempts before giving up on a contended claim.
const MAX_CLAIM_ATTEMPTS: u32 = 64;

/// A held worker id; dropping it releases the id (revokes its lease).
pub struct WorkerLease {
    layout: String,
    worker: u64,
    lease: i64,
    lost: Arc<AtomicBool>,
    refresher: JoinHandle<()>,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for WorkerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLease")
            .field("layout", &self.layout)
            .field("worker", &self.worker)
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl WorkerLease {
    /// Claims the lowest free worker id of `layout` under a new lease of `ttl_secs`;
    /// `holder` is stored as the key's value for operators.
    pub async fn claim<S: CoreStore>(
        store: &S,
        layout: &Layout,
        ttl_secs: i64,
        holder: &str,
    ) -> IdgenResult<WorkerLease> {
        let (lease, granted_ttl) = store.grant_lease(ttl_secs).await?;
        match claim_with(store, layout, lease, holder).await {
            Ok(worker) => Ok(WorkerLease::hold(
                store,
                layout.name(),
                worker,
                lease,
                granted_ttl,
            )),
            Err(e) => {
                let _ = store.revoke_lease(lease).await;
                Err(e)
            }
        }
    }

    fn hold<S: CoreStore>(store: &S, layout: &str, worker: u64, lease: i64, ttl: i64) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let refresher = tokio::spawn(refresh(store.clone(), lease, ttl, lost.clone()));
        let releaser = store.clone();
        let release = move || {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = releaser.revoke_lease(lease).await {
                        tracing::debug!(lease, error = %e, "releasing a worker id; its lease will expire instead");
                    }
                });
            }
        };
        WorkerLease {
            layout: layout.into(),
            worker,
            lease,
            lost,
            refresher,
            release: Some(Box::new(release)),
        }
    }

    /// The worker id held.
    pub fn worker(&self) -> u64 {
        self.worker
    }

    /// The lease the worker key is attached to.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// True once the lease is known gone; ids must no longer be issued.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The error to report when the worker id is lost.
    pub(crate) fn lost_error(&self) -> IdgenError {
        IdgenError::WorkerLost {
            layout: self.layout.clone(),
            worker: self.worker,
        }
    }

    /// Records that the core refused a write guarded by this lease.
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        self.refresher.abort();
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Tries free worker ids from the lowest up until a create-if-absent succeeds.
async fn claim_with<S: CoreStore>(
    store: &S,
    layout: &Layout,
    lease: i64,
    holder: &str,
) -> IdgenResult<u64> {
    let prefix = store::workers_prefix(layout.name());
    let capacity = layout.max_worker().saturating_add(1);
    for _ in 0..MAX_CLAIM_ATTEMPTS {
        let held = store
            .range(pb::RangeRequest {
                key: Bytes::copy_from_slice(prefix.as_bytes()),
                range_end: store::prefix_end(&prefix),
                keys_only: true,
                ..Default::default()
            })
            .await?;
        let mut taken: Vec<u64> = held
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(prefix.as_bytes()))
            .filter_map(|id| std::str::from_utf8(id).ok()?.parse().ok())
            .collect();
        taken.sort_unstable();
        let Some(worker) = lowest_free(&taken, capacity) else {
            return Err(IdgenError::WorkersExhausted {
                layout: layout.name().into(),
                capacity,
            });
        };
        let key = store::worker_key(layout.name(), worker);
        let claimed = store::swap(
            store,
            vec![store::created_at(&key, 0)],
            vec![store::put(&key, holder.to_owned(), lease)],
        )
        .await?;
        if claimed {
            return Ok(worker);
        }
        // Someone claimed it between the read and the txn: look again.
    }
    Err(IdgenError::Contention {
        key: prefix,
        attempts: MAX_CLAIM_ATTEMPTS,
    })
}

/// The lowest id in `0..capacity` not in `taken` (sorted ascending).
fn lowest_free(taken: &[u64], capacity: u64) -> Option<u64> {
    let mut candidate = 0u64;
    for id in taken {
        match (*id).cmp(&candidate) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => candidate += 1,
            std::cmp::Ordering::Greater => break,
        }
    }
    (candidate < capacity).then_some(candidate)
}

/// Refreshes `lease` every third of its TTL; marks the holder lost when the lease is gone
/// or could not be refreshed for a whole TTL.
async fn refresh<S: CoreStore>(store: S, lease: i64, ttl_secs: i64, lost: Arc<AtomicBool>) {
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match store.keep_alive(lease).await {
            Ok(remaining) if remaining > 0 => last_ok = tokio::time::Instant::now(),
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(lease, error = %e, "refreshing a worker id's lease");
                if last_ok.elapsed() >= ttl {
                    break;
                }
            }
        }
    }
    lost.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_fills_gaps_first() {
        assert_eq!(lowest_free(&[], 4), Some(0));
        assert_eq!(lowest_free(&[0, 1, 3], 4), Some(2));
        assert_eq!(lowest_free(&[1, 2], 4), Some(0));
        assert_eq!(lowest_free(&[0, 1, 2, 3], 4), None);
        assert_eq!(lowest_free(&[0, 1, 2, 7], 4), Some(3));
    }
}
