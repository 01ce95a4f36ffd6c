//! What this node remembers of the holds it grants: when each was granted (for a lock's
//! status and the hold-time metric) and when each queue last saw a release through this
//! node (for the hand-over metric).
//!
//! Memory only, and bounded ([`MAX_RECORDS`] per table, the older half dropped when full):
//! a hold granted through another node, or before this node restarted, has no record, and
//! the answers then say "unknown" rather than guess. Nothing here decides who holds a lock;
//! the queue in the core alone does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cella_base::Clock;

use crate::metrics;

/// Most holds (and most queues with a recent release) remembered.
const MAX_RECORDS: usize = 10_000;

/// A grant made through this node.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// The key's create revision (fencing token) when granted.
    revision: i64,
    /// Clock reading at the grant.
    at: Duration,
}

#[derive(Default)]
struct Records {
    /// By ownership key.
    holds: HashMap<Bytes, Hold>,
    /// Last release through this node, by queue prefix.
    releases: HashMap<Bytes, Duration>,
}

/// The node-local grant records; see the module docs. Cheap to share.
pub(crate) struct Grants {
    clock: Arc<dyn Clock>,
    records: Mutex<Records>,
}

/// The queue prefix of an ownership key: everything up to its last `/`.
fn prefix_of(key: &[u8]) -> Bytes {
    let end = key.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
    Bytes::copy_from_slice(&key[..end])
}

/// Keeps the newer half of `table` once it is full.
fn bound<V>(table: &mut HashMap<Bytes, V>, at: impl Fn(&V) -> Duration) {
    if table.len() < MAX_RECORDS {
        return;
    }
    let mut times: Vec<Duration> = table.values().map(&at).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    table.retain(|_, v| at(v) > cut);
}

/// What [`Grants::releasing`] marked, so an abandoned release can be taken back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReleaseMark {
    at: Duration,
    previous: Option<Duration>,
}

impl Grants {
    /// Records read from `clock` (its origin must be the Unix epoch for [`Grants::granted_at`]).
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Grants {
        Grants {
            clock,
            records: Mutex::new(Records::default()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records
            .lock()
            .expect("grant records poisoned only by a panic")
    }

    /// The clock's reading now, to mark when a wait began.
    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Records a grant of `key` (create revision `revision`); `waited_since` is when the
    /// caller began waiting, if it had to. Returns the hand-over time when a release
    /// through this node let it in.
    pub(crate) fn granted(
        &self,
        key: &Bytes,
        revision: i64,
        waited_since: Option<Duration>,
    ) -> Option<Duration> {
        let now = self.clock.now();
        let mut records = self.records();
        bound(&mut records.holds, |h| h.at);
        records
            .holds
            .insert(key.clone(), Hold { revision, at: now });
        let handover = waited_since.and_then(|since| {
            let released = *records.releases.get(&prefix_of(key))?;
            (released >= since).then(|| now.saturating_sub(released))
        });
        drop(records);
        metrics::count_acquisition();
        if let Some(took) = handover {
            metrics::observe_handover(took);
        }
        handover
    }

    /// Marks the start of `key`'s release, before its delete is proposed: the waiter the
    /// delete lets in can be granted before the delete's answer is back, and its hand-over
    /// runs from here. Returns the mark for [`Grants::release_abandoned`].
    pub(crate) fn releasing(&self, key: &[u8]) -> ReleaseMark {
        let now = self.clock.now();
        let mut records = self.records();
        bound(&mut records.releases, |at| *at);
        let previous = records.releases.insert(prefix_of(key), now);
        ReleaseMark { at: now, previous }
    }

    /// Takes back the mark of a release that did not happen (refused, or failed): the
    /// queue's last real release counts again.
    pub(crate) fn release_abandoned(&self, key: &[u8], mark: ReleaseMark) {
        let mut records = self.records();
        let prefix = prefix_of(key);
        if records.releases.get(&prefix) == Some(&mark.at) {
            match mark.previous {
                Some(previous) => records.releases.insert(prefix, previous),
                None => records.releases.remove(&prefix),
            };
        }
    }

    /// Records the release of `key` (its delete is applied); returns how long it was held,
    /// if granted here.
    pub(crate) fn released(&self, key: &[u8]) -> Option<Duration> {
        let now = self.clock.now();
        let held = self
            .records()
            .holds
            .remove(key)
            .map(|hold| now.saturating_sub(hold.at));
        metrics::count_release(held);
        held
    }

    /// When the hold of `key` with create revision `revision` was granted, in ms since the
    /// clock's origin, if this node granted it.
    pub(crate) fn granted_at(&self, key: &[u8], revision: i64) -> Option<u64> {
        self.records()
            .holds
            .get(key)
            .filter(|hold| hold.revision == revision)
            .map(|hold| hold.at.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use cella_base::ManualClock;

    use super::*;

    fn grants() -> (Grants, ManualClock) {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1_700_000_000));
        (Grants::new(Arc::new(clock.clone())), clock)
    }

    #[test]
    fn a_grant_is_remembered_by_key_and_revision_until_released() {
        let (grants, clock) = grants();
        let key = Bytes::from_static(b"orders/1f");
        assert_eq!(grants.granted(&key, 7, None), None);
        let at = clock.now().as_millis() as u64;
        assert_eq!(grants.granted_at(&key, 7), Some(at));
        assert_eq!(grants.granted_at(&key, 8), None, "another hold of the key");
        clock.advance(Duration::from_millis(250));
        assert_eq!(grants.released(&key), Some(Duration::from_millis(250)));
        assert_eq!(grants.granted_at(&key, 7), None);
        assert_eq!(grants.released(&key), None, "released twice: no hold left");
    }

    #[test]
    fn handover_runs_from_the_release_that_let_a_waiter_in() {
        let (grants, clock) = grants();
        let first = Bytes::from_static(b"orders/a");
        let second = Bytes::from_static(b"orders/b");
        grants.granted(&first, 5, None);
        let waiting_since = grants.now();
        clock.advance(Duration::from_millis(40));
        grants.releasing(&first);
        clock.advance(Duration::from_millis(3));
        assert_eq!(
            grants.granted(&second, 6, Some(waiting_since)),
            Some(Duration::from_millis(3))
        );
        // A release before the wait began did not let this waiter in.
        let third = Bytes::from_static(b"orders/c");
        clock.advance(Duration::from_millis(10));
        assert_eq!(grants.granted(&third, 9, Some(grants.now())), None);
        // Releases of another queue do not count either, nor one that did not happen.
        grants.releasing(b"other/x");
        let mark = grants.releasing(b"orders/z");
        grants.release_abandoned(b"orders/z", mark);
        let fourth = Bytes::from_static(b"orders/d");
        assert_eq!(
            grants.granted(&fourth, 11, Some(waiting_since)),
            Some(Duration::from_millis(13))
        );
    }

    #[test]
    fn records_stay_bounded() {
        let (grants, clock) = grants();
        for i in 0..(MAX_RECORDS as i64 + 10) {
            clock.advance(Duration::from_millis(1));
            grants.granted(&Bytes::from(format!("q/{i:x}")), i, None);
        }
        let holds = grants.records().holds.len();
        assert!(holds <= MAX_RECORDS, "{holds} records");
        let newest = Bytes::from(format!("q/{:x}", MAX_RECORDS + 9));
        assert!(grants.granted_at(&newest, MAX_RECORDS as i64 + 9).is_some());
        assert_eq!(prefix_of(b"a/b/c"), Bytes::from_static(b"a/b/"));
        assert_eq!(prefix_of(b"abc"), Bytes::new());
    }
}
