//! Dapr's pub/sub over Cella's broker.
//!
//! Publishing: `POST /v1.0/publish/{pubsubname}/{topic}` stores the body, wrapped as a
//! CloudEvent unless `metadata.rawPayload=true` (see [`crate::cloudevent`]), in the broker
//! topic `{topic}` (created on first use when the broker allows it), and answers 204 once
//! the broker made it durable under the topic's flush policy. `metadata.partitionKey` is
//! the broker's sharding key (per-key order); other `metadata.*` parameters become message
//! properties. Every pub/sub name the sidecar serves (`pubsub` by default) is the one broker.
//!
//! Delivery: once the app accepts connections the sidecar asks it for `GET /dapr/subscribe`
//! and, for each subscription on a served name, consumes `{topic}` in consumer group = app
//! id, POSTing each event to the subscription's route. The app's answer decides
//! ([`crate::cloudevent::verdict`]): success acks, retry nacks (the broker's backoff levels
//! into `%RETRY%{app-id}`, then its dead-letter topic), drop acks without handling.
//! Delivery is at least once. All of a sidecar's consumers are one member of the group
//! (the broker splits each topic's queues among members, so every instance of an app must
//! declare the same subscriptions, as in RocketMQ), and the group's retries come back
//! through any of its topics, so an event goes to the route of the topic it was published
//! to. Limits: routing rules with `match` expressions are not
//! evaluated (the default route takes every event); declarative subscriptions, bulk
//! publish, `ttlInSeconds` and Dapr's own dead-letter topics are not supported.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use cella_sdk::mq::{Consumer, Delivery, Mq, OutgoingMessage, Producer};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::AppChannel;
use crate::cloudevent::{self, Origin, Verdict, CLOUDEVENT_CONTENT_TYPE};
use crate::SidecarError;

/// Message property holding the Content-Type of the stored body.
const PROP_CONTENT_TYPE: &str = "content-type";
/// Message property marking a body stored without a CloudEvent envelope.
const PROP_RAW: &str = "dapr-raw-payload";
/// Message property holding the publishing app's id.
const PROP_SOURCE: &str = "dapr-source";
/// Most events one pull takes.
const PULL_BATCH: u32 = 16;
/// How long one pull waits for events.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed pull.
const PULL_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// The property the broker sets on a retried message: the topic it was published to.
const PROP_ORIGIN_TOPIC: &str = "%ORIGIN_TOPIC";
/// Attempts at `GET /dapr/subscribe` once the app accepts connections.
const SUBSCRIBE_ATTEMPTS: u32 = 5;

/// What a publish's query asked for besides the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PublishOptions {
    /// Store the body as is, without a CloudEvent envelope.
    pub raw_payload: bool,
    /// The broker's sharding key.
    pub partition_key: Option<String>,
    /// Other `metadata.*` parameters, kept as message properties.
    pub properties: Vec<(String, String)>,
}

/// Reads the `metadata.*` parameters of a publish; other parameters are ignored.
pub(crate) fn publish_options(query: &[(String, String)]) -> Result<PublishOptions, SidecarError> {
    let mut options = PublishOptions::default();
    for (name, value) in query {
        let Some(name) = name.strip_prefix("metadata.") else {
            continue;
        };
        let invalid = |rule| SidecarError::InvalidMetadata {
            name: name.to_owned(),
            rule,
        };
        match name {
            "rawPayload" => {
                options.raw_payload = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" | "" => false,
                    _ => return Err(invalid("must be true or false")),
                }
            }
            "partitionKey" if value.is_empty() => return Err(invalid("must not be empty")),
            "partitionKey" => options.partition_key = Some(value.clone()),
            "ttlInSeconds" => {
                return Err(invalid(
                    "is not supported: Cella's broker keeps messages until retention",
                ))
            }
            _ if name.is_empty() || name.starts_with('%') => {
                return Err(invalid("names must be non-empty and not start with %"))
            }
            _ => options.properties.push((name.to_owned(), value.clone())),
        }
    }
    Ok(options)
}

/// A publish as the route received it.
#[derive(Debug)]
pub(crate) struct Publish {
    pub pubsub: String,
    pub topic: String,
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

/// One subscription the app declared in `GET /dapr/subscribe`, as the sidecar serves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct AppSubscription {
    /// The pub/sub name.
    #[serde(rename = "pubsubname")]
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// The app's path events are POSTed to.
    pub route: String,
    /// Deliver stored bodies as they are, not as CloudEvents.
    #[serde(rename = "rawPayload")]
    pub raw_payload: bool,
}

/// Dapr's programmatic subscription, as the app answers it.
#[derive(Debug, Deserialize)]
struct Declared {
    pubsubname: String,
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<DeclaredRoutes>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct DeclaredRoutes {
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    #[serde(default)]
    default: Option<String>,
}

/// The subscriptions to serve from the app's `/dapr/subscribe` answer, and a warning for
/// each one skipped (unknown pub/sub name, no route).
pub(crate) fn app_subscriptions(
    body: &[u8],
    served: &[String],
) -> Result<(Vec<AppSubscription>, Vec<String>), String> {
    let declared: Vec<Declared> = serde_json::from_slice(body).map_err(|e| {
        format!("GET /dapr/subscribe did not answer a JSON array of subscriptions: {e}")
    })?;
    let mut subscriptions = Vec::new();
    let mut warnings = Vec::new();
    for d in declared {
        if !served.contains(&d.pubsubname) {
            warnings.push(format!(
                "subscription to {}/{} skipped: pubsub {:?} is not served (served: {})",
                d.pubsubname,
                d.topic,
                d.pubsubname,
                served.join(", ")
            ));
            continue;
        }
        let rules = d.routes.as_ref().map_or(0, |r| r.rules.len());
        let route = d
            .routes
            .and_then(|r| r.default)
            .or(d.route)
            .filter(|r| !r.is_empty());
        let Some(route) = route else {
            warnings.push(format!(
                "subscription to {}/{} skipped: it has no route (routing rules need a default route here)",
                d.pubsubname, d.topic
            ));
            continue;
        };
        if rules > 0 {
            warnings.push(format!(
                "subscription to {}/{}: {rules} routing rule(s) not evaluated; every event goes to {route}",
                d.pubsubname, d.topic
            ));
        }
        subscriptions.push(AppSubscription {
            pubsub: d.pubsubname,
            topic: d.topic,
            route: format!("/{}", route.trim_start_matches('/')),
            raw_payload: d
                .metadata
                .get("rawPayload")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        });
    }
    Ok((subscriptions, warnings))
}

/// What to POST to the app for a stored message: its Content-Type and body.
pub(crate) fn delivery_body(
    message: &cella_sdk::mq::pb::Message,
    subscription: &AppSubscription,
) -> (String, Vec<u8>) {
    let stored_type = message.properties.get(PROP_CONTENT_TYPE).cloned();
    let is_event = stored_type.is_some()
        && message.properties.get(PROP_RAW).map(String::as_str) != Some("true");
    let stored_type = stored_type.unwrap_or_else(|| "application/octet-stream".to_owned());
    if subscription.raw_payload {
        return (stored_type, message.body.to_vec());
    }
    if is_event {
        return (CLOUDEVENT_CONTENT_TYPE.to_owned(), message.body.to_vec());
    }
    let time = rfc3339(Duration::from_millis(message.born_ms));
    let source = message
        .properties
        .get(PROP_SOURCE)
        .map_or("cella", String::as_str);
    let origin = Origin {
        pubsub: &subscription.pubsub,
        topic: &subscription.topic,
        source,
        content_type: Some(&stored_type),
        id: &message.message_id,
        time: &time,
        traceparent: None,
        tracestate: None,
    };
    match cloudevent::envelope(&origin, &message.body) {
        Ok(event) => (CLOUDEVENT_CONTENT_TYPE.to_owned(), event),
        Err(_) => (stored_type, message.body.to_vec()),
    }
}

/// `since_epoch` as an RFC 3339 UTC time with milliseconds.
pub(crate) fn rfc3339(since_epoch: Duration) -> String {
    let t = cella_base::UtcTime::from_system_time(std::time::UNIX_EPOCH + since_epoch);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// A random version-4 UUID, Dapr's event id format.
pub(crate) fn new_event_id() -> String {
    let bits = (rand::random::<u128>() & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The sidecar's pub/sub: publishes into the broker and delivers the app's subscriptions.
pub(crate) struct PubSub {
    served: Vec<String>,
    app_id: String,
    mq: Mq,
    /// One producer for every publish, so they share its connection.
    producer: Producer,
    app: AppChannel,
    member: String,
    active: RwLock<Vec<AppSubscription>>,
}

impl PubSub {
    pub fn new(served: Vec<String>, app_id: String, mq: Mq, app: AppChannel) -> Arc<PubSub> {
        let member = format!("{app_id}-{:016x}", rand::random::<u64>());
        Arc::new(PubSub {
            served,
            member,
            app_id,
            producer: mq.producer(),
            mq,
            app,
            active: RwLock::new(Vec::new()),
        })
    }

    /// The pub/sub names served.
    pub fn served(&self) -> &[String] {
        &self.served
    }

    /// The subscriptions being delivered now.
    pub fn active(&self) -> Vec<AppSubscription> {
        self.active.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Stores one published message.
    pub async fn publish(&self, publish: Publish) -> Result<(), SidecarError> {
        if !self.served.contains(&publish.pubsub) {
            return Err(SidecarError::PubsubNotFound {
                name: publish.pubsub,
                served: self.served.join(", "),
            });
        }
        let options = publish_options(&publish.query)?;
        let mut message;
        if options.raw_payload {
            let content_type = publish
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            message = OutgoingMessage::new(publish.topic.clone(), publish.body)
                .property(PROP_CONTENT_TYPE, content_type)
                .property(PROP_RAW, "true");
        } else {
            let id = new_event_id();
            let time = rfc3339(cella_base::Clock::now(&cella_base::UnixClock));
            let origin = Origin {
                pubsub: &publish.pubsub,
                topic: &publish.topic,
                source: &self.app_id,
                content_type: publish.content_type.as_deref(),
                id: &id,
                time: &time,
                traceparent: publish.traceparent.as_deref(),
                tracestate: publish.tracestate.as_deref(),
            };
            let event = cloudevent::envelope(&origin, &publish.body)
                .map_err(|message| SidecarError::InvalidCloudEvent { message })?;
            message = OutgoingMessage::new(publish.topic.clone(), event)
                .property(PROP_CONTENT_TYPE, CLOUDEVENT_CONTENT_TYPE);
        }
        message = message.property(PROP_SOURCE, self.app_id.clone());
        if let Some(key) = options.partition_key {
            message = message.sharding_key(key.clone()).key(key);
        }
        for (name, value) in options.properties {
            message = message.property(name, value);
        }
        match self.producer.send(message).await {
            Ok(_) => Ok(()),
            Err(
                e @ (cella_sdk::Error::InvalidArgument { .. }
                | cella_sdk::Error::NotFound { .. }
                | cella_sdk::Error::FailedPrecondition { .. }
                | cella_sdk::Error::PermissionDenied { .. }),
            ) => Err(SidecarError::PublishRejected {
                topic: publish.topic,
                message: e.to_string(),
            }),
            Err(e) => Err(SidecarError::PublishFailed {
                topic: publish.topic,
                message: e.to_string(),
            }),
        }
    }

    /// Waits for the app (at most `ready_timeout`), reads its subscriptions and delivers
    /// them until `stop` turns true; then each consumer leaves its group.
    pub async fn deliver(
        self: Arc<Self>,
        ready_timeout: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let subscriptions = tokio::select! {
            found = self.read_subscriptions(ready_timeout) => found,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Ok(mut active) = self.active.write() {
            active.clone_from(&subscriptions);
        }
        let mut consumers = JoinSet::new();
        for subscription in subscriptions {
            tracing::info!(
                pubsub = %subscription.pubsub,
                topic = %subscription.topic,
                route = %subscription.route,
                "delivering a subscription of the app"
            );
            consumers.spawn(Arc::clone(&self).consume(subscription, stop.clone()));
        }
        while consumers.join_next().await.is_some() {}
    }

    async fn read_subscriptions(&self, ready_timeout: Duration) -> Vec<AppSubscription> {
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        loop {
            match self.app.get("/dapr/subscribe").await {
                Ok(answer) if answer.status == 404 => return Vec::new(),
                Ok(answer) if (200..300).contains(&answer.status) => {
                    return match app_subscriptions(&answer.body, &self.served) {
                        Ok((subscriptions, warnings)) => {
                            for warning in warnings {
                                tracing::warn!("{warning}");
                            }
                            subscriptions
                        }
                        Err(error) => {
                            tracing::warn!(%error, "no subscriptions delivered");
                            Vec::new()
                        }
                    };
                }
                Ok(answer) => {
                    attempts += 1;
                    tracing::warn!(status = answer.status, "GET /dapr/subscribe failed");
                }
                // Not listening yet: wait for it within the ready timeout.
                Err(error) if started.elapsed() < ready_timeout => {
                    tracing::debug!(%error, "waiting for the app");
                }
                Err(error) => {
                    tracing::warn!(%error, "the app never answered GET /dapr/subscribe");
                    return Vec::new();
                }
            }
            if attempts >= SUBSCRIBE_ATTEMPTS {
                return Vec::new();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn consume(
        self: Arc<Self>,
        subscription: AppSubscription,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut consumer = Consumer::new(self.mq.clone(), &self.app_id, &subscription.topic)
            .member(self.member.clone());
        while !*stop.borrow() {
            let polled = tokio::select! {
                polled = consumer.poll(PULL_BATCH, PULL_WAIT) => polled,
                _ = stop.wait_for(|s| *s) => break,
            };
            match polled {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        self.hand_over(&consumer, &delivery).await;
                    }
                }
                Err(cella_sdk::Error::NotFound { .. }) => {
                    // The topic does not exist yet: create it as the broker would on a send.
                    if let Err(error) = self
                        .mq
                        .create_topic(&subscription.topic, 0, false, true)
                        .await
                    {
                        tracing::debug!(%error, topic = %subscription.topic, "creating the topic");
                        tokio::time::sleep(PULL_RETRY_PAUSE).await;
                    }
                }
                Err(error @ cella_sdk::Error::InvalidArgument { .. }) => {
                    tracing::error!(%error, topic = %subscription.topic, "subscription not delivered");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, topic = %subscription.topic, "pull failed; retrying");
                    tokio::time::sleep(PULL_RETRY_PAUSE).await;
                }
            }
        }
        if let Err(error) = consumer.leave().await {
            tracing::debug!(%error, "leaving the consumer group");
        }
    }

    /// POSTs one event to the app and acks, nacks or drops it by the answer.
    async fn hand_over(&self, consumer: &Consumer, delivery: &Delivery) {
        let message = &delivery.message;
        let topic = message
            .properties
            .get(PROP_ORIGIN_TOPIC)
            .unwrap_or(&message.topic);
        let found = self.active().into_iter().find(|s| &s.topic == topic);
        let Some(subscription) = found else {
            tracing::warn!(%topic, "an event of a topic the app does not subscribe; handed back");
            if let Err(error) = consumer.nack(delivery).await {
                tracing::warn!(%error, "handing back an event failed");
            }
            return;
        };
        let subscription = &subscription;
        let (content_type, body) = delivery_body(message, subscription);
        let answer = self
            .app
            .post(&subscription.route, &content_type, Bytes::from(body), &[])
            .await;
        let verdict = match answer {
            Ok(answer) => cloudevent::verdict(answer.status, &answer.body),
            Err(error) => {
                tracing::warn!(%error, "event not delivered; retrying later");
                Verdict::Retry
            }
        };
        let id = &delivery.message.message_id;
        let settled = match verdict {
            Verdict::Ack => consumer.ack(delivery).await,
            Verdict::Drop => {
                tracing::warn!(%id, topic = %subscription.topic, "the app dropped an event");
                consumer.ack(delivery).await
            }
            Verdict::Retry => consumer.nack(delivery).await,
        };
        if let Err(error) = settled {
            tracing::warn!(%error, %id, ?verdict, "settling an event failed; it will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn publish_metadata_is_read_and_checked() {
        let options = publish_options(&pairs(&[
            ("metadata.rawPayload", "TRUE"),
            ("metadata.partitionKey", "order-7"),
            ("metadata.tenant", "acme"),
            ("other", "ignored"),
        ]))
        .unwrap();
        assert_eq!(
            options,
            PublishOptions {
                raw_payload: true,
                partition_key: Some("order-7".into()),
                properties: vec![("tenant".into(), "acme".into())],
            }
        );
        for bad in [
            ("metadata.rawPayload", "yes"),
            ("metadata.ttlInSeconds", "60"),
            ("metadata.partitionKey", ""),
            ("metadata.%RETRIES", "1"),
        ] {
            let error = publish_options(&pairs(&[bad])).expect_err("refused");
            assert!(
                error
                    .to_string()
                    .contains(bad.0.trim_start_matches("metadata.")),
                "{error}"
            );
        }
    }

    #[test]
    fn subscriptions_take_route_or_default_and_skip_the_unservable() {
        let served = vec!["pubsub".to_owned()];
        let body = br#"[
            {"pubsubname": "pubsub", "topic": "orders", "route": "orders-in"},
            {"pubsubname": "pubsub", "topic": "refunds",
             "routes": {"rules": [{"match": "event.type == 'x'", "path": "/x"}], "default": "/refunds"},
             "metadata": {"rawPayload": "true"}},
            {"pubsubname": "kafka", "topic": "orders", "route": "/k"},
            {"pubsubname": "pubsub", "topic": "lost", "routes": {"rules": []}}
        ]"#;
        let (subscriptions, warnings) = app_subscriptions(body, &served).unwrap();
        assert_eq!(
            subscriptions,
            vec![
                AppSubscription {
                    pubsub: "pubsub".into(),
                    topic: "orders".into(),
                    route: "/orders-in".into(),
                    raw_payload: false,
                },
                AppSubscription {
                    pubsub: "pubsub".into(),
                    topic: "refunds".into(),
                    route: "/refunds".into(),
                    raw_payload: true,
                },
            ]
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(app_subscriptions(b"{}", &served).is_err());
    }

    fn message(properties: &[(&str, &str)], body: &[u8]) -> cella_sdk::mq::pb::Message {
        cella_sdk::mq::pb::Message {
            message_id: "m1".into(),
            topic: "orders".into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::copy_from_slice(body),
            born_ms: 1_735_787_045_123,
            ..Default::default()
        }
    }

    #[test]
    fn deliveries_are_cloudevents_unless_the_subscription_is_raw() {
        let subscription = AppSubscription {
            pubsub: "pubsub".into(),
            topic: "orders".into(),
            route: "/orders".into(),
            raw_payload: false,
        };
        let event = message(
            &[(PROP_CONTENT_TYPE, CLOUDEVENT_CONTENT_TYPE)],
            b"{\"id\":\"e\"}",
        );
        assert_eq!(
            delivery_body(&event, &subscription),
            (
                CLOUDEVENT_CONTENT_TYPE.to_owned(),
                b"{\"id\":\"e\"}".to_vec()
            )
        );
        // A raw or foreign message (sent with `cella mq send`) is wrapped on the way out.
        let raw = message(&[], b"hi");
        let (content_type, body) = delivery_body(&raw, &subscription);
        assert_eq!(content_type, CLOUDEVENT_CONTENT_TYPE);
        let wrapped: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(wrapped["id"], "m1");
        assert_eq!(wrapped["data_base64"], "aGk=");
        assert_eq!(wrapped["time"], "2025-01-02T03:04:05.123Z");
        let raw_subscription = AppSubscription {
            raw_payload: true,
            ..subscription
        };
        let text = message(
            &[(PROP_CONTENT_TYPE, "text/plain"), (PROP_RAW, "true")],
            b"hi",
        );
        assert_eq!(
            delivery_body(&text, &raw_subscription),
            ("text/plain".to_owned(), b"hi".to_vec())
        );
    }

    #[test]
    fn event_ids_are_version_4_uuids() {
        let id = new_event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_event_id());
    }
}
