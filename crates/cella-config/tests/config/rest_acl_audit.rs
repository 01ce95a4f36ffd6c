//! REST calls, per-namespace ACLs with bearer tokens, and the audit log.

use cella_proto::cella::config::v1 as cpb;
use serde_json::json;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn rest_publish_get_and_errors_as_json() {
    let server = Server::start().await;
    let (status, _) = server
        .rest("/v1/config/namespaces/create", None, json!({"name": "web"}))
        .await;
    assert_eq!(status, 200);
    let key = json!({"namespace": "web", "group": "g", "data_id": "site.toml"});
    let (status, rel) = server
        .rest(
            "/v1/config/publish",
            None,
            json!({"key": key, "content": "title = \"x\"\n", "format": "toml", "author": "ann"}),
        )
        .await;
    assert_eq!(status, 200, "{rel}");
    assert_eq!(rel["number"], "1");
    let (status, got) = server
        .rest("/v1/config/get", None, json!({"key": key}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["release"]["content"], "title = \"x\"\n");

    let (status, err) = server
        .rest(
            "/v1/config/publish",
            None,
            json!({"key": key, "content": "title = ", "format": "toml"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], Code::InvalidArgument as i32);
    assert!(
        err["message"].as_str().unwrap().contains("not valid toml"),
        "{err}"
    );
    let (status, err) = server
        .rest(
            "/v1/config/gray/start",
            None,
            json!({"key": key, "content": "a = 1", "target": {"percentage": 250}}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("between 0 and 100"),
        "{err}"
    );
    let (status, err) = server
        .rest(
            "/v1/config/publish",
            None,
            json!({"key": key, "content": "a", "base_release": "7"}),
        )
        .await;
    assert_eq!(status, 409, "{err}");

    let doc = server.http("GET", "/openapi.json", &[], "").await;
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    for path in [
        "/v1/config/publish",
        "/v1/config/watch",
        "/nacos/v1/cs/configs/listener",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn acl_tokens_scope_calls_and_the_audit_log_records_who() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "prod").await;
    publish(&mut c, "prod", "app", "v1", "text").await;
    let entries = vec![
        cpb::AclEntry {
            name: "admin".into(),
            token: "admin-token-1".into(),
            read: true,
            write: true,
            publish: true,
        },
        cpb::AclEntry {
            name: "reader".into(),
            token: "reader-token-1".into(),
            read: true,
            ..Default::default()
        },
    ];
    c.set_acl(cpb::SetAclRequest {
        namespace: "prod".into(),
        entries,
    })
    .await
    .unwrap();

    // No token, wrong token, too little permission: refused, nothing changed.
    let err = c
        .get_state(cpb::GetStateRequest {
            key: key("prod", "g", "app"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .get_state(with_token(
            cpb::GetStateRequest {
                key: key("prod", "g", "app"),
            },
            "guess-guess",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let publish_req = || cpb::PublishRequest {
        key: key("prod", "g", "app"),
        content: "v2".into(),
        author: "claimed".into(),
        ..Default::default()
    };
    let err = c
        .publish(with_token(publish_req(), "reader-token-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("publish"), "{}", err.message());
    let s = c
        .get_state(with_token(
            cpb::GetStateRequest {
                key: key("prod", "g", "app"),
            },
            "reader-token-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.current.unwrap().content, "v1");

    // REST carries the token in Authorization.
    let body =
        json!({"key": {"namespace": "prod", "group": "g", "data_id": "app"}, "content": "v2"});
    let (status, _) = server
        .rest("/v1/config/publish", Some("reader-token-1"), body.clone())
        .await;
    assert_eq!(status, 403);
    let (status, _) = server.rest("/v1/config/publish", None, body.clone()).await;
    assert_eq!(status, 401);
    c.publish(with_token(publish_req(), "admin-token-1"))
        .await
        .unwrap();

    // Watching needs read, too.
    let err = c
        .watch(cpb::WatchRequest {
            client: None,
            configs: vec![cpb::WatchedConfig {
                key: key("prod", "g", "app"),
                hash: String::new(),
            }],
            groups: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Other namespaces stay open.
    create_namespace(&mut c, "dev").await;
    publish(&mut c, "dev", "app", "x", "text").await;

    let audit = c
        .audit(with_token(
            cpb::AuditRequest {
                namespace: "prod".into(),
                limit: 0,
            },
            "reader-token-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let seen: Vec<(String, String, u64)> = audit
        .entries
        .iter()
        .map(|e| (e.action.clone(), e.actor.clone(), e.release))
        .collect();
    assert_eq!(
        seen,
        [
            ("publish".to_string(), "admin".to_string(), 2),
            ("acl".to_string(), "anonymous".to_string(), 0),
            ("publish".to_string(), "tester".to_string(), 1),
        ]
    );
    let acl = c
        .get_acl(with_token(
            cpb::GetAclRequest {
                namespace: "prod".into(),
            },
            "reader-token-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        acl.entries.iter().all(|e| e.token.is_empty()),
        "tokens are never returned"
    );
}
