//! Segment mode's decisions, without effects: a double buffer of id ranges for one
//! business tag, and how large the next range should be.
//!
//! Rules:
//! - Ids come from the current segment in order; when it runs out, the buffered next one
//!   takes over; if there is none, the caller must fetch one before continuing.
//! - Prefetch: once `prefetch_percent` of the current segment is used (default 10%) and no
//!   next segment is buffered or being fetched, ask for the next one in the background, so
//!   a steady consumer never waits for the core.
//! - Adaptive step: when a segment is used up, its lifetime sets the step of later fetches.
//!   Shorter than `target_period_ms`: double the step; longer than twice that: halve it;
//!   always within `min_step..=max_step`. So a busy tag fetches about once per target
//!   period, and an idle one does not strand large ranges.

use std::ops::Range;

/// Tunables of segment mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SegmentConfig {
    /// Step of a tag's first segment.
    pub initial_step: u64,
    /// Smallest step.
    pub min_step: u64,
    /// Largest step.
    pub max_step: u64,
    /// A segment should last about this long, in ms.
    pub target_period_ms: u64,
    /// Fetch the next segment once this percentage of the current one is used.
    pub prefetch_percent: u64,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            initial_step: 1_000,
            min_step: 100,
            max_step: 10_000_000,
            target_period_ms: 60_000,
            prefetch_percent: 10,
        }
    }
}

/// What the driver should do after a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing.
    Nothing,
    /// Start fetching a segment of `step` ids in the background.
    Prefetch { step: u64 },
    /// No ids are left: fetch a segment of `step` ids, supply it, and take again.
    FetchNow { step: u64 },
}

/// One tag's buffered segments; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct SegmentBuffer {
    config: SegmentConfig,
    step: u64,
    /// Ids left in the current segment.
    current: Range<u64>,
    /// The current segment's size, and when it was installed (ms).
    current_len: u64,
    installed_at: u64,
    next: Option<Range<u64>>,
    fetching: bool,
}

impl SegmentBuffer {
    /// An empty buffer: the first take asks for a fetch.
    pub(crate) fn new(config: SegmentConfig) -> Self {
        let step = config
            .initial_step
            .clamp(config.min_step.max(1), config.max_step.max(1));
        SegmentBuffer {
            config,
            step,
            current: 0..0,
            current_len: 0,
            installed_at: 0,
            next: None,
            fetching: false,
        }
    }

    /// The step the next fetch will ask for.
    pub(crate) fn step(&self) -> u64 {
        self.step
    }

    /// Takes up to `want` ids (one contiguous range, possibly shorter) at time `now`.
    pub(crate) fn take(&mut self, want: u64, now: u64) -> (Range<u64>, Need) {
        if self.current.is_empty() {
            match self.next.take() {
                Some(next) => self.install(next, now),
                None if self.fetching => return (0..0, Need::Nothing),
                None => {
                    self.fetching = true;
                    return (0..0, Need::FetchNow { step: self.step });
                }
            }
        }
        let start = self.current.start;
        let end = start.saturating_add(want).min(self.current.end);
        self.current.start = end;
        let used = self.current_len - (self.current.end - self.current.start);
        let need = if self.next.is_none()
            && !self.fetching
            && used.saturating_mul(100)
                >= self
                    .current_len
                    .saturating_mul(self.config.prefetch_percent)
        {
            self.fetching = true;
            Need::Prefetch { step: self.step }
        } else {
            Need::Nothing
        };
        (start..end, need)
    }

    /// A fetched segment arrives: it becomes current if nothing is left, else next.
    pub(crate) fn supply(&mut self, segment: Range<u64>, now: u64) {
        self.fetching = false;
        if self.current.is_empty() && self.next.is_none() {
            self.install(segment, now);
        } else {
            self.next = Some(segment);
        }
    }

    /// A fetch failed: a later take may ask again.
    pub(crate) fn fetch_failed(&mut self) {
        self.fetching = false;
    }

    /// Makes `segment` current, adapting the step to how long the previous one lasted.
    fn install(&mut self, segment: Range<u64>, now: u64) {
        if self.current_len > 0 {
            let lifetime = now.saturating_sub(self.installed_at);
            let target = self.config.target_period_ms;
            if lifetime < target {
                self.step = self.step.saturating_mul(2);
            } else if lifetime > target.saturating_mul(2) {
                self.step /= 2;
            }
            self.step = self
                .step
                .clamp(self.config.min_step.max(1), self.config.max_step.max(1));
        }
        self.current_len = segment.end - segment.start;
        self.current = segment;
        self.installed_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SegmentConfig {
        SegmentConfig {
            initial_step: 100,
            min_step: 50,
            max_step: 400,
            target_period_ms: 1000,
            prefetch_percent: 10,
        }
    }

    #[test]
    fn first_take_fetches_then_prefetches_at_ten_percent() {
        let mut b = SegmentBuffer::new(config());
        assert_eq!(b.take(5, 0), (0..0, Need::FetchNow { step: 100 }));
        b.supply(1..101, 0);
        assert_eq!(b.take(9, 0), (1..10, Need::Nothing));
        assert_eq!(b.take(1, 0), (10..11, Need::Prefetch { step: 100 }));
        // Only one fetch at a time.
        assert_eq!(b.take(1, 0), (11..12, Need::Nothing));
        b.supply(101..201, 0);
        // The rest of the current, then the buffered next one without waiting.
        assert_eq!(b.take(500, 0), (12..101, Need::Nothing));
        let (ids, _) = b.take(5, 10);
        assert_eq!(ids, 101..106);
    }

    #[test]
    fn step_grows_when_segments_go_fast_and_shrinks_when_slow() {
        let mut b = SegmentBuffer::new(config());
        let mut now = 0;
        let mut next_start = 1;
        let mut steps = Vec::new();
        // Each segment lasts `lifetime` ms.
        for lifetime in [100, 100, 100, 100, 5000, 5000, 5000, 5000, 5000, 5000] {
            loop {
                let (ids, need) = b.take(u64::MAX, now);
                match need {
                    Need::FetchNow { step } | Need::Prefetch { step } => {
                        b.supply(next_start..next_start + step, now);
                        next_start += step;
                        steps.push(step);
                    }
                    Need::Nothing => {}
                }
                if !ids.is_empty() {
                    break;
                }
            }
            now += lifetime;
        }
        assert_eq!(
            steps[..5],
            [100, 100, 200, 400, 400],
            "grows to the max: {steps:?}"
        );
        assert!(
            steps.ends_with(&[200, 100, 50, 50]),
            "shrinks to the min: {steps:?}"
        );
    }
}
