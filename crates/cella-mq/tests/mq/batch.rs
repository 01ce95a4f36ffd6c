//! Batched sends and acks: order and queue choice, and all-or-nothing refusal.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cella_core::gateway::ApiError;
use cella_mq::{Delivery, SendRequest};

use crate::common::{bodies, pull, send, test_config, Harness};

/// A message of a batch (its topic left empty, as a batch allows) with a sharding key.
fn keyed(key: &str, body: &str) -> SendRequest {
    SendRequest {
        sharding_key: Some(key.into()),
        ..send("", body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_in_order_and_keeps_per_key_order_across_batches() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "t", 8, true).await;
    let single = broker
        .send(SendRequest {
            sharding_key: Some("k0".into()),
            ..send("t", "k0:single")
        })
        .await
        .unwrap();
    let mut queue_of_key = BTreeMap::from([("k0".to_string(), single.queue_id)]);
    for round in 0..3 {
        let mut batch: Vec<SendRequest> = (0..20)
            .map(|i| keyed(&format!("k{}", i % 5), &format!("k{}:{round}-{i}", i % 5)))
            .collect();
        batch.push(SendRequest {
            queue_id: Some(6),
            ..send("t", "explicit")
        });
        batch.push(send("", "round-robin"));
        let results = broker.send_batch("t", batch).await.unwrap();
        assert_eq!(results.len(), 22, "one result per message");
        for (i, r) in results[..20].iter().enumerate() {
            let key = format!("k{}", i % 5);
            assert_eq!(
                *queue_of_key.entry(key.clone()).or_insert(r.queue_id),
                r.queue_id,
                "{key} keeps its queue, in a batch as in a single send"
            );
            assert!(!r.delayed && !r.half);
        }
        assert_eq!(results[20].queue_id, 6, "an explicit queue is honoured");
        let ids: HashSet<u128> = results.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 22, "every message has its own id");
    }
    // Each key's messages sit in its queue in send order, across single sends and batches.
    for (key, queue) in &queue_of_key {
        let read = broker
            .store()
            .read_queue("t", *queue, 0, 1000, &[])
            .unwrap();
        let offsets: Vec<u64> = read.messages.iter().map(|m| m.queue_offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] + 1 == w[1]), "{offsets:?}");
        let mine: Vec<String> = bodies(&read.messages)
            .into_iter()
            .filter(|b| b.starts_with(&format!("{key}:")))
            .collect();
        let mut expected: Vec<String> = (0..3)
            .flat_map(|round| {
                (0..20)
                    .filter(|i| format!("k{}", i % 5) == *key)
                    .map(move |i| format!("{key}:{round}-{i}"))
            })
            .collect();
        if key == "k0" {
            expected.insert(0, "k0:single".into());
        }
        assert_eq!(mine, expected, "{key}'s messages in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_anywhere_in_a_batch_refuses_it_whole_and_stores_nothing() {
    let h = Harness::start().await;
    let config = cella_mq::MqConfig {
        max_body_bytes: 1024,
        max_batch: 8,
        ..test_config()
    };
    let broker = h.broker_with_topic(config, "t", 2, false).await;
    let good = || send("", "ok");
    let with_bad = |index: usize, bad: SendRequest| {
        let mut batch: Vec<SendRequest> = (0..5).map(|_| good()).collect();
        batch[index] = bad;
        batch
    };
    let cases = [
        (
            with_bad(
                3,
                SendRequest {
                    body: vec![0; 1025],
                    ..good()
                },
            ),
            "`messages[3].body`",
        ),
        (with_bad(1, send("other", "x")), "`messages[1].topic`"),
        (
            with_bad(
                2,
                SendRequest {
                    delay_ms: 10,
                    ..good()
                },
            ),
            "`messages[2].delay_ms`",
        ),
        (
            with_bad(
                4,
                SendRequest {
                    transaction_group: Some("p".into()),
                    ..good()
                },
            ),
            "`messages[4].transaction_group`",
        ),
        (
            with_bad(
                2,
                SendRequest {
                    queue_id: Some(2),
                    ..good()
                },
            ),
            "`messages[2].queue_id`",
        ),
        (
            with_bad(
                0,
                SendRequest {
                    tag: "*".into(),
                    ..good()
                },
            ),
            "`messages[0].tag`",
        ),
        ((0..9).map(|_| good()).collect(), "`messages` must hold 1-8"),
        (Vec::new(), "`messages` must hold 1-8"),
        (
            (0..3)
                .map(|_| SendRequest {
                    body: vec![0; 400],
                    ..good()
                })
                .collect(),
            "`messages` bodies must total at most 1024",
        ),
    ];
    for (batch, field) in cases {
        let err = broker.send_batch("t", batch).await.unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument, "{err}");
    }
    for queue in 0..2 {
        assert_eq!(
            broker.store().queue_bounds("t", queue).unwrap(),
            (0, 0),
            "nothing was stored"
        );
    }
    let stored = broker
        .send_batch("t", (0..8).map(|_| good()).collect())
        .await
        .unwrap();
    assert_eq!(stored.len(), 8, "a full batch of good messages is stored");
}

fn delivered(messages: &[cella_mq::storage::StoredMessage]) -> Vec<Delivery> {
    messages
        .iter()
        .map(|m| Delivery {
            topic: m.topic.clone(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_batch_with_one_unknown_delivery_acks_none_of_it() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "t", 1, false).await;
    broker
        .send_batch("t", (0..4).map(|i| send("", &format!("m{i}"))).collect())
        .await
        .unwrap();
    let got = broker.pull(&pull("g", "t", "a", 10)).await.unwrap();
    assert_eq!(bodies(&got), vec!["m0", "m1", "m2", "m3"]);
    let mut deliveries = delivered(&got);

    let unknown = Delivery {
        queue_offset: 99,
        ..deliveries[0].clone()
    };
    let mut bad = deliveries.clone();
    bad.insert(2, unknown);
    let err = broker.ack_batch("g", "a", &bad).await.unwrap_err();
    assert!(
        err.to_string().contains("`deliveries[2].offset` 99"),
        "{err}"
    );
    let mut twice = deliveries.clone();
    twice.push(deliveries[1].clone());
    let err = broker.ack_batch("g", "a", &twice).await.unwrap_err();
    assert!(err.to_string().contains("`deliveries[4]."), "{err}");
    let err = broker
        .ack_batch("g", "someone-else", &deliveries)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`deliveries[0]."), "{err}");
    assert_eq!(
        broker.lag("g").await.unwrap()[0].committed,
        0,
        "the refused batches acked nothing"
    );

    // Every delivery is still unacked: one can be acked singly, and the rest come back
    // after the ack timeout.
    broker.ack("g", "a", "t", 0, 0).await.unwrap();
    h.clock.advance(Duration::from_secs(31));
    let again = broker.pull(&pull("g", "t", "a", 10)).await.unwrap();
    assert_eq!(bodies(&again), vec!["m1", "m2", "m3"], "redelivered");
    deliveries = delivered(&again);
    broker.ack_batch("g", "a", &deliveries).await.unwrap();
    let lag = broker.lag("g").await.unwrap();
    assert_eq!((lag[0].committed, lag[0].lag), (4, 0), "all acked at once");
    assert!(broker
        .pull(&pull("g", "t", "a", 10))
        .await
        .unwrap()
        .is_empty());
}
