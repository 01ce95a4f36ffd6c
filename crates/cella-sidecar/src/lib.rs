//! Cella's sidecar: a local agent that lets an app in any language use Cella over HTTP.
//!
//! It registers the app (service = app id, address = the app's own host and port, so
//! callers' sidecars send straight to the app: one proxy hop per call, not Dapr's two) once
//! the app accepts connections, heart-beats for it, and deregisters it before draining on
//! shutdown. It serves Dapr's v1.0 HTTP API so Dapr's SDKs and plain HTTP clients work
//! unchanged:
//!
//! - `/v1.0/invoke/{app-id}/method/{method...}`, any HTTP method, and any path with a
//!   `dapr-app-id` header: service invocation through the SDK's RPC stack (discovery,
//!   balancing, retries of idempotent methods, outlier ejection, deadlines, context headers);
//! - `POST /v1.0/publish/{pubsubname}/{topic}`: publish into Cella's broker as a CloudEvent,
//!   and delivery of the app's `GET /dapr/subscribe` subscriptions to its routes
//!   (consumer group = app id; see the `pubsub` module for the mapping and the app
//!   response contract);
//! - `GET /v1.0/configuration/{store}[/subscribe]` and
//!   `GET /v1.0/configuration/{store}/{id}/unsubscribe` (also under `/v1.0-alpha1`):
//!   Cella's config center, store = namespace, key = data id in the sidecar's group, changes
//!   pushed to the app at `/configuration/{store}/{key}` (see the
//!   `configuration` module);
//! - `/v1.0/healthz`, `/v1.0/healthz/outbound`: 204 while the sidecar runs;
//! - `/v1.0/metadata`: the app id, how the app is reached, the pub/sub components, active
//!   subscriptions.
//!
//! Pub/sub and configuration need a connection to Cella's blocks ([`Sidecar::with_cella`]);
//! without one they answer Dapr's not-configured errors. Limits: request bodies are buffered
//! (at most [`MAX_BODY`]); no state, lock, secrets, bindings or actor routes.

mod app;
mod cloudevent;
mod config_push;
mod configuration;
mod error;
mod proxy;
mod pubsub;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use cella_base::BusyPoll;
use cella_sdk::config::Identity;
use cella_sdk::registry::{pb, Registry};
use cella_sdk::rpc::{serve_registered, RpcSettings, ServeOptions};
use cella_sdk::Client;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

use app::AppChannel;
use configuration::ConfigStores;
pub use error::SidecarError;
use proxy::{Invocation, Invoker};
use pubsub::{PubSub, Publish};

/// The largest request body the sidecar forwards.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// The default [`SidecarConfig::busy_poll`]: long enough to span a fast app's answer and a
/// busy caller's next request on loopback even when wake-ups are slow (bench/results/README.md,
/// 2026-12-06).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(200);

/// What the sidecar serves and for which app.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The app's id: its service name in the registry.
    pub app_id: String,
    /// Where the app listens (host part), as callers should reach it.
    pub app_host: String,
    /// Where the app listens (port).
    pub app_port: u16,
    /// Where the sidecar's HTTP API listens.
    pub listen: SocketAddr,
    /// Topology labels of the app's instance (region, zone, cell, lane, version).
    pub labels: Vec<(String, String)>,
    /// Register/deregister timing.
    pub serve: ServeOptions,
    /// The RPC stack's settings for outgoing calls.
    pub rpc: RpcSettings,
    /// The Dapr pub/sub component names served, all backed by Cella's broker.
    pub pubsub_names: Vec<String>,
    /// The config group Dapr configuration keys live in (the store name is the namespace).
    pub config_group: String,
    /// The longest the sidecar keeps polling its sockets after an invocation's events
    /// instead of sleeping (adaptive below it, see [`cella_base::BusyPoll`]); zero: never.
    pub busy_poll: Duration,
}

impl SidecarConfig {
    /// Defaults for `app_id` at `app_port` on 127.0.0.1, the API on `listen`.
    pub fn new(app_id: &str, app_port: u16, listen: SocketAddr) -> Self {
        SidecarConfig {
            app_id: app_id.to_owned(),
            app_host: "127.0.0.1".into(),
            app_port,
            listen,
            labels: Vec::new(),
            serve: ServeOptions {
                ready_timeout: Duration::from_secs(60),
                drain_grace: Duration::from_millis(500),
            },
            rpc: RpcSettings::default(),
            pubsub_names: vec!["pubsub".into()],
            config_group: "DEFAULT_GROUP".into(),
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }

    /// The id the app has towards the config center's gray selection.
    fn config_client_id(&self) -> String {
        format!("{}@{}:{}", self.app_id, self.app_host, self.app_port)
    }
}

/// How the sidecar reaches Cella's broker and config center.
#[derive(Debug, Clone)]
pub struct CellaConnection {
    /// A connected client.
    pub client: Client,
    /// The node it is connected to (config subscriptions open their own streams).
    pub endpoint: String,
    /// The bearer token, if the node needs one.
    pub token: Option<String>,
}

/// A sidecar whose API socket is bound; [`Sidecar::run`] serves it.
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    registry: Registry,
    listener: TcpListener,
    cella: Option<CellaConnection>,
}

#[derive(Clone)]
struct AppState {
    config: Arc<SidecarConfig>,
    invoker: Arc<Invoker>,
    pubsub: Option<Arc<PubSub>>,
    stores: Option<Arc<ConfigStores>>,
}

impl Sidecar {
    /// Checks the config and binds the API socket.
    pub async fn bind(config: SidecarConfig, registry: Registry) -> Result<Sidecar, SidecarError> {
        proxy::check_app_id(&config.app_id)?;
        if config.app_port == 0 {
            return Err(SidecarError::InvalidConfig {
                field: "app_port",
                rule: "must be 1..65535",
            });
        }
        config
            .rpc
            .validate()
            .map_err(|e| SidecarError::InvalidConfig {
                field: "rpc",
                rule: match e {
                    cella_sdk::Error::InvalidSetting { rule, .. } => rule,
                    _ => "invalid RPC settings",
                },
            })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| SidecarError::Bind {
                addr: config.listen,
                message: e.to_string(),
            })?;
        if config.pubsub_names.iter().any(String::is_empty) {
            return Err(SidecarError::InvalidConfig {
                field: "pubsub_names",
                rule: "names must not be empty",
            });
        }
        Ok(Sidecar {
            config,
            registry,
            listener,
            cella: None,
        })
    }

    /// Serves pub/sub and configuration through `cella` (otherwise those routes answer
    /// Dapr's not-configured errors).
    pub fn with_cella(mut self, cella: CellaConnection) -> Sidecar {
        self.cella = Some(cella);
        self
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, SidecarError> {
        self.listener.local_addr().map_err(|e| SidecarError::Bind {
            addr: self.config.listen,
            message: e.to_string(),
        })
    }

    /// Serves the API; registers the app once it accepts connections; on `shutdown`
    /// deregisters it, waits the drain grace, then stops serving.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SidecarError> {
        let config = Arc::new(self.config);
        let app_timeout = config.rpc.timeout.unwrap_or(Duration::from_secs(60));
        let app_channel = AppChannel::new(&config.app_host, config.app_port, app_timeout)
            .map_err(|message| SidecarError::Lifecycle { message })?;
        let (pubsub, stores) = match &self.cella {
            Some(cella) => {
                let pubsub = PubSub::new(
                    config.pubsub_names.clone(),
                    config.app_id.clone(),
                    cella.client.mq(),
                    app_channel.clone(),
                );
                let identity = Identity {
                    client_id: config.config_client_id(),
                    labels: config.labels.iter().cloned().collect(),
                };
                let stores = ConfigStores::new(
                    cella.client.config(),
                    cella.endpoint.clone(),
                    cella.token.clone(),
                    config.config_group.clone(),
                    identity,
                    app_channel,
                );
                (Some(pubsub), Some(stores))
            }
            None => (None, None),
        };
        let (stop_delivery, stopped) = tokio::sync::watch::channel(false);
        let delivery = pubsub
            .clone()
            .map(|pubsub| tokio::spawn(pubsub.deliver(config.serve.ready_timeout, stopped)));
        let state = AppState {
            invoker: Invoker::new(
                self.registry.clone(),
                config.rpc.clone(),
                BusyPoll::start(config.busy_poll),
            ),
            config: config.clone(),
            pubsub,
            stores,
        };
        let app = router(state);
        let listener = self.listener;
        let instance = pb::Instance {
            ip: config.app_host.clone(),
            port: u32::from(config.app_port),
            labels: config.labels.iter().cloned().collect(),
            metadata: [
                (
                    "sidecar_port".to_string(),
                    listener
                        .local_addr()
                        .map(|a| a.port().to_string())
                        .unwrap_or_default(),
                ),
                ("protocol".to_string(), "http".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let serve = move |drain| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(drain)
                .await
        };
        let served = serve_registered(
            &self.registry,
            &config.app_id,
            instance,
            config.serve,
            serve,
            shutdown,
        )
        .await;
        // Consumers leave their groups so the app's other instances take the queues now.
        stop_delivery.send_replace(true);
        if let Some(delivery) = delivery {
            let _ = tokio::time::timeout(
                config.serve.drain_grace.max(Duration::from_secs(2)),
                delivery,
            )
            .await;
        }
        served.map_err(|e| SidecarError::Lifecycle {
            message: e.to_string(),
        })
    }
}

fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for version in ["v1.0", "v1.0-alpha1"] {
        router = router
            .route(
                &format!("/{version}/configuration/{{store}}"),
                get(get_configuration),
            )
            .route(
                &format!("/{version}/configuration/{{store}}/subscribe"),
                get(subscribe_configuration),
            )
            .route(
                &format!("/{version}/configuration/{{store}}/{{id}}/unsubscribe"),
                get(unsubscribe_configuration),
            );
    }
    router
        .route("/v1.0/publish/{pubsub}/{topic}", post(publish))
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz))
        .route("/v1.0/metadata", get(metadata))
        .route(
            "/v1.0/invoke/{app_id}/method/{*method}",
            any(invoke_by_path),
        )
        .fallback(invoke_by_header)
        .with_state(state)
}

async fn healthz() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn metadata(State(state): State<AppState>) -> Response {
    let config = &state.config;
    axum::Json(serde_json::json!({
        "id": config.app_id,
        "runtimeVersion": concat!("cella-", env!("CARGO_PKG_VERSION")),
        "enabledFeatures": [],
        "actors": [],
        "components": components(&state),
        "subscriptions": state.pubsub.as_ref().map(|p| p.active()).unwrap_or_default(),
        "extended": {},
        "appConnectionProperties": {
            "port": config.app_port,
            "protocol": "http",
            "channelAddress": config.app_host,
        },
    }))
    .into_response()
}

async fn buffered(request: Request) -> Result<(http::request::Parts, bytes::Bytes), SidecarError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| SidecarError::BodyTooLarge { max: MAX_BODY })?;
    Ok((parts, body))
}

async fn invoke_by_path(
    State(state): State<AppState>,
    Path((app_id, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    let forward = async {
        let (parts, body) = buffered(request).await?;
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        state
            .invoker
            .invoke(Invocation {
                app_id,
                method: parts.method,
                path_and_query: format!("/{}{query}", method.trim_start_matches('/')),
                headers: parts.headers,
                body,
            })
            .await
    };
    forward.await.unwrap_or_else(IntoResponse::into_response)
}

async fn invoke_by_header(State(state): State<AppState>, request: Request) -> Response {
    let forward = async {
        let app_id = request
            .headers()
            .get("dapr-app-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let Some(app_id) = app_id else {
            return Err(SidecarError::NoRoute {
                path: request.uri().path().to_owned(),
            });
        };
        let (parts, body) = buffered(request).await?;
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        state
            .invoker
            .invoke(Invocation {
                app_id,
                method: parts.method,
                path_and_query,
                headers: parts.headers,
                body,
            })
            .await
    };
    forward.await.unwrap_or_else(IntoResponse::into_response)
}

fn components(state: &AppState) -> Vec<serde_json::Value> {
    let mut components = Vec::new();
    if let Some(pubsub) = &state.pubsub {
        for name in pubsub.served() {
            components.push(serde_json::json!({
                "name": name, "type": "pubsub.cella", "version": "v1", "capabilities": [],
            }));
        }
    }
    if state.stores.is_some() {
        components.push(serde_json::json!({
            "name": "*", "type": "configuration.cella", "version": "v1", "capabilities": [],
        }));
    }
    components
}

fn header_text(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn publish(
    State(state): State<AppState>,
    Path((pubsub, topic)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    request: Request,
) -> Response {
    let publish = async {
        let Some(publisher) = state.pubsub.as_ref() else {
            return Err(SidecarError::PubsubNotFound {
                name: pubsub,
                served: "none (the sidecar runs without a Cella connection)".into(),
            });
        };
        let (parts, body) = buffered(request).await?;
        let headers = &parts.headers;
        publisher
            .publish(Publish {
                pubsub,
                topic,
                content_type: header_text(headers, http::header::CONTENT_TYPE),
                traceparent: header_text(
                    headers,
                    http::header::HeaderName::from_static("traceparent"),
                ),
                tracestate: header_text(
                    headers,
                    http::header::HeaderName::from_static("tracestate"),
                ),
                query,
                body,
            })
            .await
    };
    match publish.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error.into_response(),
    }
}

/// The `key` query parameters, in order.
fn keys(query: Vec<(String, String)>) -> Vec<String> {
    query
        .into_iter()
        .filter(|(name, _)| name == "key")
        .map(|(_, key)| key)
        .collect()
}

fn stores(state: &AppState) -> Result<&Arc<ConfigStores>, SidecarError> {
    state
        .stores
        .as_ref()
        .ok_or(SidecarError::ConfigNotConfigured)
}

async fn get_configuration(
    State(state): State<AppState>,
    Path(store): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let items = async { stores(&state)?.get(&store, keys(query)).await };
    match items.await {
        Ok(items) => {
            let map: serde_json::Map<String, serde_json::Value> =
                items.into_iter().map(|(k, (_, item))| (k, item)).collect();
            axum::Json(map).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn subscribe_configuration(
    State(state): State<AppState>,
    Path(store): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let subscribed = async { stores(&state)?.subscribe(&store, keys(query)).await };
    match subscribed.await {
        Ok(id) => axum::Json(serde_json::json!({ "id": id })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn unsubscribe_configuration(
    State(state): State<AppState>,
    Path((store, id)): Path<(String, String)>,
) -> Response {
    match stores(&state).and_then(|s| s.unsubscribe(&store, &id)) {
        Ok(()) => axum::Json(serde_json::json!({ "ok": true })).into_response(),
        Err(error) => error.into_response(),
    }
}
