//! A follower that was down while the leader snapshotted and purged its log is caught up by
//! installing the leader's snapshot, and then holds every acknowledged write.

use std::time::{Duration, Instant};

use cella_testkit::client::{self, Consistency};
use cella_testkit::{Cluster, NodeOptions};

const WRITES: usize = 400;

#[tokio::test(flavor = "multi_thread")]
async fn lagging_follower_is_caught_up_by_snapshot() {
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("cella.toml");
    // Snapshot every 100 entries, keeping 100 behind: 400 writes purge past the follower.
    std::fs::write(&config, "[core]\nsnapshot_every = 100\n").expect("config file");
    let options = NodeOptions {
        args: vec!["--config".into(), config.display().to_string()],
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::start_with(3, options).expect("cluster starts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("cluster ready");
    let leader = cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .expect("leader");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.kill9(follower).expect("kill follower");

    let mut kv = client::kv(&cluster.member(leader).endpoint()).expect("client");
    for i in 0..WRITES {
        client::put(
            &mut kv,
            &format!("snap/{i:04}"),
            &format!("v{i}"),
            Duration::from_secs(5),
        )
        .await
        .expect("put acknowledged by the remaining majority");
    }

    cluster.restart(follower).expect("restart follower");
    cluster
        .member_mut(follower)
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("follower ready");
    let mut on_follower = client::kv(&cluster.member(follower).endpoint()).expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let found = client::get_prefix(
            &mut on_follower,
            "snap/",
            Consistency::Serializable,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        if found.len() == WRITES || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(found.len(), WRITES, "the follower holds every write");
    for (i, (key, value)) in found.iter().enumerate() {
        assert_eq!(
            (key.as_str(), value.as_str()),
            (format!("snap/{i:04}").as_str(), format!("v{i}").as_str())
        );
    }
    let log = std::fs::read_to_string(cluster.member(follower).log_path()).expect("follower log");
    assert!(
        log.contains("installed a snapshot from the leader"),
        "the follower caught up without a snapshot:\n{log}"
    );
}
