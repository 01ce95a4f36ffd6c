//! Active health checks of persistent instances: a TCP connect, or an HTTP GET when the
//! instance's metadata names a `health_check_path` (any 2xx answer is healthy).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::Instance;

/// Metadata key naming the HTTP path to probe instead of a bare TCP connect.
pub const HEALTH_CHECK_PATH: &str = "health_check_path";

/// Whether the instance answers within `timeout`.
pub async fn check(instance: &Instance, timeout: Duration) -> bool {
    let path = instance.metadata.get(HEALTH_CHECK_PATH).cloned();
    let addr = format!("{}:{}", instance.ip, instance.port);
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(&addr).await.ok()?;
        let Some(path) = path else { return Some(true) };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(status_is_success(&head))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// `HTTP/1.x 2..` at the start of a response.
fn status_is_success(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.") && head.get(9) == Some(&b'2')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceSpec;

    fn instance(port: u16, path: Option<&str>) -> Instance {
        let mut spec = InstanceSpec {
            ip: "127.0.0.1".into(),
            port: port.into(),
            ephemeral: false,
            ..Default::default()
        };
        if let Some(path) = path {
            spec.metadata.insert(HEALTH_CHECK_PATH.into(), path.into());
        }
        spec.validate().expect("valid")
    }

    async fn serve_once(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probes_need_a_2xx_and_tcp_probes_a_listener() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert!(check(&instance(ok, Some("/health")), Duration::from_secs(5)).await);
        let failing = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(!check(&instance(failing, Some("/health")), Duration::from_secs(5)).await);
        let listening = serve_once("").await;
        assert!(check(&instance(listening, None), Duration::from_secs(5)).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert!(!check(&instance(closed, None), Duration::from_secs(5)).await);
    }
}
