//! Releases: numbering, history, diff, rollback, optimistic concurrency, delete.

use cella_proto::cella::config::v1 as cpb;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn releases_are_numbered_with_history_diff_and_rollback() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    let one = publish(&mut c, "dev", "app.yaml", "port: 80\nname: a\n", "yaml").await;
    let two = publish(&mut c, "dev", "app.yaml", "port: 81\nname: a\n", "yaml").await;
    assert_eq!((one.number, two.number), (1, 2));
    assert_eq!(two.hash, cella_config::content_hash("port: 81\nname: a\n"));
    assert_eq!(two.author, "tester");
    assert!(
        two.created_unix_ms > 1_700_000_000_000,
        "wall-clock ms: {}",
        two.created_unix_ms
    );

    let history = c
        .history(cpb::HistoryRequest {
            key: key("dev", "g", "app.yaml"),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<u64> = history.releases.iter().map(|r| r.number).collect();
    assert_eq!(numbers, [2, 1]);

    let diff = c
        .diff(cpb::DiffRequest {
            key: key("dev", "g", "app.yaml"),
            from_release: 1,
            to_release: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(diff.unified, "-port: 80\n+port: 81\n name: a\n");

    let back = c
        .rollback(cpb::RollbackRequest {
            key: key("dev", "g", "app.yaml"),
            to_release: 1,
            author: "ops".into(),
            comment: "bad port".into(),
            base_release: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.number, 3);
    assert_eq!(back.content, one.content);
    assert_eq!(back.hash, one.hash);
    assert_eq!(
        content_for(&mut c, "dev", "app.yaml", None).await,
        "port: 80\nname: a\n"
    );
    // Old releases stay readable by number.
    let old = c
        .get(cpb::GetConfigRequest {
            key: key("dev", "g", "app.yaml"),
            client: None,
            release: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.release.unwrap().content, "port: 81\nname: a\n");
}

#[tokio::test]
async fn a_stale_base_is_refused_and_changes_nothing() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "db", "a", "text").await;
    publish(&mut c, "dev", "db", "b", "text").await;
    let before = state(&mut c, "dev", "db").await;
    let err = c
        .publish(cpb::PublishRequest {
            key: key("dev", "g", "db"),
            content: "c".into(),
            base_release: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("base_release"), "{}", err.message());
    assert_eq!(state(&mut c, "dev", "db").await, before);
    // base 0 means "must not exist yet".
    let err = c
        .publish(cpb::PublishRequest {
            key: key("dev", "g", "db"),
            content: "c".into(),
            base_release: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let ok = c
        .publish(cpb::PublishRequest {
            key: key("dev", "g", "db"),
            content: "c".into(),
            base_release: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.number, 3);
}

#[tokio::test]
async fn concurrent_publishers_on_one_base_have_exactly_one_winner() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "race", "v0", "text").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = server.client().await;
        tasks.push(tokio::spawn(async move {
            c.publish(cpb::PublishRequest {
                key: key("dev", "g", "race"),
                content: format!("v{i}"),
                base_release: Some(1),
                ..Default::default()
            })
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(state(&mut c, "dev", "race").await.latest_number, 2);
}

#[tokio::test]
async fn delete_removes_config_and_history_and_namespaces_delete_when_empty() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "tmp").await;
    publish(&mut c, "tmp", "x", "1", "text").await;
    let err = c
        .delete_namespace(cpb::DeleteNamespaceRequest { name: "tmp".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let deleted = c
        .delete(cpb::DeleteConfigRequest {
            key: key("tmp", "g", "x"),
            author: "me".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let err = c
        .get_state(cpb::GetStateRequest {
            key: key("tmp", "g", "x"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.delete_namespace(cpb::DeleteNamespaceRequest { name: "tmp".into() })
        .await
        .unwrap();
    let err = c
        .get_state(cpb::GetStateRequest {
            key: key("tmp", "g", "x"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("namespace"), "{}", err.message());
    let names: Vec<String> = c
        .list_namespaces(cpb::ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["public"]);
}
