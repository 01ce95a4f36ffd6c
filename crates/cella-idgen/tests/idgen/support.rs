//! A single-member core in a temp dir, and a manual clock that runs on its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_base::ManualClock;
use cella_core::{Core, CoreConfig, Membership};
use cella_proto::cella::idgen::v1::ids_client::IdsClient;
use cella_proto::etcdserverpb as pb;
use tonic::transport::Channel;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A core member started in its own temp dir; ready (leader elected) on return.
pub struct TestCore {
    pub core: Core,
    _dir: tempfile::TempDir,
}

impl TestCore {
    pub async fn start() -> TestCore {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = "127.0.0.1:1".to_string();
        let config = CoreConfig {
            election_timeout_ms: 200,
            ..CoreConfig::default()
        };
        let core = Core::start(
            Membership {
                node_id: 1,
                addr: addr.clone(),
                initial_members: BTreeMap::from([(1, addr)]),
                data_dir: dir.path().to_path_buf(),
            },
            config,
        )
        .await
        .expect("core starts");
        tokio::time::timeout(WAIT, async {
            while !core.is_ready() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("core ready within the wait");
        TestCore { core, _dir: dir }
    }
}

/// A manual clock (origin: the Unix epoch) that a background thread moves forward one
/// millisecond every `tick`, so generators waiting on it make progress; tests also step it
/// back by hand.
pub struct RunningClock {
    pub clock: ManualClock,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningClock {
    pub fn start(unix_ms: u64, tick: Duration) -> RunningClock {
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(unix_ms));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (clock, stop) = (clock.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    clock.advance(Duration::from_millis(1));
                }
            })
        };
        RunningClock {
            clock,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RunningClock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The id service and the core's services on a 127.0.0.1 port, as a node serves them.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub core: Core,
    /// The core's own directory, when this server started the core.
    _owned: Option<TestCore>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: cella_idgen::IdgenConfig) -> TestServer {
        let owned = TestCore::start().await;
        let mut server = Self::serve(&owned.core, config).await;
        server._owned = Some(owned);
        server
    }

    /// Another "node" on the same core: its own id service, its own worker ids.
    pub async fn beside(&self) -> TestServer {
        Self::serve(&self.core, cella_idgen::IdgenConfig::default()).await
    }

    async fn serve(core: &Core, config: cella_idgen::IdgenConfig) -> TestServer {
        let ids = Arc::new(
            cella_idgen::IdService::new(core.clone(), config, "test server".into())
                .expect("valid config"),
        );
        let app = cella_core::grpc::routes(core.clone())
            .add_service(cella_idgen::grpc::server(ids.clone()))
            .into_axum_router()
            .merge(cella_idgen::rest::router(ids));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            addr,
            core: core.clone(),
            _owned: None,
            task,
        }
    }

    pub async fn ids(&self) -> IdsClient<Channel> {
        let channel = tokio::time::timeout(
            WAIT,
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("valid endpoint")
                .connect(),
        )
        .await
        .expect("connect within the wait")
        .expect("connect");
        IdsClient::new(channel)
    }

    /// A REST call; returns the status and the parsed JSON answer.
    pub async fn rest(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = cella_testkit::http::json(&self.addr.to_string(), method, path, body)
            .await
            .expect("HTTP exchange");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
        (status, value)
    }

    /// How many keys the id service has written under `/cella/idgen/`.
    pub async fn idgen_keys(&self) -> i64 {
        idgen_keys(&self.core).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many keys exist under `/cella/idgen/` in `core`.
pub async fn idgen_keys(core: &Core) -> i64 {
    core.range(pb::RangeRequest {
        key: Bytes::from_static(b"/cella/idgen/"),
        range_end: Bytes::from_static(b"/cella/idgen0"),
        count_only: true,
        ..Default::default()
    })
    .await
    .expect("range")
    .count
}
