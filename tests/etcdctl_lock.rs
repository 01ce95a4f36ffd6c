//! `etcdctl lock` and `etcdctl elect` (etcd 3.4's client-side recipes) against a real
//! `cella up`: they exclude each other, share their queues with Cella's own lock API, and a
//! killed holder's lock does not outlive its lease.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_proto::cella::lock::v1 as lockpb;
use cella_proto::cella::lock::v1::locks_client::LocksClient;
use cella_proto::v3electionpb::election_client::ElectionClient;
use cella_proto::v3electionpb::{LeaderKey, LeaderRequest, ResignRequest};
use cella_testkit::etcdctl::{ensure_etcdctl, Etcdctl};
use cella_testkit::{Node, NodeOptions};

/// The longest any one wait in these tests may take.
const WAIT: Duration = Duration::from_secs(30);

async fn start() -> (Node, Etcdctl) {
    ensure_etcdctl();
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(WAIT).await.expect("node ready");
    let ctl = Etcdctl {
        endpoint: node.addr().to_string(),
    };
    (node, ctl)
}

/// Waits for a child to exit, killing it if it takes longer than [`WAIT`].
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("etcdctl did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects a child's stdout lines as they come.
fn collect_lines(child: &mut Child) -> Lines {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("stdout piped");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

type Lines = Arc<Mutex<Vec<String>>>;

/// Spawns `etcdctl ARGS` with its stdout collected line by line.
fn spawn_collecting(ctl: &Etcdctl, args: &[&str]) -> (Child, Lines) {
    let mut child = ctl
        .command(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl starts");
    let lines = collect_lines(&mut child);
    (child, lines)
}

/// Waits until `lines` holds `line`.
async fn until_printed(what: &str, lines: &Lines, line: &str) {
    until(what, || {
        lines.lock().expect("lines").iter().any(|l| l == line)
    })
    .await;
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_holders_never_overlap_and_revisions_rise() {
    let (_node, ctl) = start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record");
    let script = format!(
        "echo start $ETCD_LOCK_REV >> {0}; sleep 0.2; echo end $ETCD_LOCK_REV >> {0}",
        record.display()
    );
    let mut lockers: Vec<Child> = (0..4)
        .map(|_| {
            ctl.command(&["lock", "work", "--", "sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .expect("etcdctl lock starts")
        })
        .collect();
    for locker in &mut lockers {
        assert!(wait_exit(locker).success(), "etcdctl lock failed");
    }
    let text = std::fs::read_to_string(&record).expect("record written");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        8,
        "four holds, each a start and an end:\n{text}"
    );
    let mut last = 0i64;
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ").expect("a start line");
        let end = pair[1]
            .strip_prefix("end ")
            .expect("the same holder's end next");
        assert_eq!(start, end, "holders overlapped:\n{text}");
        let revision: i64 = start.parse().expect("a revision");
        assert!(revision > last, "revisions went back:\n{text}");
        last = revision;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_lock_and_cellas_api_share_one_queue_and_a_killed_holder_expires() {
    let (node, ctl) = start().await;
    let (mut holder, lines) = spawn_collecting(&ctl, &["lock", "shared", "--ttl=2"]);
    until("etcdctl prints its lock key", || {
        !lines.lock().expect("lines").is_empty()
    })
    .await;
    let key = lines.lock().expect("lines")[0].clone();

    let mut locks = LocksClient::connect(node.endpoint())
        .await
        .expect("connect");
    let status = locks
        .status(lockpb::StatusRequest {
            name: "shared".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.holder.as_ref().map(|h| h.key.as_str()),
        Some(key.as_str())
    );
    let refused = locks
        .acquire(lockpb::AcquireRequest {
            name: "shared".into(),
            ttl_seconds: 30,
            try_once: true,
            ..Default::default()
        })
        .await
        .expect_err("held by etcdctl");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    // kill -9: no unlock is sent; the lock must end with the holder's 2 s lease.
    holder.kill().expect("kill etcdctl");
    let _ = holder.wait();
    let taken = locks
        .acquire(lockpb::AcquireRequest {
            name: "shared".into(),
            ttl_seconds: 30,
            timeout_ms: WAIT.as_millis() as i64,
            ..Default::default()
        })
        .await
        .expect("taken once the dead holder's lease ends")
        .into_inner();
    assert!(taken.fencing_token > status.holder.map_or(0, |h| h.fencing_token));
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_elect_hands_leadership_over_and_observers_see_it() {
    let (node, ctl) = start().await;
    let (mut observer, observed) = spawn_collecting(&ctl, &["elect", "-l", "jobs"]);
    let (mut alice, alice_out) = spawn_collecting(&ctl, &["elect", "jobs", "alice"]);
    until_printed("alice leads", &alice_out, "alice").await;
    until_printed("the observer sees alice", &observed, "alice").await;

    let (mut bob, bob_out) = spawn_collecting(&ctl, &["elect", "jobs", "bob"]);
    let mut election = ElectionClient::connect(node.endpoint())
        .await
        .expect("connect");
    let leader = |election: &mut ElectionClient<tonic::transport::Channel>| {
        let mut election = election.clone();
        async move {
            election
                .leader(LeaderRequest {
                    name: Bytes::from("jobs"),
                })
                .await
                .expect("leader")
                .into_inner()
                .kv
                .expect("kv")
                .value
        }
    };
    assert_eq!(leader(&mut election).await, Bytes::from("alice"));
    assert!(
        bob_out.lock().expect("lines").is_empty(),
        "bob must wait while alice leads"
    );

    // Ctrl-C makes etcdctl close its session, which ends alice's campaign.
    let pid = alice.id() as i32;
    // SAFETY: signalling a child this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let _ = wait_exit(&mut alice);
    until_printed("bob leads", &bob_out, "bob").await;
    until_printed("the observer sees bob", &observed, "bob").await;
    assert_eq!(leader(&mut election).await, Bytes::from("bob"));
    for child in [&mut bob, &mut observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_resign_changes_nothing_and_etcdctl_elect_still_exits_cleanly() {
    let (node, ctl) = start().await;
    let (mut alice, alice_out) = spawn_collecting(&ctl, &["elect", "rota", "alice"]);
    until_printed("alice leads", &alice_out, "alice").await;
    let mut election = ElectionClient::connect(node.endpoint())
        .await
        .expect("connect");
    let leader = |election: &ElectionClient<tonic::transport::Channel>| {
        let mut election = election.clone();
        async move {
            election
                .leader(LeaderRequest {
                    name: Bytes::from("rota"),
                })
                .await
                .expect("leader")
                .into_inner()
                .kv
                .expect("kv")
        }
    };
    let alice_kv = leader(&election).await;
    let alice_key = LeaderKey {
        name: Bytes::from("rota"),
        key: alice_kv.key.clone(),
        rev: alice_kv.create_revision,
        lease: alice_kv.lease,
    };
    let (mut bob, bob_out) = spawn_collecting(&ctl, &["elect", "rota", "bob"]);

    // A resign whose revision no longer matches succeeds and changes nothing (etcd 3.4).
    election
        .resign(ResignRequest {
            leader: Some(LeaderKey {
                rev: alice_key.rev + 1,
                ..alice_key.clone()
            }),
        })
        .await
        .expect("a stale resign is not an error");
    assert_eq!(leader(&election).await.value, Bytes::from("alice"));
    assert!(
        bob_out.lock().expect("lines").is_empty(),
        "bob must still wait"
    );

    // Resigning alice's campaign through the Election service hands over to bob.
    election
        .resign(ResignRequest {
            leader: Some(alice_key),
        })
        .await
        .expect("resign alice");
    until_printed("bob leads", &bob_out, "bob").await;

    // On Ctrl-C etcdctl resigns its own campaign, whose key is gone by now: as with etcd,
    // that stale resign is no error and etcdctl exits 0.
    let pid = alice.id() as i32;
    // SAFETY: signalling a child this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_exit(&mut alice);
    assert!(status.success(), "etcdctl elect exited with {status}");
    assert_eq!(leader(&election).await.value, Bytes::from("bob"));
    let _ = bob.kill();
    let _ = bob.wait();
}
