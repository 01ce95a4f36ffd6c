//! Broker scenarios: produce and consume, groups, acks, bad input, restart.

use std::time::Duration;

use cella_mq::{FlushPolicy, GroupMode, MqError, PullRequest, SendRequest, StartFrom};

use crate::common::{bodies, pull, send, test_config, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_reads_from_the_first_message_and_acks_survive_a_restart() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "orders", 1, false).await;
    for i in 0..5 {
        let r = broker.send(send("orders", &format!("m{i}"))).await.unwrap();
        assert_eq!((r.queue_id, r.queue_offset), (0, i));
    }
    let got = broker.pull(&pull("g", "orders", "c1", 3)).await.unwrap();
    assert_eq!(bodies(&got), vec!["m0", "m1", "m2"]);
    for m in &got {
        broker
            .ack("g", "c1", "orders", 0, m.queue_offset)
            .await
            .unwrap();
    }
    let lag = broker.lag("g").await.unwrap();
    assert_eq!((lag[0].committed, lag[0].end, lag[0].lag), (3, 5, 2));
    broker.close();
    drop(broker);

    let broker = h.broker(test_config());
    let got = broker.pull(&pull("g", "orders", "c2", 10)).await.unwrap();
    assert_eq!(
        bodies(&got),
        vec!["m3", "m4"],
        "acked messages are not delivered again"
    );
    let latest = PullRequest {
        start: Some(StartFrom::Latest),
        ..pull("late", "orders", "c1", 10)
    };
    assert!(
        broker.pull(&latest).await.unwrap().is_empty(),
        "a group asking for latest skips the backlog"
    );
    broker.send(send("orders", "m5")).await.unwrap();
    assert_eq!(bodies(&broker.pull(&latest).await.unwrap()), vec!["m5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_splits_queues_and_a_leaving_member_hands_its_deliveries_over() {
    let h = Harness::start().await;
    let broker = h.broker(test_config());
    broker
        .create_topic("t", 2, false, FlushPolicy::Async)
        .await
        .unwrap();
    for i in 0..4 {
        broker
            .send(SendRequest {
                queue_id: Some(i % 2),
                ..send("t", &format!("m{i}"))
            })
            .await
            .unwrap();
    }
    // a joins alone and gets both queues; b joins and takes queue 1.
    let a1 = broker.pull(&pull("g", "t", "a", 1)).await.unwrap();
    assert_eq!(a1.len(), 1);
    broker.pull(&pull("g", "t", "b", 0)).await.unwrap();
    let a2 = broker.pull(&pull("g", "t", "a", 10)).await.unwrap();
    assert!(
        a2.iter().all(|m| m.queue_id == 0),
        "after b joined, a holds queue 0 only"
    );
    let b = broker.pull(&pull("g", "t", "b", 10)).await.unwrap();
    assert!(b.iter().all(|m| m.queue_id == 1));
    // a leaves without acking: b now holds both queues and gets a's messages again.
    broker.leave("g", "a").unwrap();
    let again = broker.pull(&pull("g", "t", "b", 10)).await.unwrap();
    let mut seen: Vec<String> = bodies(&a1).into_iter().chain(bodies(&a2)).collect();
    seen.sort();
    let mut redelivered = bodies(&again);
    redelivered.sort();
    assert_eq!(redelivered, seen);
    assert!(matches!(
        broker.leave("g", "a"),
        Err(MqError::MemberNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_gives_every_member_every_message_and_tags_filter() {
    let h = Harness::start().await;
    let broker = h.broker(test_config());
    for (i, tag) in ["red", "blue", "red"].iter().enumerate() {
        broker
            .send(SendRequest {
                tag: tag.to_string(),
                ..send("events", &format!("m{i}"))
            })
            .await
            .unwrap();
    }
    let bcast = |member: &str| PullRequest {
        mode: Some(GroupMode::Broadcasting),
        ..pull("b", "events", member, 10)
    };
    let mut one = bodies(&broker.pull(&bcast("x")).await.unwrap());
    let mut two = bodies(&broker.pull(&bcast("y")).await.unwrap());
    one.sort();
    two.sort();
    assert_eq!(one, vec!["m0", "m1", "m2"]);
    assert_eq!(one, two);
    let red = PullRequest {
        tags: vec!["red".into()],
        ..pull("reds", "events", "r", 10)
    };
    let mut got = bodies(&broker.pull(&red).await.unwrap());
    got.sort();
    assert_eq!(got, vec!["m0", "m2"]);
    let wrong_mode = PullRequest {
        mode: Some(GroupMode::Clustering),
        ..pull("b", "events", "z", 1)
    };
    let err = broker.pull(&wrong_mode).await.unwrap_err();
    assert!(
        matches!(err, MqError::InvalidField { field: "mode", .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_come_back_after_the_ack_timeout_and_nacks_at_once() {
    let h = Harness::start().await;
    let clock = h.clock.clone();
    let broker = h.broker_with_topic(test_config(), "t", 1, true).await;
    for i in 0..3 {
        broker.send(send("t", &format!("m{i}"))).await.unwrap();
    }
    let first = broker.pull(&pull("g", "t", "a", 2)).await.unwrap();
    assert_eq!(bodies(&first), vec!["m0", "m1"]);
    assert!(
        broker
            .pull(&pull("g", "t", "a", 2))
            .await
            .unwrap()
            .is_empty(),
        "ordered: one batch in flight"
    );
    broker.ack("g", "a", "t", 0, 0).await.unwrap();
    broker.nack("g", "a", "t", 0, 1).await.unwrap();
    assert_eq!(
        bodies(&broker.pull(&pull("g", "t", "a", 5)).await.unwrap()),
        vec!["m1", "m2"],
        "redelivery first, then in order"
    );
    clock.advance(Duration::from_secs(31));
    let late = broker.ack("g", "a", "t", 0, 1).await.unwrap_err();
    assert!(
        matches!(late, MqError::UnknownOffset { offset: 1, .. }),
        "{late}"
    );
    assert_eq!(
        bodies(&broker.pull(&pull("g", "t", "a", 5)).await.unwrap()),
        vec!["m1", "m2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_and_changes_nothing() {
    let h = Harness::start().await;
    let config = cella_mq::MqConfig {
        auto_create_topics: false,
        max_body_bytes: 1024,
        ..test_config()
    };
    let broker = h.broker(config);
    let err = broker.send(send("nope", "x")).await.unwrap_err();
    assert!(matches!(err, MqError::TopicNotFound { .. }), "{err}");
    assert!(
        broker.topics().await.unwrap().is_empty(),
        "no topic was created"
    );
    broker
        .create_topic("t", 1, false, FlushPolicy::Sync)
        .await
        .unwrap();
    let big = SendRequest {
        body: vec![0; 1025],
        ..send("t", "")
    };
    assert!(matches!(
        broker.send(big).await.unwrap_err(),
        MqError::BodyTooLarge {
            len: 1025,
            max: 1024
        }
    ));
    let late = SendRequest {
        delay_ms: u64::MAX,
        ..send("t", "x")
    };
    assert!(matches!(
        broker.send(late).await.unwrap_err(),
        MqError::DelayTooLong { .. }
    ));
    let bad_queue = SendRequest {
        queue_id: Some(3),
        ..send("t", "x")
    };
    assert!(matches!(
        broker.send(bad_queue).await.unwrap_err(),
        MqError::QueueNotFound { .. }
    ));
    let bad_name = broker.send(send("a/b", "x")).await.unwrap_err();
    assert!(bad_name.to_string().contains("`topic`"), "{bad_name}");
    assert_eq!(
        broker.store().queue_bounds("t", 0).unwrap(),
        (0, 0),
        "nothing was stored"
    );
    broker.send(send("t", "ok")).await.unwrap();
    broker.pull(&pull("g", "t", "a", 1)).await.unwrap();
    let unknown = broker.ack("g", "a", "t", 0, 7).await.unwrap_err();
    assert!(
        matches!(unknown, MqError::UnknownOffset { offset: 7, .. }),
        "{unknown}"
    );
    assert!(matches!(
        broker.ack("nobody", "a", "t", 0, 0).await.unwrap_err(),
        MqError::GroupNotFound { .. }
    ));
    assert_eq!(
        broker.lag("g").await.unwrap()[0].committed,
        0,
        "the bad ack committed nothing"
    );
    let exists = broker
        .create_topic("t", 2, false, FlushPolicy::Sync)
        .await
        .unwrap_err();
    assert!(matches!(exists, MqError::TopicExists { .. }));
    assert_eq!(
        broker
            .create_topic("t", 1, false, FlushPolicy::Sync)
            .await
            .unwrap()
            .queues,
        1,
        "same settings: idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_when_a_message_arrives() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "t", 1, false).await;
    let waiter = {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .pull_wait(&pull("g", "t", "a", 1), Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.send(send("t", "wake")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bodies(&got), vec!["wake"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_one_sharding_key_share_a_queue_in_send_order() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "t", 8, true).await;
    let mut queues = std::collections::BTreeMap::new();
    for i in 0..30 {
        let key = format!("order-{}", i % 5);
        let r = broker
            .send(SendRequest {
                sharding_key: Some(key.clone()),
                keys: vec![key.clone()],
                ..send("t", &format!("{key}:{i}"))
            })
            .await
            .unwrap();
        assert_eq!(*queues.entry(key).or_insert(r.queue_id), r.queue_id);
    }
    assert_eq!(broker.store().find_by_key("order-3").unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_when_due_with_their_id_even_across_a_restart() {
    let h = Harness::start().await;
    let clock = h.clock.clone();
    let broker = h.broker_with_topic(test_config(), "t", 1, false).await;
    let soon = broker
        .send(SendRequest {
            delay_ms: 5_000,
            ..send("t", "soon")
        })
        .await
        .unwrap();
    let later = broker
        .send(SendRequest {
            delay_ms: 180_000,
            ..send("t", "later")
        })
        .await
        .unwrap();
    assert!(soon.delayed && later.delayed);
    broker.send(send("t", "now")).await.unwrap();
    assert_eq!(
        bodies(&broker.pull(&pull("g", "t", "a", 10)).await.unwrap()),
        vec!["now"]
    );
    broker.ack("g", "a", "t", 0, 0).await.unwrap();
    clock.advance(Duration::from_millis(4_800));
    assert_eq!(broker.deliver_due_delays().await.unwrap(), 0, "not due yet");
    clock.advance(Duration::from_millis(300));
    assert_eq!(broker.deliver_due_delays().await.unwrap(), 1);
    let got = broker.pull(&pull("g", "t", "a", 10)).await.unwrap();
    assert_eq!(bodies(&got), vec!["soon"]);
    assert_eq!(
        got[0].id, soon.id,
        "the delivered copy keeps the id the producer got"
    );
    assert!(
        got[0].properties.is_empty(),
        "broker-internal properties are removed"
    );
    broker
        .ack("g", "a", "t", 0, got[0].queue_offset)
        .await
        .unwrap();
    broker.close();
    drop(broker);

    // "later" (beyond one revolution of the wheel) survives a restart and still waits.
    let broker = h.broker(test_config());
    assert_eq!(broker.pending_delays(), 1);
    clock.advance(Duration::from_secs(170));
    assert_eq!(broker.deliver_due_delays().await.unwrap(), 0);
    clock.advance(Duration::from_secs(10));
    assert_eq!(broker.deliver_due_delays().await.unwrap(), 1);
    assert_eq!(
        bodies(&broker.pull(&pull("g", "t", "b", 10)).await.unwrap()),
        vec!["later"]
    );
    let internal = SendRequest {
        properties: [("%x".to_string(), "y".to_string())].into(),
        ..send("t", "x")
    };
    assert!(matches!(
        broker.send(internal).await.unwrap_err(),
        MqError::InvalidField {
            field: "properties",
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_retry_with_backoff_then_go_to_the_dead_letter_topic() {
    let h = Harness::start().await;
    let clock = h.clock.clone();
    let config = cella_mq::MqConfig {
        retry_backoff_ms: vec![1_000, 10_000],
        max_retries: 2,
        ..test_config()
    };
    let broker = h.broker_with_topic(config, "t", 1, false).await;
    let sent = broker.send(send("t", "flaky")).await.unwrap();
    // Lets `ms` pass, delivers what became due, and pulls as member a of group g.
    let after = |ms: u64| {
        let (broker, clock) = (broker.clone(), clock.clone());
        async move {
            clock.advance(Duration::from_millis(ms));
            broker.deliver_due_delays().await.unwrap();
            broker.pull(&pull("g", "t", "a", 5)).await.unwrap()
        }
    };
    let first = after(0).await;
    broker
        .nack("g", "a", "t", 0, first[0].queue_offset)
        .await
        .unwrap();
    assert!(after(0).await.is_empty(), "not before the first backoff");
    let retry = after(1_000).await;
    assert_eq!(bodies(&retry), vec!["flaky"]);
    assert_eq!(
        (retry[0].topic.as_str(), retry[0].id),
        ("%RETRY%g", sent.id),
        "same id, from the group's retry topic"
    );
    let property =
        |m: &cella_mq::storage::StoredMessage, name: &str| m.properties.get(name).cloned();
    assert_eq!(property(&retry[0], "%RETRIES").as_deref(), Some("1"));
    assert_eq!(property(&retry[0], "%ORIGIN_TOPIC").as_deref(), Some("t"));
    broker
        .nack("g", "a", "%RETRY%g", 0, retry[0].queue_offset)
        .await
        .unwrap();
    assert!(after(9_000).await.is_empty(), "the second level waits 10 s");
    let again = after(1_000).await;
    assert_eq!(property(&again[0], "%RETRIES").as_deref(), Some("2"));
    broker
        .nack("g", "a", "%RETRY%g", 0, again[0].queue_offset)
        .await
        .unwrap();
    assert!(after(60_000).await.is_empty(), "retries are exhausted");
    let dead = broker
        .pull(&pull("inspect", "%DLQ%g", "x", 5))
        .await
        .unwrap();
    assert_eq!(bodies(&dead), vec!["flaky"]);
    assert!(
        broker.lag("g").await.unwrap().iter().all(|l| l.lag == 0),
        "nothing left pending for the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_its_max_backlog_sheds_the_oldest_by_its_declared_policy() {
    let h = Harness::start().await;
    let broker = h.broker_with_topic(test_config(), "t", 1, false).await;
    broker
        .declare_subscription("dropper", "t", 3, cella_mq::Overflow::DropOldest)
        .await
        .unwrap();
    broker
        .declare_subscription("keeper", "t", 3, cella_mq::Overflow::DeadLetter)
        .await
        .unwrap();
    for i in 0..10 {
        broker.send(send("t", &format!("m{i}"))).await.unwrap();
    }
    assert_eq!(
        bodies(&broker.pull(&pull("dropper", "t", "a", 10)).await.unwrap()),
        vec!["m7", "m8", "m9"]
    );
    assert_eq!(
        bodies(&broker.pull(&pull("keeper", "t", "a", 10)).await.unwrap()),
        vec!["m7", "m8", "m9"]
    );
    let dead = broker
        .pull(&pull("inspect", "%DLQ%keeper", "x", 20))
        .await
        .unwrap();
    assert_eq!(
        bodies(&dead),
        (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "dead-lettered, not lost"
    );
    assert!(broker
        .pull(&pull("other", "%DLQ%dropper", "x", 20))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        bodies(&broker.pull(&pull("unlimited", "t", "a", 20)).await.unwrap()).len(),
        10,
        "other groups keep everything"
    );
    let bad = broker
        .declare_subscription("g", "bad/topic", 3, cella_mq::Overflow::DropOldest)
        .await
        .unwrap_err();
    assert!(matches!(bad, MqError::InvalidField { field: "topic", .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_messages_wait_for_commit_or_rollback_and_are_checked_back_until_decided() {
    let h = Harness::start().await;
    let clock = h.clock.clone();
    let config = cella_mq::MqConfig {
        transaction_check_ms: 5_000,
        transaction_max_checks: 2,
        ..test_config()
    };
    let broker = h.broker_with_topic(config.clone(), "t", 1, false).await;
    let tx = |body: &str| SendRequest {
        transaction_group: Some("payments".into()),
        ..send("t", body)
    };
    let committed = broker.send(tx("paid")).await.unwrap();
    let rolled_back = broker.send(tx("cancelled")).await.unwrap();
    let undecided = broker.send(tx("unsure")).await.unwrap();
    assert!(committed.half && rolled_back.half && undecided.half);
    assert!(
        broker
            .pull(&pull("g", "t", "a", 10))
            .await
            .unwrap()
            .is_empty(),
        "halves are not delivered"
    );
    broker.end_transaction(committed.id, true).await.unwrap();
    broker.end_transaction(rolled_back.id, false).await.unwrap();
    let again = broker
        .end_transaction(committed.id, true)
        .await
        .unwrap_err();
    assert!(
        matches!(again, MqError::TransactionNotFound { .. }),
        "{again}"
    );
    let got = broker.pull(&pull("g", "t", "a", 10)).await.unwrap();
    assert_eq!(bodies(&got), vec!["paid"]);
    assert_eq!(got[0].id, committed.id);
    assert!(
        broker
            .transaction_checks("payments", 10)
            .await
            .unwrap()
            .is_empty(),
        "not before the check interval"
    );
    clock.advance(Duration::from_secs(5));
    let checks = broker.transaction_checks("payments", 10).await.unwrap();
    assert_eq!(
        checks
            .iter()
            .map(|m| (m.id, m.topic.as_str()))
            .collect::<Vec<_>>(),
        vec![(undecided.id, "t")]
    );
    assert!(
        broker
            .transaction_checks("other", 10)
            .await
            .unwrap()
            .is_empty(),
        "only its producer group is asked"
    );
    broker.close();
    drop(broker);

    // Decisions survive a restart; the undecided half is still pending and checked again.
    let broker = h.broker(config);
    assert_eq!(broker.pending_transactions(), 1);
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        broker
            .transaction_checks("payments", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        broker
            .transaction_checks("payments", 10)
            .await
            .unwrap()
            .len(),
        1,
        "second check"
    );
    clock.advance(Duration::from_secs(5));
    assert!(
        broker
            .transaction_checks("payments", 10)
            .await
            .unwrap()
            .is_empty(),
        "rolled back after two checks"
    );
    assert_eq!(broker.pending_transactions(), 0);
    assert!(matches!(
        broker
            .end_transaction(undecided.id, true)
            .await
            .unwrap_err(),
        MqError::TransactionNotFound { .. }
    ));
    let all = broker.pull(&pull("late", "t", "b", 10)).await.unwrap();
    assert_eq!(
        bodies(&all),
        vec!["paid"],
        "only the committed message was ever delivered"
    );
}
