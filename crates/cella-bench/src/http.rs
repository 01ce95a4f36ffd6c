//! A keep-alive HTTP/1.1 client for the workloads that speak HTTP APIs (Nacos's open API),
//! so the same client measures Cella and HTTP-only peers such as rnacos.
//!
//! One connection per simulated client, one request at a time. Bodies are read by
//! Content-Length or chunked encoding; a failed exchange drops the connection and the next
//! request opens a new one.

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One keep-alive connection to `authority` (HOST:PORT).
pub(crate) struct HttpConn {
    authority: String,
    stream: Option<BufReader<TcpStream>>,
}

/// A response: status and body.
pub(crate) struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpConn {
    pub(crate) fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_string(),
            stream: None,
        }
    }

    /// Sends one request (a form body when `form` is not empty) and reads the response.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        form: &str,
    ) -> anyhow::Result<HttpResponse> {
        let result = self.exchange(method, path, form).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        form: &str,
    ) -> anyhow::Result<HttpResponse> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(&self.authority)
                .await
                .with_context(|| format!("connecting to {}", self.authority))?;
            tcp.set_nodelay(true)?;
            self.stream = Some(BufReader::new(tcp));
        }
        let stream = self.stream.as_mut().context("connection just opened")?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            self.authority,
            form.len()
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        read_response(stream).await
    }
}

async fn read_response(stream: &mut BufReader<TcpStream>) -> anyhow::Result<HttpResponse> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut head = line.len();
    loop {
        line.clear();
        let n = stream.read_line(&mut line).await?;
        head += n;
        if n == 0 {
            bail!("connection closed in the response head");
        }
        if head > MAX_HEAD {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-length" {
                length = Some(
                    value
                        .trim()
                        .parse::<usize>()
                        .context("bad content-length")?,
                );
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        read_chunked(stream).await?
    } else {
        let mut body = vec![0; length.unwrap_or(0)];
        stream.read_exact(&mut body).await?;
        body
    };
    Ok(HttpResponse { status, body })
}

async fn read_chunked(stream: &mut BufReader<TcpStream>) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or_default(), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            line.clear();
            stream.read_line(&mut line).await?; // the blank line after the last chunk
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).await?;
        line.clear();
        stream.read_line(&mut line).await?;
    }
}

/// Percent-encodes a query or form value.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").await;
        });
        let mut conn = HttpConn::new(&addr.to_string());
        let first = conn.send("GET", "/a", "").await.expect("first");
        assert_eq!((first.status, first.body.as_slice()), (200, &b"ok"[..]));
        let second = conn.send("POST", "/b", "x=1").await.expect("second");
        assert_eq!(
            (second.status, second.body.as_slice()),
            (404, &b"abcde"[..])
        );
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode(r#"{"a":1}"#), "%7B%22a%22%3A1%7D");
    }
}
