//! Assembles a Cella node: every block's gRPC services and REST routes on one port, with
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json`, and a clean stop on request.

mod config;
mod openapi;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use cella_base::SystemClock;
use cella_core::{Core, Membership};
use cella_mq::Broker;
use prometheus_client::registry::Registry;

pub use config::ServerConfig;

/// How long a stopping node waits for open requests and streams before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs a node until `stop` completes, then drains, stops Raft and returns.
pub async fn run(
    config: ServerConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let members = config.initial_members()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let core = Core::start(
        Membership {
            node_id: config.node_id,
            addr: config.listen.clone(),
            initial_members: members,
            data_dir: config.data_dir.clone(),
        },
        config.core.clone(),
    )
    .await
    .context("starting the consistent core")?;

    let epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let broker = Broker::open(
        config.data_dir.join("mq"),
        config.mq.clone(),
        core.clone(),
        Arc::new(SystemClock::new()),
        epoch_ms,
    )
    .context("opening the message broker")?;
    let (maintenance_stop, maintenance_stopped) = tokio::sync::oneshot::channel::<()>();
    let maintenance = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .run_maintenance(async move {
                    let _ = maintenance_stopped.await;
                })
                .await
        }
    });

    let app = router(core.clone(), broker.clone());
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = drain_rx.changed().await;
            })
            .into_future(),
    );
    tracing::info!(%addr, node_id = config.node_id, data_dir = %config.data_dir.display(), "cella node serving");

    stop.await;
    tracing::info!("stopping: draining connections");
    let _ = drain_tx.send(true);
    let server_abort = server.abort_handle();
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(joined) => joined.context("server task")?.context("serving")?,
        Err(_) => {
            tracing::info!("closing streams still open after {DRAIN_TIMEOUT:?}");
            server_abort.abort();
        }
    }
    let _ = maintenance_stop.send(());
    let _ = maintenance.await;
    tokio::task::spawn_blocking(move || broker.close())
        .await
        .context("closing the message broker")?;
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

struct AppState {
    core: Core,
    registry: Registry,
}

/// The node's HTTP and gRPC routes on one router.
fn router(core: Core, broker: Broker) -> Router {
    let mut registry = Registry::default();
    cella_core::metrics::register(&mut registry);
    let state = Arc::new(AppState {
        core: core.clone(),
        registry,
    });
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .with_state(state);
    cella_core::grpc::routes(core.clone())
        .add_service(cella_mq::api::grpc_service(broker.clone()))
        .into_axum_router()
        .merge(cella_core::rest::router(core))
        .merge(cella_mq::api::router(broker))
        .merge(ops)
        .fallback(no_route)
}

/// Unknown paths: gRPC clients get `Unimplemented`, as tonic answers them; everyone else a
/// JSON 404 instead of tonic's empty HTTP 200.
async fn no_route(request: axum::extract::Request) -> axum::response::Response {
    let path = request.uri().path().to_string();
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("unknown method {path}")).into_http();
    }
    let message = format!(
        "no route for {} {path}; the API is described at /openapi.json",
        request.method()
    );
    let body = serde_json::json!({ "error": message, "code": tonic::Code::NotFound as i32, "message": message });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.core.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known yet\n",
        )
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}"),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
