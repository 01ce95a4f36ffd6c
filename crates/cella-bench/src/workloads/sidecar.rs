//! sidecar-hop: the latency a `cella sidecar` adds to a call to an HTTP app.
//!
//! The bench starts an HTTP/1.1 echo app on 127.0.0.1 (`POST /echo` answers with the
//! request body) on a runtime of its own ([`serve_apart`]: a direct call wakes it as a call
//! to another process would), then spawns its own binary as `cella --endpoint TARGET
//! sidecar --app-id cella-bench-app-<pid> --app-port APP --port P` (killed when the run
//! ends): the sidecar registers the app in the target's registry and serves Dapr's v1.0
//! HTTP API. Two paths then call the app, measured side by side at each level, each caller
//! on its own keep-alive connection:
//!
//! - `direct`: `POST /echo` to the app;
//! - `sidecar`: `POST /v1.0/invoke/<app-id>/method/echo` to the sidecar, which finds the
//!   app through discovery and forwards the call through the SDK's HTTP stack;
//! - one per `--proxies NAME=ADDR`: `POST /echo` to a reverse proxy already forwarding to
//!   the app (started at `--app-port`), e.g. nginx from `bench/peers/nginx.sh`: what a
//!   lean proxy without discovery or balancing adds on the same machine in the same run.
//!
//! An operation is one call with a `--value-size` body whose echo is checked; the sidecar's
//! hop is the difference between its latency and the direct path's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{measure, serve_apart, Settings};
use crate::args::Target;
use crate::driver::LoadClient;
use crate::http::HttpConn;
use crate::progress::Progress;
use crate::stats::Measurement;

/// How long the sidecar may take to start, register the app and forward a first call.
const SIDECAR_START: Duration = Duration::from_secs(20);

/// The echo app and its sidecar process (and the reference proxies to the app).
pub(crate) struct SidecarPaths {
    app: SocketAddr,
    sidecar: SocketAddr,
    app_id: String,
    /// (name, address) of each reference proxy.
    proxies: Vec<(String, String)>,
    _sidecar_process: Child,
    /// Stops the echo app (dropping it does too).
    _stop_app: tokio::sync::oneshot::Sender<()>,
}

/// Dapr's invoke route to the app's `echo` method.
fn invoke_path(app_id: &str) -> String {
    format!("/v1.0/invoke/{app_id}/method/echo")
}

/// Starts the echo app on 127.0.0.1:`port` (0: any free port) apart from the callers
/// ([`serve_apart`]).
fn start_echo_app(port: u16) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding the echo app to 127.0.0.1:{port} (--app-port)"))?;
    listener.set_nonblocking(true)?;
    let app = listener.local_addr()?;
    let stop = serve_apart("echo-app", move || async move {
        let echo = axum::Router::new().route(
            "/echo",
            axum::routing::post(|body: bytes::Bytes| async move { body }),
        );
        let served =
            async { axum::serve(tokio::net::TcpListener::from_std(listener)?, echo).await };
        if let Err(error) = served.await {
            eprintln!("sidecar-hop: the echo app stopped: {error}");
        }
    })?;
    Ok((app, stop))
}

/// A port free on 127.0.0.1 now (the sidecar binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl SidecarPaths {
    /// Starts the echo app and a sidecar for it registered with `target`, and waits until a
    /// call through the sidecar (and through each reference proxy) reaches the app.
    pub(crate) async fn open(target: &Target, settings: &Settings) -> anyhow::Result<SidecarPaths> {
        let (app, stop_app) = start_echo_app(settings.app_port.unwrap_or(0))?;

        let app_id = format!("cella-bench-app-{}", std::process::id());
        let sidecar = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let endpoint = target.host_port();
        let binary = std::env::current_exe().context("finding the cella binary")?;
        let mut process = Command::new(&binary)
            .args(["--endpoint", endpoint, "sidecar", "--app-id", &app_id])
            .args(["--app-port", &app.port().to_string()])
            .args(["--port", &sidecar.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} sidecar", binary.display()))?;

        let deadline = Instant::now() + SIDECAR_START;
        let mut probe = Caller::new(&sidecar.to_string(), invoke_path(&app_id), "ready");
        loop {
            if let Some(status) = process.try_wait()? {
                bail!("the sidecar exited before serving ({status})");
            }
            match probe.call().await {
                Ok(()) => break,
                Err(error) if Instant::now() >= deadline => {
                    bail!("the sidecar did not forward a call within {SIDECAR_START:?}: {error:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let mut proxies = Vec::new();
        for proxy in &settings.proxies {
            let addr = proxy.host_port();
            Caller::new(addr, "/echo".into(), "ready")
                .call()
                .await
                .with_context(|| {
                    format!(
                        "proxy {} at {addr} did not reach the echo app at {app}",
                        proxy.name
                    )
                })?;
            proxies.push((proxy.name.clone(), addr.to_owned()));
        }
        Ok(SidecarPaths {
            app,
            sidecar,
            app_id,
            proxies,
            _sidecar_process: process,
            _stop_app: stop_app,
        })
    }

    /// (name, what it is) of each path, the direct one (the baseline) first, for the report.
    pub(crate) fn describe(&self, target: &Target) -> Vec<(String, String)> {
        let mut paths = vec![
            (
                "direct".to_owned(),
                format!("HTTP echo app at {}, POST /echo", self.app),
            ),
            (
                "sidecar".to_owned(),
                format!(
                    "cella sidecar at {} (registry {}), POST {}",
                    self.sidecar,
                    target.uri,
                    invoke_path(&self.app_id)
                ),
            ),
        ];
        for (name, addr) in &self.proxies {
            let what = format!("reverse proxy at {addr} to the echo app, POST /echo");
            paths.push((name.clone(), what));
        }
        paths
    }

    /// Measures path `path` (an index into [`Self::describe`]'s list) with `clients` callers.
    pub(crate) async fn run_level(
        &self,
        path: usize,
        clients: usize,
        settings: &Settings,
        progress: Option<&Progress>,
    ) -> anyhow::Result<Measurement> {
        let body = "x".repeat(settings.value_size);
        let (addr, route) = match path {
            0 => (self.app.to_string(), "/echo".to_string()),
            1 => (self.sidecar.to_string(), invoke_path(&self.app_id)),
            _ => {
                let (_, addr) = self
                    .proxies
                    .get(path - 2)
                    .context("no such sidecar-hop path")?;
                (addr.clone(), "/echo".to_string())
            }
        };
        let callers = (0..clients)
            .map(|_| Caller::new(&addr, route.clone(), &body))
            .collect();
        Ok(measure(callers, settings, progress).await?.1)
    }
}

/// One caller: echo calls on its own keep-alive connection.
struct Caller {
    conn: HttpConn,
    path: String,
    body: String,
}

impl Caller {
    fn new(addr: &str, path: String, body: &str) -> Self {
        Caller {
            conn: HttpConn::new(addr),
            path,
            body: body.to_string(),
        }
    }
}

impl LoadClient for Caller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self.conn.send("POST", &self.path, &self.body).await?;
        if response.status != 200 {
            bail!(
                "echo answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        if response.body != self.body.as_bytes() {
            bail!(
                "echo answered {} bytes for {}",
                response.body.len(),
                self.body.len()
            );
        }
        Ok(())
    }
}
