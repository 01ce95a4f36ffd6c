//! Gray releases: labels, ids and percentage select who gets the candidate, on get and on
//! watch, after reconnects; promote and abort move everyone.

use cella_proto::cella::config::v1 as cpb;

use crate::harness::*;

async fn start_gray(
    c: &mut Client,
    data_id: &str,
    content: &str,
    target: cpb::GrayTarget,
) -> cpb::Release {
    c.start_gray(cpb::StartGrayRequest {
        key: key("dev", "g", data_id),
        content: content.into(),
        format: "text".into(),
        author: "ops".into(),
        target: Some(target),
        ..Default::default()
    })
    .await
    .expect("start gray")
    .into_inner()
}

#[tokio::test]
async fn labels_and_ids_select_the_candidate_and_promote_moves_everyone() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "flags", "old", "text").await;
    let candidate = start_gray(
        &mut c,
        "flags",
        "new",
        cpb::GrayTarget {
            labels: [("zone".to_string(), "eu-1".to_string())].into(),
            client_ids: vec!["pod-7".into()],
            percentage: None,
        },
    )
    .await;
    assert!(candidate.gray);
    assert_eq!(candidate.number, 2);

    assert_eq!(
        content_for(
            &mut c,
            "dev",
            "flags",
            identity("pod-1", &[("zone", "eu-1")])
        )
        .await,
        "new"
    );
    assert_eq!(
        content_for(&mut c, "dev", "flags", identity("pod-7", &[])).await,
        "new"
    );
    assert_eq!(
        content_for(
            &mut c,
            "dev",
            "flags",
            identity("pod-2", &[("zone", "us-1")])
        )
        .await,
        "old"
    );
    assert_eq!(content_for(&mut c, "dev", "flags", None).await, "old");

    // Watchers get what their status selects, and only a change when it differs.
    let old_hash = cella_config::content_hash("old");
    let (mut eu, first) = watch(
        &mut c,
        identity("pod-1", &[("zone", "eu-1")]),
        &[("dev", "flags", &old_hash)],
    )
    .await;
    assert_eq!(first.changes.len(), 1);
    assert_eq!(first.changes[0].release.as_ref().unwrap().content, "new");
    let (mut us, first) = watch(
        &mut c,
        identity("pod-2", &[("zone", "us-1")]),
        &[("dev", "flags", &old_hash)],
    )
    .await;
    assert!(
        first.changes.is_empty(),
        "pod-2 already holds what it should: {first:?}"
    );

    c.promote_gray(cpb::GrayActionRequest {
        key: key("dev", "g", "flags"),
        author: "ops".into(),
    })
    .await
    .unwrap();
    let pushed = next(&mut us).await;
    assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "new");
    assert_eq!(content_for(&mut c, "dev", "flags", None).await, "new");
    let s = state(&mut c, "dev", "flags").await;
    assert!(s.gray.is_none());
    assert_eq!(s.current.unwrap().number, 2);

    // eu already had "new": promote changes nothing for it; the next publish reaches it.
    publish(&mut c, "dev", "flags", "newer", "text").await;
    let pushed = next(&mut eu).await;
    assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "newer");
}

#[tokio::test]
async fn abort_returns_gray_clients_to_current_including_after_reconnect() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "svc", "stable", "text").await;
    start_gray(
        &mut c,
        "svc",
        "canary",
        cpb::GrayTarget {
            client_ids: vec!["a".into()],
            ..Default::default()
        },
    )
    .await;

    let (stream, first) = watch(&mut c, identity("a", &[]), &[("dev", "svc", "")]).await;
    assert_eq!(first.changes[0].release.as_ref().unwrap().content, "canary");
    drop(stream);
    // Reconnect holding the candidate's hash: nothing to send.
    let canary = cella_config::content_hash("canary");
    let (mut stream, first) = watch(&mut c, identity("a", &[]), &[("dev", "svc", &canary)]).await;
    assert!(first.changes.is_empty());

    c.abort_gray(cpb::GrayActionRequest {
        key: key("dev", "g", "svc"),
        author: "ops".into(),
    })
    .await
    .unwrap();
    let pushed = next(&mut stream).await;
    assert_eq!(
        pushed.changes[0].release.as_ref().unwrap().content,
        "stable"
    );
    // After abort a reconnect with the candidate's hash is told to go back.
    let (_s, first) = watch(&mut c, identity("a", &[]), &[("dev", "svc", &canary)]).await;
    assert_eq!(first.changes[0].release.as_ref().unwrap().content, "stable");
}

#[tokio::test]
async fn a_percentage_selects_a_stable_share_of_clients() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "pct", "base", "text").await;
    start_gray(
        &mut c,
        "pct",
        "cand",
        cpb::GrayTarget {
            percentage: Some(30),
            ..Default::default()
        },
    )
    .await;
    let mut chosen = Vec::new();
    for i in 0..200 {
        let id = format!("client-{i}");
        let got = content_for(&mut c, "dev", "pct", identity(&id, &[])).await;
        assert_eq!(
            got == "cand",
            cella_config::gray::bucket(&id, "pct") < 30,
            "{id}"
        );
        if got == "cand" {
            chosen.push(id);
        }
    }
    // Same answer on a second asking.
    for id in &chosen {
        assert_eq!(
            content_for(&mut c, "dev", "pct", identity(id, &[])).await,
            "cand"
        );
    }
    let share = chosen.len() as f64 / 2.0;
    assert!(
        (15.0..=45.0).contains(&share),
        "share {share}% of 200 for 30%"
    );
}
