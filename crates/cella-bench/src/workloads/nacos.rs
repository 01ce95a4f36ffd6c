//! registry-register and registry-heartbeat, through Nacos's v1 HTTP open API, so one client
//! measures Cella and a Nacos server (rnacos) side by side.
//!
//! registry-register: each client registers new ephemeral instances of `cella-bench-reg`
//! (a fresh ip per operation, the client's own port); an operation is one acknowledged
//! registration. Instances are never beaten, so they expire on the server's defaults.
//!
//! registry-heartbeat: the clients first register `--instances` instances of
//! `cella-bench-beat` between them (10 per client by default), then each beats its own in
//! turn (Nacos's `beat` JSON); an operation is one beat the server acknowledged as known
//! (code 10200). A client left without instances (more clients than instances) sits out.

use anyhow::{bail, Context};

use super::{measure, Settings};
use crate::conn::Connections;
use crate::driver::LoadClient;
use crate::http::{encode, HttpConn};
use crate::progress::Progress;
use crate::stats::Measurement;

/// The address of instance `n` of client `client`: a distinct IPv4 per instance.
pub(super) fn ip(client: usize, n: u64) -> String {
    let v = (client as u64) << 20 | (n & 0xf_ffff);
    format!("10.{}.{}.{}", (v >> 16) & 255, (v >> 8) & 255, v & 255)
}

/// The port of client `client`'s instances.
pub(super) fn port(client: usize) -> u32 {
    1024 + (client as u32 % 60_000)
}

async fn register(conn: &mut HttpConn, service: &str, ip: &str, port: u32) -> anyhow::Result<()> {
    let path =
        format!("/nacos/v1/ns/instance?serviceName={service}&ip={ip}&port={port}&ephemeral=true");
    let response = conn.send("POST", &path, "").await?;
    if response.status != 200 {
        bail!(
            "register answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

struct Registrar {
    conn: HttpConn,
    client: usize,
    next: u64,
}

impl LoadClient for Registrar {
    async fn call(&mut self) -> anyhow::Result<()> {
        let ip = ip(self.client, self.next);
        self.next += 1;
        register(&mut self.conn, "cella-bench-reg", &ip, port(self.client)).await
    }
}

/// Runs registry-register at `clients`.
pub(super) async fn run_register(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let registrars = (0..clients)
        .map(|client| Registrar {
            conn: HttpConn::new(conns.authority()),
            client,
            next: 0,
        })
        .collect();
    Ok(measure(registrars, settings, progress).await?.1)
}

struct Beater {
    conn: HttpConn,
    beats: Vec<String>,
    next: usize,
}

impl LoadClient for Beater {
    async fn call(&mut self) -> anyhow::Result<()> {
        let path = &self.beats[self.next % self.beats.len()];
        self.next += 1;
        let response = self.conn.send("PUT", path, "").await?;
        if response.status != 200 {
            bail!("beat answered {}", response.status);
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&response.body).context("beat answer is not JSON")?;
        if answer["code"] != 10200 {
            bail!("beat not acknowledged: {answer}");
        }
        Ok(())
    }
}

/// Runs registry-heartbeat at `clients`: registers the instances (clients in parallel),
/// then beats them.
pub(super) async fn run_heartbeat(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let service = "cella-bench-beat";
    let shares = super::instance_shares(settings.instances, clients);
    let shares = shares
        .into_iter()
        .enumerate()
        .filter(|(_, share)| *share > 0);
    let beaters = futures::future::try_join_all(shares.map(
        |(client, share)| async move {
            let mut conn = HttpConn::new(conns.authority());
            let mut beats = Vec::with_capacity(share as usize);
            for n in 0..share {
                let ip = ip(client, n);
                register(&mut conn, service, &ip, port(client)).await?;
                let beat = serde_json::json!({
                    "ip": ip, "port": port(client), "cluster": "DEFAULT",
                    "serviceName": format!("DEFAULT_GROUP@@{service}"), "weight": 1.0, "metadata": {}, "scheduled": true,
                });
                beats.push(format!(
                    "/nacos/v1/ns/instance/beat?serviceName={service}&groupName=DEFAULT_GROUP&beat={}",
                    encode(&beat.to_string())
                ));
            }
            anyhow::Ok(Beater {
                conn,
                beats,
                next: 0,
            })
        },
    ))
    .await?;
    Ok(measure(beaters, settings, progress).await?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_are_distinct_per_client_and_counter() {
        assert_eq!(ip(0, 1), "10.0.0.1");
        assert_ne!(ip(1, 0), ip(0, 0));
        assert_ne!(ip(0, 256), ip(0, 0));
    }
}
