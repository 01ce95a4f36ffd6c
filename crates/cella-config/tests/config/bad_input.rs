//! Bad input: a clear error naming the field and the rule, and nothing changed.

use cella_proto::cella::config::v1 as cpb;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn bad_publishes_are_refused_and_change_nothing() {
    let server = Server::start_with(1024).await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "app.json", "{\"a\": 1}", "json").await;
    let before = state(&mut c, "dev", "app.json").await;

    let cases: Vec<(cpb::PublishRequest, Code, &str)> = vec![
        (
            cpb::PublishRequest {
                key: key("dev", "g", "app.json"),
                content: "{\"a\": ".into(),
                format: "json".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "not valid json",
        ),
        (
            cpb::PublishRequest {
                key: key("dev", "g", "app.json"),
                content: "a=1\n=2\n".into(),
                format: "properties".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "line 2",
        ),
        (
            cpb::PublishRequest {
                key: key("dev", "g", "app.json"),
                content: "x".repeat(1025),
                format: "text".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "the limit is 1024",
        ),
        (
            cpb::PublishRequest {
                key: key("dev", "g", "app.json"),
                content: "{}".into(),
                format: "xml".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "`format`",
        ),
        (
            cpb::PublishRequest {
                key: key("dev", "g", "bad/id"),
                content: "{}".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "`data_id`",
        ),
        (
            cpb::PublishRequest {
                key: None,
                content: "{}".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "`key`",
        ),
    ];
    for (req, code, needle) in cases {
        let err = c.publish(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(
            err.message().contains(needle),
            "{:?} lacks {needle:?}",
            err.message()
        );
    }
    assert_eq!(state(&mut c, "dev", "app.json").await, before);

    let err = c
        .publish(cpb::PublishRequest {
            key: key("nowhere", "g", "a"),
            content: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("namespace \"nowhere\" not found"),
        "{}",
        err.message()
    );
    let err = c
        .get_state(cpb::GetStateRequest {
            key: key("nowhere", "g", "a"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = c
        .create_namespace(cpb::CreateNamespaceRequest {
            name: "dev".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn bad_gray_targets_are_refused_and_change_nothing() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "feature", "off", "text").await;
    let before = state(&mut c, "dev", "feature").await;
    for (target, needle) in [
        (
            cpb::GrayTarget {
                percentage: Some(101),
                ..Default::default()
            },
            "between 0 and 100",
        ),
        (cpb::GrayTarget::default(), "`target`"),
    ] {
        let err = c
            .start_gray(cpb::StartGrayRequest {
                key: key("dev", "g", "feature"),
                content: "on".into(),
                target: Some(target),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{}", err.message());
    }
    let err = c
        .promote_gray(cpb::GrayActionRequest {
            key: key("dev", "g", "feature"),
            author: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(state(&mut c, "dev", "feature").await, before);
    // A release number the config never had.
    let err = c
        .rollback(cpb::RollbackRequest {
            key: key("dev", "g", "feature"),
            to_release: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(state(&mut c, "dev", "feature").await, before);
}
