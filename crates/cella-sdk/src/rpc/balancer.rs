//! The balancer: a service over a changing endpoint set, fed by a tower [`Discover`].
//!
//! A background task applies the discovery's inserts and removals to a shared table (an
//! endpoint's connection is dropped with its removal); each call reads the table, asks
//! [`pick`] for an endpoint and calls it. Clones share the table; the task ends when the
//! last clone is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};

use cella_base::Clock;
use tower::discover::{Change, Discover};
use tower::{BoxError, Layer, Service, ServiceExt};

use super::context::Context;
use super::outlier::{EndpointLayer, Observed};
use super::pick::{self, BalancePolicy, Candidate, Dice, Locality, Topology};
use super::RpcRequest;
use crate::Error;

/// An endpoint as discovery hands it over: where it is, and its connection.
#[derive(Debug, Clone)]
pub struct Discovered<S> {
    /// Instance weight.
    pub weight: f64,
    /// Instance topology (from its labels).
    pub topology: Topology,
    /// The connection.
    pub connection: S,
}

struct Endpoint<S> {
    id: String,
    key: u64,
    weight: f64,
    distance: u8,
    service: Observed<S>,
}

struct Table<S> {
    service_name: String,
    caller: Topology,
    policy: BalancePolicy,
    locality: Locality,
    endpoint_layer: EndpointLayer,
    endpoints: Mutex<Vec<Endpoint<S>>>,
    turn: AtomicU64,
    clock: Arc<dyn Clock>,
    /// True once discovery's initial set is in the table; calls wait for it.
    primed: tokio::sync::watch::Sender<bool>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<S> Drop for Table<S> {
    fn drop(&mut self) {
        if let Ok(mut driver) = self.driver.lock() {
            if let Some(task) = driver.take() {
                task.abort();
            }
        }
    }
}

/// Balancer settings.
#[derive(Debug, Clone)]
pub(crate) struct BalancerSettings {
    pub service_name: String,
    pub caller: Topology,
    pub policy: BalancePolicy,
    pub locality: Locality,
}

/// Routes each call to one endpoint of the discovered set.
pub struct Balancer<S> {
    table: Arc<Table<S>>,
}

impl<S> Clone for Balancer<S> {
    fn clone(&self) -> Self {
        Balancer {
            table: self.table.clone(),
        }
    }
}

impl<S> Balancer<S>
where
    S: Send + 'static,
{
    /// A balancer over the endpoints `discover` reports, each wrapped by `endpoint_layer`.
    pub(crate) fn new<D>(
        discover: D,
        endpoint_layer: EndpointLayer,
        settings: BalancerSettings,
        clock: Arc<dyn Clock>,
    ) -> Self
    where
        D: Discover<Key = String, Service = Discovered<S>, Error = Error> + Send + 'static,
    {
        let table = Arc::new(Table {
            service_name: settings.service_name,
            caller: settings.caller,
            policy: settings.policy,
            locality: settings.locality,
            endpoint_layer,
            endpoints: Mutex::new(Vec::new()),
            turn: AtomicU64::new(0),
            clock,
            primed: tokio::sync::watch::Sender::new(false),
            driver: Mutex::new(None),
        });
        let task = tokio::spawn(follow(Box::pin(discover), Arc::downgrade(&table)));
        *table.driver.lock().expect("fresh lock") = Some(task);
        Balancer { table }
    }

    /// The ids of the endpoints currently in the set.
    pub fn endpoint_ids(&self) -> Vec<String> {
        let endpoints = self
            .table
            .endpoints
            .lock()
            .expect("table lock is never poisoned");
        endpoints.iter().map(|e| e.id.clone()).collect()
    }
}

/// Applies discovery changes to the table until discovery ends or the table is gone. The
/// table counts as primed once discovery has nothing more ready (the initial set is in).
async fn follow<D, S>(mut discover: Pin<Box<D>>, table: Weak<Table<S>>)
where
    D: Discover<Key = String, Service = Discovered<S>, Error = Error>,
{
    std::future::poll_fn(|cx| loop {
        let Some(table) = table.upgrade() else {
            return Poll::Ready(());
        };
        match discover.as_mut().poll_discover(cx) {
            Poll::Pending => {
                table.primed.send_replace(true);
                return Poll::Pending;
            }
            Poll::Ready(None) => {
                table.primed.send_replace(true);
                return Poll::Ready(());
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(service = %table.service_name, %error, "discovery failed");
                table.primed.send_replace(true);
                return Poll::Ready(());
            }
            Poll::Ready(Some(Ok(change))) => table.apply(change),
        }
    })
    .await
}

impl<S> Table<S> {
    fn apply(&self, change: Change<String, Discovered<S>>) {
        let mut endpoints = self.endpoints.lock().expect("table lock is never poisoned");
        match change {
            Change::Insert(id, found) => {
                endpoints.retain(|e| e.id != id);
                endpoints.push(Endpoint {
                    key: pick::fnv1a(id.as_bytes()),
                    weight: found.weight,
                    distance: self.caller.distance(&found.topology),
                    service: self.endpoint_layer.layer(found.connection),
                    id,
                });
            }
            Change::Remove(id) => endpoints.retain(|e| e.id != id),
        }
    }
}

impl<S: Clone> Table<S> {
    /// The endpoint a call with routing `key` goes to.
    fn choose(&self, key: Option<&str>) -> Option<Observed<S>> {
        let endpoints = self.endpoints.lock().expect("table lock is never poisoned");
        let now = self.clock.now();
        let decay = self.endpoint_layer.decay();
        let candidates: Vec<Candidate> = endpoints
            .iter()
            .map(|e| {
                let (in_flight, latency_ns, ejected) = e.service.health().snapshot(now, decay);
                Candidate {
                    key: e.key,
                    weight: e.weight,
                    in_flight,
                    latency_ns,
                    distance: e.distance,
                    available: !ejected,
                }
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let dice = Dice {
            a: rand::random(),
            b: rand::random(),
        };
        pick::pick(&candidates, self.policy, self.locality, key, turn, dice)
            .map(|i| endpoints[i].service.clone())
    }
}

impl<S, B> Service<RpcRequest> for Balancer<S>
where
    S: Service<RpcRequest, Response = http::Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<B>, BoxError>> + Send>>;

    /// Always ready: an empty set fails the call instead, so callers see why.
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RpcRequest) -> Self::Future {
        let table = self.table.clone();
        Box::pin(async move {
            if !*table.primed.borrow() {
                let mut primed = table.primed.subscribe();
                // The sender lives in `table`, which this future holds: it cannot close.
                let _ = primed.wait_for(|p| *p).await;
            }
            let key = request
                .extensions()
                .get::<Context>()
                .and_then(|c| c.route.routing_key.clone());
            let Some(endpoint) = table.choose(key.as_deref()) else {
                return Err(Box::new(Error::NoEndpoints {
                    service: table.service_name.clone(),
                }) as BoxError);
            };
            endpoint.oneshot(request).await
        })
    }
}
