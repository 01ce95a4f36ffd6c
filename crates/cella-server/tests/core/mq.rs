//! The message broker as mounted in a node: gRPC and REST on the node's port, errors
//! mapped to statuses, `/openapi.json` listing its paths, messages kept across a restart.

use cella_proto::cella::mq::v1 as mq;
use mq::message_queue_client::MessageQueueClient;
use tonic::transport::Channel;

use crate::harness::{config, http, sample, scrape, TestNode};

async fn client(node: &TestNode) -> MessageQueueClient<Channel> {
    MessageQueueClient::connect(node.endpoint())
        .await
        .expect("connect")
}

fn small(dir: &std::path::Path) -> cella_server::ServerConfig {
    let mut c = config(dir);
    c.mq.segment_bytes = 1 << 20;
    c.mq.max_body_bytes = 4096;
    c
}

#[tokio::test]
async fn grpc_send_pull_ack_and_lag_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(small(dir.path())).await;
    let mut c = client(&node).await;
    let topic = c
        .create_topic(mq::CreateTopicRequest {
            name: "orders".into(),
            queues: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (topic.queues, topic.flush),
        (2, mq::FlushPolicy::Sync as i32)
    );
    let sent = c
        .send(mq::SendRequest {
            topic: "orders".into(),
            sharding_key: "o-1".into(),
            body: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.message_id.len(), 32);
    let pull = mq::PullRequest {
        group: "g".into(),
        topic: "orders".into(),
        member: "m".into(),
        max_messages: 10,
        wait_ms: 1000,
        ..Default::default()
    };
    let got = c.pull(pull.clone()).await.unwrap().into_inner().messages;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (&got[0].body[..], got[0].message_id.as_str()),
        (&b"hello"[..], sent.message_id.as_str())
    );
    c.ack(mq::AckRequest {
        group: "g".into(),
        member: "m".into(),
        topic: "orders".into(),
        queue_id: got[0].queue_id,
        queue_offset: 0,
    })
    .await
    .unwrap();
    let status = c
        .ack(mq::AckRequest {
            group: "g".into(),
            member: "m".into(),
            topic: "orders".into(),
            queue_id: got[0].queue_id,
            queue_offset: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("`offset` 5"),
        "{}",
        status.message()
    );
    node.stop().await;

    let node = TestNode::start(small(dir.path())).await;
    let mut c = client(&node).await;
    let c2 = c
        .send(mq::SendRequest {
            topic: "orders".into(),
            sharding_key: "o-1".into(),
            body: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c2.queue_id, c2.queue_offset),
        (sent.queue_id, 1),
        "the queue continues after a restart"
    );
    let got = c
        .pull(mq::PullRequest { wait_ms: 0, ..pull })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(
        got.iter().map(|m| m.body.to_vec()).collect::<Vec<_>>(),
        vec![b"again".to_vec()],
        "the acked message stays acked"
    );
    let lag = c
        .lag(mq::LagRequest {
            group: "g".into(),
            local: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(lag.queues.iter().any(|q| q.end == 2 && q.committed == 1));
}

#[tokio::test]
async fn rest_routes_work_and_bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(dir.path());
    cfg.mq.auto_create_topics = false;
    let node = TestNode::start(cfg).await;
    let addr = node.addr.clone();

    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/topics/ghost/messages",
        r#"{"body":"aGk="}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("topic `ghost` not found"), "{body}");
    let (status, _) = http(&addr, "POST", "/v1/mq/topics", r#"{"name":"t","queues":1}"#)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = http(&addr, "GET", "/v1/mq/topics", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""name":"t""#), "{body}");
    let (status, body) = http(&addr, "GET", "/v1/mq/topics/t/route", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let route: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(route["topic"]["queues"], 1, "{body}");
    assert_eq!(route["brokers"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(route["brokers"][0]["address"], addr.as_str(), "{body}");
    assert_eq!(route["answered_by"], "1", "{body}");
    let (status, body) = http(&addr, "GET", "/v1/mq/topics/ghost/route", "")
        .await
        .unwrap();
    assert_eq!(
        status, 404,
        "no route for a topic a send may not create: {body}"
    );
    let (status, body) = http(&addr, "GET", "/v1/mq/topics/bad%20name/route", "")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`topic`"), "{body}");

    let big = format!(r#"{{"body":"{}"}}"#, "QUFB".repeat(2000));
    let (status, body) = http(&addr, "POST", "/v1/mq/topics/t/messages", &big)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`body` is 6000 bytes, the limit is 4096"),
        "{body}"
    );
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/topics/t/messages",
        r#"{"body":"aGk=","delay_ms":"999999999999"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("`delay_ms`"), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/topics/t/messages",
        r#"{"body":"aGk=","tag":"new"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // proto3 JSON leaves out zero values: offset 0 means nothing was stored before it.
    assert!(
        body.contains("message_id") && !body.contains("queue_offset"),
        "only the good message was stored: {body}"
    );

    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/pull",
        r#"{"group":"g","topic":"t","member":"m","tags":["new"]}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""body":"aGk=""#), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/ack",
        r#"{"group":"g","member":"m","topic":"t","queue_id":0,"queue_offset":"3"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(
        &addr,
        "POST",
        "/v1/mq/ack",
        r#"{"group":"g","member":"m","topic":"t","queue_id":0,"queue_offset":"0"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = http(&addr, "GET", "/v1/mq/groups/g/lag", "").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#""committed":"1""#), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/pull",
        r#"{"group":"g","topic":"t","member":"m","wait_ms":"60000"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("`wait_ms`"), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/pull",
        r#"{"group":"g","topic":"t","member":"m","bogus":1}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    let (status, body) = http(
        &addr,
        "PUT",
        "/v1/mq/groups/g/subscriptions/t",
        r#"{"max_backlog":"100","overflow":"OVERFLOW_DEAD_LETTER"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("OVERFLOW_DEAD_LETTER"), "{body}");
    let (status, body) = http(
        &addr,
        "PUT",
        "/v1/mq/groups/g/subscriptions/t",
        r#"{"overflow":"SOMETIMES"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    let bad_batch = format!(
        r#"{{"messages":[{{"body":"aGk="}},{{"body":"{}"}}]}}"#,
        "QUFB".repeat(2000)
    );
    let (status, body) = http(&addr, "POST", "/v1/mq/topics/t/messages/batch", &bad_batch)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`messages[1].body` is 6000 bytes"), "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/topics/t/messages/batch",
        r#"{"messages":[{"body":"YQ=="},{"body":"Yg=="}]}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""queue_offset":"1""#) && body.contains(r#""queue_offset":"2""#),
        "the refused batch stored nothing: {body}"
    );
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/mq/pull",
        r#"{"group":"g","topic":"t","member":"m"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let acks = |offsets: &[u64]| {
        let deliveries: Vec<String> = offsets
            .iter()
            .map(|o| format!(r#"{{"topic":"t","queue_id":0,"queue_offset":"{o}"}}"#))
            .collect();
        format!(
            r#"{{"group":"g","member":"m","deliveries":[{}]}}"#,
            deliveries.join(",")
        )
    };
    let (status, body) = http(&addr, "POST", "/v1/mq/ack-batch", &acks(&[1, 7, 2]))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`deliveries[1].offset` 7"), "{body}");
    let (status, body) = http(&addr, "POST", "/v1/mq/ack-batch", &acks(&[1, 2]))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, body) = http(&addr, "GET", "/v1/mq/groups/g/lag", "").await.unwrap();
    assert!(body.contains(r#""committed":"3""#), "{body}");

    let (_, doc) = http(&addr, "GET", "/openapi.json", "").await.unwrap();
    for path in [
        "/v1/mq/topics",
        "/v1/mq/pull",
        "/v1/mq/ack",
        "/v1/mq/ack-batch",
        "/v1/mq/topics/{topic}/messages/batch",
        "/v1/mq/groups/{group}/lag",
    ] {
        assert!(doc.contains(path), "{path} missing from /openapi.json");
    }
}

#[tokio::test]
async fn a_half_message_is_delivered_only_after_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(small(dir.path())).await;
    let mut c = client(&node).await;
    let half = c
        .send(mq::SendRequest {
            topic: "pay".into(),
            transaction_group: "payments".into(),
            body: "charged".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(half.half);
    let pull = mq::PullRequest {
        group: "g".into(),
        topic: "pay".into(),
        member: "m".into(),
        max_messages: 10,
        ..Default::default()
    };
    assert!(c
        .pull(pull.clone())
        .await
        .unwrap()
        .into_inner()
        .messages
        .is_empty());
    let bad = c
        .end_transaction(mq::EndTransactionRequest {
            message_id: "xyz".into(),
            commit: true,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let unknown = c
        .end_transaction(mq::EndTransactionRequest {
            message_id: format!("{:032x}", 7),
            commit: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    c.end_transaction(mq::EndTransactionRequest {
        message_id: half.message_id.clone(),
        commit: true,
    })
    .await
    .unwrap();
    let got = c.pull(pull).await.unwrap().into_inner().messages;
    assert_eq!(
        got.iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        vec![half.message_id.as_str()]
    );
}

#[tokio::test]
async fn metrics_follow_appends_lag_retries_dead_letters_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(dir.path());
    cfg.mq.retry_backoff_ms = vec![200];
    cfg.mq.max_retries = 1;
    let node = TestNode::start(cfg).await;
    let mut c = client(&node).await;
    let before = scrape(&node).await;
    assert_eq!(
        sample(
            &before,
            "cella_mq_appended_messages_total",
            &[r#"topic="metered""#]
        ),
        None
    );
    assert_eq!(sample(&before, "cella_mq_delayed_pending", &[]), Some(0.0));
    c.create_topic(mq::CreateTopicRequest {
        name: "metered".into(),
        queues: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    for body in ["a", "bb", "ccc"] {
        c.send(mq::SendRequest {
            topic: "metered".into(),
            body: body.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let pull = mq::PullRequest {
        group: "metered-group".into(),
        topic: "metered".into(),
        member: "m".into(),
        max_messages: 10,
        wait_ms: 1000,
        ..Default::default()
    };
    let got = c.pull(pull.clone()).await.unwrap().into_inner().messages;
    assert_eq!(got.len(), 3);

    let sent = scrape(&node).await;
    let topic = [r#"topic="metered""#];
    assert_eq!(
        sample(&sent, "cella_mq_appended_messages_total", &topic),
        Some(3.0)
    );
    let bytes = sample(&sent, "cella_mq_appended_bytes_total", &topic).unwrap();
    assert!(bytes > 6.0, "records carry the bodies and headers: {bytes}");
    assert!(sample(&sent, "cella_mq_fsync_seconds_count", &[]).unwrap() >= 1.0);
    assert!(sample(&sent, "cella_mq_appends_per_fsync_sum", &[]).unwrap() >= 3.0);
    let group = [r#"group="metered-group""#, r#"topic="metered""#];
    assert_eq!(
        sample(&sent, "cella_mq_consumer_lag", &group),
        Some(3.0),
        "delivered, not acked"
    );

    let ack = |m: &mq::Message| mq::AckRequest {
        group: "metered-group".into(),
        member: "m".into(),
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
    };
    c.ack(ack(&got[0])).await.unwrap();
    c.ack(ack(&got[1])).await.unwrap();
    c.nack(ack(&got[2])).await.unwrap();
    let nacked = scrape(&node).await;
    assert_eq!(sample(&nacked, "cella_mq_consumer_lag", &group), Some(0.0));
    let by_group = [r#"group="metered-group""#];
    assert_eq!(
        sample(&nacked, "cella_mq_retries_total", &by_group),
        Some(1.0)
    );
    assert_eq!(sample(&nacked, "cella_mq_delayed_pending", &[]), Some(1.0));

    // The retry comes back after its backoff; nacked again, it is dead-lettered.
    let mut retried = Vec::new();
    for _ in 0..20 {
        retried = c.pull(pull.clone()).await.unwrap().into_inner().messages;
        if !retried.is_empty() {
            break;
        }
    }
    assert_eq!(retried.len(), 1, "the nacked message is delivered again");
    assert_eq!(retried[0].body, "ccc");
    c.nack(ack(&retried[0])).await.unwrap();
    let dead = scrape(&node).await;
    assert_eq!(
        sample(&dead, "cella_mq_dead_lettered_total", &by_group),
        Some(1.0)
    );
    assert_eq!(sample(&dead, "cella_mq_delayed_pending", &[]), Some(0.0));
    node.stop().await;
}
