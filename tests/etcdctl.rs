//! etcd's own command-line client against a real `cella up`: the wire API must be etcd v3's.
//!
//! Installs Debian's etcd-client (through `scripts/install-test-deps.sh`) when `etcdctl` is
//! missing, then drives put, get (--prefix, --rev), del, txn, watch (--prefix, --rev), the
//! lease verbs, member list and endpoint status, checking etcdctl's own output.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use cella_testkit::etcdctl::{ensure_etcdctl, Etcdctl};
use cella_testkit::{Node, NodeOptions};

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_works_unchanged_against_cella() {
    ensure_etcdctl();
    let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
    node.wait_ready(Duration::from_secs(20))
        .await
        .expect("node ready");
    let ctl = Etcdctl {
        endpoint: node.addr().to_string(),
    };

    // put / get / prefix / rev / del
    assert_eq!(ctl.stdout(&["put", "fruit/apple", "red"]).trim(), "OK");
    assert_eq!(ctl.stdout(&["put", "fruit/banana", "yellow"]).trim(), "OK");
    assert_eq!(ctl.stdout(&["put", "fruit/apple", "green"]).trim(), "OK");
    assert_eq!(ctl.stdout(&["get", "fruit/apple"]), "fruit/apple\ngreen\n");
    assert_eq!(
        ctl.stdout(&["get", "--prefix", "fruit/"]),
        "fruit/apple\ngreen\nfruit/banana\nyellow\n"
    );
    // Revision 2 is the first put on a fresh store (which starts at revision 1).
    assert_eq!(
        ctl.stdout(&["get", "fruit/apple", "--rev=2"]),
        "fruit/apple\nred\n"
    );
    let json = ctl.stdout(&["get", "fruit/apple", "-w", "json"]);
    assert!(json.contains("\"revision\":4"), "header revision in {json}");
    assert_eq!(ctl.stdout(&["del", "fruit/banana"]).trim(), "1");
    assert_eq!(
        ctl.stdout(&["get", "--prefix", "fruit/", "--keys-only"]),
        "fruit/apple\n\n"
    );

    // txn: compare-and-swap, both branches
    let txn = |input: &str| {
        let mut child = ctl
            .command(&["txn"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("txn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write txn");
        let out = child.wait_with_output().expect("txn output");
        assert!(
            out.status.success(),
            "txn failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let swapped = txn(
        "value(\"fruit/apple\") = \"green\"\n\nput fruit/apple ripe\n\nput fruit/apple unripe\n\n",
    );
    assert!(swapped.starts_with("SUCCESS"), "{swapped}");
    let refused =
        txn("value(\"fruit/apple\") = \"green\"\n\nput fruit/apple again\n\nget fruit/apple\n\n");
    assert!(refused.starts_with("FAILURE"), "{refused}");
    assert!(refused.contains("ripe"), "{refused}");

    // watch from an old revision replays history, then sees new writes
    let watcher = {
        let endpoint = ctl.endpoint.clone();
        std::thread::spawn(move || {
            Etcdctl { endpoint }.run_for(
                &["watch", "--prefix", "fruit/", "--rev=2"],
                Duration::from_secs(3),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    ctl.run(&["put", "fruit/cherry", "dark"]);
    let events = watcher.join().expect("watcher thread");
    assert!(events.starts_with("PUT\nfruit/apple\nred\n"), "{events}");
    assert!(events.contains("DELETE\nfruit/banana\n"), "{events}");
    assert!(events.contains("PUT\nfruit/cherry\ndark\n"), "{events}");

    // leases: grant, attach, time-to-live, keep-alive, revoke deletes the key
    let granted = ctl.stdout(&["lease", "grant", "30"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    assert!(granted.contains("granted with TTL(30s)"), "{granted}");
    ctl.run(&["put", "session", "alive", &format!("--lease={id}")]);
    let ttl = ctl.stdout(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(30s)") && ttl.contains("attached keys([session])"),
        "{ttl}"
    );
    let kept = ctl.stdout(&["lease", "keep-alive", "--once", &id]);
    assert!(kept.contains("keepalived with TTL(30)"), "{kept}");
    assert!(ctl.stdout(&["lease", "list"]).contains(&id));
    assert!(ctl.stdout(&["lease", "revoke", &id]).contains("revoked"));
    assert_eq!(ctl.stdout(&["get", "session"]), "");

    // cluster and status
    let members = ctl.stdout(&["member", "list"]);
    assert!(
        members.contains(&format!("started, cella-1, http://{}", ctl.endpoint)),
        "{members}"
    );
    let status = ctl.stdout(&["endpoint", "status", "-w", "json"]);
    assert!(
        status.contains("\"leader\":1") && status.contains("\"raft_term\""),
        "{status}"
    );

    // compaction: old revisions are gone, with etcd's error
    ctl.run(&["compact", "4"]);
    let old = ctl
        .command(&["get", "fruit/apple", "--rev=2"])
        .output()
        .expect("etcdctl runs");
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));

    node.stop().await.expect("node stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_adds_and_removes_a_member_online() {
    ensure_etcdctl();
    let mut cluster = cella_testkit::Cluster::start(3).expect("cluster starts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("cluster ready");
    cluster
        .wait_leader(Duration::from_secs(30))
        .await
        .expect("leader");
    let ctl = Etcdctl {
        endpoint: cluster.member(1).addr().to_string(),
    };
    ctl.run(&["put", "before", "join"]);

    // Add member 4, then start it with the peers list that includes it.
    let new_addr =
        std::net::SocketAddr::from(([127, 0, 0, 1], cella_testkit::free_port().expect("port")));
    // A leadership change can refuse the add with "no leader" before anything changed (as
    // etcd does); like an operator, try again once a leader is back.
    let peer_urls = format!("--peer-urls=http://{new_addr}");
    let add = ["member", "add", "cella-4", peer_urls.as_str()];
    let mut out = ctl.command(&add).output().expect("etcdctl runs");
    for _ in 0..3 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains("no leader") {
            break;
        }
        assert!(!ctl
            .stdout(&["member", "list"])
            .contains(&new_addr.to_string()));
        cluster
            .wait_leader(Duration::from_secs(30))
            .await
            .expect("leader");
        out = ctl.command(&add).output().expect("etcdctl runs");
    }
    assert!(
        out.status.success(),
        "etcdctl {add:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(added.contains("Member"), "{added}");
    let mut peers: Vec<_> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.member(id).addr()))
        .collect();
    peers.push((4, new_addr));
    let mut joined = Node::member(4, &peers, NodeOptions::default()).expect("member 4 starts");
    joined
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("member 4 ready");
    let members = ctl.stdout(&["member", "list"]);
    assert_eq!(members.lines().count(), 4, "{members}");
    assert!(
        members.contains(&format!("cella-4, http://{new_addr}")),
        "{members}"
    );

    // The new member serves: it has the old data and forwards writes to the leader.
    let on_new = Etcdctl {
        endpoint: new_addr.to_string(),
    };
    assert_eq!(on_new.stdout(&["get", "before"]), "before\njoin\n");
    on_new.run(&["put", "after", "join"]);
    assert_eq!(ctl.stdout(&["get", "after"]), "after\njoin\n");

    // Remove it again: three members remain and the cluster still writes.
    let removed = ctl.stdout(&["member", "remove", "4"]);
    assert!(removed.contains("removed from cluster"), "{removed}");
    let members = ctl.stdout(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    ctl.run(&["put", "after", "leave"]);
    assert_eq!(ctl.stdout(&["get", "after"]), "after\nleave\n");
    drop(joined);
}
