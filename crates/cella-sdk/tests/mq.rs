//! The SDK's broker module against a live `cella up`: a batch of messages goes in one call
//! and is acknowledged in one call; a bad message refuses its whole batch; concurrent single
//! sends through one producer, gathered into shared calls, each get their own answer.

use std::time::Duration;

use cella_sdk::mq::{Consumer, Mq, OutgoingMessage};
use cella_sdk::{Client, Error};
use cella_testkit::{Node, NodeOptions};

const WAIT: Duration = Duration::from_secs(20);

/// A running node with a sync-flush `topic` of `queues` queues, and its broker client.
async fn node_with_topic(topic: &str, queues: u32) -> (Node, Mq) {
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(WAIT).await.expect("cella up becomes ready");
    let client = Client::connect(&node.endpoint()).await.expect("connect");
    let mq = client.mq();
    mq.create_topic(topic, queues, false, true)
        .await
        .expect("topic");
    (node, mq)
}

#[tokio::test]
async fn a_batch_is_sent_in_one_call_and_acked_in_one_call() {
    let (_node, mq) = node_with_topic("orders", 2).await;
    let producer = mq.producer();

    let mut bad: Vec<OutgoingMessage> = (0..4)
        .map(|i| OutgoingMessage::new("orders", format!("m{i}")))
        .collect();
    bad[2] = OutgoingMessage::new("orders", "late").delay(Duration::from_secs(1));
    let refused = producer.send_batch("orders", bad).await;
    assert!(
        matches!(&refused, Err(Error::InvalidArgument { .. })),
        "{refused:?}"
    );
    assert!(
        format!("{refused:?}").contains("messages[2].delay_ms"),
        "{refused:?}"
    );

    let batch = (0..10)
        .map(|i| {
            OutgoingMessage::new("orders", format!("m{i}")).sharding_key(format!("k{}", i % 2))
        })
        .collect();
    let sent = producer.send_batch("orders", batch).await.expect("sent");
    assert_eq!(sent.len(), 10);
    assert_eq!(sent[0].queue_id, sent[2].queue_id, "one key, one queue");

    let mut consumer = Consumer::new(mq.clone(), "billing", "orders");
    let mut deliveries = Vec::new();
    while deliveries.len() < 10 {
        let got = consumer
            .poll(32, Duration::from_secs(2))
            .await
            .expect("poll");
        assert!(
            !got.is_empty(),
            "only the good batch was stored: {deliveries:?}"
        );
        deliveries.extend(got);
    }
    assert_eq!(deliveries.len(), 10, "the refused batch stored nothing");
    consumer.ack_all(&deliveries).await.expect("acked");
    let lag = mq.lag("billing").await.expect("lag");
    assert_eq!(lag.iter().map(|q| q.committed).sum::<u64>(), 10);
    assert!(
        consumer.ack_all(&deliveries[..1]).await.is_err(),
        "acked already"
    );
}

#[tokio::test]
async fn concurrent_sends_each_get_their_own_answer() {
    let (_node, mq) = node_with_topic("events", 4).await;
    let producer = mq.producer();

    const SENDS: usize = 300;
    const BAD: usize = 117;
    let sends = (0..SENDS).map(|i| {
        let producer = producer.clone();
        let mut message = OutgoingMessage::new("events", format!("e{i}"));
        if i == BAD {
            message = message.tag("*");
        }
        tokio::spawn(async move { producer.send(message).await })
    });
    let answers = futures::future::join_all(sends).await;
    let mut ids = std::collections::HashSet::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.expect("send task");
        if i == BAD {
            let error = format!("{answer:?}");
            assert!(
                matches!(answer, Err(Error::InvalidArgument { .. })) && error.contains("tag"),
                "{error}"
            );
        } else {
            let sent = answer.unwrap_or_else(|e| panic!("send {i}: {e}"));
            assert!(ids.insert(sent.id), "ids are unique");
        }
    }

    let mut consumer = Consumer::new(mq.clone(), "audit", "events");
    let mut bodies = std::collections::HashSet::new();
    while bodies.len() < SENDS - 1 {
        let got = consumer
            .poll(256, Duration::from_secs(2))
            .await
            .expect("poll");
        assert!(!got.is_empty(), "{} of {} stored", bodies.len(), SENDS - 1);
        consumer.ack_all(&got).await.expect("acked");
        bodies.extend(
            got.iter()
                .map(|d| String::from_utf8_lossy(d.body()).into_owned()),
        );
    }
    assert!(
        !bodies.contains(&format!("e{BAD}")),
        "the refused message was not stored"
    );
    let lag = mq.lag("audit").await.expect("lag");
    assert_eq!(
        lag.iter().map(|q| q.committed).sum::<u64>(),
        SENDS as u64 - 1
    );
}
