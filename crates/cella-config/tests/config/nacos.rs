//! Nacos's v1 HTTP config API with real HTTP requests, as a Nacos client in HTTP mode
//! sends them.

use std::time::Duration;

use crate::harness::*;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("form encodes")
}

#[tokio::test]
async fn publish_get_delete_through_the_nacos_api() {
    let server = Server::start().await;
    let content = "server.port=8080\nname=a b&c\n";
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs",
            &[FORM],
            &form(&[
                ("dataId", "app.properties"),
                ("group", "DEFAULT_GROUP"),
                ("content", content),
                ("type", "properties"),
            ]),
        )
        .await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "true"), "{resp:?}");

    let resp = server
        .http(
            "GET",
            "/nacos/v1/cs/configs?dataId=app.properties&group=DEFAULT_GROUP",
            &[],
            "",
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, content);
    assert_eq!(
        resp.header("content-md5"),
        Some(cella_config::content_hash(content).as_str())
    );
    assert_eq!(resp.header("config-type"), Some("properties"));

    // The same config through Cella's own API: namespace public, group DEFAULT_GROUP.
    let mut c = server.client().await;
    let got = c
        .get(cella_proto::cella::config::v1::GetConfigRequest {
            key: key("public", "DEFAULT_GROUP", "app.properties"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.release.unwrap().content, content);

    // Invalid content for its type is refused with the rule.
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs",
            &[FORM],
            &form(&[
                ("dataId", "bad.json"),
                ("group", "DEFAULT_GROUP"),
                ("content", "{"),
                ("type", "json"),
            ]),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("not valid json"), "{}", resp.body);

    let resp = server
        .http(
            "DELETE",
            "/nacos/v1/cs/configs?dataId=app.properties&group=DEFAULT_GROUP",
            &[],
            "",
        )
        .await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "true"));
    let resp = server
        .http(
            "GET",
            "/nacos/v1/cs/configs?dataId=app.properties&group=DEFAULT_GROUP",
            &[],
            "",
        )
        .await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.body, "config data not exist");

    let resp = server
        .http(
            "GET",
            "/nacos/v1/cs/configs?dataId=x&group=DEFAULT_GROUP&tenant=nope",
            &[],
            "",
        )
        .await;
    assert_eq!(resp.status, 404);
    assert!(
        resp.body.contains("namespace \"nope\" not found"),
        "{}",
        resp.body
    );
}

fn listening(entries: &[(&str, &str, &str, &str)]) -> String {
    let mut v = String::new();
    for (data_id, group, md5, tenant) in entries {
        v.push_str(&format!("{data_id}\u{2}{group}\u{2}{md5}"));
        if !tenant.is_empty() {
            v.push_str(&format!("\u{2}{tenant}"));
        }
        v.push('\u{1}');
    }
    form(&[("Listening-Configs", &v)])
}

#[tokio::test]
async fn the_long_polling_listener_answers_changes_or_times_out_empty() {
    let server = Server::start().await;
    let mut c = server.client().await;
    create_namespace(&mut c, "dev").await;
    let publish_form = |id: &str, content: &str, tenant: &str| {
        form(&[
            ("dataId", id),
            ("group", "DEFAULT_GROUP"),
            ("content", content),
            ("tenant", tenant),
        ])
    };
    server
        .http(
            "POST",
            "/nacos/v1/cs/configs",
            &[FORM],
            &publish_form("a", "1", ""),
        )
        .await;
    server
        .http(
            "POST",
            "/nacos/v1/cs/configs",
            &[FORM],
            &publish_form("b", "1", "dev"),
        )
        .await;
    let md5 = cella_config::content_hash("1");

    // A stale md5 is answered at once, URL-encoded as Nacos clients parse it.
    let body = listening(&[
        ("a", "DEFAULT_GROUP", "old", ""),
        ("b", "DEFAULT_GROUP", &md5, "dev"),
    ]);
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[FORM, ("Long-Pulling-Timeout", "30000")],
            &body,
        )
        .await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "a%02DEFAULT_GROUP%01")
    );

    // Up to date: held until the timeout, then an empty answer.
    let body = listening(&[
        ("a", "DEFAULT_GROUP", &md5, ""),
        ("b", "DEFAULT_GROUP", &md5, "dev"),
    ]);
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[FORM, ("Long-Pulling-Timeout", "1000")],
            &body,
        )
        .await;
    assert_eq!((resp.status, resp.body.as_str()), (200, ""));

    // Up to date, then a publish during the hold: answered with the changed key.
    let addr = server.addr.clone();
    let hold = tokio::spawn(async move {
        cella_testkit::http_request(
            &addr,
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[FORM, ("Long-Pulling-Timeout", "20000")],
            body.as_bytes(),
            WAIT + WAIT,
        )
        .await
    });
    // Publish until the held request answers (it may not be registered at the first try).
    let mut n = 2;
    let resp = loop {
        server
            .http(
                "POST",
                "/nacos/v1/cs/configs",
                &[FORM],
                &publish_form("b", &n.to_string(), "dev"),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if hold.is_finished() || n > 50 {
            break hold.await.expect("join").expect("listener answer");
        }
        n += 1;
    };
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "b%02DEFAULT_GROUP%02dev%01")
    );

    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[FORM],
            &form(&[("Listening-Configs", "junk")]),
        )
        .await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("Listening-Configs"), "{}", resp.body);
}

#[tokio::test]
async fn beta_ips_get_the_gray_release_until_it_is_stopped() {
    let server = Server::start().await;
    let path = "/nacos/v1/cs/configs?dataId=beta.txt&group=DEFAULT_GROUP";
    let publish = |content: &str| form(&[("dataId", "beta.txt"), ("content", content)]);
    let resp = server
        .http("POST", "/nacos/v1/cs/configs", &[FORM], &publish("stable"))
        .await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "true"));
    // A beta for 10.0.0.7 and for this test's own address, 127.0.0.1.
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs",
            &[FORM, ("betaIps", "10.0.0.7, 127.0.0.1")],
            &publish("candidate"),
        )
        .await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "true"), "{resp:?}");

    let as_client = |ip: &'static str| [("X-Forwarded-For", ip)];
    let beta = server
        .http("GET", path, &as_client("10.0.0.7, 192.0.2.1"), "")
        .await;
    assert_eq!(beta.body, "candidate");
    assert_eq!(beta.header("isBeta"), Some("true"));
    let other = server.http("GET", path, &as_client("10.0.0.8"), "").await;
    assert_eq!(other.body, "stable");
    assert_eq!(other.header("isBeta"), Some("false"));
    // No forwarding header: the connection's address decides.
    let own = server.http("GET", path, &[], "").await;
    assert_eq!(own.body, "candidate");

    // The listener compares with what the client's gray status selects.
    let stable_md5 = cella_config::content_hash("stable");
    let body = listening(&[("beta.txt", "DEFAULT_GROUP", &stable_md5, "")]);
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[
                FORM,
                ("Long-Pulling-No-Hangup", "true"),
                ("X-Real-IP", "10.0.0.7"),
            ],
            &body,
        )
        .await;
    assert_eq!(resp.body, "beta.txt%02DEFAULT_GROUP%01");
    let resp = server
        .http(
            "POST",
            "/nacos/v1/cs/configs/listener",
            &[
                FORM,
                ("Long-Pulling-No-Hangup", "true"),
                ("X-Real-IP", "10.0.0.8"),
            ],
            &body,
        )
        .await;
    assert_eq!(resp.body, "");

    // A plain publish during the beta is refused and changes nothing.
    let resp = server
        .http("POST", "/nacos/v1/cs/configs", &[FORM], &publish("other"))
        .await;
    assert_eq!(resp.status, 409, "{resp:?}");
    let info = server
        .http("GET", &format!("{path}&beta=true"), &[], "")
        .await;
    let info: serde_json::Value = serde_json::from_str(&info.body).expect("beta info is JSON");
    assert_eq!(info["data"]["content"], "candidate");
    assert_eq!(info["data"]["betaIps"], "10.0.0.7,127.0.0.1");

    // Stopping the beta puts every client back on the stable release.
    let resp = server
        .http("DELETE", &format!("{path}&beta=true"), &[], "")
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let stopped: serde_json::Value = serde_json::from_str(&resp.body).expect("JSON");
    assert_eq!(stopped["data"], true);
    let beta = server.http("GET", path, &as_client("10.0.0.7"), "").await;
    assert_eq!(beta.body, "stable");
    let info = server
        .http("GET", &format!("{path}&beta=true"), &[], "")
        .await;
    let info: serde_json::Value = serde_json::from_str(&info.body).expect("JSON");
    assert_eq!(info["data"], serde_json::Value::Null);
}
