//! Watchers: each streams the changes of a key or range from a start revision.
//!
//! A watcher pulls from the store's history instead of being pushed to: after each applied
//! batch the state machine publishes the new revision, and every watcher reads the events it
//! has not sent yet. So a slow watcher never blocks writes or other watchers; it falls behind
//! and catches up from history, or, if compaction removed what it still needed, it is
//! cancelled with the compact revision (etcd's "compacted" answer).

use std::time::Duration;

use cella_proto::etcdserverpb::{self as pb, watch_create_request::FilterType};
use tokio::sync::mpsc;

use crate::error::{CoreError, CoreResult};
use crate::metrics;
use crate::mvcc::EventFilter;
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
    let mut revisions = shared.revision.subscribe();
    let mut next = spec.start_revision;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + progress_every, progress_every);
    loop {
        revisions.borrow_and_update();
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
            changed = revisions.changed() => if changed.is_err() { return },
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
