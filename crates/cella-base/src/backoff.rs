//! Exponential backoff: the pause before a retry, doubling from a first pause up to a cap.

use std::time::Duration;

/// Pauses that double from `first` with each retry, never longer than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// The pause after `failures` failures in a row (1 or more; 0 reads as 1).
    pub fn pause(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let ms: Vec<u128> = (1..=8).map(|f| backoff.pause(f).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff.pause(0), backoff.first);
        assert_eq!(backoff.pause(u32::MAX), backoff.max);
    }
}
