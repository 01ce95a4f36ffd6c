//! Unique ids: snowflake ids from a node (`next`, `batch`), decoding, segment-mode ids per
//! business tag — and local generation with no network call per id.
//!
//! [`Ids::local`] builds a generator in this process for any layout the node serves. It
//! leases its own worker id through the core's KV and Lease API (the same keys and
//! protocol as a node's generators, so the two never share a worker id), refreshes the
//! lease in the background, and persists a high-water mark so a restarted process never
//! reissues an id. Dropping it releases the worker id.
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! let client = cella_sdk::Client::connect("127.0.0.1:7070").await?;
//! let remote = client.ids().next("snowflake64").await?;
//! let local = client.ids().local("order32").await?;
//! let order = local.next_with(&[("type", 1), ("db", 12), ("table", 3)]).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use cella_idgen::{
    wire, CoreStore, GeneratorConfig, IdgenError, IdgenResult, Layout, Snowflake, UnixClock,
};
use cella_proto::cella::idgen::v1 as idpb;
use cella_proto::cella::idgen::v1::ids_client::IdsClient;
use cella_proto::etcdserverpb as pb;
use cella_proto::etcdserverpb::kv_client::KvClient;
use cella_proto::etcdserverpb::lease_client::LeaseClient;

use crate::client::Transport;
use crate::{Error, Result};

pub use cella_idgen::layout::{ORDER32, SNOWFLAKE64};

/// An id's parts, as a node decodes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedId {
    /// The layout.
    pub layout: String,
    /// The id, normalized (decimal layouts zero-padded).
    pub id: String,
    /// Its timestamp, ms since 1970.
    pub unix_ms: u64,
    /// Every field's name and value, most significant first.
    pub fields: Vec<(String, u64)>,
}

/// The id service of one node.
#[derive(Debug, Clone)]
pub struct Ids {
    client: IdsClient<Transport>,
    transport: Transport,
}

fn tags_map(tags: &[(&str, u64)]) -> std::collections::HashMap<String, u64> {
    tags.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

impl Ids {
    pub(crate) fn new(transport: Transport) -> Self {
        Ids {
            client: IdsClient::new(transport.clone()),
            transport,
        }
    }

    /// One id of `layout` from the node.
    pub async fn next(&self, layout: &str) -> Result<String> {
        self.next_with(layout, &[]).await
    }

    /// One id of `layout` with values for its tag fields (e.g. order32's type, db, table).
    pub async fn next_with(&self, layout: &str, tags: &[(&str, u64)]) -> Result<String> {
        let request = idpb::NextRequest {
            layout: layout.to_owned(),
            tags: tags_map(tags),
        };
        Ok(self.client.clone().next(request).await?.into_inner().id)
    }

    /// `count` ids of `layout` from the node, increasing (at most the node's batch limit).
    pub async fn batch(&self, layout: &str, count: u32) -> Result<Vec<String>> {
        self.batch_with(layout, count, &[]).await
    }

    /// As [`Ids::batch`], with values for the layout's tag fields.
    pub async fn batch_with(
        &self,
        layout: &str,
        count: u32,
        tags: &[(&str, u64)],
    ) -> Result<Vec<String>> {
        let request = idpb::BatchRequest {
            layout: layout.to_owned(),
            count,
            tags: tags_map(tags),
        };
        Ok(self.client.clone().batch(request).await?.into_inner().ids)
    }

    /// The parts of an id of `layout`.
    pub async fn decode(&self, layout: &str, id: &str) -> Result<DecodedId> {
        let request = idpb::DecodeRequest {
            layout: layout.to_owned(),
            id: id.to_owned(),
        };
        let resp = self.client.clone().decode(request).await?.into_inner();
        Ok(DecodedId {
            layout: resp.layout,
            id: resp.id,
            unix_ms: resp.unix_ms,
            fields: resp.fields.into_iter().map(|f| (f.name, f.value)).collect(),
        })
    }

    /// The next `count` segment-mode ids of a business tag.
    pub async fn segment(&self, tag: &str, count: u32) -> Result<Vec<u64>> {
        let request = idpb::SegmentNextRequest {
            tag: tag.to_owned(),
            count,
        };
        Ok(self
            .client
            .clone()
            .segment_next(request)
            .await?
            .into_inner()
            .ids)
    }

    /// The layouts the node serves.
    pub async fn layouts(&self) -> Result<Vec<Layout>> {
        let resp = self
            .client
            .clone()
            .list_layouts(idpb::ListLayoutsRequest {})
            .await?
            .into_inner();
        resp.layouts
            .iter()
            .map(|spec| Layout::new(wire::from_wire(spec)?))
            .collect::<IdgenResult<Vec<_>>>()
            .map_err(to_sdk)
    }

    /// A generator of `layout` in this process, with default settings.
    pub async fn local(&self, layout: &str) -> Result<LocalIds> {
        self.local_with(layout, GeneratorConfig::default()).await
    }

    /// A generator of `layout` in this process; see the module docs.
    pub async fn local_with(&self, layout: &str, config: GeneratorConfig) -> Result<LocalIds> {
        let layouts = self.layouts().await?;
        let known = layouts
            .iter()
            .map(|l| l.name().to_owned())
            .collect::<Vec<_>>();
        let layout = layouts
            .into_iter()
            .find(|l| l.name() == layout)
            .ok_or_else(|| {
                to_sdk(IdgenError::UnknownLayout {
                    name: layout.to_owned(),
                    known: known.join(", "),
                })
            })?;
        let store = NetworkStore {
            kv: KvClient::new(self.transport.clone()),
            lease: LeaseClient::new(self.transport.clone()),
        };
        let holder = format!("sdk pid {}", std::process::id());
        let generator = Snowflake::start(
            store,
            Arc::new(layout),
            Arc::new(UnixClock),
            config,
            &holder,
        )
        .await
        .map_err(to_sdk)?;
        Ok(LocalIds { generator })
    }
}

/// A snowflake generator in this process, holding its own worker id; see the module docs.
#[derive(Debug)]
pub struct LocalIds {
    generator: Snowflake<NetworkStore>,
}

impl LocalIds {
    /// The layout generated.
    pub fn layout(&self) -> &Layout {
        self.generator.layout()
    }

    /// The worker id held.
    pub fn worker(&self) -> u64 {
        self.generator.worker()
    }

    /// One id.
    pub async fn next(&self) -> Result<String> {
        self.next_with(&[]).await
    }

    /// One id with values for the layout's tag fields.
    pub async fn next_with(&self, tags: &[(&str, u64)]) -> Result<String> {
        let layout = self.generator.layout();
        let tags = layout.tags(tags.iter().copied()).map_err(to_sdk)?;
        let id = self.generator.next(&tags).await.map_err(to_sdk)?;
        Ok(layout.format(id))
    }

    /// `count` ids, increasing.
    pub async fn batch(&self, count: usize) -> Result<Vec<String>> {
        let layout = self.generator.layout();
        let ids = self
            .generator
            .batch(count, &cella_idgen::Tags::default())
            .await
            .map_err(to_sdk)?;
        Ok(ids.into_iter().map(|id| layout.format(id)).collect())
    }
}

/// An id-generation error as the SDK reports it: the same category a node's answer
/// would have (invalid argument, not found, failed precondition, ...).
fn to_sdk(err: IdgenError) -> Error {
    Error::from(tonic::Status::from(err))
}

/// The core reached over the network through etcd's KV and Lease API.
#[derive(Debug, Clone)]
struct NetworkStore {
    kv: KvClient<Transport>,
    lease: LeaseClient<Transport>,
}

impl CoreStore for NetworkStore {
    async fn txn(&self, req: pb::TxnRequest) -> IdgenResult<pb::TxnResponse> {
        Ok(self.kv.clone().txn(req).await?.into_inner())
    }

    async fn range(&self, req: pb::RangeRequest) -> IdgenResult<pb::RangeResponse> {
        Ok(self.kv.clone().range(req).await?.into_inner())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> IdgenResult<(i64, i64)> {
        let request = pb::LeaseGrantRequest {
            ttl: ttl_secs,
            id: 0,
        };
        let resp = self.lease.clone().lease_grant(request).await?.into_inner();
        Ok((resp.id, resp.ttl))
    }

    async fn keep_alive(&self, lease: i64) -> IdgenResult<i64> {
        let request = pb::LeaseKeepAliveRequest { id: lease };
        let mut answers = self
            .lease
            .clone()
            .lease_keep_alive(tokio_stream::once(request))
            .await?
            .into_inner();
        match answers.message().await? {
            Some(resp) => Ok(resp.ttl),
            None => Err(IdgenError::Core {
                code: tonic::Code::Unavailable,
                message: "the lease keep-alive stream closed without an answer".into(),
            }),
        }
    }

    async fn revoke_lease(&self, lease: i64) -> IdgenResult<()> {
        match self
            .lease
            .clone()
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(status.into()),
        }
    }
}
