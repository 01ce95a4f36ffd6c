//! `cella sidecar`: runs the sidecar for one app until SIGINT/SIGTERM (then deregisters the
//! app, drains, and exits 0). It serves Dapr's invoke, publish/subscribe and configuration
//! routes through the `--endpoint` node.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use cella_sidecar::{CellaConnection, Sidecar, SidecarConfig, DEFAULT_BUSY_POLL};
use clap::Args;

use crate::registry::parse_label;
use crate::{stop_signal, Remote, UsageError};

/// `cella sidecar`.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// The app's id: the service name it registers as and is invoked by.
    #[arg(long)]
    app_id: String,
    /// The port the app listens on.
    #[arg(long)]
    app_port: u16,
    /// The host the app is reached at by other sidecars.
    #[arg(long, default_value = "127.0.0.1")]
    app_host: String,
    /// The port of the sidecar's Dapr-compatible HTTP API (Dapr's DAPR_HTTP_PORT).
    #[arg(long, default_value_t = 3500)]
    port: u16,
    /// The address the API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    listen_host: IpAddr,
    /// A label of the app's instance, `key=value` (repeatable): region, zone, cell, lane, version.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Per-call timeout of invocations (and of event and config deliveries to the app), in
    /// milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// A Dapr pub/sub component name served by Cella's broker (repeatable).
    #[arg(long = "pubsub-name", default_value = "pubsub")]
    pubsub_names: Vec<String>,
    /// The config group Dapr configuration keys are data ids in; the Dapr store name is the
    /// config namespace.
    #[arg(long, default_value = "DEFAULT_GROUP")]
    config_group: String,
    /// The longest the sidecar keeps polling after an invocation's events before it sleeps,
    /// in microseconds (it adapts below this to how soon events follow; 0 turns it off).
    /// Saves a process wake-up per event where those are slow (VMs), for at most this much
    /// CPU per event.
    #[arg(long, default_value_t = DEFAULT_BUSY_POLL.as_micros() as u64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    busy_poll_us: u64,
}

/// Runs the sidecar.
pub async fn run(args: SidecarArgs, remote: &Remote) -> anyhow::Result<()> {
    let stop = stop_signal();
    if args.app_port == 0 {
        return Err(UsageError("--app-port must be 1..65535".into()).into());
    }
    let client = remote.connect().await?;
    let registry = client.registry();
    let mut config = SidecarConfig::new(
        &args.app_id,
        args.app_port,
        SocketAddr::new(args.listen_host, args.port),
    );
    config.app_host = args.app_host;
    config.labels = args.labels;
    config.rpc.timeout = Some(Duration::from_millis(args.timeout_ms));
    config.pubsub_names = args.pubsub_names;
    config.config_group = args.config_group;
    config.busy_poll = Duration::from_micros(args.busy_poll_us);
    let sidecar = match Sidecar::bind(config, registry).await {
        Err(
            error @ (cella_sidecar::SidecarError::InvalidAppId { .. }
            | cella_sidecar::SidecarError::InvalidConfig { .. }),
        ) => return Err(UsageError(error.to_string()).into()),
        other => other?,
    };
    let sidecar = sidecar.with_cella(CellaConnection {
        client,
        endpoint: remote.endpoint.clone(),
        token: remote.token.clone(),
    });
    let addr = sidecar.local_addr()?;
    // As `cella up`'s banner: a closed stderr must not stop the sidecar.
    let _ = writeln!(
        std::io::stderr(),
        "cella sidecar for {} (app on port {}) serving Dapr's HTTP API on http://{addr}",
        args.app_id,
        args.app_port
    );
    sidecar.run(stop).await.context("running the sidecar")?;
    Ok(())
}
