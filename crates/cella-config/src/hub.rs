//! The push hub: one in-process core watch on the head prefix keeps an in-memory copy of
//! every config's head, and announces each changed key on a broadcast channel that every
//! watching client's session filters. So a node serves any number of watchers from one core
//! watch, and a publish costs one map update plus one wake-up per session.
//!
//! Guarantees: after [`Hub::wait_ready`], the map holds every head at some revision at or
//! after the call's start, and every later change is announced after the map is updated;
//! a session that subscribes before reading the map therefore misses no change. A session
//! that falls behind the channel ([`broadcast::error::RecvError::Lagged`]) re-checks all its
//! configs. If compaction removes history the watch still needs, the hub reloads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cella_core::Core;
use cella_core::{run_watcher, WatchSpec};
use cella_proto::etcdserverpb as pb;
use cella_proto::mvccpb::event::EventType;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{ConfigError, ConfigResult};
use crate::model::{self, prefix_end, ConfigGroup, ConfigKey, Head, HEAD_PREFIX};
use crate::store::{self, Order};

/// Changed keys buffered per session before it lags and re-checks everything.
const CHANGE_BUFFER: usize = 8192;
/// Pause before the hub retries loading after the core refused (no leader yet).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The in-memory view of every config head, fed by one core watch.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    heads: RwLock<HashMap<ConfigKey, Arc<Head>>>,
    changes: broadcast::Sender<Arc<ConfigKey>>,
    ready: watch::Sender<bool>,
    driver: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut driver) = self.driver.lock() {
            if let Some(task) = driver.take() {
                task.abort();
            }
        }
    }
}

impl Hub {
    /// Starts the hub's watch on `core`. The task stops when the last clone is dropped.
    pub fn start(core: Core) -> Hub {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (ready, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            heads: RwLock::new(HashMap::new()),
            changes,
            ready,
            driver: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(drive(core, Arc::downgrade(&inner)));
        if let Ok(mut driver) = inner.driver.lock() {
            *driver = Some(task);
        }
        Hub { inner }
    }

    /// Waits until the first load is done, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> ConfigResult<()> {
        let mut ready = self.inner.ready.subscribe();
        let ok = matches!(
            tokio::time::timeout(timeout, ready.wait_for(|r| *r)).await,
            Ok(Ok(_))
        );
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Core(cella_core::CoreError::NoLeader))
        }
    }

    /// Announcements of changed keys, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ConfigKey>> {
        self.inner.changes.subscribe()
    }

    /// The head of `key` as last seen, if the config exists.
    pub fn head(&self, key: &ConfigKey) -> Option<Arc<Head>> {
        self.inner.heads.read().ok()?.get(key).cloned()
    }

    /// The configs of `group` as last seen.
    pub fn keys_in(&self, group: &ConfigGroup) -> Vec<ConfigKey> {
        self.inner.heads.read().map_or_else(
            |_| Vec::new(),
            |heads| heads.keys().filter(|k| group.holds(k)).cloned().collect(),
        )
    }

    /// Number of configs known.
    pub fn len(&self) -> usize {
        self.inner.heads.read().map_or(0, |h| h.len())
    }

    /// Whether no config is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads all heads, then follows the watch; reloads on compaction or a failed load.
async fn drive(core: Core, inner: std::sync::Weak<Inner>) {
    loop {
        let revision = match load(&core, &inner).await {
            Ok(Some(rev)) => rev,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "config hub: load failed, retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        if follow(&core, &inner, revision).await.is_none() {
            return;
        }
    }
}

/// Replaces the map with every head at the core's current revision; announces differences.
async fn load(core: &Core, weak: &std::sync::Weak<Inner>) -> ConfigResult<Option<i64>> {
    let (kvs, revision) = store::list(core, HEAD_PREFIX, 0, Order::KeyAscending).await?;
    let mut fresh = HashMap::with_capacity(kvs.len());
    for (k, v) in kvs {
        let Some(key) = ConfigKey::from_head_key(&k) else {
            continue;
        };
        match model::decode::<Head>("config head", &v) {
            Ok(head) => {
                fresh.insert(key, Arc::new(head));
            }
            Err(e) => tracing::warn!(%key, error = %e, "config hub: skipping undecodable head"),
        }
    }
    let Some(inner) = weak.upgrade() else {
        return Ok(None);
    };
    let changed: Vec<ConfigKey> = {
        let mut heads = inner
            .heads
            .write()
            .map_err(|_| ConfigError::Internal("config hub map poisoned".into()))?;
        let mut changed: Vec<ConfigKey> = heads
            .iter()
            .filter(|(k, h)| fresh.get(*k) != Some(*h))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(fresh.keys().filter(|k| !heads.contains_key(*k)).cloned());
        *heads = fresh;
        changed
    };
    for key in changed {
        let _ = inner.changes.send(Arc::new(key));
    }
    inner.ready.send_replace(true);
    Ok(Some(revision))
}

/// Applies watch events after `revision` until the watch ends; None once the hub is gone.
async fn follow(core: &Core, weak: &std::sync::Weak<Inner>, revision: i64) -> Option<()> {
    let req = pb::WatchCreateRequest {
        key: HEAD_PREFIX.as_bytes().to_vec().into(),
        range_end: prefix_end(HEAD_PREFIX).into(),
        start_revision: revision + 1,
        ..Default::default()
    };
    let spec = match WatchSpec::new(core, &req) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::warn!(error = %e, "config hub: watch refused");
            tokio::time::sleep(RETRY_PAUSE).await;
            return Some(());
        }
    };
    let (tx, mut rx) = mpsc::channel(64);
    let watcher = tokio::spawn(run_watcher(
        core.clone(),
        1,
        spec,
        tx,
        Duration::from_secs(600),
    ));
    let _stop = AbortOnDrop(watcher);
    while let Some(resp) = rx.recv().await {
        if resp.canceled {
            tracing::info!(
                compact_revision = resp.compact_revision,
                "config hub: watch cancelled, reloading"
            );
            return Some(());
        }
        let inner = weak.upgrade()?;
        for event in resp.events {
            let Some(kv) = event.kv else { continue };
            let Some(key) = ConfigKey::from_head_key(&kv.key) else {
                continue;
            };
            let head = if event.r#type == EventType::Delete as i32 {
                None
            } else {
                match model::decode::<Head>("config head", &kv.value) {
                    Ok(h) => Some(Arc::new(h)),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "config hub: skipping undecodable head");
                        continue;
                    }
                }
            };
            if let Ok(mut heads) = inner.heads.write() {
                match head {
                    Some(h) => heads.insert(key.clone(), h),
                    None => heads.remove(&key),
                };
            }
            let _ = inner.changes.send(Arc::new(key));
        }
    }
    Some(())
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
