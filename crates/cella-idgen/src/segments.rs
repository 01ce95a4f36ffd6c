//! Segment mode per business tag: ranges of ids allocated from the core by
//! compare-and-swap on `/cella/idgen/segments/<tag>`, double-buffered (see
//! [`crate::segment`] for the rules).
//!
//! Guarantees: every id handed out is unique per tag across all allocators on the same
//! core — a range is only used after the compare-and-swap that moved the tag's counter
//! past it succeeded — and ids from one allocator increase. Ids left in buffers when a
//! process stops are never handed out (gaps, not duplicates). Ids start at 1.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use cella_base::Clock;
use tokio::sync::Mutex;

use crate::error::{IdgenError, IdgenResult};
use crate::metrics;
use crate::segment::{Need, SegmentBuffer, SegmentConfig};
use crate::store::{self, CoreStore};

/// Most compare-and-swap attempts for one segment.
const MAX_CAS_ATTEMPTS: u32 = 32;
/// Longest tag.
const MAX_TAG_LEN: usize = 64;
/// Most consecutive 1 ms pauses while another caller's fetch is in flight before this
/// caller fetches itself (a stranded fetch costs a gap, never a duplicate).
const MAX_EMPTY_TAKES: u32 = 5_000;

/// Checks a business tag: 1–64 characters of a-z, 0-9, '_', '-' and '.'.
pub fn check_tag(tag: &str) -> IdgenResult<()> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdgenError::InvalidTag {
            tag: tag.into(),
            rule: "must be 1 to 64 characters of a-z, 0-9, '_', '-' and '.'",
        })
    }
}

/// Hands out segment-mode ids for any number of tags; see the module docs.
pub struct SegmentAllocator<S: CoreStore> {
    store: S,
    clock: Arc<dyn Clock>,
    config: SegmentConfig,
    tags: std::sync::Mutex<HashMap<String, Arc<Mutex<SegmentBuffer>>>>,
}

impl<S: CoreStore> SegmentAllocator<S> {
    /// An allocator over `store`; `clock` times segment lifetimes for the adaptive step.
    pub fn new(store: S, clock: Arc<dyn Clock>, config: SegmentConfig) -> Self {
        SegmentAllocator {
            store,
            clock,
            config,
            tags: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn buffer(&self, tag: &str) -> Arc<Mutex<SegmentBuffer>> {
        let mut tags = self.tags.lock().expect("tag map poisoned only by a panic");
        tags.entry(tag.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(SegmentBuffer::new(self.config))))
            .clone()
    }

    fn now(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }

    /// The step the next fetch for `tag` will ask for (after validation).
    pub async fn step(&self, tag: &str) -> IdgenResult<u64> {
        check_tag(tag)?;
        Ok(self.buffer(tag).lock().await.step())
    }

    /// `count` ids of `tag`, increasing.
    pub async fn batch(&self, tag: &str, count: u64) -> IdgenResult<Vec<u64>> {
        check_tag(tag)?;
        let buffer = self.buffer(tag);
        let mut ids = Vec::with_capacity(count as usize);
        let mut empty_takes = 0;
        while (ids.len() as u64) < count {
            let want = count - ids.len() as u64;
            let (range, need) = buffer.lock().await.take(want, self.now());
            ids.extend(range.clone());
            match need {
                Need::Nothing if range.is_empty() => {
                    // Another caller's fetch is in flight; give it a moment.
                    empty_takes += 1;
                    if empty_takes > MAX_EMPTY_TAKES {
                        buffer.lock().await.fetch_failed();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Need::Nothing => empty_takes = 0,
                Need::Prefetch { step } => {
                    let (store, buffer, clock, tag) = (
                        self.store.clone(),
                        buffer.clone(),
                        self.clock.clone(),
                        tag.to_owned(),
                    );
                    tokio::spawn(async move {
                        let fetched = allocate(&store, &tag, step).await;
                        let mut buffer = buffer.lock().await;
                        match fetched {
                            Ok(segment) => buffer.supply(segment, clock.now().as_millis() as u64),
                            Err(e) => {
                                tracing::warn!(tag, error = %e, "prefetching a segment");
                                buffer.fetch_failed();
                            }
                        }
                    });
                }
                Need::FetchNow { step } => match allocate(&self.store, tag, step).await {
                    Ok(segment) => buffer.lock().await.supply(segment, self.now()),
                    Err(e) => {
                        buffer.lock().await.fetch_failed();
                        return Err(e);
                    }
                },
            }
        }
        Ok(ids)
    }
}

/// Moves `tag`'s counter forward by `step` with a compare-and-swap; returns the range
/// the move covered.
pub(crate) async fn allocate<S: CoreStore>(
    store: &S,
    tag: &str,
    step: u64,
) -> IdgenResult<Range<u64>> {
    let key = store::segment_key(tag);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (start, compare) = match store::get(store, &key).await? {
            Some((value, revision)) => (
                store::parse_u64(&key, &value)?,
                store::modified_at(&key, revision),
            ),
            None => (1, store::created_at(&key, 0)),
        };
        let end = start
            .checked_add(step)
            .ok_or_else(|| IdgenError::CorruptState {
                key: key.clone(),
                reason: format!("the counter {start} cannot grow by {step} without overflowing"),
            })?;
        if store::swap(
            store,
            vec![compare],
            vec![store::put(&key, end.to_string(), 0)],
        )
        .await?
        {
            metrics::count_segment_fetch();
            return Ok(start..end);
        }
    }
    Err(IdgenError::Contention {
        key,
        attempts: MAX_CAS_ATTEMPTS,
    })
}
