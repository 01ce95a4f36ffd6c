//! Push: one stream watches many configs; it gets only what differs, then changes.

use cella_proto::cella::config::v1 as cpb;

use crate::harness::*;

#[tokio::test]
async fn one_stream_watches_many_configs_and_gets_only_what_differs() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    let a = publish(&mut c, "dev", "a", "1", "text").await;
    publish(&mut c, "dev", "b", "1", "text").await;

    let (mut stream, first) = watch(
        &mut c,
        None,
        &[
            ("dev", "a", &a.hash),
            ("dev", "b", "stale"),
            ("dev", "c", ""),
        ],
    )
    .await;
    let keys: Vec<String> = first
        .changes
        .iter()
        .map(|ch| ch.key.as_ref().unwrap().data_id.clone())
        .collect();
    assert_eq!(
        keys,
        ["b"],
        "only b differs; c does not exist and the client holds none"
    );

    publish(&mut c, "dev", "c", "new", "text").await;
    let pushed = next(&mut stream).await;
    assert_eq!(pushed.changes[0].key.as_ref().unwrap().data_id, "c");
    assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "new");

    // A config outside the watched set changes nothing on the stream; a watched one does.
    publish(&mut c, "dev", "other", "x", "text").await;
    publish(&mut c, "dev", "a", "2", "text").await;
    let pushed = next(&mut stream).await;
    assert_eq!(pushed.changes.len(), 1);
    assert_eq!(pushed.changes[0].key.as_ref().unwrap().data_id, "a");

    c.delete(cella_proto::cella::config::v1::DeleteConfigRequest {
        key: key("dev", "g", "a"),
        author: String::new(),
    })
    .await
    .unwrap();
    let pushed = next(&mut stream).await;
    assert!(pushed.changes[0].deleted);
    assert!(pushed.changes[0].release.is_none());
}

#[tokio::test]
async fn many_watchers_all_receive_a_publish() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    let v1 = publish(&mut c, "dev", "shared", "v1", "text").await;
    // One connection per watcher, as separate client processes would have.
    let mut streams = Vec::new();
    for i in 0..100 {
        let mut own = server.client().await;
        let (s, first) = watch(
            &mut own,
            identity(&format!("w{i}"), &[]),
            &[("dev", "shared", &v1.hash)],
        )
        .await;
        assert!(first.changes.is_empty());
        streams.push(s);
    }
    publish(&mut c, "dev", "shared", "v2", "text").await;
    for s in &mut streams {
        let pushed = next(s).await;
        assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "v2");
    }
}

#[tokio::test]
async fn a_group_watch_covers_configs_created_later_and_reports_deletions() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    let a = publish(&mut c, "dev", "a", "1", "text").await;
    publish(&mut c, "dev", "b", "1", "text").await;

    let req = cpb::WatchRequest {
        client: None,
        configs: vec![cpb::WatchedConfig {
            key: key("dev", "g", "a"),
            hash: a.hash.clone(),
        }],
        groups: vec![cpb::WatchedGroup {
            namespace: "dev".into(),
            group: "g".into(),
        }],
    };
    let mut stream = c.watch(req).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    let ids: Vec<&str> = first
        .changes
        .iter()
        .map(|ch| ch.key.as_ref().unwrap().data_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["b"],
        "the group's config the client does not hold yet"
    );

    // A config of another group is not pushed; one created in the group later is.
    c.publish(cpb::PublishRequest {
        key: key("dev", "other", "x"),
        content: "x".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&mut c, "dev", "later", "new", "text").await;
    let pushed = next(&mut stream).await;
    assert_eq!(pushed.changes.len(), 1);
    assert_eq!(pushed.changes[0].key.as_ref().unwrap().data_id, "later");
    assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "new");

    // Deleting a config of the group pushes the deletion; recreating it pushes it again.
    for _ in 0..2 {
        c.delete(cpb::DeleteConfigRequest {
            key: key("dev", "g", "later"),
            author: String::new(),
        })
        .await
        .unwrap();
        let pushed = next(&mut stream).await;
        assert!(pushed.changes[0].deleted);
        publish(&mut c, "dev", "later", "again", "text").await;
        let pushed = next(&mut stream).await;
        assert_eq!(pushed.changes[0].release.as_ref().unwrap().content, "again");
    }

    let bad = cpb::WatchRequest {
        groups: vec![cpb::WatchedGroup {
            namespace: "dev".into(),
            group: String::new(),
        }],
        ..Default::default()
    };
    let err = c.watch(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("group"), "{}", err.message());
}
