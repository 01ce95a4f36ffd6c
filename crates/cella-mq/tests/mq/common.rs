//! Starting a single-member core and a broker over it; building requests and reading replies.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cella_base::ManualClock;
use cella_core::{Core, CoreConfig, Membership};
use cella_mq::storage::StoredMessage;
use cella_mq::{Broker, FlushPolicy, MqConfig, PullRequest, SendRequest};

/// A single-member core in `dir`, ready for writes.
pub async fn start_core(dir: &Path) -> Core {
    let addr = "127.0.0.1:1".to_string();
    let core = Core::start(
        Membership {
            node_id: 1,
            addr: addr.clone(),
            initial_members: BTreeMap::from([(1, addr)]),
            data_dir: dir.to_path_buf(),
        },
        CoreConfig {
            election_timeout_ms: 200,
            ..CoreConfig::default()
        },
    )
    .await
    .expect("core starts");
    for _ in 0..200 {
        if core.is_ready() {
            return core;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("core not ready within 4 s");
}

/// Broker settings for tests: small segments, short timeouts on the manual clock.
pub fn test_config() -> MqConfig {
    MqConfig {
        segment_bytes: 64 * 1024,
        session_timeout_ms: 10_000,
        ack_timeout_ms: 30_000,
        ..MqConfig::default()
    }
}

/// Opens a broker in `dir` over `core`, timed by `clock`.
pub fn open_broker(dir: &Path, config: MqConfig, core: &Core, clock: &ManualClock) -> Broker {
    Broker::open(
        dir.to_path_buf(),
        config,
        core.clone(),
        Arc::new(clock.clone()),
        1_700_000_000_000,
    )
    .expect("broker opens")
}

/// A core and a broker directory for one test, on a manual clock.
pub struct Harness {
    dir: tempfile::TempDir,
    core: Core,
    /// The brokers' clock.
    pub clock: ManualClock,
}

impl Harness {
    /// A fresh core in a temporary directory.
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let core = start_core(&dir.path().join("core")).await;
        Harness {
            dir,
            core,
            clock: ManualClock::new(),
        }
    }

    /// The test's core.
    pub fn core(&self) -> Core {
        self.core.clone()
    }

    /// Opens (or reopens) the test's broker with `config`.
    pub fn broker(&self, config: MqConfig) -> Broker {
        open_broker(&self.dir.path().join("mq"), config, &self.core, &self.clock)
    }

    /// Opens the test's broker with `config` and creates a sync-flush topic on it.
    pub async fn broker_with_topic(
        &self,
        config: MqConfig,
        topic: &str,
        queues: u32,
        ordered: bool,
    ) -> Broker {
        let broker = self.broker(config);
        broker
            .create_topic(topic, queues, ordered, FlushPolicy::Sync)
            .await
            .expect("topic created");
        broker
    }
}

/// A send of `body` to `topic`.
pub fn send(topic: &str, body: &str) -> SendRequest {
    SendRequest {
        topic: topic.into(),
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A pull of up to `max` messages of `topic` for `member` of `group`.
pub fn pull(group: &str, topic: &str, member: &str, max: u32) -> PullRequest {
    PullRequest {
        group: group.into(),
        topic: topic.into(),
        member: member.into(),
        max,
        ..Default::default()
    }
}

/// The messages' bodies as text.
pub fn bodies(messages: &[StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}
