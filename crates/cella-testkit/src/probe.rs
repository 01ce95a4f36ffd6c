//! Minimal HTTP/1.1 over a raw TCP stream: a GET for `/healthz` and `/readyz` probes (only
//! the status line is read), and one JSON request/response exchange for REST tests.
//!
//! No HTTP client dependency is needed, and a server that is paused or wedged shows up as a
//! timeout rather than a hang.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `GET path` to `addr` and returns the response's status code, within `timeout`.
pub async fn http_get_status(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<u16> {
    tokio::time::timeout(timeout, get_status(addr, path))
        .await
        .map_err(|_| anyhow::anyhow!("GET http://{addr}{path} timed out after {timeout:?}"))?
}

async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "connection closed before a status line: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
        anyhow::ensure!(head.len() < 8192, "status line too long");
    }
    parse_status_line(&head)
}

fn parse_status_line(head: &[u8]) -> anyhow::Result<u16> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        anyhow::bail!("malformed status line {line:?}");
    };
    anyhow::ensure!(
        version.starts_with("HTTP/"),
        "not an HTTP response: {line:?}"
    );
    code.parse()
        .map_err(|_| anyhow::anyhow!("malformed status code in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\n").expect("valid"),
            200
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\nx: y\r\n").expect("valid"),
            503
        );
        assert!(parse_status_line(b"SSH-2.0-x\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_the_status_of_a_real_response() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let status = http_get_status(addr, "/readyz", Duration::from_secs(5))
            .await
            .expect("a response");
        assert_eq!(status, 503);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let err = http_get_status(addr, "/readyz", Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert!(err.to_string().contains("timed out"), "{err}");
        drop(listener);
    }
}
