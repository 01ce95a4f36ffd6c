//! An in-process node on a free port, and small helpers to talk to its config center.

use std::collections::HashMap;
use std::time::Duration;

use cella_proto::cella::config::v1 as cpb;
use cella_proto::cella::config::v1::config_service_client::ConfigServiceClient;
use cella_server::ServerConfig;
use cella_testkit::{free_port, http_request, HttpResponse};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Client = ConfigServiceClient<Channel>;

/// A node serving in this process until dropped.
pub struct Server {
    pub addr: String,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Starts a fresh single node with `max_content_bytes` and waits until it is ready.
    pub async fn start_with(max_content_bytes: usize) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig {
            listen: format!("127.0.0.1:{}", free_port().expect("a free port")),
            data_dir: dir.path().to_path_buf(),
            ..ServerConfig::default()
        };
        config.core.election_timeout_ms = 200;
        config.config.max_content_bytes = max_content_bytes;
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = config.listen.clone();
        let task = tokio::spawn(cella_server::run(config, async move {
            let _ = stopped.await;
        }));
        let server = Server {
            addr,
            _dir: dir,
            _stop: stop,
            task,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(!server.task.is_finished(), "node stopped while starting");
            let ready = http_request(&server.addr, "GET", "/readyz", &[], b"", WAIT).await;
            if matches!(ready, Ok(ref r) if r.status == 200) {
                return server;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node not ready within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn start() -> Server {
        Self::start_with(512 * 1024).await
    }

    pub async fn client(&self) -> Client {
        let channel = tokio::time::timeout(
            WAIT,
            Channel::from_shared(format!("http://{}", self.addr))
                .expect("endpoint")
                .connect(),
        )
        .await
        .expect("connect within the wait")
        .expect("connect");
        ConfigServiceClient::new(channel)
    }

    /// One HTTP request; `headers` as name/value pairs.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpResponse {
        http_request(
            &self.addr,
            method,
            path,
            headers,
            body.as_bytes(),
            WAIT + WAIT,
        )
        .await
        .expect("HTTP exchange")
    }

    /// A REST call with a JSON body; returns status and parsed JSON.
    pub async fn rest(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let resp = self.http("POST", path, &headers, &body.to_string()).await;
        let json = serde_json::from_str(&resp.body).unwrap_or(serde_json::Value::Null);
        (resp.status, json)
    }
}

pub fn key(ns: &str, group: &str, data_id: &str) -> Option<cpb::ConfigKey> {
    Some(cpb::ConfigKey {
        namespace: ns.into(),
        group: group.into(),
        data_id: data_id.into(),
    })
}

pub async fn create_namespace(client: &mut Client, name: &str) {
    client
        .create_namespace(cpb::CreateNamespaceRequest {
            name: name.into(),
            description: String::new(),
        })
        .await
        .expect("create namespace");
}

pub async fn publish(
    client: &mut Client,
    ns: &str,
    data_id: &str,
    content: &str,
    format: &str,
) -> cpb::Release {
    client
        .publish(cpb::PublishRequest {
            key: key(ns, "g", data_id),
            content: content.into(),
            format: format.into(),
            author: "tester".into(),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner()
}

pub fn identity(id: &str, labels: &[(&str, &str)]) -> Option<cpb::ClientIdentity> {
    Some(cpb::ClientIdentity {
        client_id: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    })
}

/// The content a client with `who` identity gets.
pub async fn content_for(
    client: &mut Client,
    ns: &str,
    data_id: &str,
    who: Option<cpb::ClientIdentity>,
) -> String {
    client
        .get(cpb::GetConfigRequest {
            key: key(ns, "g", data_id),
            client: who,
            release: None,
        })
        .await
        .expect("get")
        .into_inner()
        .release
        .expect("release")
        .content
}

pub async fn state(client: &mut Client, ns: &str, data_id: &str) -> cpb::ConfigState {
    client
        .get_state(cpb::GetStateRequest {
            key: key(ns, "g", data_id),
        })
        .await
        .expect("state")
        .into_inner()
}

/// Opens a watch stream and returns it after its first message.
pub async fn watch(
    client: &mut Client,
    who: Option<cpb::ClientIdentity>,
    configs: &[(&str, &str, &str)],
) -> (tonic::Streaming<cpb::WatchResponse>, cpb::WatchResponse) {
    let req = cpb::WatchRequest {
        client: who,
        configs: configs
            .iter()
            .map(|(ns, id, hash)| cpb::WatchedConfig {
                key: key(ns, "g", id),
                hash: hash.to_string(),
            })
            .collect(),
        groups: Vec::new(),
    };
    let mut stream = tokio::time::timeout(WAIT, client.watch(req))
        .await
        .expect("watch opens within the wait")
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await;
    (stream, first)
}

/// The next message of a watch stream, within the wait.
pub async fn next(stream: &mut tonic::Streaming<cpb::WatchResponse>) -> cpb::WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch message within the wait")
        .expect("stream ok")
        .expect("stream open")
}
