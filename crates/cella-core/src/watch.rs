//! Watchers: each streams the changes of a key or range from a start revision.
//!
//! A watcher pulls from the store's history instead of being pushed to: an applied batch
//! wakes the watchers whose key range it changed (and only those, as etcd matches events to
//! watchers, so a write costs nothing to watchers of other keys), and each reads the events
//! it has not sent yet. So a slow watcher never blocks writes or other watchers; it falls
//! behind and catches up from history, or, if compaction removed what it still needed, it is
//! cancelled with the compact revision (etcd's "compacted" answer).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cella_base::prefix_end;
use cella_proto::etcdserverpb::{self as pb, watch_create_request::FilterType};
use tokio::sync::{mpsc, Notify};

use crate::error::{CoreError, CoreResult};
use crate::metrics;
use crate::mvcc::{in_range, EventFilter};
use crate::node::Core;
use crate::validate;

/// Most events sent in one response (whole revisions are never split).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// A validated watch: what to send and from which revision.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    filter: EventFilter,
    start_revision: i64,
    progress_notify: bool,
}

impl WatchSpec {
    /// Checks a create request; a start revision of 0 means "changes after now".
    pub fn new(core: &Core, req: &pb::WatchCreateRequest) -> CoreResult<Self> {
        let limits = core.limits();
        validate::range(
            &pb::RangeRequest {
                key: req.key.clone(),
                range_end: req.range_end.clone(),
                ..Default::default()
            },
            limits,
        )?;
        if req.start_revision < 0 {
            return Err(CoreError::InvalidField {
                field: "start_revision",
                rule: "must be >= 0",
            });
        }
        // Copies: the request's bytes point into its stream's whole receive buffer, which a
        // long-lived watch would otherwise keep.
        let mut filter = EventFilter {
            key: bytes::Bytes::copy_from_slice(&req.key),
            range_end: bytes::Bytes::copy_from_slice(&req.range_end),
            prev_kv: req.prev_kv,
            ..Default::default()
        };
        for f in &req.filters {
            match FilterType::try_from(*f) {
                Ok(FilterType::Noput) => filter.no_put = true,
                Ok(FilterType::Nodelete) => filter.no_delete = true,
                Err(_) => {
                    return Err(CoreError::UnknownEnumValue {
                        field: "filters",
                        value: *f,
                    })
                }
            }
        }
        let start_revision = if req.start_revision == 0 {
            core.revision() + 1
        } else {
            req.start_revision
        };
        Ok(Self {
            filter,
            start_revision,
            progress_notify: req.progress_notify,
        })
    }
}

impl Core {
    /// Watches in-process, as a gRPC watcher would (`watch_id` 0), until the receiver is
    /// dropped; for blocks built on the core.
    pub fn watch(
        &self,
        req: &pb::WatchCreateRequest,
    ) -> CoreResult<mpsc::Receiver<pb::WatchResponse>> {
        let spec = WatchSpec::new(self, req)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run_watcher(
            self.clone(),
            0,
            spec,
            tx,
            Duration::from_secs(600),
        ));
        Ok(rx)
    }
}

/// Streams one watcher's responses into `out` until `out` closes or it is cancelled
/// (abort the task). Sends a cancel response if its start revision was compacted.
pub async fn run_watcher(
    core: Core,
    watch_id: i64,
    spec: WatchSpec,
    out: mpsc::Sender<pb::WatchResponse>,
    progress_every: Duration,
) {
    metrics::watcher_opened();
    let _closed = scopeguard(metrics::watcher_closed);
    let shared = core.shared().clone();
    let interest = shared.watchers.register(&spec.filter);
    let mut next = spec.start_revision;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    loop {
        let scanned = {
            let store = shared.store();
            if next <= store.compact_revision() {
                Err(store.compact_revision())
            } else {
                Ok(store.events_since(next, &spec.filter, MAX_EVENTS_PER_RESPONSE))
            }
        };
        let (events, last) = match scanned {
            Ok(found) => found,
            Err(compact_revision) => {
                let resp = pb::WatchResponse {
                    header: Some(core.header(core.revision())),
                    watch_id,
                    canceled: true,
                    compact_revision,
                    cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                    ..Default::default()
                };
                let _ = out.send(resp).await;
                return;
            }
        };
        if !events.is_empty() {
            let resp = pb::WatchResponse {
                header: Some(core.header(last)),
                watch_id,
                events,
                ..Default::default()
            };
            if out.send(resp).await.is_err() {
                return;
            }
            progress.reset();
        }
        next = next.max(last + 1);
        if next <= core.revision() {
            continue;
        }
        tokio::select! {
            _ = interest.changed() => {}
            _ = progress.tick(), if spec.progress_notify => {
                let resp = pb::WatchResponse { header: Some(core.header(next - 1)), watch_id, ..Default::default() };
                if out.send(resp).await.is_err() {
                    return;
                }
            }
            _ = out.closed() => return,
        }
    }
}

/// The key ranges that running watchers wait on, each with the signal that wakes its watcher.
/// Single-key watchers (lock waiters, clients following one key) are found by their key, and
/// prefix watchers by the changed key's prefixes of the lengths some watcher uses; only other
/// ranges are compared with each changed key.
#[derive(Default)]
pub(crate) struct Interests {
    next_id: AtomicU64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    keys: ByKey,
    prefixes: ByPrefix,
    /// The other ranges, by watcher id.
    ranges: HashMap<u64, Interest>,
}

/// Watchers grouped by a key (or a prefix), each with its id.
#[derive(Default)]
struct ByKey(HashMap<Bytes, Vec<(u64, Arc<Notify>)>>);

impl ByKey {
    fn add(&mut self, key: Bytes, id: u64, wake: &Arc<Notify>) {
        self.0.entry(key).or_default().push((id, Arc::clone(wake)));
    }

    /// Removes watcher `id` of `key`; true if it was the key's last.
    fn remove(&mut self, key: &[u8], id: u64) -> bool {
        let Some(watchers) = self.0.get_mut(key) else {
            return false;
        };
        watchers.retain(|(other, _)| *other != id);
        let last = watchers.is_empty();
        if last {
            self.0.remove(key);
        }
        last
    }

    fn wake(&self, key: &[u8]) {
        for (_, wake) in self.0.get(key).into_iter().flatten() {
            wake.notify_one();
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Notify>> {
        self.0.values().flatten().map(|(_, wake)| wake)
    }
}

/// Prefix watchers, and how many indexed prefixes have each length: a changed key is looked
/// up only at those lengths.
#[derive(Default)]
struct ByPrefix {
    prefixes: ByKey,
    lengths: BTreeMap<usize, usize>,
}

impl ByPrefix {
    fn add(&mut self, prefix: Bytes, id: u64, wake: &Arc<Notify>) {
        if !self.prefixes.0.contains_key(&prefix) {
            *self.lengths.entry(prefix.len()).or_default() += 1;
        }
        self.prefixes.add(prefix, id, wake);
    }

    fn remove(&mut self, prefix: &[u8], id: u64) {
        if !self.prefixes.remove(prefix, id) {
            return;
        }
        if let Some(count) = self.lengths.get_mut(&prefix.len()) {
            *count -= 1;
            if *count == 0 {
                self.lengths.remove(&prefix.len());
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Notify>> {
        self.prefixes.all()
    }

    /// Wakes the watchers of every indexed prefix of `key`.
    fn wake_prefixes_of(&self, key: &[u8]) {
        for &len in self.lengths.keys() {
            match key.get(..len) {
                Some(prefix) => self.prefixes.wake(prefix),
                None => break,
            }
        }
    }
}

struct Interest {
    key: Bytes,
    range_end: Bytes,
    wake: Arc<Notify>,
}

/// Where a watcher is in the index.
enum Place {
    Key(Bytes),
    Prefix(Bytes),
    Range,
}

impl Interests {
    /// Registers `filter`'s key range until the returned handle is dropped.
    pub(crate) fn register(self: &Arc<Self>, filter: &EventFilter) -> Interested {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (key, range_end) = (&filter.key, &filter.range_end);
        let place = if range_end.is_empty() {
            Place::Key(key.clone())
        } else if range_end[..] == prefix_end(key)[..] {
            Place::Prefix(key.clone())
        } else {
            Place::Range
        };
        let mut index = self.index();
        match &place {
            Place::Key(key) => index.keys.add(key.clone(), id, &wake),
            Place::Prefix(prefix) => index.prefixes.add(prefix.clone(), id, &wake),
            Place::Range => {
                let interest = Interest {
                    key: key.clone(),
                    range_end: range_end.clone(),
                    wake: Arc::clone(&wake),
                };
                index.ranges.insert(id, interest);
            }
        }
        Interested {
            interests: Arc::clone(self),
            id,
            place,
            wake,
        }
    }

    /// Wakes the watchers whose range holds one of `changed`.
    pub(crate) fn wake_changed<'a>(&self, changed: impl Iterator<Item = &'a Bytes> + Clone) {
        if changed.clone().next().is_none() {
            return;
        }
        let index = self.index();
        for key in changed.clone() {
            index.keys.wake(key);
            index.prefixes.wake_prefixes_of(key);
        }
        for interest in index.ranges.values() {
            if changed
                .clone()
                .any(|k| in_range(k, &interest.key, &interest.range_end))
            {
                interest.wake.notify_one();
            }
        }
    }

    /// Wakes every watcher: the store was replaced as a whole (a snapshot was installed).
    pub(crate) fn wake_all(&self) {
        let index = self.index();
        let ranges = index.ranges.values().map(|i| &i.wake);
        for wake in index.keys.all().chain(index.prefixes.all()).chain(ranges) {
            wake.notify_one();
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index
            .lock()
            .expect("watch interests lock poisoned only by a panic")
    }
}

/// One watcher's registered range; unregistered when dropped.
pub(crate) struct Interested {
    interests: Arc<Interests>,
    id: u64,
    place: Place,
    wake: Arc<Notify>,
}

impl Interested {
    /// Resolves once a change in the range was applied since the last call returned (at
    /// once if one came meanwhile: a wake-up is kept until it is waited for).
    async fn changed(&self) {
        self.wake.notified().await
    }
}

impl Drop for Interested {
    fn drop(&mut self) {
        let mut index = self.interests.index();
        match &self.place {
            Place::Key(key) => {
                index.keys.remove(key, self.id);
            }
            Place::Prefix(prefix) => index.prefixes.remove(prefix, self.id),
            Place::Range => {
                index.ranges.remove(&self.id);
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: fn()) -> impl Drop {
    struct Guard(fn());
    impl Drop for Guard {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn filter(key: &str, range_end: &str) -> EventFilter {
        EventFilter {
            key: Bytes::copy_from_slice(key.as_bytes()),
            range_end: Bytes::copy_from_slice(range_end.as_bytes()),
            prev_kv: false,
            no_put: false,
            no_delete: false,
        }
    }

    /// Whether a wake-up is waiting for `interest`, consuming it.
    fn woken(interest: &Interested) -> bool {
        interest.changed().now_or_never().is_some()
    }

    #[test]
    fn a_change_wakes_only_the_watchers_of_its_range_and_is_kept_until_waited_for() {
        let interests = Arc::new(Interests::default());
        let key = interests.register(&filter("a", ""));
        let same_key = interests.register(&filter("a", ""));
        let prefix = interests.register(&filter("b/", "b0"));
        let longer_prefix = interests.register(&filter("b/1", "b/2"));
        let everything = interests.register(&filter("", "\0"));
        let from_c = interests.register(&filter("c", "\0"));
        let between = interests.register(&filter("d", "f"));

        let (a, b1, x) = (Bytes::from("a"), Bytes::from("b/1"), Bytes::from("ab"));
        interests.wake_changed([&x].into_iter());
        assert!(woken(&everything));
        for other in [&key, &same_key, &prefix, &longer_prefix, &from_c, &between] {
            assert!(!woken(other));
        }

        interests.wake_changed([&b1].into_iter());
        interests.wake_changed([&b1, &a].into_iter());
        assert!(woken(&key) && woken(&same_key) && woken(&longer_prefix));
        assert!(woken(&prefix), "kept although nobody was waiting");
        assert!(!woken(&prefix), "two wake-ups before a wait are one");
        interests.wake_changed([&Bytes::from("b/2")].into_iter());
        assert!(woken(&prefix) && !woken(&longer_prefix));
        interests.wake_changed([&Bytes::from("e")].into_iter());
        assert!(woken(&from_c) && woken(&between) && !woken(&key));

        interests.wake_all();
        for every in [
            &key,
            &same_key,
            &prefix,
            &longer_prefix,
            &everything,
            &from_c,
        ] {
            assert!(woken(every));
        }

        drop((key, prefix, longer_prefix, everything));
        interests.wake_changed([&a].into_iter());
        assert!(woken(&same_key), "the key's other watcher stays registered");
        drop(same_key);
        let index = interests.index();
        assert!(index.keys.0.is_empty() && index.prefixes.prefixes.0.is_empty());
        assert!(
            index.prefixes.lengths.is_empty(),
            "no length is left to look up"
        );
        assert_eq!(index.ranges.len(), 2, "dropped interests are unregistered");
    }
}
