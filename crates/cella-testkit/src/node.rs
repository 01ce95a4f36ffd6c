//! One real `cella` process under test.
//!
//! A [`Node`] owns a temporary directory holding the node's data dir (`data/`) and its log
//! (`node.log`: stdout and stderr of every start, appended, each start headed by a banner).
//! It signals only the process it started, by PID: `kill9` (SIGKILL), `stop` (SIGTERM, then
//! an exit status of 0 is required), `pause`/`resume` (SIGSTOP/SIGCONT). Dropping a node
//! kills its process. If the drop happens while a test panics, the log's path and tail are
//! printed and the directory is kept for inspection.
//!
//! On Linux the child also gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies if the test
//! process dies without unwinding. That signal follows the *thread* that spawned the
//! child: start and restart nodes from the test's own thread or runtime worker threads,
//! not from `spawn_blocking`, whose threads exit when idle.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::probe::http_get_status;
use crate::{cella_binary, free_port};

/// Member id of a node in a cluster (`--node-id`).
pub type NodeId = u64;

/// Time a graceful stop may take before the node is killed and the stop reported failed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Lines of the log shown in failure messages.
const TAIL_LINES: usize = 40;

/// How a node is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `cella up`: an embedded single node.
    Embedded,
    /// `cella server`: member `node_id` of a static cluster with these peers (itself
    /// included).
    Member {
        node_id: NodeId,
        peers: Vec<(NodeId, SocketAddr)>,
    },
}

/// Extra environment and arguments for a node's process.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Environment variables set on the process (on top of the test's own environment).
    pub env: Vec<(String, String)>,
    /// Arguments appended after the role's own.
    pub args: Vec<String>,
}

impl NodeOptions {
    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Passes `--config PATH` (a TOML file in `ServerConfig`'s form, e.g. an `[mq]` table).
    pub fn config_file(mut self, path: &Path) -> Self {
        self.args.push("--config".into());
        self.args.push(path.display().to_string());
        self
    }

    /// Sets `CELLA_ELECTION_TIMEOUT_MS` (the heartbeat is a tenth of it).
    pub fn election_timeout(self, timeout: Duration) -> Self {
        self.env("CELLA_ELECTION_TIMEOUT_MS", timeout.as_millis())
    }
}

/// What the harness knows about the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    Paused,
    Down,
}

/// A `cella` process with its own data directory and log; see the module docs.
pub struct Node {
    role: Role,
    addr: SocketAddr,
    options: NodeOptions,
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    child: Option<Child>,
    life: Life,
    starts: u32,
}

impl Node {
    /// Starts `cella up` on a free port.
    pub fn embedded(options: NodeOptions) -> anyhow::Result<Node> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        Node::start(Role::Embedded, addr, options)
    }

    /// Starts `cella server` as member `node_id`; its own address is taken from `peers`.
    pub fn member(
        node_id: NodeId,
        peers: &[(NodeId, SocketAddr)],
        options: NodeOptions,
    ) -> anyhow::Result<Node> {
        let addr = peers
            .iter()
            .find(|(id, _)| *id == node_id)
            .map(|(_, addr)| *addr)
            .with_context(|| format!("node {node_id} is not among its peers {peers:?}"))?;
        Node::member_at(node_id, addr, peers, options)
    }

    /// Starts `cella server` as member `node_id` listening on `addr`, while `peers` may
    /// name another address for it (a [`crate::PartitionProxy`] in front of it).
    pub fn member_at(
        node_id: NodeId,
        addr: SocketAddr,
        peers: &[(NodeId, SocketAddr)],
        options: NodeOptions,
    ) -> anyhow::Result<Node> {
        Node::start(
            Role::Member {
                node_id,
                peers: peers.to_vec(),
            },
            addr,
            options,
        )
    }

    fn start(role: Role, addr: SocketAddr, options: NodeOptions) -> anyhow::Result<Node> {
        let label = match &role {
            Role::Embedded => "cella-up-".to_string(),
            Role::Member { node_id, .. } => format!("cella-node{node_id}-"),
        };
        let dir = tempfile::Builder::new().prefix(&label).tempdir()?;
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("data"))?;
        let mut node = Node {
            role,
            addr,
            options,
            binary: cella_binary()?,
            dir: Some(dir),
            root,
            child: None,
            life: Life::Down,
            starts: 0,
        };
        node.spawn()?;
        Ok(node)
    }

    fn args(&self) -> Vec<String> {
        let listen = self.addr.to_string();
        let data_dir = self.data_dir().display().to_string();
        let mut args: Vec<String> = match &self.role {
            Role::Embedded => vec![
                "up".into(),
                "--listen".into(),
                listen,
                "--data-dir".into(),
                data_dir,
            ],
            Role::Member { node_id, peers } => {
                let peers: Vec<String> = peers
                    .iter()
                    .map(|(id, addr)| format!("{id}={addr}"))
                    .collect();
                vec![
                    "server".into(),
                    "--node-id".into(),
                    node_id.to_string(),
                    "--listen".into(),
                    listen,
                    "--peers".into(),
                    peers.join(","),
                    "--data-dir".into(),
                    data_dir,
                ]
            }
        };
        args.extend(self.options.args.iter().cloned());
        args
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let args = self.args();
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(
            log,
            "\n===== cella-testkit: {} start #{} of {} {} (env {:?}) =====",
            utc_now(),
            self.starts,
            self.binary.display(),
            args.join(" "),
            self.options.env
        )?;
        let mut command = Command::new(&self.binary);
        command
            .args(&args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        self.life = Life::Running;
        Ok(())
    }

    /// The address the node listens on (gRPC and HTTP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The member id, for cluster members.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.role {
            Role::Embedded => None,
            Role::Member { node_id, .. } => Some(node_id),
        }
    }

    /// The `--data-dir` passed to the process.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The file collecting the process's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("node.log")
    }

    /// The process id, while a process is running or paused.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the harness started the process and has not killed or stopped it (a paused
    /// process counts as up; one that crashed on its own is noticed by [`Node::exited`]).
    pub fn is_up(&self) -> bool {
        self.life != Life::Down
    }

    /// Whether the process is up and not paused.
    pub fn is_running(&self) -> bool {
        self.life == Life::Running
    }

    /// The exit status if the process has exited on its own (it is then reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.life = Life::Down;
        Some(status)
    }

    /// Whether `GET /readyz` answers 200 within a short timeout.
    pub async fn is_ready(&self) -> bool {
        matches!(
            http_get_status(self.addr, "/readyz", Duration::from_millis(500)).await,
            Ok(200)
        )
    }

    /// Whether `GET /healthz` answers 200 within a short timeout.
    pub async fn is_healthy(&self) -> bool {
        matches!(
            http_get_status(self.addr, "/healthz", Duration::from_millis(500)).await,
            Ok(200)
        )
    }

    /// Polls `/readyz` until it answers 200. Fails, with the log tail, if the process
    /// exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                anyhow::bail!(
                    "{} exited with {status} before becoming ready\n{}",
                    self.name(),
                    self.log_report()
                );
            }
            anyhow::ensure!(self.life == Life::Running, "{} is not running", self.name());
            let probe = http_get_status(self.addr, "/readyz", Duration::from_millis(500)).await;
            if matches!(probe, Ok(200)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last =
                    probe.map_or_else(|err| format!("{err:#}"), |code| format!("HTTP {code}"));
                anyhow::bail!(
                    "{} not ready after {timeout:?} (last /readyz: {last})\n{}",
                    self.name(),
                    self.log_report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL and reaps it. A node that is already down is left
    /// alone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL, also to a stopped process.
            child
                .kill()
                .with_context(|| format!("SIGKILL to {}", self.name()))?;
            child.wait()?;
            self.append_log_note("killed with SIGKILL")?;
        }
        self.life = Life::Down;
        Ok(())
    }

    /// Starts the process again with the same arguments, environment and data dir; a node
    /// still up is killed with SIGKILL first.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Stops the process gracefully: SIGTERM, then waits up to 15 s for it to exit, which
    /// must be with status 0. A paused node is resumed first so it can act on the signal.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            self.life = Life::Down;
            return Ok(());
        };
        if self.life == Life::Paused {
            self.resume()?;
        }
        signal(pid, libc::SIGTERM).with_context(|| format!("SIGTERM to {}", self.name()))?;
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(status) = self.exited() {
                self.append_log_note(&format!("exited after SIGTERM with {status}"))?;
                anyhow::ensure!(
                    status.success(),
                    "{} exited with {status} after SIGTERM\n{}",
                    self.name(),
                    self.log_report()
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill9()?;
                anyhow::bail!(
                    "{} did not exit within {STOP_GRACE:?} of SIGTERM\n{}",
                    self.name(),
                    self.log_report()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Freezes the process with SIGSTOP (it keeps its sockets but answers nothing).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name()))?;
        signal(pid, libc::SIGSTOP)?;
        self.life = Life::Paused;
        Ok(())
    }

    /// Lets a paused process continue with SIGCONT.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name()))?;
        signal(pid, libc::SIGCONT)?;
        self.life = Life::Running;
        Ok(())
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines).unwrap_or_else(|err| format!("(cannot read log: {err})"))
    }

    /// The log's path and tail, for failure messages.
    pub fn log_report(&self) -> String {
        format!(
            "--- {} log {} (last {TAIL_LINES} lines) ---\n{}\n--- end of log ---",
            self.name(),
            self.log_path().display(),
            self.log_tail(TAIL_LINES)
        )
    }

    fn name(&self) -> String {
        match self.role {
            Role::Embedded => format!("cella up on {}", self.addr),
            Role::Member { node_id, .. } => format!("node {node_id} on {}", self.addr),
        }
    }

    fn append_log_note(&self, note: &str) -> std::io::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        writeln!(log, "===== cella-testkit: {note} at {} =====", utc_now())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_report());
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {} for inspection", dir.keep().display());
            }
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`, to line harness notes up with the
/// server's own log timestamps.
fn utc_now() -> String {
    let t = cella_base::UtcTime::now();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// The last `lines` lines of the file at `path` (reading at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_looks_like_rfc3339() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-11-28T00:23:31.446Z".len(), "{now}");
        assert!(
            now.starts_with("20") && now.ends_with('Z') && now.as_bytes()[10] == b'T',
            "{now}"
        );
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&path, 2).expect("readable"), "c\nd");
        assert_eq!(tail(&path, 10).expect("readable"), "a\nb\nc\nd");
    }
}
