//! Cella's sidecar: a local agent that lets an app in any language use Cella over HTTP.
//!
//! It registers the app (service = app id, address = the app's own host and port, so
//! callers' sidecars send straight to the app: one proxy hop per call, not Dapr's two) once
//! the app accepts connections, heart-beats for it, and deregisters it before draining on
//! shutdown. It serves Dapr's v1.0 HTTP API so Dapr's SDKs work unchanged:
//!
//! - `/v1.0/invoke/{app-id}/method/{method...}`, any HTTP method, and any path with a
//!   `dapr-app-id` header: service invocation through the SDK's RPC stack (discovery,
//!   balancing, retries of idempotent methods, outlier ejection, deadlines, context headers);
//! - `/v1.0/healthz`, `/v1.0/healthz/outbound`: 204 while the sidecar runs;
//! - `/v1.0/metadata`: the app id and how the app is reached.
//!
//! Limits: request bodies are buffered (at most [`MAX_BODY`]); no pub/sub, state or
//! configuration routes yet.

mod error;
mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use cella_sdk::registry::{pb, Registry};
use cella_sdk::rpc::{serve_registered, RpcSettings, ServeOptions};
use http::StatusCode;
use tokio::net::TcpListener;

pub use error::SidecarError;
use proxy::{Invocation, Invoker};

/// The largest request body the sidecar forwards.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

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
        }
    }
}

/// A sidecar whose API socket is bound; [`Sidecar::run`] serves it.
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    registry: Registry,
    listener: TcpListener,
}

#[derive(Clone)]
struct AppState {
    config: Arc<SidecarConfig>,
    invoker: Arc<Invoker>,
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
        Ok(Sidecar {
            config,
            registry,
            listener,
        })
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
        let state = AppState {
            invoker: Invoker::new(self.registry.clone(), config.rpc.clone()),
            config: config.clone(),
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
        serve_registered(
            &self.registry,
            &config.app_id,
            instance,
            config.serve,
            serve,
            shutdown,
        )
        .await
        .map_err(|e| SidecarError::Lifecycle {
            message: e.to_string(),
        })
    }
}

fn router(state: AppState) -> Router {
    Router::new()
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
        "components": [],
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
