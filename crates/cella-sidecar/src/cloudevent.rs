//! Dapr's pub/sub rules as pure decisions: how a published body becomes a CloudEvent 1.0
//! envelope, and what an app's answer to a delivered event means. No I/O here; the id and
//! the time are inputs.
//!
//! Wrapping (Dapr's rules): a body sent as `application/cloudevents+json` is already an
//! event, and only its missing attributes are filled in (`id`, `source`, `type`,
//! `specversion`, `datacontenttype`) while `topic` and `pubsubname` are set to where it was
//! published; any other body becomes the `data` of a new event: JSON content types carry
//! their JSON value, text carries a string, anything else goes base64-encoded in
//! `data_base64`. A missing Content-Type means `text/plain`.

use base64::Engine;
use serde_json::{Map, Value};

/// The content type of a CloudEvent in structured mode.
pub(crate) const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The event type Dapr gives events it wraps.
const EVENT_TYPE: &str = "com.dapr.event.sent";

/// Where and by whom a body was published, and the attributes the caller chose.
#[derive(Debug, Clone)]
pub(crate) struct Origin<'a> {
    /// The pub/sub component name.
    pub pubsub: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// The publishing app's id (the event's `source`).
    pub source: &'a str,
    /// The body's Content-Type, if given.
    pub content_type: Option<&'a str>,
    /// A new event id (used when the event has none).
    pub id: &'a str,
    /// RFC 3339 time of publication.
    pub time: &'a str,
    /// W3C trace context of the publishing call, if any.
    pub traceparent: Option<&'a str>,
    /// W3C trace state, if any.
    pub tracestate: Option<&'a str>,
}

/// The media type of a Content-Type value: lowercase, without parameters.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether `content_type` says the body is already a CloudEvent.
pub(crate) fn is_cloudevent(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| media_type(c) == CLOUDEVENT_CONTENT_TYPE)
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// The CloudEvent (JSON) for `body` published at `origin`; an error text when the body
/// claims to be a CloudEvent but is not a JSON object.
pub(crate) fn envelope(origin: &Origin<'_>, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut event = if is_cloudevent(origin.content_type) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(event)) => event,
            _ => {
                return Err(format!(
                    "the body is sent as {CLOUDEVENT_CONTENT_TYPE} but is not a JSON object"
                ))
            }
        }
    } else {
        wrap_data(origin.content_type.unwrap_or("text/plain"), body)
    };
    let defaults = [
        ("id", origin.id),
        ("source", origin.source),
        ("type", EVENT_TYPE),
        ("specversion", "1.0"),
        ("time", origin.time),
    ];
    for (name, value) in defaults {
        event
            .entry(name)
            .or_insert_with(|| Value::String(value.to_owned()));
    }
    if !event.contains_key("datacontenttype") && event.contains_key("data") {
        let media = if event.get("data").is_some_and(Value::is_string) {
            "text/plain"
        } else {
            "application/json"
        };
        event.insert("datacontenttype".into(), media.into());
    }
    event.insert("topic".into(), origin.topic.into());
    event.insert("pubsubname".into(), origin.pubsub.into());
    if let Some(traceparent) = origin.traceparent {
        event.insert("traceid".into(), traceparent.into());
        event.insert("traceparent".into(), traceparent.into());
    }
    if let Some(tracestate) = origin.tracestate {
        event.insert("tracestate".into(), tracestate.into());
    }
    serde_json::to_vec(&Value::Object(event)).map_err(|e| e.to_string())
}

/// A new event's attributes for a plain body of `content_type`.
fn wrap_data(content_type: &str, body: &[u8]) -> Map<String, Value> {
    let media = media_type(content_type);
    let data = if is_json(&media) {
        serde_json::from_slice::<Value>(body)
            .ok()
            .map(|v| ("data", v))
    } else if media.starts_with("text/") {
        std::str::from_utf8(body)
            .ok()
            .map(|text| ("data", Value::String(text.to_owned())))
    } else {
        None
    };
    let (field, value) = data.unwrap_or_else(|| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        ("data_base64", Value::String(encoded))
    });
    let mut event = Map::new();
    event.insert("datacontenttype".into(), content_type.into());
    event.insert(field.into(), value);
    event
}

/// What to do with a delivered event after the app answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handled: acknowledge it.
    Ack,
    /// Not handled now: hand it back to the broker for a later retry.
    Retry,
    /// Unwanted: acknowledge it without handling (logged).
    Drop,
}

/// Dapr's app response contract: a 2xx answer means what its JSON `status` says (`SUCCESS`,
/// `RETRY`, `DROP`; none, or a body that is not such JSON, means success; an unknown status
/// means retry); 404 means drop; any other status means retry.
pub(crate) fn verdict(status: u16, body: &[u8]) -> Verdict {
    match status {
        200..=299 => {
            let status = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned));
            match status.map(|s| s.to_ascii_uppercase()).as_deref() {
                None | Some("") | Some("SUCCESS") => Verdict::Ack,
                Some("DROP") => Verdict::Drop,
                Some(_) => Verdict::Retry,
            }
        }
        404 => Verdict::Drop,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin(content_type: Option<&str>) -> Origin<'_> {
        Origin {
            pubsub: "pubsub",
            topic: "orders",
            source: "checkout",
            content_type,
            id: "id-1",
            time: "2026-01-02T03:04:05.000Z",
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            tracestate: None,
        }
    }

    fn wrapped(content_type: Option<&str>, body: &[u8]) -> Value {
        let event = envelope(&origin(content_type), body).expect("wraps");
        serde_json::from_slice(&event).expect("JSON")
    }

    #[test]
    fn json_bodies_become_the_events_data() {
        let event = wrapped(Some("application/json"), br#"{"orderId": 7}"#);
        assert_eq!(event["data"], json!({"orderId": 7}));
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "com.dapr.event.sent");
        assert_eq!(event["source"], "checkout");
        assert_eq!(event["id"], "id-1");
        assert_eq!(event["topic"], "orders");
        assert_eq!(event["pubsubname"], "pubsub");
        assert_eq!(event["time"], "2026-01-02T03:04:05.000Z");
        assert_eq!(
            event["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn text_is_a_string_and_the_default_binary_is_base64() {
        let event = wrapped(None, b"hello");
        assert_eq!(event["data"], "hello");
        assert_eq!(event["datacontenttype"], "text/plain");
        let event = wrapped(Some("application/octet-stream"), &[0, 159, 146, 150]);
        assert_eq!(event["data_base64"], "AJ+Slg==");
        assert!(event.get("data").is_none());
        // A body sent as JSON that does not parse is carried as bytes, not lost.
        let event = wrapped(Some("application/json"), b"{oops");
        assert_eq!(event["data_base64"], "e29vcHM=");
    }

    #[test]
    fn a_cloudevent_keeps_its_attributes_and_gets_the_missing_ones() {
        let own = json!({
            "id": "mine", "type": "order.created", "source": "shop",
            "topic": "elsewhere", "data": {"n": 1},
        });
        let body = serde_json::to_vec(&own).unwrap();
        let event = wrapped(Some("application/cloudevents+json; charset=utf-8"), &body);
        assert_eq!(event["id"], "mine");
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["source"], "shop");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(
            event["topic"], "orders",
            "the topic is where it was published"
        );
        assert_eq!(event["data"], json!({"n": 1}));
        let refused = envelope(&origin(Some(CLOUDEVENT_CONTENT_TYPE)), b"[1, 2]");
        assert!(refused.expect_err("not an object").contains("JSON object"));
    }

    #[test]
    fn app_answers_follow_daprs_contract() {
        assert_eq!(verdict(200, b""), Verdict::Ack);
        assert_eq!(verdict(204, b"not json"), Verdict::Ack);
        assert_eq!(verdict(200, br#"{"status":"SUCCESS"}"#), Verdict::Ack);
        assert_eq!(verdict(200, br#"{"status":"retry"}"#), Verdict::Retry);
        assert_eq!(verdict(200, br#"{"status":"DROP"}"#), Verdict::Drop);
        assert_eq!(verdict(200, br#"{"status":"MAYBE"}"#), Verdict::Retry);
        assert_eq!(verdict(404, b""), Verdict::Drop);
        assert_eq!(verdict(500, br#"{"status":"SUCCESS"}"#), Verdict::Retry);
        assert_eq!(verdict(302, b""), Verdict::Retry);
    }
}
