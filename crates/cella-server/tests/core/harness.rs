//! Starting and stopping an in-process node, and small clients for it.

use std::path::Path;
use std::time::Duration;

use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::lease_client::LeaseClient;
use cella_proto::etcdserverpb::watch_client::WatchClient;
use cella_server::ServerConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A single-node config on a free port, with a short election timeout so the node is
/// ready quickly (and leases as short as 1 s are honoured).
pub fn config(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig {
        listen: format!("127.0.0.1:{}", free_port()),
        data_dir: dir.to_path_buf(),
        ..ServerConfig::default()
    };
    config.core.election_timeout_ms = 200;
    config
}

/// A node running in this process until [`TestNode::stop`] (or drop).
pub struct TestNode {
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// Starts a node and waits until `/readyz` answers 200.
    pub async fn start(config: ServerConfig) -> TestNode {
        let addr = config.listen.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cella_server::run(config, async move {
            let _ = stopped.await;
        }));
        let mut node = TestNode {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        node.wait_ready().await;
        node
    }

    /// A fresh node in `dir` with the test config.
    pub async fn start_in(dir: &Path) -> TestNode {
        Self::start(config(dir)).await
    }

    async fn wait_ready(&mut self) {
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                    let task = self.task.take().expect("task present");
                    panic!("node stopped while starting: {:?}", task.await);
                }
                if let Ok((200, _)) = http(&self.addr, "GET", "/readyz", "").await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        ready.expect("node ready within the wait");
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        tokio::time::timeout(
            WAIT,
            Channel::from_shared(self.endpoint())
                .expect("valid endpoint")
                .connect(),
        )
        .await
        .expect("connect within the wait")
        .expect("connect")
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    pub async fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel().await)
    }

    pub async fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel().await)
    }

    /// Stops the node as `cella up` does on Ctrl-C and waits for a clean exit.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("stops within the wait")
            .expect("server task did not panic")
            .expect("server stopped cleanly");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> pb::PutResponse {
    kv.put(pb::PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
}

pub async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<cella_proto::mvccpb::KeyValue> {
    kv.range(pb::RangeRequest {
        key: b(key),
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
    .kvs
    .pop()
}

/// The whole keyspace, as one range at the newest revision.
pub async fn everything(kv: &mut KvClient<Channel>) -> pb::RangeResponse {
    kv.range(pb::RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..Default::default()
    })
    .await
    .expect("range everything")
    .into_inner()
}

pub async fn revision(kv: &mut KvClient<Channel>) -> i64 {
    everything(kv).await.header.expect("header").revision
}

/// One HTTP exchange with a JSON body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    cella_testkit::http::json(addr, method, path, body).await
}

/// POSTs JSON and parses the JSON answer.
pub async fn post_json(addr: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, "POST", path, body).await.expect("HTTP exchange");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
    (status, value)
}

/// The sum of the samples of `name` whose labels include every one of `labels`
/// (`key="value"`), from an OpenMetrics text; `None` when no sample matches.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric == name && labels.iter().all(|l| rest.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().expect("a sample value");
        }
    }
    found
}

/// The node's `/metrics` text.
pub async fn scrape(node: &TestNode) -> String {
    let (status, text) = http(&node.addr, "GET", "/metrics", "").await.expect("http");
    assert_eq!(status, 200);
    text
}
