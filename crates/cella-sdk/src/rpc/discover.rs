//! Discovery: tower [`Discover`](tower::discover::Discover) streams of endpoints.
//!
//! [`from_registry`] turns a registry subscription (a snapshot, then deltas) into inserts and
//! removals, subscribing again with backoff when the subscription breaks (the last set stays
//! in use meanwhile): an instance is in the set while it is healthy and enabled; one that turns
//! unhealthy or disabled, or is deregistered, is removed (and its connection dropped); a
//! changed instance is inserted again with a new connection. [`fixed`] is a set that never
//! changes, for callers that know their endpoints.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cella_base::Backoff;
use futures::{Stream, StreamExt as _};
use tower::discover::Change;

use super::balancer::Discovered;
use super::connect::Connect;
use super::pick::Topology;
use crate::registry::{pb, Registry, ServiceWatch};
use crate::{Error, Result};

/// One discovery change.
pub type EndpointChange<S> = Change<String, Discovered<S>>;

/// Whether an instance should take calls.
fn is_serving(instance: &pb::Instance) -> bool {
    instance.healthy && instance.enabled.unwrap_or(true)
}

fn discovered<C: Connect>(
    connect: &C,
    instance: &pb::Instance,
) -> Result<Discovered<C::Connection>> {
    let labels: BTreeMap<String, String> = instance
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Discovered {
        weight: instance.weight.unwrap_or(1.0),
        topology: Topology::from_labels(&labels),
        connection: connect.connect(instance)?,
    })
}

/// The changes that take the set `current` to the serving instances of `next`.
fn diff<C: Connect>(
    connect: &C,
    current: &mut BTreeMap<String, pb::Instance>,
    next: &BTreeMap<String, pb::Instance>,
) -> Vec<EndpointChange<C::Connection>> {
    let mut changes = Vec::new();
    let gone: Vec<String> = current
        .keys()
        .filter(|id| !next.get(*id).is_some_and(is_serving))
        .cloned()
        .collect();
    for id in gone {
        current.remove(&id);
        changes.push(Change::Remove(id));
    }
    for (id, instance) in next.iter().filter(|(_, i)| is_serving(i)) {
        if current.get(id) == Some(instance) {
            continue;
        }
        match discovered(connect, instance) {
            Ok(found) => {
                current.insert(id.clone(), instance.clone());
                changes.push(Change::Insert(id.clone(), found));
            }
            Err(error) => {
                tracing::warn!(%id, %error, "skipping an instance that cannot be reached")
            }
        }
    }
    changes
}

/// Pauses before subscribing again after a subscription failed or ended.
const RESUBSCRIBE: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// The pause before attempt number `failures + 1` to subscribe again: doubling from 100 ms,
/// at most 5 s.
fn resubscribe_delay(failures: u32) -> Duration {
    RESUBSCRIBE.pause(failures.saturating_add(1))
}

/// Subscribes to `service` and waits for the subscription's snapshot.
async fn subscribe_with_snapshot(
    registry: &Registry,
    service: &pb::ServiceName,
) -> Result<ServiceWatch> {
    let mut watch = registry.subscribe(service.clone()).await?;
    match watch.next().await? {
        Some(_) => Ok(watch),
        None => Err(Error::Protocol {
            message: "the subscription ended before its snapshot".into(),
        }),
    }
}

/// Follows `service` in the registry as a stream of endpoint changes. Returns once the first
/// subscription's snapshot is in, so the stream's first items are the whole initial set.
///
/// When the subscription fails or ends (the registry node restarts, the connection drops),
/// the stream yields nothing while it subscribes again with backoff ([`resubscribe_delay`]),
/// so the balancer keeps serving the last known endpoints; the new subscription's snapshot
/// then replaces the set (instances that left meanwhile are removed, new ones inserted).
/// The stream ends only when dropped.
pub async fn from_registry<C: Connect>(
    registry: &Registry,
    service: pb::ServiceName,
    connect: C,
) -> Result<impl Stream<Item = Result<EndpointChange<C::Connection>, Error>> + Send + 'static> {
    let watch = subscribe_with_snapshot(registry, &service).await?;
    let mut current = BTreeMap::new();
    let pending = diff(&connect, &mut current, watch.instances()).into();
    struct State<C: Connect> {
        registry: Registry,
        service: pb::ServiceName,
        watch: Option<ServiceWatch>,
        failures: u32,
        connect: C,
        current: BTreeMap<String, pb::Instance>,
        pending: VecDeque<EndpointChange<C::Connection>>,
    }
    let state = State {
        registry: registry.clone(),
        service,
        watch: Some(watch),
        failures: 0,
        connect,
        current,
        pending,
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(change) = state.pending.pop_front() {
                return Some((Ok(change), state));
            }
            let Some(watch) = state.watch.as_mut() else {
                tokio::time::sleep(resubscribe_delay(state.failures)).await;
                match subscribe_with_snapshot(&state.registry, &state.service).await {
                    Ok(watch) => {
                        tracing::info!(service = %state.service.name, "subscribed again");
                        let changes = diff(&state.connect, &mut state.current, watch.instances());
                        state.pending.extend(changes);
                        state.watch = Some(watch);
                        state.failures = 0;
                    }
                    Err(error) => {
                        tracing::debug!(service = %state.service.name, %error, "subscribing again failed");
                        state.failures = state.failures.saturating_add(1);
                    }
                }
                continue;
            };
            match watch.next().await {
                Ok(Some(_)) => {
                    let changes = diff(&state.connect, &mut state.current, watch.instances());
                    state.pending.extend(changes);
                }
                // Keep the last set and subscribe again.
                Ok(None) => {
                    tracing::warn!(service = %state.service.name, "subscription ended; subscribing again");
                    state.watch = None;
                }
                Err(error) => {
                    tracing::warn!(service = %state.service.name, %error, "subscription failed; subscribing again");
                    state.watch = None;
                }
            }
        }
    }))
}

/// A set of endpoints that never changes.
pub fn fixed<C: Connect>(
    instances: &[pb::Instance],
    connect: &C,
) -> Result<impl Stream<Item = Result<EndpointChange<C::Connection>, Error>> + Send + 'static> {
    let mut current = BTreeMap::new();
    let next: BTreeMap<String, pb::Instance> = instances
        .iter()
        .map(|i| {
            let mut i = i.clone();
            if i.id.is_empty() {
                i.id = format!("{}#{}", i.ip, i.port);
            }
            (i.id.clone(), i)
        })
        .collect();
    let changes = diff(connect, &mut current, &next);
    Ok(futures::stream::iter(changes.into_iter().map(Ok)).chain(futures::stream::pending()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Named;
    impl Connect for Named {
        type Connection = String;
        fn connect(&self, instance: &pb::Instance) -> Result<String> {
            Ok(format!("{}:{}", instance.ip, instance.port))
        }
    }

    fn instance(id: &str, port: u32, healthy: bool) -> (String, pb::Instance) {
        (
            id.to_string(),
            pb::Instance {
                id: id.into(),
                ip: "127.0.0.1".into(),
                port,
                healthy,
                ..Default::default()
            },
        )
    }

    fn summary(changes: &[EndpointChange<String>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(id, d) => format!("+{id}@{}", d.connection),
                Change::Remove(id) => format!("-{id}"),
            })
            .collect()
    }

    #[test]
    fn resubscribing_backs_off_doubling_to_five_seconds() {
        let delays: Vec<u128> = (0..8).map(|f| resubscribe_delay(f).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(resubscribe_delay(u32::MAX), RESUBSCRIBE.max);
    }

    #[test]
    fn only_serving_instances_are_in_the_set() {
        let mut current = BTreeMap::new();
        let mut next: BTreeMap<_, _> = [instance("a", 1, true), instance("b", 2, false)].into();
        let mut disabled = instance("c", 3, true);
        disabled.1.enabled = Some(false);
        next.insert(disabled.0, disabled.1);
        assert_eq!(
            summary(&diff(&Named, &mut current, &next)),
            vec!["+a@127.0.0.1:1"]
        );
        // b recovers, a goes unhealthy.
        let next: BTreeMap<_, _> = [instance("a", 1, false), instance("b", 2, true)].into();
        assert_eq!(
            summary(&diff(&Named, &mut current, &next)),
            vec!["-a", "+b@127.0.0.1:2"]
        );
        // Nothing changed: nothing to do. b moves: reconnect.
        assert!(diff(&Named, &mut current, &next).is_empty());
        let next: BTreeMap<_, _> = [instance("b", 9, true)].into();
        assert_eq!(
            summary(&diff(&Named, &mut current, &next)),
            vec!["+b@127.0.0.1:9"]
        );
        // Deregistered.
        assert_eq!(
            summary(&diff(&Named, &mut current, &BTreeMap::new())),
            vec!["-b"]
        );
    }
}
