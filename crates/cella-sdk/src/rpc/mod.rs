//! The client RPC stack: calls to a service's instances, found through the registry.
//!
//! One function, [`stack`], builds the whole request path from tower layers, outermost
//! first: context → deadline → limits → retry budget → balancer (with per-endpoint outlier
//! ejection and load tracking) → connection. The stack works on buffered HTTP requests
//! ([`RpcRequest`]) so gRPC (through [`GrpcChannel`], usable by any tonic client) and plain
//! HTTP (the sidecar) share it. Unary calls only: streaming bodies are buffered whole.
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! use cella_sdk::rpc::{self, RpcSettings};
//! let client = cella_sdk::Client::connect("127.0.0.1:7070").await?;
//! let channel = rpc::grpc_channel(&client.registry(), "orders", RpcSettings::default()).await?;
//! // let mut orders = OrdersClient::new(channel);
//! # Ok(()) }
//! ```

mod balancer;
mod channel;
mod connect;
mod context;
mod deadline;
mod discover;
mod limit;
mod outlier;
mod pick;
mod retry;
mod server;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_base::{Clock, SystemClock};
use tower::discover::Discover;
use tower::limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
use tower::retry::budget::TpsBudget;
use tower::retry::{Retry, RetryLayer};
use tower::util::Either;
use tower::ServiceBuilder;

pub use balancer::{Balancer, Discovered};
pub use channel::GrpcChannel;
pub use connect::{aim, connect_http2, Connect, GrpcConnect, HttpConnect, HttpConnection};
pub use context::{headers, Context, ContextLayer, ContextService, RouteHints};
pub use deadline::{DeadlineLayer, DeadlineService};
pub use discover::{fixed, from_registry, EndpointChange};
pub use limit::{RateLimitLayer, RateLimited};
pub use outlier::{EjectionPolicy, Observed};
pub use pick::{BalancePolicy, Locality, Topology};
pub use retry::{Idempotent, RetryPolicy};
pub use server::{serve_registered, DrainSignal, ServeOptions};

use crate::registry::{service_name, Registry};
use crate::{Error, Result};

/// A call as the stack carries it: an HTTP request with its body buffered (so it can be
/// retried). Attach a [`Context`] or [`Idempotent`] as extensions.
pub type RpcRequest = http::Request<Bytes>;

/// The client stack over connections of type `S`, outermost layer first.
pub type RpcStack<S> =
    ContextService<DeadlineService<MaybeLimited<RateLimited<Retry<RetryPolicy, Balancer<S>>>>>>;

/// A service under a concurrency limit, or (no limit set) the service itself, which spares
/// each call a semaphore permit.
pub type MaybeLimited<S> = Either<ConcurrencyLimit<S>, S>;

/// The retry budget: retries may add `percent` of the successful calls of the last `ttl`,
/// plus `min_per_second` regardless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Window over which calls are counted (1 to 60 s).
    pub ttl: Duration,
    /// Retries allowed each second even without successes.
    pub min_per_second: u32,
    /// Retries allowed per successful call (0.0 to 1000.0; 0.2 = 20 %).
    pub ratio: f32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ttl: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

/// Everything the stack can be told.
#[derive(Debug, Clone)]
pub struct RpcSettings {
    /// How a call picks among nearby endpoints.
    pub policy: BalancePolicy,
    /// Whether nearer endpoints are preferred.
    pub locality: Locality,
    /// The caller's place (compared with the instances' `region`/`zone`/`cell` labels).
    pub caller: Topology,
    /// Per-call timeout when the context sets no sooner deadline; enforced by this caller
    /// and not sent (only a context's deadline travels on).
    pub timeout: Option<Duration>,
    /// Tries per idempotent call, the first included (1 = no retries).
    pub max_attempts: u32,
    /// The shared retry budget.
    pub retry_budget: RetryBudget,
    /// gRPC paths (`/pkg.Service/Method`) that are idempotent.
    pub idempotent_paths: HashSet<String>,
    /// When endpoints are ejected.
    pub ejection: EjectionPolicy,
    /// Calls in flight at once through this stack (queued beyond).
    pub max_concurrency: Option<usize>,
    /// Calls per second (failing fast beyond), and the burst allowed.
    pub rate_limit: Option<(f64, u32)>,
    /// Latency assumed of an endpoint before its first answer.
    pub initial_latency: Duration,
    /// Time constant of the latency estimates' decay.
    pub latency_decay: Duration,
}

impl Default for RpcSettings {
    fn default() -> Self {
        RpcSettings {
            policy: BalancePolicy::default(),
            locality: Locality::default(),
            caller: Topology::default(),
            timeout: Some(Duration::from_secs(10)),
            max_attempts: 3,
            retry_budget: RetryBudget::default(),
            idempotent_paths: HashSet::new(),
            ejection: EjectionPolicy::default(),
            max_concurrency: None,
            rate_limit: None,
            initial_latency: Duration::from_millis(1),
            latency_decay: Duration::from_secs(5),
        }
    }
}

impl RpcSettings {
    /// Checks the settings; the error names the field and the rule.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, rule: &'static str| Err(Error::InvalidSetting { field, rule });
        let budget = &self.retry_budget;
        if budget.ttl < Duration::from_secs(1) || budget.ttl > Duration::from_secs(60) {
            return bad("retry_budget.ttl", "must be 1 to 60 seconds");
        }
        if !(0.0..=1000.0).contains(&budget.ratio) {
            return bad("retry_budget.ratio", "must be 0.0 to 1000.0");
        }
        if budget.min_per_second >= i32::MAX as u32 {
            return bad("retry_budget.min_per_second", "must be below 2^31");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.max_concurrency == Some(0) {
            return bad("max_concurrency", "must be at least 1");
        }
        if let Some((rate, _)) = self.rate_limit {
            if !(rate > 0.0 && rate.is_finite()) {
                return bad(
                    "rate_limit",
                    "must be a positive number of calls per second",
                );
            }
        }
        if self.latency_decay.is_zero() {
            return bad("latency_decay", "must be positive");
        }
        Ok(())
    }
}

/// Builds the client stack for `service` over the endpoints `discover` reports. The whole
/// request path, outermost first:
pub fn stack<D, S>(
    service: &str,
    discover: D,
    settings: &RpcSettings,
    clock: Arc<dyn Clock>,
) -> Result<RpcStack<S>>
where
    D: Discover<Key = String, Service = Discovered<S>, Error = Error> + Send + 'static,
    S: Send + 'static,
{
    settings.validate()?;
    let budget = &settings.retry_budget;
    let budget = Arc::new(TpsBudget::new(
        budget.ttl,
        budget.min_per_second,
        budget.ratio,
    ));
    let retry = RetryPolicy::new(
        budget,
        Arc::new(settings.idempotent_paths.clone()),
        settings.max_attempts,
    );
    let (rate, burst) = settings.rate_limit.map_or((None, 1), |(r, b)| (Some(r), b));
    let endpoint = outlier::EndpointLayer::new(
        outlier::EndpointSettings {
            ejection: settings.ejection,
            initial_latency: settings.initial_latency,
            decay: settings.latency_decay,
        },
        clock.clone(),
    );
    let balancer_settings = balancer::BalancerSettings {
        service_name: service.to_owned(),
        caller: settings.caller.clone(),
        policy: settings.policy,
        locality: settings.locality,
    };
    let stack = ServiceBuilder::new()
        // Request id, traceparent, xid, route hints, lane, fault tag → headers.
        .layer(ContextLayer)
        // The context's deadline → `grpc-timeout`; the sooner of it and the per-call timeout
        // is enforced here.
        .layer(DeadlineLayer::new(settings.timeout))
        // Calls in flight, then calls per second.
        .option_layer(settings.max_concurrency.map(ConcurrencyLimitLayer::new))
        .layer(RateLimitLayer::new(rate, burst, clock.clone()))
        // Idempotent calls only, under the shared budget.
        .layer(RetryLayer::new(retry))
        // Locality, then p2c / round robin / weighted / hash over the endpoints that are
        // not ejected; each endpoint is `endpoint` (outlier ejection + latency) around its
        // connection.
        .service(Balancer::new(discover, endpoint, balancer_settings, clock));
    Ok(stack)
}

/// A gRPC channel to `service` (`name`, `group/name` or `namespace/group/name`) through the
/// stack, following its instances in the registry. Use it with any tonic client.
pub async fn grpc_channel(
    registry: &Registry,
    service: &str,
    settings: RpcSettings,
) -> Result<GrpcChannel> {
    let discover = from_registry(registry, service_name(service), GrpcConnect).await?;
    let stack = stack(service, discover, &settings, Arc::new(SystemClock::new()))?;
    Ok(GrpcChannel::new(stack))
}

/// An HTTP/1.1 stack to `service`'s instances, following them in the registry.
pub async fn http_stack(
    registry: &Registry,
    service: &str,
    settings: RpcSettings,
) -> Result<RpcStack<HttpConnection>> {
    let discover = from_registry(registry, service_name(service), HttpConnect).await?;
    stack(service, discover, &settings, Arc::new(SystemClock::new()))
}
