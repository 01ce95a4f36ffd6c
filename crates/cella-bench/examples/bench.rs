//! `cella bench` without the rest of the CLI: `cargo run -p cella-bench --example bench -- kv-put`.

use clap::Parser;

/// Runs one benchmark, exactly as `cella bench` does.
#[derive(Parser)]
#[command(name = "cella-bench")]
struct Cli {
    #[command(flatten)]
    bench: cella_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cella_bench::run(Cli::parse().bench).await
}
