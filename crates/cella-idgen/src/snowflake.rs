//! A snowflake generator for one layout: a leased worker id, a persisted high-water mark,
//! and the [`Sequencer`]'s decisions carried out (waits, reservations, alarms).
//!
//! Guarantees: ids are unique across every generator of the layout that uses the same core
//! — worker ids are never held twice at once, and a worker id's ids are all below the
//! high-water mark its holder persisted while still holding it, which the next holder
//! starts above — and increasing within one generator. Clock readings come from a
//! [`Clock`] whose origin is the Unix epoch ([`UnixClock`] in production).

use std::sync::Arc;
use std::time::Duration;

use cella_base::Clock;
use tokio::sync::Mutex;

use crate::error::{IdgenError, IdgenResult};
use crate::layout::{Id, Layout, Tags};
use crate::metrics;
use crate::sequencer::{GeneratorConfig, Sequencer, Step};
use crate::store::{self, CoreStore};
use crate::worker::WorkerLease;

/// Longest a wait for the clock is a yield loop rather than a sleep.
const SPIN_WAIT: Duration = Duration::from_millis(1);

/// Generates ids of one layout from one leased worker id; see the module docs.
pub struct Snowflake<S: CoreStore> {
    layout: Arc<Layout>,
    store: S,
    clock: Arc<dyn Clock>,
    config: GeneratorConfig,
    worker: WorkerLease,
    state: Mutex<Sequencer>,
}

impl<S: CoreStore> std::fmt::Debug for Snowflake<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snowflake")
            .field("layout", &self.layout.name())
            .field("worker", &self.worker)
            .finish()
    }
}

fn unix_ms(clock: &dyn Clock) -> u64 {
    clock.now().as_millis() as u64
}

impl<S: CoreStore> Snowflake<S> {
    /// Claims a worker id of `layout` and resumes after its persisted high-water mark.
    pub async fn start(
        store: S,
        layout: Arc<Layout>,
        clock: Arc<dyn Clock>,
        config: GeneratorConfig,
        holder: &str,
    ) -> IdgenResult<Self> {
        let worker =
            WorkerLease::claim(&store, &layout, config.worker_lease_ttl_secs, holder).await?;
        let key = store::clock_key(layout.name(), worker.worker());
        let mark = match store::get(&store, &key).await? {
            Some((value, _)) => store::parse_u64(&key, &value)?,
            None => 0,
        };
        tracing::debug!(
            layout = layout.name(),
            worker = worker.worker(),
            mark,
            "snowflake generator started"
        );
        Ok(Snowflake {
            state: Mutex::new(Sequencer::resume(mark, layout.max_sequence(), &config)),
            layout,
            store,
            clock,
            config,
            worker,
        })
    }

    /// The layout generated.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The worker id this generator holds.
    pub fn worker(&self) -> u64 {
        self.worker.worker()
    }

    /// True once the worker id's lease is gone; the generator then only refuses.
    pub fn is_lost(&self) -> bool {
        self.worker.is_lost()
    }

    /// Gives the worker id back now (revokes its lease) instead of waiting for the drop;
    /// the generator refuses from then on. For a clean shutdown.
    pub async fn release(&self) -> IdgenResult<()> {
        self.worker.mark_lost();
        self.store.revoke_lease(self.worker.lease()).await
    }

    /// One id.
    pub async fn next(&self, tags: &Tags) -> IdgenResult<Id> {
        let mut ids = self.batch(1, tags).await?;
        ids.pop().ok_or_else(|| self.worker.lost_error())
    }

    /// `count` ids, increasing. On an error no id is returned (none is lost for
    /// uniqueness: skipped ids are simply never used).
    pub async fn batch(&self, count: usize, tags: &Tags) -> IdgenResult<Vec<Id>> {
        let mut ids = Vec::with_capacity(count);
        let mut state = self.state.lock().await;
        let wait_limit =
            Duration::from_millis(self.config.reserve_ms + self.config.max_backstep_ms + 5_000);
        // When the current wait for the clock began (real time, a safety bound only: a
        // clock that stopped must not hang a caller).
        let mut waiting_since: Option<tokio::time::Instant> = None;
        while ids.len() < count {
            if self.worker.is_lost() {
                return Err(self.worker.lost_error());
            }
            let now = unix_ms(&*self.clock);
            match state.step(now) {
                Ok(Step::Issue { unix_ms, sequence }) => {
                    let timestamp = self.layout.timestamp_of(unix_ms)?;
                    waiting_since = None;
                    ids.push(
                        self.layout
                            .compose(timestamp, sequence, self.worker.worker(), tags),
                    );
                }
                Ok(Step::WaitUntil(until)) => {
                    let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > wait_limit {
                        return Err(IdgenError::ClockMovedBackwards {
                            behind_ms: until.saturating_sub(now),
                            max_wait_ms: wait_limit.as_millis() as u64,
                        });
                    }
                    let pause = Duration::from_millis(until.saturating_sub(now));
                    if pause <= SPIN_WAIT {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(pause.min(Duration::from_millis(50))).await;
                    }
                }
                Ok(Step::Reserve { until }) => {
                    self.persist_mark(until).await?;
                    state.reserved(until);
                }
                Err(e) => {
                    metrics::count_clock_backwards();
                    tracing::error!(layout = self.layout.name(), worker = self.worker.worker(), error = %e, "clock moved backwards");
                    return Err(e);
                }
            }
        }
        metrics::count_ids(ids.len());
        Ok(ids)
    }

    /// Persists the high-water mark, only while this generator still holds its worker id.
    async fn persist_mark(&self, until: u64) -> IdgenResult<()> {
        let layout = self.layout.name();
        let worker = self.worker.worker();
        let held = store::swap(
            &self.store,
            vec![store::held_by(
                &store::worker_key(layout, worker),
                self.worker.lease(),
            )],
            vec![store::put(
                &store::clock_key(layout, worker),
                until.to_string(),
                0,
            )],
        )
        .await?;
        if !held {
            self.worker.mark_lost();
            return Err(self.worker.lost_error());
        }
        Ok(())
    }
}
