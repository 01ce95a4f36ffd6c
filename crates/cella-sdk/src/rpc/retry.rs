//! Retries: only idempotent calls, only after failures that may succeed elsewhere (see
//! `outlier::is_failure`), at most `max_attempts` in all, and only while the shared retry
//! budget (tower's `TpsBudget`: a share of recent successful calls plus a small reserve)
//! allows, so retries cannot multiply an outage's load.
//!
//! A call is idempotent if it carries the [`Idempotent`] extension, if it is a gRPC call
//! whose path the settings list, or if it is a plain HTTP call with an idempotent method
//! (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).

use std::collections::HashSet;
use std::sync::Arc;

use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::Policy;
use tower::BoxError;

use super::outlier::is_failure;
use super::RpcRequest;

/// Marks a call as safe to retry (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent;

/// Whether `request` may be sent twice.
pub(crate) fn is_idempotent(request: &RpcRequest, grpc_paths: &HashSet<String>) -> bool {
    if request.extensions().get::<Idempotent>().is_some() {
        return true;
    }
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        grpc_paths.contains(request.uri().path())
    } else {
        request.method().is_idempotent()
    }
}

/// The retry policy of the stack (tower's `Retry` clones it per call).
#[derive(Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    grpc_paths: Arc<HashSet<String>>,
    attempts_left: u32,
}

impl RetryPolicy {
    /// Up to `max_attempts` tries per call, under `budget`.
    pub(crate) fn new(
        budget: Arc<TpsBudget>,
        grpc_paths: Arc<HashSet<String>>,
        max_attempts: u32,
    ) -> Self {
        RetryPolicy {
            budget,
            grpc_paths,
            attempts_left: max_attempts.saturating_sub(1),
        }
    }
}

impl<B> Policy<RpcRequest, http::Response<B>, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut RpcRequest,
        result: &mut Result<http::Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        if !is_failure(result) {
            self.budget.deposit();
            return None;
        }
        if self.attempts_left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.attempts_left -= 1;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &RpcRequest) -> Option<RpcRequest> {
        if self.attempts_left == 0 || !is_idempotent(request, &self.grpc_paths) {
            return None;
        }
        let mut copy = http::Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        if let Some(context) = request.extensions().get::<super::Context>() {
            copy.extensions_mut().insert(context.clone());
        }
        copy.extensions_mut().insert(Idempotent);
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(method: &str, grpc: bool, path: &str) -> RpcRequest {
        let mut r = http::Request::builder().method(method).uri(path);
        if grpc {
            r = r.header("content-type", "application/grpc");
        }
        r.body(Bytes::new()).expect("valid request")
    }

    #[test]
    fn idempotency_follows_method_paths_and_marks() {
        let paths: HashSet<String> = ["/shop.Shop/Get".to_string()].into();
        assert!(is_idempotent(&request("GET", false, "/x"), &paths));
        assert!(is_idempotent(&request("PUT", false, "/x"), &paths));
        assert!(!is_idempotent(&request("POST", false, "/x"), &paths));
        assert!(is_idempotent(
            &request("POST", true, "/shop.Shop/Get"),
            &paths
        ));
        assert!(!is_idempotent(
            &request("POST", true, "/shop.Shop/Buy"),
            &paths
        ));
        let mut marked = request("POST", true, "/shop.Shop/Buy");
        marked.extensions_mut().insert(Idempotent);
        assert!(is_idempotent(&marked, &paths));
    }

    type Answer = http::Response<()>;

    fn clone_request(policy: &mut RetryPolicy, request: &RpcRequest) -> Option<RpcRequest> {
        Policy::<RpcRequest, Answer, BoxError>::clone_request(policy, request)
    }

    #[test]
    fn retries_stop_at_the_attempt_limit_and_the_budget() {
        let failed = || Err::<Answer, BoxError>("connection refused".into());
        let paths = Arc::new(HashSet::new());
        // A budget with no reserve and no deposits: no retry at all.
        let empty = Arc::new(TpsBudget::new(std::time::Duration::from_secs(10), 0, 0.1));
        let mut policy = RetryPolicy::new(empty, paths.clone(), 3);
        let mut req = request("GET", false, "/x");
        assert!(clone_request(&mut policy, &req).is_some());
        assert!(policy.retry(&mut req, &mut failed()).is_none());
        // A generous budget: two retries, then the attempt limit.
        let rich = Arc::new(TpsBudget::new(std::time::Duration::from_secs(10), 100, 1.0));
        let mut policy = RetryPolicy::new(rich, paths, 3);
        assert!(policy.retry(&mut req, &mut failed()).is_some());
        assert!(policy.retry(&mut req, &mut failed()).is_some());
        assert!(policy.retry(&mut req, &mut failed()).is_none());
        assert!(clone_request(&mut policy, &req).is_none());
    }
}
