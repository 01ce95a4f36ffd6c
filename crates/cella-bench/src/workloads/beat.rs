//! registry-heartbeat-grpc: batched heartbeats through Cella's registry gRPC API, the path
//! the SDK and the sidecar use.
//!
//! Setup registers `--instances` ephemeral instances of `cella-bench-beat-grpc` (10 per
//! client by default; [`REGISTRARS`] registrations in flight), split evenly over the
//! clients. Each client then beats its own instances in turn, `--beat-batch` per
//! `Heartbeat` call; an operation is one call whose every beat the registry knew, so
//! beats/s = ops/s × batch. To hold every instance alive at the registry's default 5 s beat
//! interval, pace the calls with `--rate instances / 5 / batch`.

use anyhow::{bail, Context};
use cella_proto::cella::registry::v1 as rpb;
use cella_proto::cella::registry::v1::registry_client::RegistryClient;
use futures::StreamExt as _;

use super::{instance_shares, measure, nacos, Settings};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

const SERVICE: &str = "cella-bench-beat-grpc";
/// Registrations in flight during setup.
const REGISTRARS: usize = 64;

fn service() -> Option<rpb::ServiceName> {
    Some(rpb::ServiceName {
        name: SERVICE.into(),
        ..Default::default()
    })
}

/// Instance `n` of client `client`: the same addresses registry-heartbeat uses.
fn instance(client: usize, n: u64) -> rpb::Instance {
    rpb::Instance {
        ip: nacos::ip(client, n),
        port: nacos::port(client),
        ..Default::default()
    }
}

/// Registers one instance and returns the beat that keeps it alive.
async fn register(channel: Channel, instance: rpb::Instance) -> anyhow::Result<rpb::Beat> {
    let response = RegistryClient::new(channel)
        .register(rpb::RegisterRequest {
            service: service(),
            instance: Some(instance),
            persistent: false,
        })
        .await
        .context("registering an instance")?
        .into_inner();
    let id = response
        .instance
        .context("register answered without the instance")?
        .id;
    Ok(rpb::Beat {
        service: service(),
        instance_id: id,
    })
}

struct Beater {
    registry: RegistryClient<Channel>,
    beats: Vec<rpb::Beat>,
    batch: usize,
    next: usize,
}

impl LoadClient for Beater {
    async fn call(&mut self) -> anyhow::Result<()> {
        let batch: Vec<rpb::Beat> = (0..self.batch.min(self.beats.len()))
            .map(|i| self.beats[(self.next + i) % self.beats.len()].clone())
            .collect();
        self.next = (self.next + batch.len()) % self.beats.len();
        let sent = batch.len();
        let known = self
            .registry
            .heartbeat(rpb::HeartbeatRequest { beats: batch })
            .await?
            .into_inner()
            .known;
        let unknown = known.iter().filter(|k| !**k).count();
        if known.len() != sent || unknown > 0 {
            bail!(
                "{unknown} of {sent} beats were for instances the registry does not know ({} answers)",
                known.len()
            );
        }
        Ok(())
    }
}

/// Runs registry-heartbeat-grpc at `clients`.
pub(super) async fn run(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let shares = instance_shares(settings.instances, clients);
    let all = shares
        .iter()
        .enumerate()
        .flat_map(|(client, &share)| (0..share).map(move |n| (client, n)));
    let registered: Vec<(usize, rpb::Beat)> = futures::stream::iter(all)
        .enumerate()
        .map(|(i, (client, n))| {
            let channel = conns.channel(i);
            async move {
                Ok::<_, anyhow::Error>((client, register(channel, instance(client, n)).await?))
            }
        })
        .buffer_unordered(REGISTRARS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut beats: Vec<Vec<rpb::Beat>> = vec![Vec::new(); clients];
    for (client, beat) in registered {
        beats[client].push(beat);
    }
    let beaters = beats
        .into_iter()
        .enumerate()
        .filter(|(_, beats)| !beats.is_empty())
        .map(|(client, beats)| Beater {
            registry: RegistryClient::new(conns.channel(client)),
            beats,
            batch: settings.beat_batch as usize,
            next: 0,
        })
        .collect();
    Ok(measure(beaters, settings, progress).await?.1)
}
