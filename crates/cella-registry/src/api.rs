//! The registry's wire operations: each takes a `cella.registry.v1` request and returns its
//! response. gRPC and REST both call these, so they answer alike.

use cella_proto::cella::registry::v1 as rpb;
use futures::StreamExt;

use crate::error::{RegistryError, RegistryResult};
use crate::model::{Instance, InstanceSpec, LabelSelector, ServiceKey, ServiceSettings};
use crate::registry::Registry;
use crate::table::{ServiceChange, ServiceView};

fn service_key(name: Option<rpb::ServiceName>) -> RegistryResult<ServiceKey> {
    let name = name.ok_or(RegistryError::InvalidField {
        field: "service",
        rule: "must be given".into(),
    })?;
    ServiceKey::new(&name.namespace, &name.group, &name.name)
}

/// The wire form of a service key.
pub fn service_name(key: &ServiceKey) -> rpb::ServiceName {
    rpb::ServiceName {
        namespace: key.namespace.clone(),
        group: key.group.clone(),
        name: key.name.clone(),
    }
}

/// The wire form of an instance.
pub fn instance_message(i: &Instance) -> rpb::Instance {
    rpb::Instance {
        id: i.id.clone(),
        ip: i.ip.clone(),
        port: u32::from(i.port),
        weight: Some(i.weight),
        enabled: Some(i.enabled),
        healthy: i.healthy,
        ephemeral: i.ephemeral,
        cluster: i.cluster.clone(),
        labels: i.labels.clone().into_iter().collect(),
        metadata: i.metadata.clone().into_iter().collect(),
    }
}

/// An instance from a peer's message, as the peer holds it (health included); `None`
/// when it breaks the rules (a peer of another version).
pub fn instance_from_message(m: rpb::Instance) -> Option<Instance> {
    let healthy = m.healthy;
    let spec = InstanceSpec {
        ip: m.ip,
        port: m.port,
        weight: m.weight.unwrap_or(1.0),
        enabled: m.enabled.unwrap_or(true),
        ephemeral: m.ephemeral,
        cluster: m.cluster,
        labels: m.labels.into_iter().collect(),
        metadata: m.metadata.into_iter().collect(),
    };
    let mut instance = spec.validate().ok()?;
    instance.healthy = healthy;
    Some(instance)
}

/// The wire form of a service view.
pub fn view_message(view: &ServiceView) -> rpb::ServiceView {
    rpb::ServiceView {
        service: Some(service_name(&view.service)),
        version: view.version,
        instances: view.instances.iter().map(instance_message).collect(),
        protecting: view.protecting,
    }
}

/// The wire form of a change.
pub fn delta_message(change: &ServiceChange) -> rpb::Delta {
    rpb::Delta {
        version: change.version,
        upserted: change.upserted.iter().map(instance_message).collect(),
        removed: change.removed.clone(),
    }
}

/// Creates a namespace.
pub async fn create_namespace(
    registry: &Registry,
    req: rpb::CreateNamespaceRequest,
) -> RegistryResult<rpb::CreateNamespaceResponse> {
    registry.create_namespace(&req.name).await?;
    Ok(rpb::CreateNamespaceResponse {})
}

/// Registers an instance.
pub async fn register(
    registry: &Registry,
    req: rpb::RegisterRequest,
) -> RegistryResult<rpb::RegisterResponse> {
    let service = service_key(req.service)?;
    let given = req.instance.ok_or(RegistryError::InvalidField {
        field: "instance",
        rule: "must be given".into(),
    })?;
    let defaults = InstanceSpec::default();
    let spec = InstanceSpec {
        ip: given.ip,
        port: given.port,
        weight: given.weight.unwrap_or(defaults.weight),
        enabled: given.enabled.unwrap_or(defaults.enabled),
        ephemeral: !req.persistent,
        cluster: given.cluster,
        labels: given.labels.into_iter().collect(),
        metadata: given.metadata.into_iter().collect(),
    };
    let instance = registry.register(&service, spec).await?;
    Ok(rpb::RegisterResponse {
        instance: Some(instance_message(&instance)),
        beat_interval_ms: registry.settings(&service).beat_interval_ms,
    })
}

/// Deregisters an instance.
pub async fn deregister(
    registry: &Registry,
    req: rpb::DeregisterRequest,
) -> RegistryResult<rpb::DeregisterResponse> {
    let service = service_key(req.service)?;
    registry.deregister(&service, &req.instance_id).await?;
    Ok(rpb::DeregisterResponse {})
}

/// Most beats in one heartbeat request.
pub const MAX_BEATS_PER_REQUEST: usize = 10_000;

/// Records a batch of heartbeats.
pub fn heartbeat(
    registry: &Registry,
    req: rpb::HeartbeatRequest,
) -> RegistryResult<rpb::HeartbeatResponse> {
    if req.beats.len() > MAX_BEATS_PER_REQUEST {
        return Err(RegistryError::InvalidField {
            field: "beats",
            rule: format!("may hold at most {MAX_BEATS_PER_REQUEST} beats"),
        });
    }
    let beats = req
        .beats
        .into_iter()
        .map(|b| Ok((service_key(b.service)?, b.instance_id)))
        .collect::<RegistryResult<Vec<_>>>()?;
    let beat_interval_ms = beats
        .first()
        .map_or(ServiceSettings::default().beat_interval_ms, |(s, _)| {
            registry.settings(s).beat_interval_ms
        });
    let known = registry.beat(&beats).iter().map(Result::is_ok).collect();
    Ok(rpb::HeartbeatResponse {
        known,
        beat_interval_ms,
    })
}

/// Lists a service's instances.
pub fn list(registry: &Registry, req: rpb::ListRequest) -> RegistryResult<rpb::ListResponse> {
    let service = service_key(req.service)?;
    let selector = LabelSelector::parse(&req.selector)?;
    let view = registry.list(&service, req.healthy_only, &selector)?;
    Ok(rpb::ListResponse {
        view: Some(view_message(&view)),
    })
}

/// Lists the services of a namespace.
pub fn list_services(
    registry: &Registry,
    req: rpb::ListServicesRequest,
) -> RegistryResult<rpb::ListServicesResponse> {
    let namespace = crate::model::or_default(&req.namespace, crate::model::DEFAULT_NAMESPACE);
    let group = (!req.group.is_empty()).then_some(req.group.as_str());
    let services = registry.services(namespace, group)?;
    Ok(rpb::ListServicesResponse {
        services: services.iter().map(service_name).collect(),
    })
}

/// Sets a service's settings.
pub async fn configure(
    registry: &Registry,
    req: rpb::ConfigureRequest,
) -> RegistryResult<rpb::ConfigureResponse> {
    let service = service_key(req.service)?;
    let s = req.settings.ok_or(RegistryError::InvalidField {
        field: "settings",
        rule: "must be given".into(),
    })?;
    let settings = ServiceSettings {
        beat_interval_ms: s.beat_interval_ms,
        unhealthy_after_ms: s.unhealthy_after_ms,
        remove_after_ms: s.remove_after_ms,
        protect_threshold: s.protect_threshold,
    };
    registry.configure(&service, settings).await?;
    Ok(rpb::ConfigureResponse {})
}

/// Starts a subscription.
pub fn subscribe(
    registry: &Registry,
    req: rpb::SubscribeRequest,
) -> RegistryResult<crate::registry::Subscription> {
    registry.subscribe(&service_key(req.service)?)
}

/// A subscription as wire events: the snapshot, then deltas. A subscriber that falls too far
/// behind gets a fresh snapshot instead of the deltas it missed.
pub fn events(
    registry: Registry,
    subscription: crate::registry::Subscription,
) -> impl futures::Stream<Item = rpb::ServiceEvent> + Send {
    use crate::registry::Subscription;
    use tokio::sync::broadcast::error::RecvError;

    let first = rpb::ServiceEvent {
        event: Some(rpb::service_event::Event::Snapshot(view_message(
            &subscription.snapshot,
        ))),
    };
    let rest = futures::stream::unfold(
        (registry, subscription),
        |(registry, mut sub): (Registry, Subscription)| async move {
            match sub.next().await {
                Ok(change) => {
                    let event = rpb::service_event::Event::Delta(delta_message(&change));
                    Some((rpb::ServiceEvent { event: Some(event) }, (registry, sub)))
                }
                Err(RecvError::Lagged(_)) => {
                    let fresh = registry.subscribe(sub.service()).ok()?;
                    let event = rpb::service_event::Event::Snapshot(view_message(&fresh.snapshot));
                    Some((rpb::ServiceEvent { event: Some(event) }, (registry, fresh)))
                }
                Err(RecvError::Closed) => None,
            }
        },
    );
    futures::stream::once(async move { first }).chain(rest)
}
