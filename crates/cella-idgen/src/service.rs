//! The node's id service, without transport: the layouts it serves, one snowflake
//! generator per layout (holding its own worker id, claimed on first use), and segment
//! mode. The gRPC service and the REST router both call this.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cella_base::Clock;
use cella_core::Core;
use cella_proto::cella::idgen::v1 as idpb;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::{IdgenError, IdgenResult};
use crate::layout::{builtin_specs, Layout, LayoutSpec};
use crate::segment::SegmentConfig;
use crate::segments::SegmentAllocator;
use crate::sequencer::GeneratorConfig;
use cella_base::UnixClock;

use crate::snowflake::Snowflake;
use crate::wire::to_wire;

/// Settings of the id service; the `[idgen]` table of the server's TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdgenConfig {
    /// Most ids one Batch or SegmentNext call may ask for.
    pub max_batch: u32,
    /// Snowflake generators: clock step-back tolerance, reservation window, worker lease.
    pub generator: GeneratorConfig,
    /// Segment mode: steps and prefetch.
    pub segments: SegmentConfig,
    /// Layouts served besides the built-ins (`snowflake64`, `order32`).
    pub layouts: Vec<LayoutSpec>,
}

impl Default for IdgenConfig {
    fn default() -> Self {
        Self {
            max_batch: 10_000,
            generator: GeneratorConfig::default(),
            segments: SegmentConfig::default(),
            layouts: Vec::new(),
        }
    }
}

/// The id service of one node; see the module docs.
pub struct IdService {
    core: Core,
    clock: Arc<dyn Clock>,
    config: IdgenConfig,
    holder: String,
    layouts: BTreeMap<String, Arc<Layout>>,
    generators: Mutex<HashMap<String, Arc<Snowflake<Core>>>>,
    segments: SegmentAllocator<Core>,
}

impl IdService {
    /// Validates the configured layouts; `holder` names this node in worker keys.
    pub fn new(core: Core, config: IdgenConfig, holder: String) -> IdgenResult<IdService> {
        Self::with_clock(core, config, holder, Arc::new(UnixClock))
    }

    /// As [`IdService::new`], reading time from `clock` (ms since 1970).
    pub fn with_clock(
        core: Core,
        config: IdgenConfig,
        holder: String,
        clock: Arc<dyn Clock>,
    ) -> IdgenResult<IdService> {
        let mut layouts = BTreeMap::new();
        for spec in builtin_specs() {
            layouts.insert(spec.name.clone(), Arc::new(Layout::new(spec)?));
        }
        for spec in &config.layouts {
            if layouts.contains_key(&spec.name) {
                return Err(IdgenError::InvalidLayout {
                    layout: spec.name.clone(),
                    field: "name".into(),
                    rule: "is already taken (by a built-in or another layout)".into(),
                });
            }
            layouts.insert(spec.name.clone(), Arc::new(Layout::new(spec.clone())?));
        }
        Ok(IdService {
            segments: SegmentAllocator::new(core.clone(), clock.clone(), config.segments),
            core,
            clock,
            config,
            holder,
            layouts,
            generators: Mutex::new(HashMap::new()),
        })
    }

    /// The most ids one call may ask for.
    pub fn max_batch(&self) -> u32 {
        self.config.max_batch
    }

    /// A served layout by name.
    pub fn layout(&self, name: &str) -> IdgenResult<Arc<Layout>> {
        self.layouts
            .get(name)
            .cloned()
            .ok_or_else(|| IdgenError::UnknownLayout {
                name: name.into(),
                known: self.layouts.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// This node's generator for `layout`, started (worker id claimed) on first use and
    /// replaced if its worker id was lost.
    async fn generator(&self, layout: &Arc<Layout>) -> IdgenResult<Arc<Snowflake<Core>>> {
        let mut generators = self.generators.lock().await;
        if let Some(g) = generators.get(layout.name()).filter(|g| !g.is_lost()) {
            return Ok(g.clone());
        }
        let generator = Arc::new(
            Snowflake::start(
                self.core.clone(),
                layout.clone(),
                self.clock.clone(),
                self.config.generator,
                &self.holder,
            )
            .await?,
        );
        generators.insert(layout.name().to_owned(), generator.clone());
        Ok(generator)
    }

    /// Gives back every worker id this node holds (a clean shutdown, before the core
    /// stops), so a restarted node can claim them again at once.
    pub async fn release_workers(&self) {
        let generators: Vec<_> = self.generators.lock().await.drain().collect();
        for (layout, generator) in generators {
            if let Err(e) = generator.release().await {
                tracing::warn!(layout, error = %e, "releasing a worker id; its lease will expire instead");
            }
        }
    }

    fn check_count(&self, count: u32) -> IdgenResult<()> {
        if count == 0 || count > self.config.max_batch {
            return Err(IdgenError::BadCount {
                count: count.into(),
                max: self.config.max_batch.into(),
            });
        }
        Ok(())
    }

    /// One id of a layout.
    pub async fn next(&self, req: idpb::NextRequest) -> IdgenResult<idpb::NextResponse> {
        let layout = self.layout(&req.layout)?;
        let tags = layout.tags(req.tags.iter().map(|(k, v)| (k.as_str(), *v)))?;
        let generator = self.generator(&layout).await?;
        let id = generator.next(&tags).await?;
        Ok(idpb::NextResponse {
            id: layout.format(id),
            layout: req.layout,
            worker: generator.worker(),
        })
    }

    /// `count` ids of a layout, increasing.
    pub async fn batch(&self, req: idpb::BatchRequest) -> IdgenResult<idpb::BatchResponse> {
        let layout = self.layout(&req.layout)?;
        self.check_count(req.count)?;
        let tags = layout.tags(req.tags.iter().map(|(k, v)| (k.as_str(), *v)))?;
        let generator = self.generator(&layout).await?;
        let ids = generator.batch(req.count as usize, &tags).await?;
        Ok(idpb::BatchResponse {
            ids: ids.into_iter().map(|id| layout.format(id)).collect(),
            layout: req.layout,
            worker: generator.worker(),
        })
    }

    /// The parts of an id.
    pub fn decode(&self, req: &idpb::DecodeRequest) -> IdgenResult<idpb::DecodeResponse> {
        let decoded = self.layout(&req.layout)?.decode(&req.id)?;
        Ok(idpb::DecodeResponse {
            layout: decoded.layout,
            id: decoded.id,
            unix_ms: decoded.unix_ms,
            fields: decoded
                .fields
                .into_iter()
                .map(|(name, value)| idpb::Field { name, value })
                .collect(),
        })
    }

    /// The next ids of a business tag in segment mode.
    pub async fn segment_next(
        &self,
        req: idpb::SegmentNextRequest,
    ) -> IdgenResult<idpb::SegmentNextResponse> {
        let count = req.count.max(1);
        self.check_count(count)?;
        let ids = self.segments.batch(&req.tag, count.into()).await?;
        Ok(idpb::SegmentNextResponse { tag: req.tag, ids })
    }

    /// Every served layout's definition.
    pub fn list_layouts(&self) -> idpb::ListLayoutsResponse {
        idpb::ListLayoutsResponse {
            layouts: self.layouts.values().map(|l| to_wire(l.spec())).collect(),
        }
    }
}
