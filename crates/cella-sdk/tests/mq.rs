//! The SDK's broker module against a live `cella up`: a batch of messages goes in one call
//! and is acknowledged in one call; a bad message refuses its whole batch; concurrent single
//! sends through one producer, gathered into shared calls, each get their own answer; a
//! producer outlives a node restart. The producer wire itself, frame by frame: pipelined
//! answers, refusals that name the rule and store nothing, a bad frame closing the connection.
//! Acks can ride with the next poll. In a three-member cluster: sends spread over the members and pass one that is killed,
//! sharding keys keep their member and queue, and a consumer takes from every member.

use std::time::Duration;

use bytes::BytesMut;
use cella_proto::mq_wire::{self, Frame, Kind};
use cella_sdk::mq::{pb, Consumer, Mq, OutgoingMessage};
use cella_sdk::{Client, Error};
use cella_testkit::{Cluster, Node, NodeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// A running node with a sync-flush `topic` of `queues` queues, and its broker client.
async fn node_with_topic(topic: &str, queues: u32) -> (Node, Mq) {
    let node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    with_topic(node, topic, queues).await
}

/// `node`, once ready, with a sync-flush `topic` of `queues` queues, and its broker client.
async fn with_topic(mut node: Node, topic: &str, queues: u32) -> (Node, Mq) {
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
    assert_eq!(lag.queues.iter().map(|q| q.committed).sum::<u64>(), 10);
    assert!(
        consumer.ack_all(&deliveries[..1]).await.is_err(),
        "acked already"
    );
}

#[tokio::test]
async fn acks_can_travel_with_the_next_poll() {
    let (_node, mq) = node_with_topic("later", 1).await;
    let producer = mq.producer();
    for i in 0..5 {
        let message = OutgoingMessage::new("later", format!("m{i}"));
        producer.send(message).await.expect("sent");
    }
    let mut consumer = Consumer::new(mq.clone(), "lazy", "later");
    let got = consumer
        .poll(16, Duration::from_secs(2))
        .await
        .expect("poll");
    assert_eq!(got.len(), 5);
    consumer.ack_with_next_poll(&got);
    let none = consumer
        .poll(16, Duration::from_millis(100))
        .await
        .expect("the acks ride along");
    assert!(none.is_empty(), "{none:?}");
    let lag = mq.lag("lazy").await.expect("lag");
    assert_eq!(lag.queues.iter().map(|q| q.committed).sum::<u64>(), 5);

    consumer.ack_with_next_poll(&got[3..]);
    let refused = consumer.poll(16, Duration::from_millis(100)).await;
    assert!(
        format!("{refused:?}").contains("acks[0]"),
        "acked already, named by its place: {refused:?}"
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
        lag.queues.iter().map(|q| q.committed).sum::<u64>(),
        SENDS as u64 - 1
    );
}

#[tokio::test]
async fn a_producer_outlives_a_node_restart() {
    let (mut node, mq) = node_with_topic("restarts", 1).await;
    let producer = mq.producer();
    let first = producer
        .send(OutgoingMessage::new("restarts", "before"))
        .await
        .expect("sent");

    node.kill9().expect("kill -9");
    let down = producer
        .send(OutgoingMessage::new("restarts", "while down"))
        .await;
    assert!(
        matches!(&down, Err(Error::Unavailable { message }) if message.contains("producer wire")),
        "{down:?}"
    );

    node.restart().expect("restart");
    node.wait_ready(WAIT).await.expect("ready again");
    let after = producer
        .send(OutgoingMessage::new("restarts", "after"))
        .await
        .expect("the producer reconnects");
    assert_eq!(
        (after.queue_id, after.queue_offset),
        (first.queue_id, first.queue_offset + 1),
        "the acknowledged message survived, the refused one was not stored"
    );
}

/// Polls until every body of `wanted` arrived (acking each), failing after [`WAIT`].
async fn consume_all(consumer: &mut Consumer, wanted: &std::collections::HashSet<String>) {
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing: {:?}",
            wanted.difference(&seen).collect::<Vec<_>>()
        );
        let got = consumer
            .poll(64, Duration::from_millis(500))
            .await
            .expect("a poll with a member down still answers");
        consumer.ack_all(&got).await.expect("acked");
        seen.extend(
            got.iter()
                .map(|d| String::from_utf8_lossy(d.body()).into_owned()),
        );
    }
}

#[tokio::test]
async fn in_a_cluster_sends_spread_over_the_members_and_pass_one_that_is_down() {
    let mut cluster = Cluster::start(3).expect("cluster starts");
    cluster.wait_ready(WAIT).await.expect("ready");
    cluster.wait_leader(WAIT).await.expect("a leader");
    let client = Client::connect(&cluster.member(1).endpoint())
        .await
        .expect("connect");
    let mq = client.mq();
    mq.create_topic("spread", 4, false, true)
        .await
        .expect("topic");
    let producer = mq.producer();
    let mut consumer = Consumer::new(mq.clone(), "audit", "spread");
    let mut wanted = std::collections::HashSet::new();

    let mut members = std::collections::HashMap::<String, usize>::new();
    for i in 0..30 {
        let body = format!("round-robin {i}");
        let sent = producer
            .send(OutgoingMessage::new("spread", body.clone()))
            .await
            .expect("sent");
        *members.entry(sent.member).or_default() += 1;
        wanted.insert(body);
    }
    assert_eq!(members.len(), 3, "every member took sends: {members:?}");
    assert!(members.values().all(|&n| n == 10), "in turn: {members:?}");

    let mut slots = std::collections::HashMap::new();
    for key in (0..12).map(|k| format!("key-{k}")) {
        let body = format!("{key} first");
        let sent = producer
            .send(OutgoingMessage::new("spread", body.clone()).sharding_key(&key))
            .await
            .expect("sent");
        slots.insert(key, (sent.member, sent.queue_id));
        wanted.insert(body);
    }
    consume_all(&mut consumer, &wanted).await;

    let down = cluster.member(2).addr().to_string();
    cluster.kill9(2).expect("kill -9");
    let mut wanted = std::collections::HashSet::new();
    for i in 0..30 {
        let body = format!("member 2 down {i}");
        let sent = producer
            .send(OutgoingMessage::new("spread", body.clone()))
            .await
            .expect("a round-robin send passes the member that is down");
        assert_ne!(sent.member, down);
        wanted.insert(body);
    }
    for (key, (member, queue)) in &slots {
        let body = format!("{key} again");
        let sent = producer
            .send(OutgoingMessage::new("spread", body.clone()).sharding_key(key))
            .await;
        if *member == down {
            assert!(
                matches!(&sent, Err(Error::Unavailable { .. })),
                "a keyed send waits for its member rather than move: {sent:?}"
            );
        } else {
            let sent = sent.expect("sent");
            assert_eq!((&sent.member, sent.queue_id), (member, *queue), "{key}");
            wanted.insert(body);
        }
    }
    consume_all(&mut consumer, &wanted).await;
    let lag = mq.lag("audit").await.expect("lag with a member down");
    assert_eq!(lag.unreachable, [2]);
    let nodes: std::collections::BTreeSet<u64> = lag.queues.iter().map(|q| q.node_id).collect();
    assert_eq!(nodes, [1, 3].into());

    cluster.restart(2).expect("restart");
    cluster.wait_ready(WAIT).await.expect("ready again");
    let (key, (member, queue)) = slots
        .iter()
        .find(|(_, (member, _))| *member == down)
        .expect("some key lives on member 2");
    let body = format!("{key} after the restart");
    let sent = producer
        .send(OutgoingMessage::new("spread", body.clone()).sharding_key(key))
        .await
        .expect("the member is back");
    assert_eq!((&sent.member, sent.queue_id), (member, *queue));
    consume_all(&mut consumer, &std::collections::HashSet::from([body])).await;
    let lag = mq.lag("audit").await.expect("lag");
    assert!(lag.unreachable.is_empty());
    let per_node = |node: u64| -> u64 {
        let queues = lag.queues.iter().filter(|q| q.node_id == node);
        queues.map(|q| q.committed).sum()
    };
    assert!(
        (1..=3).all(|node| per_node(node) > 0),
        "each member's queues were consumed: {lag:?}"
    );
}

/// A raw producer-wire connection, upgraded from HTTP/1.1.
struct RawWire {
    stream: TcpStream,
    input: BytesMut,
}

impl RawWire {
    async fn open(node: &Node) -> RawWire {
        let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
            mq_wire::PATH,
            mq_wire::PROTOCOL
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut input = BytesMut::new();
        let end = loop {
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(stream.read_buf(&mut input).await.expect("read") > 0);
        };
        let head = input.split_to(end);
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        RawWire { stream, input }
    }

    async fn write(&mut self, frames: &BytesMut) {
        self.stream.write_all(frames).await.expect("write");
    }

    /// The next frame, or None when the server closed the connection.
    async fn read(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = mq_wire::decode(&mut self.input).expect("a valid frame") {
                return Some(frame);
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.input))
                .await
                .expect("an answer in time")
                .expect("read");
            if read == 0 {
                return None;
            }
        }
    }
}

fn send_frame(out: &mut BytesMut, id: u64, body: &str) {
    let request = pb::SendRequest {
        topic: "wire".into(),
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    };
    mq_wire::encode(out, id, Kind::Send, &request);
}

fn refusal(frame: &Frame) -> pb::WireError {
    assert_eq!(frame.kind, Some(Kind::Error), "{frame:?}");
    frame.decode().expect("a WireError")
}

#[tokio::test]
async fn the_producer_wire_pipelines_and_refuses_frame_by_frame() {
    let (node, _mq) = node_with_topic("wire", 1).await;

    // Without the protocol's upgrade header: a plain refusal that says what to send.
    let mut plain = TcpStream::connect(node.addr()).await.expect("connect");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        mq_wire::PATH
    );
    plain.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("upgrade"),
        "{answer}"
    );

    let mut wire = RawWire::open(&node).await;
    // 50 sends in one write; every answer carries its request's id.
    let mut frames = BytesMut::new();
    for id in 1..=50 {
        send_frame(&mut frames, id, &format!("m{id}"));
    }
    wire.write(&frames).await;
    let mut offsets = std::collections::BTreeMap::new();
    for _ in 0..50 {
        let frame = wire.read().await.expect("an answer");
        assert_eq!(frame.kind, Some(Kind::Send), "{frame:?}");
        let sent: pb::SendResponse = frame.decode().expect("a SendResponse");
        offsets.insert(frame.id, sent.queue_offset);
    }
    assert_eq!(
        offsets.keys().copied().collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    let mut stored: Vec<u64> = offsets.values().copied().collect();
    stored.sort();
    assert_eq!(stored, (0..50).collect::<Vec<_>>());

    // Refusals name the rule, and store nothing: the next good send takes offset 50.
    let mut frames = BytesMut::new();
    send_frame(&mut frames, 51, &"x".repeat(5 << 20));
    mq_wire::encode(
        &mut frames,
        52,
        Kind::Send,
        &pb::WireError {
            code: 3,
            message: "not a send".into(),
        },
    );
    frames.extend_from_slice(&{
        let mut unknown = BytesMut::new();
        mq_wire::encode(
            &mut unknown,
            53,
            Kind::SendBatch,
            &pb::SendBatchRequest::default(),
        );
        unknown[12] = 9; // the kind byte, after length and id
        unknown
    });
    send_frame(&mut frames, 54, "good");
    wire.write(&frames).await;
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let frame = wire.read().await.expect("an answer");
        answers.insert(frame.id, frame);
    }
    let too_big = refusal(&answers[&51]);
    assert_eq!(too_big.code, tonic::Code::InvalidArgument as i32);
    assert!(too_big.message.contains("body"), "{too_big:?}");
    let garbled = refusal(&answers[&52]);
    assert!(garbled.message.contains("SendRequest"), "{garbled:?}");
    let unknown = refusal(&answers[&53]);
    assert!(unknown.message.contains("kind"), "{unknown:?}");
    let good: pb::SendResponse = answers[&54].decode().expect("a SendResponse");
    assert_eq!(good.queue_offset, 50);

    // A length out of range: the stream cannot be followed, so the server says why and closes.
    wire.write(&BytesMut::from(&[0u8, 0, 0, 2, 1, 2][..])).await;
    let last = wire.read().await.expect("a refusal before closing");
    assert!(refusal(&last).message.contains("frame length"), "{last:?}");
    assert!(wire.read().await.is_none(), "closed");
}
