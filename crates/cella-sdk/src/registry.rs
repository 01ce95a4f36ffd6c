//! The service registry: register instances (kept alive by a background heartbeat),
//! deregister, list with label selectors, and follow a service's instances as they change.
//!
//! A service is named `name`, `group/name` or `namespace/group/name` ([`service_name`]);
//! the registry fills in `public` and `DEFAULT_GROUP`.

use std::collections::BTreeMap;
use std::time::Duration;

pub use cella_proto::cella::registry::v1 as pb;
use cella_proto::cella::registry::v1::registry_client::RegistryClient;
use tokio::task::JoinHandle;

use crate::client::Transport;
use crate::{Error, Result};

/// Pause before retrying a heartbeat that failed to reach the registry.
const BEAT_RETRY: Duration = Duration::from_millis(500);

/// Parses `name`, `group/name` or `namespace/group/name`.
pub fn service_name(text: &str) -> pb::ServiceName {
    let mut parts: Vec<&str> = text.splitn(3, '/').collect();
    let name = parts.pop().unwrap_or_default().to_string();
    let group = parts.pop().unwrap_or_default().to_string();
    let namespace = parts.pop().unwrap_or_default().to_string();
    pb::ServiceName {
        namespace,
        group,
        name,
    }
}

/// The Registry service.
#[derive(Debug, Clone)]
pub struct Registry {
    client: RegistryClient<Transport>,
}

/// A registered instance whose heartbeat runs in the background until [`Registration::deregister`]
/// or drop (after a drop the registry lets it expire).
#[derive(Debug)]
pub struct Registration {
    /// The instance as registered (its id is `ip#port#cluster`).
    pub instance: pb::Instance,
    service: pb::ServiceName,
    registry: Registry,
    heartbeat: Option<JoinHandle<()>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}

impl Registration {
    /// Stops the heartbeat and removes the instance.
    pub async fn deregister(mut self) -> Result<()> {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        self.registry
            .deregister(self.service.clone(), &self.instance.id)
            .await
    }
}

impl Registry {
    pub(crate) fn new(transport: Transport) -> Self {
        Registry {
            client: RegistryClient::new(transport),
        }
    }

    /// Creates a namespace (a no-op if it exists).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        self.client
            .clone()
            .create_namespace(pb::CreateNamespaceRequest { name: name.into() })
            .await?;
        Ok(())
    }

    /// Registers an ephemeral instance and keeps it alive with heartbeats (re-registering it
    /// if the registry forgot it) until the returned handle is deregistered or dropped.
    pub async fn register(
        &self,
        service: pb::ServiceName,
        instance: pb::Instance,
    ) -> Result<Registration> {
        let request = pb::RegisterRequest {
            service: Some(service.clone()),
            instance: Some(instance),
            persistent: false,
        };
        let response = self
            .client
            .clone()
            .register(request.clone())
            .await?
            .into_inner();
        let registered = response.instance.ok_or_else(|| Error::Protocol {
            message: "register answered without the instance".into(),
        })?;
        let interval = Duration::from_millis(response.beat_interval_ms.max(1));
        let heartbeat = tokio::spawn(keep_alive(
            self.client.clone(),
            request,
            registered.id.clone(),
            interval,
        ));
        Ok(Registration {
            instance: registered,
            service,
            registry: self.clone(),
            heartbeat: Some(heartbeat),
        })
    }

    /// Registers a persistent instance: stored in the core and probed by the registry, no
    /// heartbeat needed.
    pub async fn register_persistent(
        &self,
        service: pb::ServiceName,
        instance: pb::Instance,
    ) -> Result<pb::Instance> {
        let response = self
            .client
            .clone()
            .register(pb::RegisterRequest {
                service: Some(service),
                instance: Some(instance),
                persistent: true,
            })
            .await?
            .into_inner();
        response.instance.ok_or_else(|| Error::Protocol {
            message: "register answered without the instance".into(),
        })
    }

    /// Removes an instance.
    pub async fn deregister(&self, service: pb::ServiceName, instance_id: &str) -> Result<()> {
        self.client
            .clone()
            .deregister(pb::DeregisterRequest {
                service: Some(service),
                instance_id: instance_id.into(),
            })
            .await?;
        Ok(())
    }

    /// Heartbeats for many instances at once; `false` marks one the registry does not know.
    pub async fn heartbeat(&self, beats: Vec<pb::Beat>) -> Result<Vec<bool>> {
        Ok(self
            .client
            .clone()
            .heartbeat(pb::HeartbeatRequest { beats })
            .await?
            .into_inner()
            .known)
    }

    /// A service's instances, healthy and enabled ones only if asked, matching `selector`
    /// (`key=value,key!=value`).
    pub async fn list(
        &self,
        service: pb::ServiceName,
        healthy_only: bool,
        selector: &str,
    ) -> Result<pb::ServiceView> {
        let response = self
            .client
            .clone()
            .list(pb::ListRequest {
                service: Some(service),
                healthy_only,
                selector: selector.into(),
            })
            .await?
            .into_inner();
        Ok(response.view.unwrap_or_default())
    }

    /// The services of a namespace (every group when `group` is empty).
    pub async fn services(&self, namespace: &str, group: &str) -> Result<Vec<pb::ServiceName>> {
        Ok(self
            .client
            .clone()
            .list_services(pb::ListServicesRequest {
                namespace: namespace.into(),
                group: group.into(),
            })
            .await?
            .into_inner()
            .services)
    }

    /// Sets a service's heartbeat windows and protection threshold.
    pub async fn configure(&self, service: pb::ServiceName, settings: pb::Settings) -> Result<()> {
        self.client
            .clone()
            .configure(pb::ConfigureRequest {
                service: Some(service),
                settings: Some(settings),
            })
            .await?;
        Ok(())
    }

    /// Follows a service: [`ServiceWatch::next`] yields each snapshot or delta and keeps the
    /// current instance set.
    pub async fn subscribe(&self, service: pb::ServiceName) -> Result<ServiceWatch> {
        let stream = self
            .client
            .clone()
            .subscribe(pb::SubscribeRequest {
                service: Some(service),
            })
            .await?
            .into_inner();
        Ok(ServiceWatch {
            stream,
            version: 0,
            instances: BTreeMap::new(),
        })
    }
}

async fn keep_alive(
    mut client: RegistryClient<Transport>,
    register: pb::RegisterRequest,
    id: String,
    interval: Duration,
) {
    let beat = pb::Beat {
        service: register.service.clone(),
        instance_id: id,
    };
    loop {
        tokio::time::sleep(interval).await;
        let answer = client
            .heartbeat(pb::HeartbeatRequest {
                beats: vec![beat.clone()],
            })
            .await;
        match answer {
            Ok(reply) if reply.get_ref().known.first() == Some(&true) => {}
            // Forgotten (expired, or a restarted registry): register again.
            Ok(_) => {
                if let Err(status) = client.register(register.clone()).await {
                    tracing::warn!(%status, "re-registering after the registry forgot the instance");
                }
            }
            Err(status) => {
                tracing::warn!(%status, "heartbeat failed; retrying");
                tokio::time::sleep(BEAT_RETRY).await;
            }
        }
    }
}

/// A service's instances as they change.
#[derive(Debug)]
pub struct ServiceWatch {
    stream: tonic::Streaming<pb::ServiceEvent>,
    version: u64,
    instances: BTreeMap<String, pb::Instance>,
}

impl ServiceWatch {
    /// Waits for the next snapshot or delta, applies it, and returns it; `None` when the
    /// server ended the stream.
    pub async fn next(&mut self) -> Result<Option<pb::service_event::Event>> {
        let Some(event) = self.stream.message().await?.and_then(|e| e.event) else {
            return Ok(None);
        };
        match &event {
            pb::service_event::Event::Snapshot(view) => {
                self.version = view.version;
                self.instances = view
                    .instances
                    .iter()
                    .map(|i| (i.id.clone(), i.clone()))
                    .collect();
            }
            pb::service_event::Event::Delta(delta) => {
                self.version = delta.version;
                for id in &delta.removed {
                    self.instances.remove(id);
                }
                for instance in &delta.upserted {
                    self.instances.insert(instance.id.clone(), instance.clone());
                }
            }
        }
        Ok(Some(event))
    }

    /// The service's version as of the last event.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The instances as of the last event, by id.
    pub fn instances(&self) -> &BTreeMap<String, pb::Instance> {
        &self.instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_take_one_to_three_parts() {
        let n = service_name("orders");
        assert_eq!(
            (n.namespace.as_str(), n.group.as_str(), n.name.as_str()),
            ("", "", "orders")
        );
        let n = service_name("g/orders");
        assert_eq!(
            (n.namespace.as_str(), n.group.as_str(), n.name.as_str()),
            ("", "g", "orders")
        );
        let n = service_name("prod/g/orders");
        assert_eq!(
            (n.namespace.as_str(), n.group.as_str(), n.name.as_str()),
            ("prod", "g", "orders")
        );
    }
}
