//! config-publish-nacos and config-read-nacos, through Nacos's v1 HTTP config open API, so
//! one client measures Cella's config center and a Nacos server (rnacos) side by side.
//!
//! Both use the public namespace (no tenant) and group `cella-bench`.
//!
//! - config-publish-nacos: each client publishes new content (`--value-size` bytes) to its
//!   own data id; an operation is one publish the server answered `true`.
//! - config-read-nacos: `min(--key-space, 10000)` configs are published first (and the last
//!   one read back, as a Nacos server may apply publishes asynchronously); each client then
//!   gets them round-robin; an operation is one get answered 200 with the full content.

use anyhow::{bail, ensure, Context};

use super::{measure, Settings};
use crate::conn::Connections;
use crate::driver::LoadClient;
use crate::http::{encode, HttpConn};
use crate::progress::Progress;
use crate::stats::Measurement;

const GROUP: &str = "cella-bench";
const CONFIGS_PATH: &str = "/nacos/v1/cs/configs";
/// Most configs config-read-nacos preloads (the 10,000 configs of SPEC §3).
const MAX_READ_CONFIGS: u64 = 10_000;
/// Connections that preload configs at once.
const PRELOADERS: u64 = 16;

/// `seq` then filler up to `size`, so every publish changes the content.
fn content(seq: u64, size: usize) -> String {
    let mut s = format!("{seq}\n");
    while s.len() < size {
        s.push('x');
    }
    s
}

async fn publish(conn: &mut HttpConn, data_id: &str, content: &str) -> anyhow::Result<()> {
    let form = format!(
        "dataId={}&group={GROUP}&content={}&type=text",
        encode(data_id),
        encode(content)
    );
    let response = conn.send("POST", CONFIGS_PATH, &form).await?;
    if response.status != 200 || response.body != b"true" {
        bail!(
            "publish answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

struct Publisher {
    conn: HttpConn,
    data_id: String,
    size: usize,
    seq: u64,
}

impl LoadClient for Publisher {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        publish(&mut self.conn, &self.data_id, &content(self.seq, self.size)).await
    }
}

/// Runs config-publish-nacos at `clients`.
pub(super) async fn run_publish(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let publishers = (0..clients)
        .map(|client| Publisher {
            conn: HttpConn::new(conns.authority()),
            data_id: format!("publish-{client:04}"),
            size: settings.value_size,
            seq: 0,
        })
        .collect();
    Ok(measure(publishers, settings, progress).await?.1)
}

fn read_data_id(n: u64) -> String {
    format!("read-{n:05}")
}

struct Reader {
    conn: HttpConn,
    next: u64,
    configs: u64,
    size: usize,
}

impl LoadClient for Reader {
    async fn call(&mut self) -> anyhow::Result<()> {
        let path = format!(
            "{CONFIGS_PATH}?dataId={}&group={GROUP}",
            read_data_id(self.next % self.configs)
        );
        self.next += 1;
        let response = self.conn.send("GET", &path, "").await?;
        ensure!(response.status == 200, "get answered {}", response.status);
        ensure!(
            response.body.len() == self.size,
            "get answered {} bytes, {} were published",
            response.body.len(),
            self.size
        );
        Ok(())
    }
}

/// Runs config-read-nacos at `clients`.
pub(super) async fn run_read(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let configs = settings.key_space.clamp(1, MAX_READ_CONFIGS);
    let body = content(0, settings.value_size);
    futures::future::try_join_all((0..PRELOADERS.min(configs)).map(|first| {
        let mut conn = HttpConn::new(conns.authority());
        let body = &body;
        async move {
            for n in (first..configs).step_by(PRELOADERS as usize) {
                publish(&mut conn, &read_data_id(n), body)
                    .await
                    .with_context(|| format!("preloading config {n}"))?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    wait_readable(conns, &read_data_id(configs - 1)).await?;
    let readers = (0..clients)
        .map(|i| Reader {
            conn: HttpConn::new(conns.authority()),
            next: i as u64,
            configs,
            size: body.len(),
        })
        .collect();
    Ok(measure(readers, settings, progress).await?.1)
}

/// Longest wait for a preloaded config to become readable.
const PRELOAD_VISIBLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until `data_id` reads back: a Nacos server may apply publishes asynchronously.
async fn wait_readable(conns: &Connections, data_id: &str) -> anyhow::Result<()> {
    let mut conn = HttpConn::new(conns.authority());
    let path = format!("{CONFIGS_PATH}?dataId={data_id}&group={GROUP}");
    let deadline = tokio::time::Instant::now() + PRELOAD_VISIBLE;
    loop {
        if conn.send("GET", &path, "").await?.status == 200 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("preloaded config {data_id} is not readable after {PRELOAD_VISIBLE:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_changes_with_the_sequence_and_has_the_asked_size() {
        assert_eq!(content(7, 8), "7\nxxxxxx");
        assert_ne!(content(1, 64), content(2, 64));
        assert_eq!(content(123_456, 4), "123456\n");
    }
}
