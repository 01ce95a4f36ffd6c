//! Assembles a Cella node: every block's gRPC services and REST routes on one port, with
//! `/healthz`, `/readyz`, `/metrics` and `/openapi.json`, and a clean stop on request.

mod config;
mod openapi;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cella_base::{Clock, CoalescedWrites, SystemClock, UnixClock};
use cella_core::{Core, Membership};
use cella_mq::Broker;
use cella_registry::Registry;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

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

    let broker = Broker::open(
        config.data_dir.join("mq"),
        config.mq.clone(),
        core.clone(),
        Arc::new(SystemClock::new()),
        UnixClock.now().as_millis() as u64,
    )
    .context("opening the message broker")?;
    let resources = cella_resource::Resources::new(
        core.clone(),
        vec![
            Arc::new(cella_mq::resources::TopicKind::new(broker.clone())),
            Arc::new(cella_mq::resources::ConsumerGroupKind::new(broker.clone())),
        ],
    );
    let blocks = Blocks {
        registry: Registry::start(
            core.clone(),
            Arc::new(SystemClock::new()),
            config.registry.clone(),
        )
        .await
        .context("starting the service registry")?,
        locks: cella_lock::LockService::new(core.clone()),
        ids: Arc::new(
            cella_idgen::IdService::new(
                core.clone(),
                config.idgen.clone(),
                format!("node {} at {}", config.node_id, config.listen),
            )
            .context("the [idgen] settings")?,
        ),
        config: cella_config::ConfigApi::new(cella_config::ConfigService::new(
            core.clone(),
            Arc::new(UnixClock),
            config.config.clone(),
        )),
        broker,
        resources,
    };
    let (maintenance_stop, maintenance_stopped) = tokio::sync::oneshot::channel::<()>();
    let maintenance = tokio::spawn({
        let broker = blocks.broker.clone();
        async move {
            broker
                .run_maintenance(async move {
                    let _ = maintenance_stopped.await;
                })
                .await
        }
    });
    let app = router(core.clone(), &blocks);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(listener, app, drain_rx));
    tracing::info!(%addr, node_id = config.node_id, data_dir = %config.data_dir.display(), "cella node serving");

    stop.await;
    tracing::info!("stopping: draining connections");
    let _ = drain_tx.send(true);
    let server_abort = server.abort_handle();
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(joined) => joined.context("server task")?,
        Err(_) => {
            tracing::info!("closing streams still open after {DRAIN_TIMEOUT:?}");
            server_abort.abort();
        }
    }
    blocks.ids.release_workers().await;
    let _ = maintenance_stop.send(());
    let _ = maintenance.await;
    let broker = blocks.broker.clone();
    tokio::task::spawn_blocking(move || broker.close())
        .await
        .context("closing the message broker")?;
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Most concurrent streams one client connection may open. Watches and subscriptions are
/// long-lived streams, and HTTP/2's usual limit of 200 would stall the 201st on a shared
/// connection (etcd allows 2^32 - 1).
const MAX_STREAMS_PER_CONNECTION: u32 = 1 << 20;

/// Serves `app` (HTTP/1.1 and HTTP/2, gRPC included) on `listener` until `drain` turns true,
/// then lets open connections finish.
async fn serve(listener: TcpListener, app: Router, mut drain: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        // Handlers that identify callers by address (Nacos's gray by IP) read ConnectInfo.
        let service = TowerToHyperService::new(app.clone().map_request(
            move |req: axum::http::Request<Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(CoalescedWrites::new(tcp)), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

struct AppState {
    core: Core,
    registry: prometheus_client::registry::Registry,
}

/// The building blocks a node serves beside its core.
struct Blocks {
    registry: Registry,
    locks: cella_lock::LockService,
    ids: Arc<cella_idgen::IdService>,
    config: cella_config::ConfigApi,
    broker: Broker,
    resources: cella_resource::Resources,
}

/// The node's HTTP and gRPC routes on one router.
fn router(core: Core, blocks: &Blocks) -> Router {
    let mut registry = prometheus_client::registry::Registry::default();
    cella_core::metrics::register(&mut registry);
    cella_registry::metrics::register(&mut registry);
    cella_idgen::metrics::register(&mut registry);
    cella_mq::metrics::register(&mut registry, blocks.broker.clone());
    cella_lock::metrics::register(&mut registry);
    let state = Arc::new(AppState {
        core: core.clone(),
        registry,
    });
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .with_state(state);
    let (config_grpc, config_rest) = cella_config::routes(blocks.config.clone());
    let grpc =
        cella_lock::add_services(cella_core::grpc::routes(core.clone()), blocks.locks.clone())
            .add_service(cella_registry::grpc::service(blocks.registry.clone()))
            .add_service(cella_registry::grpc::peer_service(blocks.registry.clone()))
            .add_service(cella_idgen::grpc::server(blocks.ids.clone()))
            .add_service(config_grpc)
            .add_service(cella_mq::api::grpc_service(blocks.broker.clone()))
            .add_service(cella_resource::grpc::service(blocks.resources.clone()));
    grpc.into_axum_router()
        .merge(cella_core::rest::router(core))
        .merge(cella_lock::rest::router(blocks.locks.clone()))
        .merge(cella_registry::rest::router(blocks.registry.clone()))
        .merge(cella_registry::nacos::router(blocks.registry.clone()))
        .merge(cella_idgen::rest::router(blocks.ids.clone()))
        .merge(config_rest)
        .merge(cella_mq::api::router(blocks.broker.clone()))
        .merge(cella_resource::rest::router(blocks.resources.clone()))
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
    cella_core::gateway::status_response(tonic::Code::NotFound, &message)
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.core.failed_task() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(task) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: the core's {task} task panicked; restart the node\n"),
        ),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.core.is_ready() {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let why = match state.core.failed_task() {
        Some(task) => format!("the core's {task} task panicked; restart the node"),
        None => "no leader known yet".to_owned(),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {why}\n"),
    )
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
