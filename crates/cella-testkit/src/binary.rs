//! Locating the `cella` binary under test.
//!
//! Order: the `CELLA_BIN` environment variable; else `<target>/debug/cella`, where `<target>`
//! is `CARGO_TARGET_DIR` or the workspace's `target/`; if that file is missing,
//! `cargo build -p cella-cli` runs once per process and its output is used. A binary that
//! exists is used as is: `cargo test --workspace` rebuilds it before running the tests, but
//! `cargo test -p cella-e2e` alone does not, so the path and age of the binary are printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of the `cella` binary to run, building it once if it does not exist.
pub fn cella_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let path = locate().map_err(|err| format!("{err:#}"))?;
            // Say which binary runs and how old it is: `cargo test -p cella-e2e` alone does
            // not rebuild it.
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            eprintln!(
                "cella-testkit: running {} (built {:?} ago)",
                path.display(),
                age.unwrap_or_default()
            );
            Ok(path)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("cella-testkit lives at <workspace>/crates/cella-testkit")
        .to_path_buf()
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CELLA_BIN") {
        let path = PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "CELLA_BIN={} is not a file", path.display());
        return Ok(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join("cella");
    if !path.is_file() {
        eprintln!(
            "cella-testkit: {} is missing; running `cargo build -p cella-cli`",
            path.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "cella-cli"])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "`cargo build -p cella-cli` failed: {status}"
        );
        anyhow::ensure!(
            path.is_file(),
            "`cargo build -p cella-cli` did not produce {}",
            path.display()
        );
    }
    Ok(path)
}
