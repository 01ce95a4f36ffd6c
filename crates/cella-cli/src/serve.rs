//! `cella up` and `cella server`: run a node in this process until SIGINT/SIGTERM.
//!
//! This is the one place where flags, `CELLA_*` environment variables (through clap) and
//! the optional TOML file merge into a [`ServerConfig`]: flags > env > file > defaults.

use std::path::PathBuf;

use cella_server::ServerConfig;

use crate::stop_signal;

/// Settings shared by `cella up` and `cella server`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Address for gRPC, REST, /metrics and the health checks (and peers) [default: 127.0.0.1:7070].
    #[arg(long, env = "CELLA_LISTEN")]
    pub listen: Option<String>,
    /// Where the node keeps its data [default: ./cella-data].
    #[arg(long, env = "CELLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML config file; flags and CELLA_* env take precedence over it.
    #[arg(long, env = "CELLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Raft election timeout in milliseconds [default: 1000].
    #[arg(long, env = "CELLA_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
}

impl NodeArgs {
    /// The config file (or defaults) with these flags laid over it.
    fn resolve(self) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::load(self.config.as_deref())?;
        override_with(&mut config.listen, self.listen);
        override_with(&mut config.data_dir, self.data_dir);
        override_with(
            &mut config.core.election_timeout_ms,
            self.election_timeout_ms,
        );
        Ok(config)
    }
}

/// `cella up`: an embedded single node.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// `cella server`: a member of a replicated cluster.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// This member's id, one of the ids in --peers.
    #[arg(long, env = "CELLA_NODE_ID")]
    pub node_id: Option<u64>,
    /// Initial members as `ID=HOST:PORT,...` (including this one).
    #[arg(long, env = "CELLA_PEERS")]
    pub peers: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
}

/// Runs `cella up` until a stop signal.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let stop = stop_signal();
    let mut config = args.node.resolve()?;
    config.peers.clear();
    config.node_id = 1;
    // The banner is for a person at a terminal; a node whose stdout was closed (`cella up |
    // head -1`, a supervisor's dropped pipe) keeps running, so write errors are ignored.
    let banner = format!(
        "cella: embedded node on {0} (data in {1})\n  etcd v3 gRPC + REST: http://{0}   \
         health: http://{0}/healthz   metrics: http://{0}/metrics\n  \
         try: cella kv put hello world && cella kv get hello     (Ctrl-C stops)\n",
        config.listen,
        config.data_dir.display()
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), banner.as_bytes());
    cella_server::run(config, stop).await
}

/// Runs `cella server` until a stop signal.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let stop = stop_signal();
    let mut config = args.node.resolve()?;
    override_with(&mut config.node_id, args.node_id);
    override_with(&mut config.peers, args.peers);
    cella_server::run(config, stop).await
}

fn override_with<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
