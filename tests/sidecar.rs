//! The sidecar end to end: a real `cella up`, two real HTTP app processes (Python), each with
//! a real `cella sidecar`. Calls to one sidecar reach the other app through discovery and the
//! RPC stack, in Dapr's path form and header form, and from the Dapr Python SDK's
//! `DaprClient().invoke_method` (installed from PyPI into a venv under `target/`). When the
//! target's sidecar is stopped, it deregisters its app and calls stop reaching it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cella_testkit::{cella_binary, free_port, http, workspace_root, Node, NodeOptions};

/// A process killed on drop (only processes this test started).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny HTTP app: answers every request with `<app> <METHOD> <path> <body> rid=<x-request-id>`.
const APP: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT = sys.argv[1], int(sys.argv[2])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        rid = self.headers.get("x-request-id", "")
        text = f"{NAME} {self.command} {self.path} {body} rid={rid}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"#;

/// Calls the Dapr Python SDK's `invoke_method` (over HTTP) and prints the answer.
const DAPR_CLIENT: &str = r#"
from dapr.clients import DaprClient
with DaprClient() as client:
    resp = client.invoke_method("echo", "greet/7", data=b"hello from dapr", http_verb="POST")
    print(resp.text())
"#;

fn start_app(dir: &Path, name: &str, port: u16) -> Process {
    let script = dir.join("app.py");
    std::fs::write(&script, APP).expect("write the app");
    let child = Command::new("python3")
        .arg(&script)
        .arg(name)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the python app");
    Process(child)
}

fn start_sidecar(endpoint: &str, app_id: &str, app_port: u16, port: u16, log: &Path) -> Process {
    let log = std::fs::File::create(log).expect("sidecar log");
    let child = Command::new(cella_binary().expect("cella is built"))
        .args(["--endpoint", endpoint, "sidecar", "--app-id", app_id])
        .args([
            "--app-port",
            &app_port.to_string(),
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cella sidecar");
    Process(child)
}

/// A venv with the `dapr` package, made once under `target/`.
fn dapr_python() -> PathBuf {
    let venv = workspace_root().join("target").join("dapr-venv");
    let python = venv.join("bin").join("python");
    let has_dapr = python.exists()
        && Command::new(&python)
            .args(["-c", "import dapr.clients"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_dapr {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "dapr==1.19.0"])
            .status()
            .expect("pip install dapr");
        assert!(pip.success(), "pip install dapr failed");
    }
    python
}

async fn invoke(sidecar: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http::request(sidecar, method, path, "text/plain", body)
        .await
        .unwrap_or((0, String::new()))
}

#[tokio::test]
async fn sidecars_invoke_across_apps_and_dapr_sdk_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::embedded(NodeOptions::default()).unwrap();
    node.wait_ready(Duration::from_secs(30)).await.unwrap();
    let endpoint = node.endpoint();

    let (echo_port, caller_port) = (free_port().unwrap(), free_port().unwrap());
    let (echo_sidecar_port, caller_sidecar_port) = (free_port().unwrap(), free_port().unwrap());
    let _echo_app = start_app(dir.path(), "echo", echo_port);
    let _caller_app = start_app(dir.path(), "caller", caller_port);
    let mut echo_sidecar = start_sidecar(
        &endpoint,
        "echo",
        echo_port,
        echo_sidecar_port,
        &dir.path().join("echo.log"),
    );
    let _caller_sidecar = start_sidecar(
        &endpoint,
        "caller",
        caller_port,
        caller_sidecar_port,
        &dir.path().join("caller.log"),
    );
    let caller = format!("127.0.0.1:{caller_sidecar_port}");

    // The path form, once the echo app is registered (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let answer = invoke(
            &caller,
            "POST",
            "/v1.0/invoke/echo/method/orders/7?x=1",
            "buy",
        )
        .await;
        if answer.0 == 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status,
        200,
        "{body}\n{}",
        std::fs::read_to_string(dir.path().join("caller.log")).unwrap_or_default()
    );
    assert!(
        body.starts_with("echo POST /orders/7?x=1 buy rid="),
        "{body}"
    );
    assert!(
        body.len() > "echo POST /orders/7?x=1 buy rid=".len(),
        "a request id arrives: {body}"
    );

    // Any method; and the dapr-app-id header form on any path.
    let (status, body) = invoke(&caller, "GET", "/v1.0/invoke/echo/method/items", "").await;
    assert_eq!(
        (status, body.starts_with("echo GET /items ")),
        (200, true),
        "{body}"
    );
    let (status, body) = http::request_with_headers(
        &caller,
        "PUT",
        "/cart/3",
        &[("dapr-app-id", "echo")],
        "text/plain",
        "two",
    )
    .await
    .unwrap();
    assert_eq!(
        (status, body.starts_with("echo PUT /cart/3 two ")),
        (200, true),
        "{body}"
    );

    // The sidecar's own routes, and bad input.
    assert_eq!(invoke(&caller, "GET", "/v1.0/healthz", "").await.0, 204);
    let (status, body) = invoke(&caller, "GET", "/v1.0/metadata", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"caller""#), "{body}");
    let (status, body) = invoke(&caller, "GET", "/v1.0/invoke/nobody/method/x", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("ERR_DIRECT_INVOKE") && body.contains("nobody"),
        "{body}"
    );
    let (status, body) = invoke(&caller, "GET", "/v1.0/invoke/bad!id/method/x", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid app id"), "{body}");
    assert_eq!(invoke(&caller, "GET", "/elsewhere", "").await.0, 404);

    // The Dapr Python SDK against the caller's sidecar.
    let python = dapr_python();
    let script = dir.path().join("client.py");
    std::fs::write(&script, DAPR_CLIENT).unwrap();
    let output = Command::new(&python)
        .arg(&script)
        .env("DAPR_HTTP_PORT", caller_sidecar_port.to_string())
        .env("DAPR_GRPC_PORT", free_port().unwrap().to_string())
        .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", "http")
        .env("DAPR_HEALTH_TIMEOUT", "20")
        .output()
        .expect("run the Dapr client");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.starts_with("echo POST /greet/7 hello from dapr rid="),
        "{printed}"
    );

    // Stopping the echo sidecar deregisters the app: calls stop reaching it.
    let pid = echo_sidecar.0.id() as libc::pid_t;
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exit = tokio::task::spawn_blocking(move || {
        let status = echo_sidecar.0.wait();
        (status, echo_sidecar)
    });
    let (status, _echo_sidecar) = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .unwrap()
        .unwrap();
    assert!(status.unwrap().success(), "the sidecar exits 0 on SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = invoke(&caller, "GET", "/v1.0/invoke/echo/method/items", "").await;
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "echo still reachable after its sidecar stopped (status {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
