//! id-batch and id-single: Cella's id service (`cella.idgen.v1.Ids`), so Cella only.
//!
//! id-batch: an operation is one `Batch` call for `--id-batch` ids of `--id-layout`; ids/s
//! is ops/s times the batch size. id-single: an operation is one `Next` call. A short batch
//! or an empty id counts as an error.

use std::collections::HashMap;

use cella_proto::cella::idgen::v1::ids_client::IdsClient;
use cella_proto::cella::idgen::v1::{BatchRequest, NextRequest};

use super::{measure, Settings};
use crate::conn::{Channel, Connections};
use crate::driver::LoadClient;
use crate::progress::Progress;
use crate::stats::Measurement;

/// One client: `batch` ids per call (`None`: single `Next` calls).
struct IdClient {
    ids: IdsClient<Channel>,
    layout: String,
    batch: Option<u32>,
}

impl LoadClient for IdClient {
    async fn call(&mut self) -> anyhow::Result<()> {
        match self.batch {
            Some(count) => {
                let request = BatchRequest {
                    layout: self.layout.clone(),
                    count,
                    tags: HashMap::new(),
                };
                let got = self.ids.batch(request).await?.into_inner().ids.len();
                anyhow::ensure!(got == count as usize, "asked for {count} ids, got {got}");
            }
            None => {
                let request = NextRequest {
                    layout: self.layout.clone(),
                    tags: HashMap::new(),
                };
                let id = self.ids.next(request).await?.into_inner().id;
                anyhow::ensure!(!id.is_empty(), "empty id");
            }
        }
        Ok(())
    }
}

/// Runs id-batch (`batch` set) or id-single at `clients`.
pub(super) async fn run(
    conns: &Connections,
    clients: usize,
    settings: &Settings,
    batch: Option<u32>,
    progress: Option<&Progress>,
) -> anyhow::Result<Measurement> {
    let clients = (0..clients)
        .map(|i| IdClient {
            ids: IdsClient::new(conns.channel(i)),
            layout: settings.id_layout.clone(),
            batch,
        })
        .collect();
    Ok(measure(clients, settings, progress).await?.1)
}
