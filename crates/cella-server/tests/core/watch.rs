//! Watch over gRPC: create, events, filters, cancel, progress, history, compaction.

use std::time::Duration;

use cella_proto::etcdserverpb::{self as pb, watch_create_request::FilterType, watch_request};
use cella_proto::mvccpb::event::EventType;
use futures::channel::mpsc::UnboundedSender;
use tonic::Streaming;

use crate::harness::{b, put, TestNode, WAIT};

struct Session {
    requests: UnboundedSender<pb::WatchRequest>,
    answers: Streaming<pb::WatchResponse>,
}

impl Session {
    async fn open(node: &TestNode) -> Session {
        let (requests, outbound) = futures::channel::mpsc::unbounded();
        let answers = node
            .watch()
            .await
            .watch(outbound)
            .await
            .expect("watch stream")
            .into_inner();
        Session { requests, answers }
    }

    fn send(&self, request: watch_request::RequestUnion) {
        self.requests
            .unbounded_send(pb::WatchRequest {
                request_union: Some(request),
            })
            .expect("send on the watch stream");
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> pb::WatchResponse {
        self.send(watch_request::RequestUnion::CreateRequest(create));
        let created = self.next().await;
        assert!(
            created.created,
            "first answer confirms the create: {created:?}"
        );
        created
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(WAIT, self.answers.message())
            .await
            .expect("a watch answer within the wait")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Collects events until `n` have arrived.
    async fn events(&mut self, n: usize) -> Vec<cella_proto::mvccpb::Event> {
        let mut events = Vec::new();
        while events.len() < n {
            let resp = self.next().await;
            assert!(!resp.canceled, "unexpected cancel: {resp:?}");
            events.extend(resp.events);
        }
        assert_eq!(events.len(), n, "no more events than expected");
        events
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.answers.message()).await;
        assert!(got.is_err(), "expected silence, got {got:?}");
    }
}

fn on_prefix(prefix: &str) -> pb::WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    pb::WatchCreateRequest {
        key: b(prefix),
        range_end: end.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_prev_kv_filters_cancel_and_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;
    let mut session = Session::open(&node).await;

    let all = session
        .create(pb::WatchCreateRequest {
            prev_kv: true,
            ..on_prefix("w/")
        })
        .await;
    let deletes = session
        .create(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            watch_id: 77,
            ..on_prefix("w/")
        })
        .await;
    assert_eq!(deletes.watch_id, 77);
    assert_ne!(all.watch_id, 77);

    put(&mut kv, "w/a", "1").await; // 2
    put(&mut kv, "elsewhere", "x").await; // 3
    put(&mut kv, "w/a", "2").await; // 4
    kv.delete_range(pb::DeleteRangeRequest {
        key: b("w/a"),
        ..Default::default()
    })
    .await
    .expect("delete"); // 5

    // Four events in all: three on watcher `all`, one on `deletes`, in some interleaving.
    let mut by_watcher: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
    let mut seen = 0;
    while seen < 4 {
        let resp = session.next().await;
        seen += resp.events.len();
        if !resp.events.is_empty() {
            assert_eq!(
                resp.header.as_ref().expect("header").revision,
                resp.events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .expect("kv")
                    .mod_revision
            );
        }
        by_watcher
            .entry(resp.watch_id)
            .or_default()
            .extend(resp.events);
    }
    let events = &by_watcher[&all.watch_id];
    let kinds: Vec<(i32, i64)> = events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().expect("kv").mod_revision))
        .collect();
    let (p, d) = (EventType::Put as i32, EventType::Delete as i32);
    assert_eq!(kinds, [(p, 2), (p, 4), (d, 5)]);
    assert!(events[0].prev_kv.is_none());
    assert_eq!(events[1].prev_kv.as_ref().expect("prev").value, b("1"));
    assert_eq!(events[2].prev_kv.as_ref().expect("prev").value, b("2"));
    let only_delete = &by_watcher[&77];
    assert_eq!(only_delete.len(), 1);
    assert_eq!(only_delete[0].r#type, d);
    assert!(only_delete[0].prev_kv.is_none(), "prev_kv not asked for");

    // Progress: answered for the stream with the current revision.
    session.send(watch_request::RequestUnion::ProgressRequest(
        pb::WatchProgressRequest {},
    ));
    let progress = session.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert_eq!(progress.header.expect("header").revision, 5);

    // Cancel one watcher; the other still gets events.
    session.send(watch_request::RequestUnion::CancelRequest(
        pb::WatchCancelRequest { watch_id: 77 },
    ));
    let canceled = session.next().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, 77);
    put(&mut kv, "w/b", "1").await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: b("w/b"),
        ..Default::default()
    })
    .await
    .expect("delete");
    let events = session.events(2).await;
    assert_eq!(events[1].r#type, d);
    session.quiet().await;

    // A duplicate watch id is refused on its own.
    let five = pb::WatchCreateRequest {
        watch_id: 5,
        ..on_prefix("x/")
    };
    assert!(!session.create(five.clone()).await.canceled);
    let dup = session.create(five).await;
    assert!(dup.canceled && dup.cancel_reason.contains("watch_id"));
    drop(kv);
    drop(session);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_revision_in_the_past_replays_and_a_compacted_one_is_canceled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path()).await;
    let mut kv = node.kv().await;
    for i in 0..5 {
        put(&mut kv, "h/k", &i.to_string()).await; // revisions 2..=6
    }

    let mut session = Session::open(&node).await;
    session
        .create(pb::WatchCreateRequest {
            start_revision: 3,
            ..on_prefix("h/")
        })
        .await;
    let events = session.events(4).await;
    let revs: Vec<i64> = events
        .iter()
        .map(|e| e.kv.as_ref().expect("kv").mod_revision)
        .collect();
    assert_eq!(revs, [3, 4, 5, 6]);
    put(&mut kv, "h/k", "live").await; // 7
    let live = session.events(1).await;
    assert_eq!(live[0].kv.as_ref().expect("kv").value, b("live"));

    kv.compact(pb::CompactionRequest {
        revision: 5,
        physical: false,
    })
    .await
    .expect("compact");
    let mut late = Session::open(&node).await;
    let created = late
        .create(pb::WatchCreateRequest {
            start_revision: 2,
            ..on_prefix("h/")
        })
        .await;
    let canceled = late.next().await;
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.watch_id, created.watch_id);
    assert_eq!(canceled.compact_revision, 5);
    assert!(canceled.cancel_reason.contains("compacted"));
    // After the compact revision, history is still there.
    let mut fine = Session::open(&node).await;
    fine.create(pb::WatchCreateRequest {
        start_revision: 6,
        ..on_prefix("h/")
    })
    .await;
    assert_eq!(fine.events(2).await.len(), 2);
    // A bad create is answered, not fatal to the stream.
    let bad = fine
        .create(pb::WatchCreateRequest {
            key: b("z"),
            range_end: b("a"),
            ..Default::default()
        })
        .await;
    assert!(
        bad.canceled && bad.cancel_reason.contains("range_end"),
        "{bad:?}"
    );
    drop((kv, session, late, fine));
    node.stop().await;
}
