//! Nacos's v1 HTTP config open API, written from its published documentation, so Nacos
//! clients in HTTP mode work against Cella unchanged:
//!
//! - `GET /nacos/v1/cs/configs?dataId=&group=&tenant=` → the content as text (404 if absent)
//! - `POST /nacos/v1/cs/configs` (form: dataId, group, content, tenant, type) → `true`
//! - `DELETE /nacos/v1/cs/configs?dataId=&group=&tenant=` → `true`
//! - `POST /nacos/v1/cs/configs/listener` (form field `Listening-Configs`:
//!   `dataId^2group^2md5[^2tenant]^1…`, header `Long-Pulling-Timeout` in ms): answers at once
//!   with the changed configs (`dataId^2group[^2tenant]^1…`, URL-encoded) or, if none
//!   changed, holds the request until one does or the timeout passes (empty body).
//!
//! Mapping: tenant = namespace (empty = `public`), group defaults to `DEFAULT_GROUP`, a
//! Nacos `type` outside Cella's formats (xml, html) is stored as text. Content hashes are
//! MD5, as Nacos computes them. The token is the `accessToken` parameter or a bearer
//! `Authorization` header.
//!
//! Gray (Nacos's beta): a publish with a `betaIps` header (comma-separated IPs) starts a gray
//! release targeted at those client ids; `GET …?beta=true` shows it and `DELETE …?beta=true`
//! aborts it. A Nacos client's id is its IP as Nacos takes it (first `X-Forwarded-For`
//! entry, else `X-Real-IP`, else the connection's address), so get and the listener give it
//! what its gray status selects, with `isBeta: true` on a gray answer. As everywhere in
//! Cella, a plain publish is refused while a gray release is open (promote or abort first).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cella_core::gateway::{self, ApiError};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::acl::{Caller, Permission};
use crate::api::ConfigApi;
use crate::error::{ConfigError, ConfigResult};
use crate::gray::ClientIdentity;
use crate::model::{ConfigKey, GrayTarget, PUBLIC_NAMESPACE};
use crate::service::PublishInput;
use crate::session::Session;

/// Nacos's default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Separates fields of one listening entry (Nacos's WORD_SEPARATOR).
const WORD: char = '\u{2}';
/// Ends one listening entry (Nacos's LINE_SEPARATOR).
const LINE: char = '\u{1}';
/// Longest hold of a long-polling request, whatever the client asks.
const MAX_HOLD: Duration = Duration::from_secs(120);
/// Nacos answers a little before the client's timeout so the answer arrives in time.
const HOLD_MARGIN: Duration = Duration::from_millis(500);
/// Default `Long-Pulling-Timeout` when the header is absent.
const DEFAULT_HOLD: Duration = Duration::from_secs(30);

/// The Nacos v1 config routes.
pub fn router(api: ConfigApi) -> Router {
    Router::new()
        .route(
            "/nacos/v1/cs/configs",
            get(get_config).post(publish).delete(delete),
        )
        .route("/nacos/v1/cs/configs/listener", post(listen))
        .with_state(api)
}

/// Paths for the OpenAPI document.
pub(crate) fn openapi_paths() -> Vec<(String, Value)> {
    let params = json!([
        { "name": "dataId", "in": "query", "required": true, "schema": { "type": "string" } },
        { "name": "group", "in": "query", "schema": { "type": "string", "default": DEFAULT_GROUP } },
        { "name": "tenant", "in": "query", "description": "namespace; empty = public", "schema": { "type": "string" } }
    ]);
    vec![
        (
            "/nacos/v1/cs/configs".into(),
            json!({
                "get": { "summary": "Nacos v1: get a config's content", "tags": ["nacos"], "parameters": params,
                         "responses": { "200": { "description": "content as text" }, "404": { "description": "config data not exist" } } },
                "post": { "summary": "Nacos v1: publish (form: dataId, group, content, tenant, type)", "tags": ["nacos"],
                          "responses": { "200": { "description": "true" }, "400": { "description": "invalid content or parameter" } } },
                "delete": { "summary": "Nacos v1: delete a config", "tags": ["nacos"], "parameters": params,
                            "responses": { "200": { "description": "true" } } }
            }),
        ),
        (
            "/nacos/v1/cs/configs/listener".into(),
            json!({ "post": {
                "summary": "Nacos v1 long-polling listener (form field Listening-Configs, header Long-Pulling-Timeout)",
                "tags": ["nacos"],
                "responses": { "200": { "description": "URL-encoded changed entries dataId%02group[%02tenant]%01, or empty after the timeout" } }
            }}),
        ),
    ]
}

/// Query parameters merged with a form body (the body wins).
fn params(query: Option<&str>, body: &[u8]) -> ConfigResult<HashMap<String, String>> {
    let bad = |e: serde_urlencoded::de::Error| ConfigError::InvalidBody {
        reason: format!("not a URL-encoded form: {e}"),
    };
    let mut out: HashMap<String, String> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(bad)?;
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body).map_err(bad)?;
    out.extend(form);
    Ok(out)
}

/// A config key from Nacos's dataId, group and tenant.
fn nacos_key(dataid: &str, group: &str, tenant: &str) -> ConfigResult<ConfigKey> {
    let group = if group.is_empty() {
        DEFAULT_GROUP
    } else {
        group
    };
    let tenant = if tenant.is_empty() {
        PUBLIC_NAMESPACE
    } else {
        tenant
    };
    let key = ConfigKey::new(tenant, group, dataid);
    if dataid.is_empty() {
        return Err(ConfigError::InvalidField {
            field: "dataId",
            rule: "is required".into(),
        });
    }
    key.validate()?;
    Ok(key)
}

fn key_from(p: &HashMap<String, String>) -> ConfigResult<ConfigKey> {
    let field = |name: &str| p.get(name).map(String::as_str).unwrap_or("");
    nacos_key(field("dataId"), field("group"), field("tenant"))
}

fn caller(headers: &HeaderMap, p: &HashMap<String, String>) -> Caller {
    match p.get("accessToken").filter(|t| !t.is_empty()) {
        Some(token) => Caller {
            token: Some(token.clone()),
        },
        None => crate::rest::caller_of(headers),
    }
}

/// Errors as Nacos answers them: the status and a text message.
fn text_error(err: &ConfigError) -> Response {
    (gateway::http_status(err.grpc_code()), err.to_string()).into_response()
}

/// Nacos's answer to a successful write: `true`.
fn answer_true<T>(result: ConfigResult<T>) -> Response {
    match result {
        Ok(_) => text("true"),
        Err(e) => text_error(&e),
    }
}

fn text(body: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain;charset=UTF-8")],
        body.into(),
    )
        .into_response()
}

async fn get_config(
    State(api): State<ConfigApi>,
    headers: HeaderMap,
    extensions: Extensions,
    RawQuery(q): RawQuery,
) -> Response {
    let (p, key) = match params(q.as_deref(), b"").and_then(|p| Ok((key_from(&p)?, p))) {
        Ok((key, p)) => (p, key),
        Err(e) => return text_error(&e),
    };
    let who = caller(&headers, &p);
    if is_beta(&p) {
        return match api.service.state(&who, &key).await {
            Ok(head) => beta_info(&head),
            Err(e) => read_error(&e),
        };
    }
    let client = client_of(&headers, &extensions);
    match api.service.get(&who, &key, &client, None).await {
        Ok(release) => (
            StatusCode::OK,
            [
                ("content-type", "text/plain;charset=UTF-8".to_string()),
                ("config-type", release.format.as_str().to_string()),
                ("content-md5", release.hash.clone()),
                ("isBeta", release.gray.to_string()),
            ],
            release.content,
        )
            .into_response(),
        Err(e) => read_error(&e),
    }
}

/// A failed read as Nacos answers it: 404 with its message for a missing config.
fn read_error(err: &ConfigError) -> Response {
    match err {
        ConfigError::ConfigNotFound { .. } => {
            (StatusCode::NOT_FOUND, "config data not exist").into_response()
        }
        e => text_error(e),
    }
}

/// Whether the request is about the beta (gray) release: `beta=true`.
fn is_beta(p: &HashMap<String, String>) -> bool {
    p.get("beta")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Nacos's answer to a beta query: the gray candidate and its IPs, `data: null` if none.
fn beta_info(head: &crate::model::Head) -> Response {
    let data = head.gray.as_ref().map(|gray| {
        let r = &gray.release;
        json!({
            "dataId": r.key.data_id, "group": r.key.group, "tenant": r.key.namespace,
            "content": r.content, "md5": r.hash, "type": r.format.as_str(),
            "betaIps": gray.target.client_ids.join(","),
        })
    });
    rest_result("query ok", data.unwrap_or(Value::Null))
}

/// Nacos's JSON envelope for console-style answers.
fn rest_result(message: &str, data: Value) -> Response {
    axum::Json(json!({ "code": 200, "message": message, "data": data })).into_response()
}

/// The client as Nacos identifies it: by IP, the first forwarded one if a proxy says so.
fn client_of(headers: &HeaderMap, extensions: &Extensions) -> ClientIdentity {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let ip = header("x-forwarded-for")
        .or_else(|| header("x-real-ip"))
        .or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip().to_string())
        })
        .unwrap_or_default();
    ClientIdentity {
        client_id: ip,
        labels: Default::default(),
    }
}

/// Nacos types outside Cella's formats are stored as text.
fn format_of(nacos_type: &str) -> &str {
    match nacos_type.to_ascii_lowercase().as_str() {
        "json" => "json",
        "yaml" | "yml" => "yaml",
        "toml" => "toml",
        "properties" => "properties",
        _ => "text",
    }
}

async fn publish(
    State(api): State<ConfigApi>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let result = async {
        let p = params(q.as_deref(), &body)?;
        let key = key_from(&p)?;
        let content = p
            .get("content")
            .cloned()
            .ok_or_else(|| ConfigError::InvalidField {
                field: "content",
                rule: "is required".into(),
            })?;
        let input = PublishInput {
            key,
            content,
            format: format_of(p.get("type").map(String::as_str).unwrap_or("")).into(),
            author: p
                .get("srcUser")
                .cloned()
                .unwrap_or_else(|| "nacos-client".into()),
            comment: p.get("desc").cloned().unwrap_or_default(),
            base: None,
        };
        let who = caller(&headers, &p);
        match beta_ips(&headers) {
            Some(client_ids) => {
                let target = GrayTarget {
                    client_ids,
                    ..Default::default()
                };
                api.service.start_gray(&who, input, target).await
            }
            None => api.service.publish(&who, input).await,
        }
    }
    .await;
    answer_true(result)
}

/// The `betaIps` header's IPs, if the publish is a beta (gray) one.
fn beta_ips(headers: &HeaderMap) -> Option<Vec<String>> {
    let value = headers.get("betaIps")?.to_str().ok()?;
    let ips: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|ip| !ip.is_empty())
        .map(str::to_string)
        .collect();
    (!ips.is_empty()).then_some(ips)
}

async fn delete(
    State(api): State<ConfigApi>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let mut beta = false;
    let result = async {
        let p = params(q.as_deref(), &body)?;
        let key = key_from(&p)?;
        let who = caller(&headers, &p);
        beta = is_beta(&p);
        match beta {
            true => api
                .service
                .abort_gray(&who, &key, "nacos-client")
                .await
                .map(drop),
            false => api
                .service
                .delete(&who, &key, "nacos-client")
                .await
                .map(drop),
        }
    }
    .await;
    match (result, beta) {
        (Ok(()), true) => rest_result("stop beta ok", Value::Bool(true)),
        (result, _) => answer_true(result),
    }
}

/// Parses `Listening-Configs`: `dataId^2group^2md5[^2tenant]^1` entries.
pub(crate) fn parse_listening(value: &str) -> ConfigResult<Vec<(ConfigKey, String)>> {
    let mut out = Vec::new();
    for (i, entry) in value.split(LINE).filter(|e| !e.is_empty()).enumerate() {
        let fields: Vec<&str> = entry.split(WORD).collect();
        let (data_id, group, md5, tenant) = match fields.as_slice() {
            [d, g, m] => (*d, *g, *m, ""),
            [d, g, m, t] => (*d, *g, *m, *t),
            _ => {
                return Err(ConfigError::InvalidField {
                    field: "Listening-Configs",
                    rule: format!("entry {i} must be dataId^2group^2md5[^2tenant]"),
                })
            }
        };
        out.push((nacos_key(data_id, group, tenant)?, md5.to_string()));
    }
    if out.is_empty() {
        return Err(ConfigError::InvalidField {
            field: "Listening-Configs",
            rule: "is required and must list at least one config".into(),
        });
    }
    Ok(out)
}

/// The listener's answer: changed entries, URL-encoded as Java's `URLEncoder` does.
pub(crate) fn encode_changed(keys: &[ConfigKey]) -> String {
    let mut plain = String::new();
    for k in keys {
        plain.push_str(&k.data_id);
        plain.push(WORD);
        plain.push_str(&k.group);
        if k.namespace != PUBLIC_NAMESPACE {
            plain.push(WORD);
            plain.push_str(&k.namespace);
        }
        plain.push(LINE);
    }
    let mut out = String::with_capacity(plain.len() * 2);
    for b in plain.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hold_for(headers: &HeaderMap) -> Duration {
    let asked = headers
        .get("Long-Pulling-Timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_HOLD);
    asked.min(MAX_HOLD).saturating_sub(HOLD_MARGIN)
}

async fn listen(
    State(api): State<ConfigApi>,
    headers: HeaderMap,
    extensions: Extensions,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let client = client_of(&headers, &extensions);
    match listen_inner(&api, &headers, client, q.as_deref(), &body).await {
        Ok(keys) => text(encode_changed(&keys)),
        Err(e) => text_error(&e),
    }
}

async fn listen_inner(
    api: &ConfigApi,
    headers: &HeaderMap,
    client: ClientIdentity,
    q: Option<&str>,
    body: &[u8],
) -> ConfigResult<Vec<ConfigKey>> {
    let p = params(q, body)?;
    let entries = parse_listening(p.get("Listening-Configs").map(String::as_str).unwrap_or(""))?;
    let who = caller(headers, &p);
    let mut namespaces: Vec<&str> = entries.iter().map(|(k, _)| k.namespace.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for ns in namespaces {
        api.service.require_namespace(ns).await?;
        api.service.authorize(&who, ns, Permission::Read).await?;
    }
    let mut changes = api.hub.subscribe();
    api.hub.wait_ready(Duration::from_secs(10)).await?;
    let mut session = Session::new(client, entries);
    let changed: Vec<ConfigKey> = session
        .check_all(&api.hub)
        .into_iter()
        .map(|c| c.key)
        .collect();
    let no_hangup = headers
        .get("Long-Pulling-No-Hangup")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !changed.is_empty() || no_hangup {
        return Ok(changed);
    }
    let deadline = tokio::time::Instant::now() + hold_for(headers);
    loop {
        tokio::select! {
            msg = changes.recv() => {
                let found: Vec<ConfigKey> = match msg {
                    Ok(key) => session.check(&api.hub, &key).into_iter().map(|c| c.key).collect(),
                    Err(broadcast::error::RecvError::Lagged(_)) => session.check_all(&api.hub).into_iter().map(|c| c.key).collect(),
                    Err(broadcast::error::RecvError::Closed) => return Ok(Vec::new()),
                };
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_configs_parse_with_and_without_tenant() {
        let v = "app.yaml\u{2}DEFAULT_GROUP\u{2}abc\u{1}db\u{2}g\u{2}\u{2}dev\u{1}";
        let entries = parse_listening(v).unwrap();
        assert_eq!(
            entries[0],
            (
                ConfigKey::new("public", "DEFAULT_GROUP", "app.yaml"),
                "abc".into()
            )
        );
        assert_eq!(
            entries[1],
            (ConfigKey::new("dev", "g", "db"), String::new())
        );
        assert!(parse_listening("").is_err());
        let err = parse_listening("only-one-field\u{1}").unwrap_err();
        assert!(err.to_string().contains("Listening-Configs"), "{err}");
    }

    #[test]
    fn changed_keys_are_url_encoded_like_javas_urlencoder() {
        let keys = [
            ConfigKey::new("public", "DEFAULT_GROUP", "app.yaml"),
            ConfigKey::new("dev", "g", "a:b"),
        ];
        assert_eq!(
            encode_changed(&keys),
            "app.yaml%02DEFAULT_GROUP%01a%3Ab%02g%02dev%01"
        );
    }

    #[test]
    fn hold_is_the_asked_timeout_less_a_margin_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(hold_for(&h), DEFAULT_HOLD - HOLD_MARGIN);
        h.insert("Long-Pulling-Timeout", "3000".parse().unwrap());
        assert_eq!(hold_for(&h), Duration::from_millis(2500));
        h.insert("Long-Pulling-Timeout", "999999999".parse().unwrap());
        assert_eq!(hold_for(&h), MAX_HOLD - HOLD_MARGIN);
        assert_eq!(format_of("XML"), "text");
        assert_eq!(format_of("yml"), "yaml");
    }
}
