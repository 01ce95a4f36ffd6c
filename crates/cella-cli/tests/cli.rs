//! The `cella` binary as a user runs it: exit codes, messages and parseable output.
//!
//! Usage and connection errors need no server. Each round trip starts its own `cella up`
//! through cella-testkit (nextest runs every test in its own process, so a node could not be
//! shared anyway) and talks to it as HOST:PORT.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cella_testkit::{Node, NodeOptions};
use serde_json::Value;

/// How long a fresh node may take to elect itself and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `cella` with `args` against `endpoint`, ignoring any CELLA_* settings of the caller.
fn cella(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cella"))
        .env_remove("CELLA_TOKEN")
        .env("CELLA_ENDPOINT", endpoint)
        .args(args)
        .output()
        .expect("the cella binary runs")
}

/// An address where nothing listens: a port just released by the OS.
fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let address = listener.local_addr().expect("bound address");
    drop(listener);
    address.to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn succeed(endpoint: &str, args: &[&str]) -> String {
    let output = cella(endpoint, args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "cella {args:?}: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs a command that must fail with exit `code` and a message containing `message`.
fn fails_with(endpoint: &str, args: &[&str], code: i32, message: &str) {
    let output = cella(endpoint, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "cella {args:?}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(message),
        "cella {args:?}: {}",
        stderr(&output)
    );
}

/// Runs a command with `--output json` and parses its stdout.
fn json(endpoint: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = ["--output", "json"].iter().chain(args).copied().collect();
    let out = succeed(endpoint, &args);
    serde_json::from_str(&out)
        .unwrap_or_else(|error| panic!("cella {args:?} printed {out:?}: {error}"))
}

#[test]
fn bad_usage_exits_2_with_a_message_naming_the_rule() {
    let endpoint = closed_endpoint();
    let cases: [(&[&str], &str); 6] = [
        (&["kv", "get"], "<KEY>"),
        (&["kv", "get", "k", "--limit", "-1"], "--limit must be >= 0"),
        (
            &["kv", "watch", "k", "--rev", "x"],
            "--rev must be an integer >= 0",
        ),
        (&["lease", "revoke", "not-hex"], "hexadecimal"),
        (
            &["lease", "grant", "0"],
            "TTL must be a whole number of seconds > 0",
        ),
        (&["kv", "get", ""], "KEY must not be empty"),
    ];
    for (args, message) in cases {
        fails_with(&endpoint, args, 2, message);
    }
    let output = cella(&endpoint, &["--output", "xml", "status"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn malformed_endpoint_is_bad_usage() {
    let output = cella("https://127.0.0.1:1", &["kv", "get", "k"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: invalid endpoint"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unreachable_endpoint_exits_1() {
    let endpoint = closed_endpoint();
    for args in [&["kv", "get", "k"][..], &["lease", "list"], &["status"]] {
        let output = cella(&endpoint, args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "cella {args:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert!(
            message.starts_with("error: ") && message.contains(&endpoint),
            "{message}"
        );
    }
}

/// A fresh `cella up` for one test. Dropping it (say, when the test fails) kills the node;
/// [`Server::stop`] stops it gracefully and requires a clean exit.
struct Server {
    runtime: tokio::runtime::Runtime,
    node: Node,
}

impl Server {
    /// Starts the node from the test's own thread (see cella-testkit's node docs) and waits
    /// until it is ready.
    fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut node = Node::embedded(NodeOptions::default()).expect("cella up starts");
        runtime
            .block_on(node.wait_ready(READY_TIMEOUT))
            .expect("cella up becomes ready");
        Server { runtime, node }
    }

    /// The node's address as HOST:PORT, the form `--endpoint` documents first.
    fn endpoint(&self) -> String {
        self.node.addr().to_string()
    }

    fn stop(mut self) {
        self.runtime
            .block_on(self.node.stop())
            .expect("cella up stops cleanly");
    }
}

fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("/cella-cli-test/{test}/{nanos}/")
}

/// `cella up` on a free address with stdout piped and stderr captured.
fn spawn_up(data: &std::path::Path) -> (std::process::Child, String) {
    let listen = closed_endpoint();
    let up = Command::new(env!("CARGO_BIN_EXE_cella"))
        .args(["up", "--listen", &listen, "--data-dir"])
        .arg(data.join("node"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cella up starts");
    (up, listen)
}

/// Sends SIGTERM to a `cella` process and requires a clean exit within [`READY_TIMEOUT`].
fn terminate_cleanly(mut up: std::process::Child) {
    let term = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let status = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = up.kill();
            panic!("cella did not stop within {READY_TIMEOUT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut stderr) = up.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
    }
    assert!(status.success(), "cella after SIGTERM: {status}\n{log}");
}

/// SIGTERM while `cella up` is still starting (right after its banner) stops it cleanly: the
/// signal is listened for before the node starts, so it is not lost to the default action.
#[test]
fn sigterm_during_start_up_stops_cleanly() {
    use std::io::BufRead;
    let data = tempfile::tempdir().expect("tempdir");
    let (mut up, _) = spawn_up(data.path());
    let mut stdout = std::io::BufReader::new(up.stdout.take().expect("stdout piped"));
    let mut banner = String::new();
    stdout.read_line(&mut banner).expect("banner");
    assert!(banner.starts_with("cella: embedded node on"), "{banner}");
    terminate_cleanly(up);
    // Held open until the node has stopped: closing it is the next test's case.
    drop(stdout);
}

/// A node whose stdout is closed before it prints its banner (`cella up | head -0`) serves
/// anyway and stops cleanly.
#[test]
fn a_closed_stdout_does_not_stop_the_node() {
    let data = tempfile::tempdir().expect("tempdir");
    let (mut up, listen) = spawn_up(data.path());
    drop(up.stdout.take());
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    // The node listens only after writing its banner.
    while std::net::TcpStream::connect(&listen).is_err() {
        if let Some(status) = up.try_wait().expect("wait") {
            panic!("cella up ended without serving: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cella up never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate_cleanly(up);
}

#[test]
fn kv_round_trip_in_table_and_json() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let prefix = unique_prefix("kv");
    let key = format!("{prefix}greeting");

    assert_eq!(succeed(&endpoint, &["kv", "put", &key, "hello"]), "OK\n");
    assert_eq!(
        succeed(&endpoint, &["kv", "get", &key]),
        format!("{key}\nhello\n")
    );
    let put = json(&endpoint, &["kv", "put", &key, "world", "--prev-kv"]);
    assert_eq!(put["prev_kv"]["value"], "hello");

    let got = json(&endpoint, &["kv", "get", &prefix, "--prefix"]);
    assert_eq!(got["count"], 1);
    assert_eq!(got["kvs"][0]["key"], key.as_str());
    assert_eq!(got["kvs"][0]["value"], "world");
    let first_revision = put["revision"].as_i64().expect("revision is a number") - 1;
    let old = json(
        &endpoint,
        &["kv", "get", &key, "--rev", &first_revision.to_string()],
    );
    assert_eq!(old["kvs"][0]["value"], "hello");

    let yaml = succeed(
        &endpoint,
        &["--output", "yaml", "kv", "get", &key, "--keys-only"],
    );
    assert!(
        yaml.starts_with("---\n") && !yaml.contains("value:"),
        "{yaml}"
    );

    let deleted = json(&endpoint, &["kv", "del", &prefix, "--prefix", "--prev-kv"]);
    assert_eq!(deleted["deleted"], 1);
    assert_eq!(deleted["prev_kvs"][0]["value"], "world");
    assert_eq!(succeed(&endpoint, &["kv", "get", &key]), "");
    server.stop();
}

#[test]
fn lease_ids_print_and_parse_as_hex() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let key = format!("{}leased", unique_prefix("lease"));

    let granted = succeed(&endpoint, &["lease", "grant", "30"]);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(30s)\n"))
        .unwrap_or_else(|| panic!("etcdctl-style grant line, got {granted:?}"));
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );

    succeed(&endpoint, &["kv", "put", &key, "v", "--lease", id]);
    let ttl = json(&endpoint, &["lease", "ttl", id, "--keys"]);
    assert_eq!(ttl["id"], id);
    assert_eq!(ttl["granted_ttl"], 30);
    assert_eq!(ttl["keys"][0], key.as_str());
    let listed = json(&endpoint, &["lease", "list"]);
    assert!(listed["leases"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|listed| listed == id)));

    assert_eq!(
        succeed(&endpoint, &["lease", "revoke", id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(succeed(&endpoint, &["kv", "get", &key]), "");
    let gone = cella(&endpoint, &["lease", "ttl", id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("not found or expired"),
        "{}",
        stderr(&gone)
    );
    server.stop();
}

#[test]
fn status_lists_every_member_with_a_leader() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let status = json(&endpoint, &["status"]);
    let members = status["members"].as_array().expect("a members array");
    assert!(!members.is_empty());
    assert!(
        members.iter().any(|member| member["leader"] == true),
        "{status}"
    );
    assert!(
        members.iter().all(|member| member["lag"].is_u64()),
        "{status}"
    );
    let table = succeed(&endpoint, &["status"]);
    assert!(table.starts_with("ID "), "{table}");
    server.stop();
}

#[test]
fn lock_acquire_status_release_and_refusals() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let held = json(&endpoint, &["lock", "acquire", "orders", "--ttl", "60"]);
    let lease = held["lease"].as_str().expect("hex lease").to_string();
    let token = held["fencing_token"].as_i64().expect("token");
    assert_eq!(
        held["key"],
        format!("orders/{}", lease.trim_start_matches('0'))
    );

    let busy = cella(&endpoint, &["lock", "acquire", "orders", "--try"]);
    assert_eq!(busy.status.code(), Some(1), "{}", stderr(&busy));
    assert!(
        stderr(&busy).contains("is held by lease"),
        "{}",
        stderr(&busy)
    );

    let status = succeed(&endpoint, &["lock", "status", "orders"]);
    // The grant time is this node's clock: check its shape, not its value.
    let head =
        format!("lock orders: held by lease {lease} since revision {token}, granted at unix ms ");
    let granted = status
        .strip_prefix(&head)
        .and_then(|rest| rest.strip_suffix(&format!(" (fencing token {token})\n")))
        .unwrap_or_else(|| panic!("unexpected status line {status:?}"));
    assert!(
        granted
            .parse::<u64>()
            .is_ok_and(|ms| ms > 1_700_000_000_000),
        "{status}"
    );

    let wrong = cella(&endpoint, &["lock", "release", "orders", "--lease", "1234"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("nothing was released"),
        "{}",
        stderr(&wrong)
    );
    assert!(succeed(&endpoint, &["lock", "status", "orders"]).contains(&lease));

    let token_arg = token.to_string();
    let released = succeed(
        &endpoint,
        &[
            "lock",
            "release",
            "orders",
            "--lease",
            &lease,
            "--fencing-token",
            &token_arg,
        ],
    );
    assert_eq!(released, "lock orders released\n");
    assert_eq!(
        succeed(&endpoint, &["lock", "status", "orders"]),
        "lock orders: free\n"
    );

    for args in [
        &["lock", "acquire", ""][..],
        &["lock", "acquire", "x", "--ttl", "0"],
        &["lock", "acquire", "x", "--ttl", "86401"],
    ] {
        let out = cella(&endpoint, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    server.stop();
}

/// Starts a `cella --output json` command that holds something until stopped, and returns it
/// with the first object it printed (what it now holds).
fn spawn_holding(endpoint: &str, args: &[&str]) -> (std::process::Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cella"))
        .env("CELLA_ENDPOINT", endpoint)
        .args(["--output", "json"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cella starts");
    let mut line = String::new();
    let stdout_pipe = child.stdout.take().expect("piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout_pipe), &mut line)
        .expect("first line");
    let held = serde_json::from_str(&line)
        .unwrap_or_else(|error| panic!("cella {args:?} printed {line:?}: {error}"));
    (child, held)
}

#[test]
fn elect_leader_and_resign() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let (mut campaign, elected) = spawn_holding(&endpoint, &["elect", "campaign", "db", "node-a"]);
    assert_eq!(elected["value"], "node-a");
    let lease = elected["lease"].as_str().expect("lease").to_string();
    assert_eq!(succeed(&endpoint, &["elect", "leader", "db"]), "node-a\n");
    succeed(&endpoint, &["elect", "resign", "db", "--lease", &lease]);
    let none = cella(&endpoint, &["elect", "leader", "db"]);
    assert_eq!(none.status.code(), Some(1));
    let _ = campaign.kill();
    let _ = campaign.wait();
    server.stop();
}

/// A command that holds something until stopped (`lock acquire --hold`, `elect campaign`)
/// gives it up on SIGTERM, as on Ctrl-C, instead of leaving it to its lease's expiry.
#[test]
fn holders_give_up_what_they_hold_on_sigterm() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let (lock, _) = spawn_holding(
        &endpoint,
        &["lock", "acquire", "jobs", "--hold", "--ttl", "60"],
    );
    let (campaign, _) = spawn_holding(
        &endpoint,
        &["elect", "campaign", "db", "node-a", "--ttl", "60"],
    );
    assert!(succeed(&endpoint, &["lock", "status", "jobs"]).contains("held by lease"));
    assert_eq!(succeed(&endpoint, &["elect", "leader", "db"]), "node-a\n");

    terminate_cleanly(lock);
    terminate_cleanly(campaign);
    assert_eq!(
        succeed(&endpoint, &["lock", "status", "jobs"]),
        "lock jobs: free\n"
    );
    assert_eq!(
        cella(&endpoint, &["elect", "leader", "db"]).status.code(),
        Some(1),
        "no leader after the campaign stopped"
    );
    server.stop();
}

#[test]
fn id_next_batch_decode_as_documented() {
    let server = Server::start();
    let endpoint = server.endpoint();

    let one = succeed(&endpoint, &["id", "next", "--layout", "snowflake64"]);
    let one: u64 = one.trim().parse().expect("one decimal id on one line");
    let batch = succeed(
        &endpoint,
        &[
            "id", "batch", "--layout", "order32", "--count", "5", "--tag", "db=12", "--tag",
            "table=3",
        ],
    );
    let lines: Vec<&str> = batch.lines().collect();
    assert_eq!(lines.len(), 5, "{batch}");
    assert!(lines
        .iter()
        .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit())));
    assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "ids increase: {batch}"
    );

    // Decode prints the parts as JSON, in the table form too.
    let decoded: Value = serde_json::from_str(&succeed(
        &endpoint,
        &["id", "decode", "--layout", "order32", lines[0]],
    ))
    .expect("decode prints JSON");
    assert_eq!(decoded["parts"]["db"], 12);
    assert_eq!(decoded["parts"]["table"], 3);
    let snowflake = json(
        &endpoint,
        &["id", "decode", "--layout", "snowflake64", &one.to_string()],
    );
    assert_eq!(snowflake["id"], one.to_string());
    assert!(snowflake["parts"]["timestamp"].as_u64().is_some());

    assert_eq!(
        succeed(&endpoint, &["id", "segment", "tickets", "--count", "2"]),
        "1\n2\n"
    );

    // Refused by the node: exit 1 with the field named.
    for (args, message) in [
        (&["id", "next", "--layout", "nope"][..], "field `layout`"),
        (
            &["id", "batch", "--layout", "snowflake64", "--count", "10001"],
            "field `count`",
        ),
        (
            &["id", "decode", "--layout", "snowflake64", "12ab"],
            "field `id`",
        ),
        (
            &["id", "next", "--layout", "order32", "--tag", "db=100"],
            "field `db` is 100",
        ),
    ] {
        fails_with(&endpoint, args, 1, message);
    }
    // Bad usage caught before any request: exit 2.
    for args in [
        &["id", "batch", "--layout", "snowflake64", "--count", "0"][..],
        &["id", "next", "--layout", "order32", "--tag", "db"],
    ] {
        assert_eq!(
            cella(&endpoint, args).status.code(),
            Some(2),
            "cella {args:?}"
        );
    }
    server.stop();
}

#[test]
fn consume_prints_each_body_and_acks_what_it_printed() {
    let server = Server::start();
    let endpoint = server.endpoint();
    succeed(
        &endpoint,
        &["mq", "topic", "create", "orders", "--queues", "1"],
    );
    for body in ["created", "paid", "shipped"] {
        succeed(
            &endpoint,
            &["mq", "send", "--topic", "orders", "--key", "o-1", body],
        );
    }
    let consume = ["mq", "consume", "--topic", "orders", "--group", "billing"];
    let out = succeed(&endpoint, &[&consume[..], &["--count", "2"]].concat());
    assert_eq!(out, "created\npaid\n");
    let out = succeed(&endpoint, &consume);
    assert_eq!(
        out, "shipped\n",
        "the printed two were acked, not redelivered"
    );

    // Everything printed was acked: the group's committed offset is the queue's end.
    let lag = json(&endpoint, &["mq", "lag", "--group", "billing"]);
    let queue = &lag["queues"][0];
    assert_eq!(
        (queue["committed"].as_u64(), queue["lag"].as_u64()),
        (Some(3), Some(0)),
        "{lag}"
    );
    fails_with(
        &endpoint,
        &[&consume[..], &["--count", "1", "--timeout-ms", "1500"]].concat(),
        1,
        "received 0 of 1 messages",
    );
    server.stop();
}

#[test]
fn apply_get_and_delete_resources_from_a_yaml_file() {
    let server = Server::start();
    let endpoint = server.endpoint();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("topology.yaml");
    let topology = "apiVersion: cella.dev/v1\nkind: Topic\nmetadata: {name: orders}\nspec: {queues: 8, ordered: true}\n---\napiVersion: cella.dev/v1\nkind: ConsumerGroup\nmetadata: {name: billing}\nspec:\n  subscriptions: [{topic: orders, maxBacklog: 1000, overflow: dead_letter}]\n";
    std::fs::write(&file, topology).expect("write the file");
    let path = file.to_str().expect("a UTF-8 path");

    let out = succeed(&endpoint, &["apply", "-f", path]);
    assert_eq!(out, "topic/orders created\nconsumergroup/billing created\n");
    let out = succeed(&endpoint, &["apply", "-f", path]);
    assert_eq!(
        out,
        "topic/orders unchanged\nconsumergroup/billing unchanged\n"
    );

    // The broker has the topic as declared, and get shows it in the form apply reads.
    let topics = succeed(&endpoint, &["mq", "topic", "list"]);
    assert!(topics.contains("orders  8       true"), "{topics}");
    let yaml = succeed(&endpoint, &["--output", "yaml", "get", "topic", "orders"]);
    std::fs::write(&file, &yaml).expect("write the got resource");
    let out = succeed(&endpoint, &["apply", "-f", path]);
    assert_eq!(out, "topic/orders unchanged\n", "get -o yaml: {yaml}");
    let group = json(&endpoint, &["get", "consumergroups", "billing"]);
    assert_eq!(group["status"]["subscriptions"][0]["maxBacklog"], 1000);

    // Refusals name the field and change nothing.
    std::fs::write(&file, topology.replace("queues: 8", "queues: 4")).expect("write");
    fails_with(
        &endpoint,
        &["apply", "-f", path],
        1,
        "field `spec.queues` cannot change",
    );
    std::fs::write(&file, topology.replace("queues: 8", "queus: 8")).expect("write");
    fails_with(
        &endpoint,
        &["apply", "-f", path],
        1,
        "unknown field `queus`",
    );
    std::fs::write(&file, topology.replace("cella.dev/v1", "v1")).expect("write");
    fails_with(&endpoint, &["apply", "-f", path], 1, "field `apiVersion`");
    fails_with(
        &endpoint,
        &["get", "widgets"],
        1,
        "unknown kind \"widgets\"",
    );
    fails_with(
        &endpoint,
        &["delete", "topic", "orders"],
        1,
        "cannot be deleted",
    );
    let topic = json(&endpoint, &["get", "topic", "orders"]);
    assert_eq!(topic["spec"]["queues"], 8);
    server.stop();
}
