//! Starting an in-process node and clients for it.

use std::net::SocketAddr;
use std::time::Duration;

use cella_proto::cella::lock::v1::locks_client::LocksClient;
use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::lease_client::LeaseClient;
use cella_proto::v3electionpb::election_client::ElectionClient;
use cella_proto::v3lockpb::lock_client::LockClient;
use cella_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node running in this process until dropped.
pub struct TestNode {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestNode {
    /// Starts a single node (election timeout 200 ms, so 1 s leases are honoured) and waits
    /// until `/readyz` answers 200.
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = cella_testkit::free_port().expect("free port");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = ServerConfig {
            listen: addr.to_string(),
            data_dir: dir.path().to_path_buf(),
            ..ServerConfig::default()
        };
        config.core.election_timeout_ms = 200;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cella_server::run(config, async move {
            let _ = stopped.await;
        }));
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                assert!(!task.is_finished(), "node stopped while starting");
                let status =
                    cella_testkit::http_get_status(addr, "/readyz", Duration::from_secs(1)).await;
                if matches!(status, Ok(200)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        ready.expect("node ready within the wait");
        TestNode {
            addr,
            _dir: dir,
            _stop: stop,
            task,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn locks(&self) -> LocksClient<Channel> {
        LocksClient::new(self.channel().await)
    }

    pub async fn v3lock(&self) -> LockClient<Channel> {
        LockClient::new(self.channel().await)
    }

    pub async fn election(&self) -> ElectionClient<Channel> {
        ElectionClient::new(self.channel().await)
    }

    /// Grants a lease of `ttl` seconds.
    pub async fn lease(&self, ttl: i64) -> i64 {
        LeaseClient::new(self.channel().await)
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await
            .expect("lease grant")
            .into_inner()
            .id
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `f` until it returns `Some`, every 20 ms, for at most [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = f().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}
