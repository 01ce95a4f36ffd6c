//! The request context every call carries (ARCHITECTURE.md, "Request context"): request id,
//! W3C `traceparent`, deadline, transaction id, route hints, lane and fault tag.
//!
//! Application code reads and writes a typed [`Context`]; on the wire it travels as headers
//! ([`headers`]). The deadline (the context's own, not the stack's per-call timeout) travels
//! as gRPC's relative `grpc-timeout` (for HTTP calls too), so no two machines need to agree
//! on the wall clock. [`ContextLayer`] is the outermost layer of the client stack: it writes
//! the context of each request (the one attached as a request extension, or a fresh one)
//! into its headers.

use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower::{Layer, Service};

use super::RpcRequest;

/// The header names the context travels in.
pub mod headers {
    /// The request id, kept across hops.
    pub const REQUEST_ID: &str = "x-request-id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// The time left, in gRPC's `grpc-timeout` form (`250m`, `3S`, ...).
    pub const DEADLINE: &str = "grpc-timeout";
    /// The distributed transaction id.
    pub const XID: &str = "x-cella-xid";
    /// Route hint: the cell the call should reach.
    pub const CELL: &str = "x-cella-cell";
    /// Route hint: the key that routes the call (also the consistent-hash key).
    pub const ROUTING_KEY: &str = "x-cella-routing-key";
    /// Route hint: the route table version the caller routed with.
    pub const ROUTE_VERSION: &str = "x-cella-route-version";
    /// The traffic lane (canary, test, ...).
    pub const LANE: &str = "x-cella-lane";
    /// The fault tag of a chaos drill.
    pub const FAULT: &str = "x-cella-fault";
}

/// Route hints: where the call should go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteHints {
    /// The target cell.
    pub cell: Option<String>,
    /// The routing key (user id, order id, ...); balancers hash on it.
    pub routing_key: Option<String>,
    /// The route table version the caller used.
    pub route_version: Option<u64>,
}

/// A call's context: what travels with it from hop to hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Identifies the request across every hop.
    pub request_id: String,
    /// The W3C trace context (`00-<trace id>-<span id>-<flags>`).
    pub traceparent: String,
    /// When the call must have ended, if ever.
    pub deadline: Option<Instant>,
    /// The distributed transaction the call belongs to.
    pub xid: Option<String>,
    /// Route hints.
    pub route: RouteHints,
    /// The traffic lane.
    pub lane: Option<String>,
    /// A chaos drill's fault tag.
    pub fault: Option<String>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// A new root context: fresh request id and trace, no deadline.
    pub fn new() -> Context {
        Context {
            request_id: hex_id(16),
            traceparent: fresh_traceparent(),
            deadline: None,
            xid: None,
            route: RouteHints::default(),
            lane: None,
            fault: None,
        }
    }

    /// The context of a call made while serving this one: same request id, trace, deadline,
    /// xid, hints, lane and fault tag; a new span id.
    pub fn child(&self) -> Context {
        let mut child = self.clone();
        child.traceparent = match self.traceparent.split('-').collect::<Vec<_>>().as_slice() {
            [version, trace, _span, flags] => format!("{version}-{trace}-{}-{flags}", hex_id(8)),
            _ => Context::new().traceparent,
        };
        child
    }

    /// Sets the deadline to `timeout` from now (sooner deadlines already set win).
    pub fn with_timeout(mut self, timeout: Duration) -> Context {
        let at = Instant::now() + timeout;
        self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        self
    }

    /// Sets the routing key (route hint and consistent-hash key).
    pub fn with_routing_key(mut self, key: impl Into<String>) -> Context {
        self.route.routing_key = Some(key.into());
        self
    }

    /// The trace id part of `traceparent`.
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap_or_default()
    }

    /// The time left before the deadline (zero once passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Reads the context an incoming request carries (server side). Missing or malformed
    /// request id or traceparent get fresh ones; a malformed deadline is ignored.
    pub fn from_headers(headers: &HeaderMap) -> Context {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Context {
            request_id: text(headers::REQUEST_ID).unwrap_or_else(|| hex_id(16)),
            traceparent: text(headers::TRACEPARENT)
                .filter(|t| is_traceparent(t))
                .unwrap_or_else(fresh_traceparent),
            deadline: text(headers::DEADLINE)
                .and_then(|t| parse_grpc_timeout(&t))
                .map(|left| Instant::now() + left),
            xid: text(headers::XID),
            route: RouteHints {
                cell: text(headers::CELL),
                routing_key: text(headers::ROUTING_KEY),
                route_version: text(headers::ROUTE_VERSION).and_then(|v| v.parse().ok()),
            },
            lane: text(headers::LANE),
            fault: text(headers::FAULT),
        }
    }

    /// Writes the context into `headers`, replacing what they held. Values that cannot travel
    /// in a header (non-visible ASCII) are left out.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        put_header(
            headers,
            headers::REQUEST_ID,
            Some(&self.request_id),
            Indexing::Never,
        );
        put_header(
            headers,
            headers::TRACEPARENT,
            Some(&self.traceparent),
            Indexing::Never,
        );
        self.write_deadline(headers);
        let mut put = |name: &'static str, value: Option<&str>| {
            put_header(headers, name, value, Indexing::Allowed)
        };
        put(headers::XID, self.xid.as_deref());
        put(headers::CELL, self.route.cell.as_deref());
        put(headers::ROUTING_KEY, self.route.routing_key.as_deref());
        let version = self.route.route_version.map(|v| v.to_string());
        put(headers::ROUTE_VERSION, version.as_deref());
        put(headers::LANE, self.lane.as_deref());
        put(headers::FAULT, self.fault.as_deref());
    }

    /// Writes only the deadline header (the time left now), replacing what it held.
    pub fn write_deadline(&self, headers: &mut HeaderMap) {
        let deadline = self.remaining().map(format_grpc_timeout);
        put_header(
            headers,
            headers::DEADLINE,
            deadline.as_deref(),
            Indexing::Never,
        );
    }
}

/// Whether HTTP/2 may add a header value to its compression table (HPACK).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexing {
    /// The value may repeat on later calls (a cell, a lane).
    Allowed,
    /// The value is new on every call (an id, the time left): indexing it would only evict
    /// the entries that do repeat, so it is sent as a never-indexed literal.
    Never,
}

/// Sets header `name` to `value`, or removes it when there is no value or the value cannot
/// travel in a header.
fn put_header(
    headers: &mut HeaderMap,
    name: &'static str,
    value: Option<&str>,
    indexing: Indexing,
) {
    let name = HeaderName::from_static(name);
    match value.and_then(|v| HeaderValue::from_str(v).ok()) {
        Some(mut value) => {
            value.set_sensitive(indexing == Indexing::Never);
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// `true` for `2 hex - 32 hex - 16 hex - 2 hex`.
fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Random lowercase hex of `bytes` bytes (at most 16), in one allocation: a fresh context is
/// made for every call, so this is on the hot path.
fn hex_id(bytes: usize) -> String {
    let mut text = String::with_capacity(2 * bytes);
    push_hex(&mut text, bytes);
    text
}

/// Appends `bytes` (at most 16) random bytes as lowercase hex.
fn push_hex(text: &mut String, bytes: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let random = rand::random::<u128>().to_le_bytes();
    for byte in &random[..bytes] {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// A root traceparent: version 00, a fresh trace id and span id, sampled.
fn fresh_traceparent() -> String {
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, 16);
    text.push('-');
    push_hex(&mut text, 8);
    text.push_str("-01");
    text
}

/// gRPC's `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
pub(crate) fn format_grpc_timeout(left: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let micros = left.as_micros();
    if micros <= MAX {
        format!("{micros}u")
    } else if left.as_millis() <= MAX {
        format!("{}m", left.as_millis())
    } else {
        format!("{}S", left.as_secs().min(MAX as u64))
    }
}

/// Parses `grpc-timeout`; `None` when malformed.
pub(crate) fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Writes each request's [`Context`] (its extension, or a fresh one) into its headers.
#[derive(Debug, Clone, Default)]
pub struct ContextLayer;

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ContextService { inner }
    }
}

/// The service of [`ContextLayer`].
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
}

impl<S: Service<RpcRequest>> Service<RpcRequest> for ContextService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: RpcRequest) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let context = parts.extensions.get_or_insert_with(Context::new);
        context.write_headers(&mut parts.headers);
        self.inner.call(RpcRequest::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_survives_a_round_trip_through_headers() {
        let mut sent = Context::new().with_routing_key("user-7");
        sent.xid = Some("tx-1".into());
        sent.route.cell = Some("cell-a".into());
        sent.route.route_version = Some(12);
        sent.lane = Some("canary".into());
        sent.fault = Some("delay".into());
        let mut headers = HeaderMap::new();
        sent.write_headers(&mut headers);
        let got = Context::from_headers(&headers);
        assert_eq!(got.request_id, sent.request_id);
        assert_eq!(got.traceparent, sent.traceparent);
        assert_eq!(got.route, sent.route);
        assert_eq!(
            (got.xid, got.lane, got.fault),
            (sent.xid, sent.lane, sent.fault)
        );
        assert_eq!(got.deadline, None);
    }

    #[test]
    fn child_keeps_the_trace_and_changes_the_span() {
        let parent = Context::new();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.request_id, parent.request_id);
        assert_ne!(child.traceparent, parent.traceparent);
        assert!(is_traceparent(&child.traceparent));
    }

    #[test]
    fn grpc_timeout_round_trips_and_rejects_garbage() {
        for left in [
            Duration::from_micros(1500),
            Duration::from_secs(200),
            Duration::from_secs(400_000),
        ] {
            let parsed = parse_grpc_timeout(&format_grpc_timeout(left)).expect("well formed");
            assert!(parsed <= left && left - parsed < Duration::from_secs(1));
        }
        for bad in ["", "5", "12x", "123456789m", "-5m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_malformed_traceparent_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(headers::TRACEPARENT, HeaderValue::from_static("nonsense"));
        assert!(is_traceparent(&Context::from_headers(&headers).traceparent));
    }
}
