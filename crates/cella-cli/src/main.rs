//! `cella`: the one binary. Runs a node (`up`, `server`) or an app's sidecar (`sidecar`),
//! talks to the core (`kv`, `lease`, `status`) and the blocks (`registry`, `config`, `lock`,
//! `elect`, `id`, `mq`), applies declarative resources (`apply`, `get`, `delete`), and
//! measures them (`bench`).
//!
//! Exit codes: 0 ok, 1 failed, 2 bad usage. Results go to stdout in `--output`'s format;
//! logs and errors go to stderr.

mod config;
mod id;
mod kv;
mod lease;
mod lock;
mod mq;
mod output;
mod registry;
mod resource;
mod serve;
mod sidecar;
mod status;

use std::fmt;
use std::future::Future;
use std::process::ExitCode;

use cella_sdk::Client;
use clap::{Parser, Subcommand, ValueEnum};

use crate::output::Format;

/// A thread-caching allocator: the broker and the RPC paths allocate per message and free
/// on other threads, where glibc's malloc spends a tenth of the server's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cella: a microservice platform in one binary.
#[derive(Debug, Parser)]
#[command(name = "cella", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Node to talk to, as HOST:PORT or http://HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "CELLA_ENDPOINT",
        default_value = "127.0.0.1:7070"
    )]
    endpoint: String,
    /// Bearer token sent with every request.
    #[arg(long, global = true, env = "CELLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// How to write logs (to stderr); the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an embedded single node.
    Up(serve::UpArgs),
    /// Start a member of a replicated cluster.
    Server(serve::ServerArgs),
    /// Read, write, delete and watch keys.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Config center: publish, get, history, diff, rollback, gray releases.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Grant, inspect, refresh and revoke leases.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Register, list and watch service instances.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Take, release and inspect locks.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Campaign in, observe and resign from elections.
    #[command(subcommand)]
    Elect(lock::ElectCommand),
    /// Unique ids: next, batch, decode, segment, layouts.
    #[command(subcommand)]
    Id(id::IdCommand),
    /// Message broker: topics, send, consume, group lag.
    #[command(subcommand)]
    Mq(mq::MqCommand),
    /// Create or update the resources of a YAML file (topics, consumer groups, …).
    Apply(resource::ApplyArgs),
    /// Show resources of a kind, or one by name.
    Get(resource::GetArgs),
    /// Delete a resource.
    Delete(resource::DeleteArgs),
    /// Run the sidecar for an app: registers it and serves Dapr's v1.0 HTTP API (invoke,
    /// publish/subscribe, configuration).
    Sidecar(sidecar::SidecarArgs),
    /// Show every member: leader, term, raft index, applied index, lag.
    Status,
    /// Measure Cella (and peers such as etcd) with benchmark workloads.
    Bench(cella_bench::BenchArgs),
}

/// The `--log-format` choices.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Where and how the CLI reaches the core.
#[derive(Debug, Clone)]
pub struct Remote {
    endpoint: String,
    token: Option<String>,
}

impl Remote {
    /// Connects to the `--endpoint` node.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_to(&self.endpoint).await
    }

    /// Connects to another node with the same credentials.
    pub async fn connect_to(&self, endpoint: &str) -> anyhow::Result<Client> {
        let mut builder = Client::builder(endpoint);
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        Ok(builder.connect().await?)
    }
}

/// Bad input found after parsing (clap reports the rest itself); exits with 2 like clap.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed on the call, not on
/// the first poll: a long-running command calls this before it starts, so a stop that comes
/// during start-up is not lost to the signal's default action (killed by SIGTERM).
pub fn stop_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    async fn next(kind: &str, listener: std::io::Result<tokio::signal::unix::Signal>) {
        match listener {
            Ok(mut listener) => {
                listener.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for {kind}; the other signal still stops");
                std::future::pending::<()>().await;
            }
        }
    }
    let term = next("SIGTERM", signal(SignalKind::terminate()));
    let int = next("SIGINT", signal(SignalKind::interrupt()));
    async move {
        tokio::select! {
            _ = term => {}
            _ = int => {}
        }
    }
}

/// Runs `work` until it ends or a stop comes (Ctrl-C or SIGTERM), which counts as success.
pub async fn until_interrupted(
    work: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let stop = stop_signal();
    tokio::select! {
        result = work => result,
        _ = stop => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.log_format);
    // A sidecar is a small proxy beside its app: one thread keeps every hop of a call on one
    // core (no cross-thread wake-ups) and leaves the other cores to the app.
    let runtime = match cli.command {
        Command::Sidecar(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if is_bad_usage(&error) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Bad usage found after parsing: our own checks, and a malformed `--endpoint` or `--token`.
fn is_bad_usage(error: &anyhow::Error) -> bool {
    use cella_sdk::Error::{InvalidEndpoint, InvalidToken};
    error.downcast_ref::<UsageError>().is_some()
        || matches!(
            error.downcast_ref(),
            Some(InvalidEndpoint { .. } | InvalidToken)
        )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.global.output;
    let remote = Remote {
        endpoint: cli.global.endpoint,
        token: cli.global.token,
    };
    match cli.command {
        Command::Up(args) => serve::up(args).await,
        Command::Server(args) => serve::server(args).await,
        Command::Kv(command) => kv::run(command, &remote, format).await,
        Command::Lease(command) => lease::run(command, &remote, format).await,
        Command::Registry(command) => registry::run(command, &remote, format).await,
        Command::Lock(command) => lock::run_lock(command, &remote, format).await,
        Command::Elect(command) => lock::run_elect(command, &remote, format).await,
        Command::Id(command) => id::run(command, &remote, format).await,
        Command::Config(command) => config::run(command, &remote, format).await,
        Command::Mq(command) => mq::run(command, &remote, format).await,
        Command::Apply(args) => resource::apply(args, &remote, format).await,
        Command::Get(args) => resource::get(args, &remote, format).await,
        Command::Delete(args) => resource::delete(args, &remote, format).await,
        Command::Sidecar(args) => sidecar::run(args, &remote).await,
        Command::Status => status::run(&remote, format).await,
        Command::Bench(args) => cella_bench::run(args).await,
    }
}

/// Logs to stderr, human-readable or JSON, filtered by RUST_LOG (default `info`, openraft at `warn`).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
