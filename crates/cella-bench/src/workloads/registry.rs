//! registry-push: how fast an instance change reaches a service's subscribers.
//!
//! A level is the number of subscribers S: `Subscribe` streams on the service
//! `cella-bench-push`, spread over the connections. One writer re-registers one instance,
//! each time with a new stamp in its metadata, so every call is one change; it is paced by
//! `--rate` (100 changes/s by default). Readers record stamp-sent → delta-received for each
//! subscriber, so reported ops are notifications delivered (subscriber × change pairs) and
//! the latency percentiles are those of a change reaching a subscriber. Cella only: it uses
//! the registry's own gRPC API.

use anyhow::Context;
use cella_proto::cella::registry::v1 as rpb;
use cella_proto::cella::registry::v1::registry_client::RegistryClient;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::time::Instant;

use super::fanout::{decode_stamp, encode_stamp, nanos_since, Readers, Received, STAMP_LEN};
use super::{measure, Settings, DEFAULT_WATCH_RATE};
use crate::conn::{Channel, Connections};
use crate::driver::{Bounds, LoadClient};
use crate::progress::Progress;
use crate::stats::Measurement;

const SERVICE: &str = "cella-bench-push";
const STAMP_KEY: &str = "bench-stamp";
/// Subscriptions per connection, below the usual HTTP/2 stream limit of servers.
const STREAMS_PER_CONNECTION: usize = 100;

fn service() -> Option<rpb::ServiceName> {
    Some(rpb::ServiceName {
        name: SERVICE.into(),
        ..Default::default()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

struct Writer {
    registry: RegistryClient<Channel>,
    base: Instant,
    measured: bool,
}

impl LoadClient for Writer {
    async fn call(&mut self) -> anyhow::Result<()> {
        let stamp = encode_stamp(nanos_since(self.base, Instant::now()), self.measured);
        let instance = rpb::Instance {
            ip: "127.0.0.1".into(),
            port: 9,
            metadata: [(STAMP_KEY.to_string(), hex(&stamp))].into(),
            ..Default::default()
        };
        let request = rpb::RegisterRequest {
            service: service(),
            instance: Some(instance),
            persistent: false,
        };
        self.registry.register(request).await?;
        Ok(())
    }

    fn start_measuring(&mut self) {
        self.measured = true;
    }
}

/// Opens one subscription and waits for its snapshot, then yields each delta's stamps.
async fn subscribe(channel: Channel) -> anyhow::Result<BoxStream<'static, Received>> {
    let mut events = RegistryClient::new(channel)
        .subscribe(rpb::SubscribeRequest { service: service() })
        .await
        .context("subscribing")?
        .into_inner();
    events
        .message()
        .await?
        .context("subscription ended before its snapshot")?;
    Ok(events
        .map(|message| match message {
            Ok(rpb::ServiceEvent {
                event: Some(rpb::service_event::Event::Delta(delta)),
            }) => Ok(delta
                .upserted
                .iter()
                .filter_map(|i| i.metadata.get(STAMP_KEY))
                .filter_map(|text| unhex(text).filter(|b| b.len() == STAMP_LEN))
                .filter_map(|bytes| decode_stamp(&bytes))
                .collect()),
            Ok(_) => Ok(Vec::new()),
            Err(status) => Err(format!(
                "subscription failed: {:?}: {}",
                status.code(),
                status.message()
            )),
        })
        .boxed())
}

/// Runs registry-push with `subscribers` subscribers and one writer.
pub(super) async fn run_push(
    conns: &Connections,
    subscribers: usize,
    settings: &Settings,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let base = Instant::now();
    let conns = conns
        .at_least(subscribers.div_ceil(STREAMS_PER_CONNECTION))
        .await?;
    let streams =
        futures::future::try_join_all((0..subscribers).map(|i| subscribe(conns.channel(i))))
            .await?;
    let readers = Readers::spawn(streams, base);
    let writer = Writer {
        registry: RegistryClient::new(conns.channel(subscribers)),
        base,
        measured: false,
    };
    let settings = Settings {
        bounds: Bounds {
            rate: Some(settings.bounds.rate.unwrap_or(DEFAULT_WATCH_RATE)),
            ..settings.bounds
        },
        ..settings.clone()
    };
    let (_, written) = measure(vec![writer], &settings, progress).await?;
    let expected = subscribers as u64 * written.ops();
    readers.finish(written, expected).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_the_metadata_round_trip() {
        let stamp = encode_stamp(42, true);
        let back = unhex(&hex(&stamp)).expect("hex");
        assert_eq!(decode_stamp(&back), Some(42));
        assert_eq!(unhex("zz"), None);
    }
}
