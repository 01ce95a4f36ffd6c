//! Mutual exclusion with fencing under client pauses and a node kill.
//!
//! Four client processes (bash scripts around `cella lock acquire --hold`, each in its own
//! process group) loop: take lock `work` through nodes 1 and 2 of a 3-node cluster, send
//! `begin TOKEN` to a guarded resource, work 200 ms, send `end TOKEN`, release. The guarded
//! resource (a TCP server in this test) accepts a write only if its token is not lower than
//! the last it accepted, as a real fenced store would. During the run the test SIGSTOPs the
//! current holder past its 3 s lease (then SIGCONTs it), kill -9s node 3 and restarts it, and
//! pauses a holder again. It then checks the record: accepted tokens never go back; an
//! accepted section is never interleaved with another holder's, except a paused holder's
//! section that the fence cut off; only paused holders were ever refused; and each paused
//! holder's late write was refused because a newer holder had taken over.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cella_testkit::{cella_binary, Cluster, NodeOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The longest any one phase of the test may take.
const WAIT: Duration = Duration::from_secs(60);
const CLIENTS: usize = 4;

/// One write the guarded resource saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    step: String,
    token: i64,
    client: usize,
    accepted: bool,
}

type Record = Arc<Mutex<Vec<Write>>>;

/// The fenced resource: accepts a write iff its token >= the highest accepted so far.
async fn serve_guard(listener: TcpListener, record: Record) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let record = record.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [step, token, client] = parts[..] else {
                let _ = write.write_all(b"bad\n").await;
                return;
            };
            let (Ok(token), Ok(client)) = (token.parse::<i64>(), client.parse::<usize>()) else {
                let _ = write.write_all(b"bad\n").await;
                return;
            };
            let accepted = {
                let mut record = record.lock().expect("record");
                let highest = record
                    .iter()
                    .filter(|w| w.accepted)
                    .map(|w| w.token)
                    .max()
                    .unwrap_or(0);
                let accepted = token >= highest;
                record.push(Write {
                    step: step.to_string(),
                    token,
                    client,
                    accepted,
                });
                accepted
            };
            let reply: &[u8] = if accepted { b"ok\n" } else { b"refused\n" };
            let _ = write.write_all(reply).await;
        });
    }
}

const CLIENT_SCRIPT: &str = r#"
id=$1; port=$2; cella=$3; shift 3; endpoints=("$@"); n=0
send() { exec 3<>/dev/tcp/127.0.0.1/$port && echo "$1 $2 $id" >&3 && read -r reply <&3; exec 3>&-; }
while true; do
  ep=${endpoints[$((n % ${#endpoints[@]}))]}; n=$((n+1))
  coproc HOLD { exec "$cella" --endpoint "$ep" --output json lock acquire work --hold --ttl 3 --timeout-ms 20000 2>/dev/null; }
  pid=$HOLD_PID
  if read -r -t 25 line <&"${HOLD[0]}"; then
    token=$(echo "$line" | sed -E 's/.*"fencing_token":([0-9]+).*/\1/')
    send begin "$token"; sleep 0.2; send end "$token"
  fi
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
done
"#;

/// A client process group; killed (the whole group) on drop.
struct Client {
    child: Child,
}

impl Client {
    fn signal(&self, signal: i32) {
        let group = self.child.id() as i32;
        // SAFETY: signalling the process group this test created for its own child.
        unsafe { libc::kill(-group, signal) };
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

fn accepted_ends(record: &Record) -> usize {
    let record = record.lock().expect("record");
    record
        .iter()
        .filter(|w| w.accepted && w.step == "end")
        .count()
}

/// The client whose accepted `begin` has no accepted `end` yet, with its token.
fn open_holder(record: &Record) -> Option<(usize, i64)> {
    let record = record.lock().expect("record");
    let last = record.iter().rev().find(|w| w.accepted)?;
    (last.step == "begin").then_some((last.client, last.token))
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pauses the current holder mid-section past its lease, waits until a newer holder is
/// accepted, and resumes it. Returns the paused client.
async fn pause_a_holder(clients: &[Client], record: &Record) -> usize {
    let (client, token) = {
        let mut found = None;
        until("a holder mid-section", || {
            found = open_holder(record);
            found.is_some()
        })
        .await;
        found.expect("found above")
    };
    clients[client].signal(libc::SIGSTOP);
    until(
        "a newer holder accepted while the old one is paused",
        || {
            let record = record.lock().expect("record");
            record.iter().any(|w| w.accepted && w.token > token)
        },
    )
    .await;
    clients[client].signal(libc::SIGCONT);
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn fenced_writes_never_go_back_under_pauses_and_a_node_kill() {
    let options = NodeOptions::default().election_timeout(Duration::from_millis(500));
    let mut cluster = Cluster::start_with(3, options).expect("cluster starts");
    cluster.wait_ready(WAIT).await.expect("cluster ready");
    let endpoints: Vec<String> = cluster
        .members()
        .take(2)
        .map(|n| n.addr().to_string())
        .collect();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("guard binds");
    let port = listener.local_addr().expect("addr").port();
    let record: Record = Arc::default();
    let guard = tokio::spawn(serve_guard(listener, record.clone()));

    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("client.sh");
    std::fs::write(&script, CLIENT_SCRIPT).expect("script written");
    let cella = cella_binary().expect("cella binary");
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|id| {
            let child = Command::new("bash")
                .arg(&script)
                .arg(id.to_string())
                .arg(port.to_string())
                .arg(&cella)
                .args(&endpoints)
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("client starts");
            Client { child }
        })
        .collect();

    until("three sections done", || accepted_ends(&record) >= 3).await;
    let mut paused = HashSet::new();
    paused.insert(pause_a_holder(&clients, &record).await);

    let before_kill = accepted_ends(&record);
    cluster.kill9(3).expect("kill node 3");
    until("three sections with node 3 down", || {
        accepted_ends(&record) >= before_kill + 3
    })
    .await;
    cluster.restart(3).expect("restart node 3");
    paused.insert(pause_a_holder(&clients, &record).await);
    let before_end = accepted_ends(&record);
    until("three more sections", || {
        accepted_ends(&record) >= before_end + 3
    })
    .await;
    drop(clients);
    guard.abort();

    let record = record.lock().expect("record").clone();
    let accepted: Vec<&Write> = record.iter().filter(|w| w.accepted).collect();
    for pair in accepted.windows(2) {
        assert!(
            pair[1].token >= pair[0].token,
            "accepted tokens went back: {pair:?}"
        );
    }
    let mut open: Option<&Write> = None;
    for write in &accepted {
        match (write.step.as_str(), open) {
            ("begin", Some(holder)) => assert!(
                paused.contains(&holder.client),
                "{write:?} began while live holder {holder:?} was inside its section"
            ),
            ("end", Some(holder)) => assert_eq!(
                (holder.token, holder.client),
                (write.token, write.client),
                "an end that does not close the open section"
            ),
            ("end", None) => panic!("{write:?} ends a section that is not open"),
            _ => {}
        }
        open = (write.step == "begin").then_some(*write);
    }
    for refused in record.iter().filter(|w| !w.accepted) {
        assert!(
            paused.contains(&refused.client),
            "client {} was refused without being paused: {refused:?}",
            refused.client
        );
    }
    for client in &paused {
        assert!(
            record.iter().any(|w| !w.accepted && w.client == *client),
            "paused client {client}'s late write was not refused"
        );
    }
    eprintln!(
        "{} writes accepted, {} refused, paused clients {paused:?}",
        accepted.len(),
        record.len() - accepted.len()
    );
}
