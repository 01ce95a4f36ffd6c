//! Rate limiting: a token bucket shared by every clone of the stack. Calls over the rate fail
//! at once with `RateLimited` (no queueing, so a deadline is never spent waiting here).
//! Concurrency is limited by tower's `ConcurrencyLimit`, composed beside this in the stack.

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cella_base::Clock;
use futures::future::{ready, Either, Ready};
use tower::{BoxError, Layer, Service};

use super::RpcRequest;
use crate::Error;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    stamp: Duration,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: u32, now: Duration) -> Bucket {
        Bucket {
            rate,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            stamp: now,
        }
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.stamp).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.stamp = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Limits the rate of calls.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Option<Arc<Mutex<Bucket>>>,
    clock: Arc<dyn Clock>,
}

impl RateLimitLayer {
    /// `per_second` calls a second with bursts of `burst`; `None` means no limit.
    pub fn new(per_second: Option<f64>, burst: u32, clock: Arc<dyn Clock>) -> Self {
        let bucket =
            per_second.map(|rate| Arc::new(Mutex::new(Bucket::new(rate, burst, clock.now()))));
        RateLimitLayer { bucket, clock }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    bucket: Option<Arc<Mutex<Bucket>>>,
    clock: Arc<dyn Clock>,
}

impl<S, R> Service<RpcRequest> for RateLimited<S>
where
    S: Service<RpcRequest, Response = R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = Either<Ready<Result<R, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: RpcRequest) -> Self::Future {
        if let Some(bucket) = &self.bucket {
            let now = self.clock.now();
            let allowed = bucket
                .lock()
                .expect("bucket lock is never poisoned")
                .try_take(now);
            if !allowed {
                return Either::Left(ready(Err(Box::new(Error::RateLimited))));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let ms = Duration::from_millis(1);
        let mut b = Bucket::new(10.0, 3, Duration::ZERO);
        assert!((0..3).all(|_| b.try_take(Duration::ZERO)));
        assert!(!b.try_take(Duration::ZERO));
        assert!(!b.try_take(50 * ms));
        assert!(b.try_take(100 * ms));
        assert!(!b.try_take(100 * ms));
        // A long pause refills only up to the burst.
        let later = Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }
}
