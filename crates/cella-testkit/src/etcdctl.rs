//! etcd's command-line client, `etcdctl` (API v3), for tests that check Cella is etcd to it.
//!
//! [`ensure_etcdctl`] installs Debian's etcd-client (through `scripts/install-test-deps.sh`)
//! when `etcdctl` is missing.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::workspace_root;

/// Makes sure `etcdctl` is on PATH, installing it if needed; panics if that fails.
pub fn ensure_etcdctl() {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok();
    if !found {
        let status = Command::new(workspace_root().join("scripts/install-test-deps.sh"))
            .status()
            .expect("running scripts/install-test-deps.sh");
        assert!(status.success(), "installing etcdctl failed");
    }
}

/// `etcdctl --endpoints=ENDPOINT` with a 10 s command timeout.
pub struct Etcdctl {
    /// HOST:PORT of the node it talks to.
    pub endpoint: String,
}

impl Etcdctl {
    /// The command for `args`, ready to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    /// Runs to completion; panics unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("etcdctl runs");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs to completion and returns stdout; panics unless it succeeds.
    pub fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(args).stdout).into_owned()
    }

    /// Runs a long-lived command (watch, keep-alive) for `for_how_long`, then kills it.
    pub fn run_for(&self, args: &[&str], for_how_long: Duration) -> String {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("etcdctl starts");
        std::thread::sleep(for_how_long);
        let _ = child.kill();
        let out = child.wait_with_output().expect("etcdctl output");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
