//! The registry service: the instance table behind a lock, driven by a clock, with push to
//! subscribers, the expiry sweeper, and what is kept in the consistent core.
//!
//! The core holds the registry's durable metadata under `/cella/registry/`: namespaces,
//! per-service settings, and persistent instances. Every node loads it at start and follows
//! it with a core watch, so a write made on any node reaches every node's table. Ephemeral
//! instances never touch the core: registering, beating and listing them stay available
//! while the core has no quorum; peers exchange them directly (see `peers`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cella_base::Clock;
use cella_core::Core;
use cella_proto::etcdserverpb as pb;
use cella_proto::mvccpb;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{RegistryError, RegistryResult};
use crate::metrics;
use crate::model::{
    check_name, Instance, InstanceSpec, LabelSelector, ServiceKey, ServiceSettings,
    DEFAULT_NAMESPACE,
};
use crate::peers::{self, Peers};
use crate::probe;
use crate::table::{ServiceChange, ServiceView, Table};
use cella_proto::cella::registry::v1 as rpb;

const PREFIX: &str = "/cella/registry/";
const NAMESPACES: &str = "/cella/registry/namespaces/";
const SETTINGS: &str = "/cella/registry/settings/";
const PERSISTENT: &str = "/cella/registry/persistent/";
/// Changes buffered per subscriber before a slow one is told it lagged (and resubscribes).
const CHANGE_BUFFER: usize = 4096;
/// Most instances one slice of a sweep changes while it holds the table.
const SWEEP_SLICE: usize = 10_000;

/// Registry settings for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// How often silent instances are looked for, in milliseconds.
    pub sweep_interval_ms: u64,
    /// How often persistent instances are probed, in milliseconds.
    pub probe_interval_ms: u64,
    /// How long a probe of a persistent instance may take, in milliseconds.
    pub probe_timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            sweep_interval_ms: 500,
            probe_interval_ms: 5_000,
            probe_timeout_ms: 1_000,
        }
    }
}

/// The registry of one node. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    clock: Arc<dyn Clock>,
    core: Core,
    config: RegistryConfig,
    namespaces: RwLock<BTreeSet<String>>,
    changes: broadcast::Sender<Arc<ServiceChange>>,
    peers: Peers,
}

/// A subscription: the service as it is now, then every change after it, in version order.
pub struct Subscription {
    /// The service's instances when the subscription started.
    pub snapshot: ServiceView,
    service: ServiceKey,
    changes: broadcast::Receiver<Arc<ServiceChange>>,
}

impl Subscription {
    /// The service subscribed to.
    pub fn service(&self) -> &ServiceKey {
        &self.service
    }

    /// The next change to the service; `Err` when this subscriber fell too far behind (it
    /// should subscribe again for a fresh snapshot) or the registry stopped.
    pub async fn next(&mut self) -> Result<Arc<ServiceChange>, broadcast::error::RecvError> {
        loop {
            let change = self.changes.recv().await?;
            if change.service == self.service && change.version > self.snapshot.version {
                return Ok(change);
            }
        }
    }
}

/// A core key for a service's entry under `prefix`.
fn service_key_path(prefix: &str, service: &ServiceKey) -> String {
    format!(
        "{prefix}{}/{}/{}",
        service.namespace, service.group, service.name
    )
}

impl Registry {
    /// Loads the registry's metadata from the core, then follows it and sweeps in the
    /// background until the core stops.
    pub async fn start(
        core: Core,
        clock: Arc<dyn Clock>,
        config: RegistryConfig,
    ) -> RegistryResult<Registry> {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let registry = Registry {
            inner: Arc::new(Inner {
                peers: Peers::new(core.node_id()),
                table: Mutex::new(Table::default()),
                clock,
                core,
                config,
                namespaces: RwLock::new(BTreeSet::from([DEFAULT_NAMESPACE.to_string()])),
                changes,
            }),
        };
        let loaded = registry
            .inner
            .core
            .range(pb::RangeRequest {
                key: PREFIX.into(),
                range_end: prefix_end(PREFIX).into(),
                serializable: true,
                ..Default::default()
            })
            .await?;
        for kv in &loaded.kvs {
            registry.apply_stored(kv, true);
        }
        let revision = loaded.header.map_or(0, |h| h.revision);
        let watch = registry.inner.core.watch(&pb::WatchCreateRequest {
            key: PREFIX.into(),
            range_end: prefix_end(PREFIX).into(),
            start_revision: revision + 1,
            ..Default::default()
        })?;
        tokio::spawn(registry.clone().follow_core(watch));
        tokio::spawn(registry.clone().sweep_forever());
        tokio::spawn(registry.clone().probe_forever());
        tokio::spawn(registry.clone().sync_forever());
        Ok(registry)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .table
            .lock()
            .expect("registry table poisoned only by a panic")
    }

    fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Tells subscribers about changes.
    fn publish(&self, changes: impl IntoIterator<Item = ServiceChange>) {
        let mut n = 0;
        for change in changes {
            n += 1;
            // No subscribers is fine: the change is in the table for the next list.
            let _ = self.inner.changes.send(Arc::new(change));
        }
        metrics::changes(n);
    }

    /// Publishes changes made on this node and queues them for every peer.
    fn changed(&self, changes: impl IntoIterator<Item = ServiceChange>) {
        let changes: Vec<ServiceChange> = changes.into_iter().collect();
        let records: Vec<rpb::SyncRecord> = changes.iter().flat_map(change_records).collect();
        self.inner.peers.send_to_all(&records);
        self.publish(changes);
    }

    /// Whether this node owns `service` among the nodes it can reach now.
    fn owns(&self, service: &ServiceKey, live: &[u64]) -> bool {
        peers::owner(service, live) == self.inner.core.node_id()
    }

    // ---- namespaces ---------------------------------------------------------------------

    /// Namespaces, `public` first among them.
    pub fn namespaces(&self) -> Vec<String> {
        self.inner
            .namespaces
            .read()
            .expect("namespaces poisoned only by a panic")
            .iter()
            .cloned()
            .collect()
    }

    fn check_namespace(&self, namespace: &str) -> RegistryResult<()> {
        if self
            .inner
            .namespaces
            .read()
            .expect("namespaces poisoned only by a panic")
            .contains(namespace)
        {
            Ok(())
        } else {
            Err(RegistryError::NamespaceNotFound {
                namespace: namespace.to_string(),
            })
        }
    }

    /// Creates a namespace (stored in the core); creating one that exists is a no-op.
    pub async fn create_namespace(&self, name: &str) -> RegistryResult<()> {
        check_name("namespace", name)?;
        self.inner
            .core
            .put(pb::PutRequest {
                key: format!("{NAMESPACES}{name}").into(),
                value: name.to_string().into(),
                ..Default::default()
            })
            .await?;
        self.inner
            .namespaces
            .write()
            .expect("namespaces poisoned only by a panic")
            .insert(name.to_string());
        Ok(())
    }

    // ---- instances ------------------------------------------------------------------------

    /// Registers an instance; a persistent one is stored in the core first.
    pub async fn register(
        &self,
        service: &ServiceKey,
        spec: InstanceSpec,
    ) -> RegistryResult<Instance> {
        self.check_namespace(&service.namespace)?;
        let instance = spec.validate()?;
        if !instance.ephemeral {
            let value =
                serde_json::to_vec(&instance).map_err(|e| RegistryError::Core(e.to_string()))?;
            self.inner
                .core
                .put(pb::PutRequest {
                    key: format!("{}/{}", service_key_path(PERSISTENT, service), instance.id)
                        .into(),
                    value: value.into(),
                    ..Default::default()
                })
                .await?;
        }
        let change = {
            let mut table = self.table();
            let change = table.register(service, instance.clone(), self.now());
            metrics::set_instances(table.instance_count());
            change
        };
        self.changed(change);
        Ok(instance)
    }

    /// Removes an instance (and, for a persistent one, its record in the core).
    pub async fn deregister(&self, service: &ServiceKey, id: &str) -> RegistryResult<()> {
        self.check_namespace(&service.namespace)?;
        let persistent = self
            .table()
            .list(service, false, &LabelSelector::default())
            .instances
            .iter()
            .find(|i| i.id == id)
            .map(|i| !i.ephemeral)
            .ok_or_else(|| RegistryError::InstanceNotFound {
                service: service.to_string(),
                id: id.to_string(),
            })?;
        if persistent {
            self.inner
                .core
                .delete_range(pb::DeleteRangeRequest {
                    key: format!("{}/{id}", service_key_path(PERSISTENT, service)).into(),
                    ..Default::default()
                })
                .await?;
        }
        let change = {
            let mut table = self.table();
            let change = table.deregister(service, id);
            metrics::set_instances(table.instance_count());
            change
        };
        // Already gone means the core watch removed it first: the change was published then.
        if let Ok(change) = change {
            self.changed([change]);
        }
        Ok(())
    }

    /// Records heartbeats, many at once; each answer says whether that instance is known
    /// (an unknown one must register again).
    pub fn beat(&self, beats: &[(ServiceKey, String)]) -> Vec<RegistryResult<()>> {
        let now = self.now();
        let mut answers = Vec::with_capacity(beats.len());
        let mut changes = Vec::new();
        {
            let mut table = self.table();
            for (service, id) in beats {
                answers.push(
                    table
                        .beat(service, id, now)
                        .map(|change| changes.extend(change)),
                );
            }
        }
        metrics::heartbeats(beats.len());
        let records: Vec<rpb::SyncRecord> = beats
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_ok())
            .map(|((service, id), _)| record(service, rpb::sync_record::Record::Beat(id.clone())))
            .collect();
        self.inner.peers.send_to_all(&records);
        self.changed(changes);
        answers
    }

    /// A service's instances: all, or healthy and enabled ones only, matching `selector`.
    pub fn list(
        &self,
        service: &ServiceKey,
        healthy_only: bool,
        selector: &LabelSelector,
    ) -> RegistryResult<ServiceView> {
        self.check_namespace(&service.namespace)?;
        Ok(self.table().list(service, healthy_only, selector))
    }

    /// Services in a namespace, optionally one group only.
    pub fn services(
        &self,
        namespace: &str,
        group: Option<&str>,
    ) -> RegistryResult<Vec<ServiceKey>> {
        self.check_namespace(namespace)?;
        Ok(self.table().services(namespace, group))
    }

    /// Subscribes to a service: a snapshot now, then its changes.
    pub fn subscribe(&self, service: &ServiceKey) -> RegistryResult<Subscription> {
        self.check_namespace(&service.namespace)?;
        // Subscribe under the table lock, so no change falls between snapshot and stream.
        let table = self.table();
        let changes = self.inner.changes.subscribe();
        let snapshot = table.list(service, false, &LabelSelector::default());
        Ok(Subscription {
            snapshot,
            service: service.clone(),
            changes,
        })
    }

    /// Sets a service's health timing and protection (stored in the core).
    pub async fn configure(
        &self,
        service: &ServiceKey,
        settings: ServiceSettings,
    ) -> RegistryResult<()> {
        self.check_namespace(&service.namespace)?;
        let settings = settings.validate()?;
        let value =
            serde_json::to_vec(&settings).map_err(|e| RegistryError::Core(e.to_string()))?;
        self.inner
            .core
            .put(pb::PutRequest {
                key: service_key_path(SETTINGS, service).into(),
                value: value.into(),
                ..Default::default()
            })
            .await?;
        self.table().configure(service, settings);
        Ok(())
    }

    /// A service's settings.
    pub fn settings(&self, service: &ServiceKey) -> ServiceSettings {
        self.table().settings(service)
    }

    // ---- background work ------------------------------------------------------------------

    async fn sweep_forever(self) {
        let every = Duration::from_millis(self.inner.config.sweep_interval_ms.max(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live = self.inner.peers.live(self.now());
            // In slices, releasing the table between them, so a mass expiry (hundreds of
            // thousands of instances at once) does not hold every registry call for the
            // whole pass.
            for slice in 0.. {
                let sweep = {
                    let mut table = self.table();
                    let sweep = table.sweep(self.now(), |s| self.owns(s, &live), SWEEP_SLICE);
                    metrics::set_instances(table.instance_count());
                    sweep
                };
                if slice == 0 {
                    metrics::set_protecting_services(sweep.protecting.len());
                    for service in &sweep.protecting {
                        tracing::warn!(%service, "protection: too many instances went silent at once; keeping the last good set");
                    }
                }
                self.changed(sweep.changes);
                if !sweep.more {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// Probes persistent instances (TCP connect, or HTTP GET when the instance's metadata
    /// names a `health_check_path`) every probe interval.
    async fn probe_forever(self) {
        let timeout = Duration::from_millis(self.inner.config.probe_timeout_ms);
        let every = Duration::from_millis(self.inner.config.probe_interval_ms.max(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live = self.inner.peers.live(self.now());
            let mut targets = self.table().persistent_instances();
            targets.retain(|(service, _)| self.owns(service, &live));
            let results = futures::future::join_all(targets.into_iter().map(
                |(service, instance)| async move {
                    let healthy = probe::check(&instance, timeout).await;
                    (service, instance.id, healthy)
                },
            ))
            .await;
            let changes: Vec<ServiceChange> = {
                let mut table = self.table();
                results
                    .into_iter()
                    .filter_map(|(service, id, healthy)| table.set_health(&service, &id, healthy))
                    .collect()
            };
            self.changed(changes);
        }
    }

    /// Applies the core's registry records to this node as they change.
    async fn follow_core(self, mut watch: tokio::sync::mpsc::Receiver<pb::WatchResponse>) {
        while let Some(response) = watch.recv().await {
            if response.canceled {
                tracing::error!(reason = %response.cancel_reason, "registry's core watch was cancelled");
                return;
            }
            for event in &response.events {
                let Some(kv) = &event.kv else { continue };
                let put = event.r#type == mvccpb::event::EventType::Put as i32;
                self.apply_stored(kv, put);
            }
        }
    }

    /// Applies one record from the core: a namespace, a service's settings, or a persistent
    /// instance, put or deleted. Records that do not parse are logged and skipped.
    fn apply_stored(&self, kv: &mvccpb::KeyValue, put: bool) {
        let key = String::from_utf8_lossy(&kv.key);
        if let Some(name) = key.strip_prefix(NAMESPACES) {
            let mut namespaces = self
                .inner
                .namespaces
                .write()
                .expect("namespaces poisoned only by a panic");
            if put {
                namespaces.insert(name.to_string());
            } else if name != DEFAULT_NAMESPACE {
                namespaces.remove(name);
            }
        } else if let Some(rest) = key.strip_prefix(SETTINGS) {
            let Some(service) = parse_service_path(rest) else {
                return;
            };
            let settings = if put {
                match serde_json::from_slice::<ServiceSettings>(&kv.value) {
                    Ok(s) => s,
                    Err(e) => {
                        return tracing::warn!(%key, error = %e, "skipping unreadable service settings")
                    }
                }
            } else {
                ServiceSettings::default()
            };
            self.table().configure(&service, settings);
        } else if let Some(rest) = key.strip_prefix(PERSISTENT) {
            let Some((service_path, id)) = rest.rsplit_once('/') else {
                return;
            };
            let Some(service) = parse_service_path(service_path) else {
                return;
            };
            let change = if put {
                match serde_json::from_slice::<Instance>(&kv.value) {
                    Ok(instance) => self.table().register(&service, instance, self.now()),
                    Err(e) => {
                        return tracing::warn!(%key, error = %e, "skipping unreadable persistent instance")
                    }
                }
            } else {
                self.table().deregister(&service, id).ok()
            };
            self.publish(change);
        }
    }
}

impl Registry {
    // ---- peer sync ------------------------------------------------------------------------

    /// Sends queued changes (and, every few rounds, checksums) to every peer, and acts on
    /// their answers.
    async fn sync_forever(self) {
        let mut tick = tokio::time::interval(peers::SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tick.tick().await;
            let members: std::collections::BTreeMap<u64, String> = self
                .inner
                .core
                .members()
                .into_iter()
                .filter_map(|m| {
                    let url = m.client_ur_ls.first()?;
                    Some((m.id, url.trim_start_matches("http://").to_string()))
                })
                .collect();
            self.inner
                .peers
                .set_members(&members, |addr| self.inner.core.peer_channel(addr));
            let checksums = (round % peers::CHECKSUM_EVERY == 0).then(|| self.checksums());
            let sends = self
                .inner
                .peers
                .take_batches(checksums.as_deref())
                .into_iter()
                .map(|mut out| async move {
                    let records = out.batch.records.clone();
                    let mut request = tonic::Request::new(out.batch);
                    request.set_timeout(peers::SYNC_TIMEOUT);
                    (out.peer, records, out.client.sync(request).await)
                });
            for (peer, records, answer) in futures::future::join_all(sends).await {
                match answer {
                    Ok(ack) => {
                        self.inner.peers.sent(peer, self.now(), None);
                        self.answer_ack(peer, ack.into_inner());
                    }
                    Err(status) => {
                        tracing::debug!(peer, %status, "registry sync failed; will retry");
                        self.inner.peers.sent(peer, self.now(), Some(records));
                    }
                }
            }
        }
    }

    fn checksums(&self) -> Vec<rpb::ServiceChecksum> {
        let table = self.table();
        table
            .service_keys()
            .iter()
            .map(|service| rpb::ServiceChecksum {
                service: Some(crate::api::service_name(service)),
                checksum: table.checksum(service),
            })
            .collect()
    }

    /// Follows up on a peer's answer: whole copies of services it holds stale copies of,
    /// and the instances behind beats it did not recognise.
    fn answer_ack(&self, peer: u64, ack: rpb::SyncAck) {
        let table = self.table();
        let mut records = Vec::new();
        for name in ack.stale {
            let Ok(service) = ServiceKey::new(&name.namespace, &name.group, &name.name) else {
                continue;
            };
            let view = table.list(&service, false, &LabelSelector::default());
            records.push(record(
                &service,
                rpb::sync_record::Record::Replace(crate::api::view_message(&view)),
            ));
        }
        for beat in ack.unknown {
            let Some(name) = beat.service else { continue };
            let Ok(service) = ServiceKey::new(&name.namespace, &name.group, &name.name) else {
                continue;
            };
            if let Some(instance) = table.instance(&service, &beat.instance_id) {
                records.push(record(
                    &service,
                    rpb::sync_record::Record::Upsert(crate::api::instance_message(&instance)),
                ));
            }
        }
        drop(table);
        self.inner.peers.send_to(peer, records);
    }

    /// Applies a peer's batch and answers which of its beats were unknown here and which of
    /// its checksums show this node holding a stale copy of a service the peer owns. Where
    /// the peer's copy is the stale one and this node owns the service, the whole copy is
    /// queued for the peer.
    pub fn apply_sync(&self, batch: rpb::SyncBatch) -> rpb::SyncAck {
        let now = self.now();
        self.inner.peers.heard_from(batch.from_node, now);
        let mut ack = rpb::SyncAck::default();
        let mut changes = Vec::new();
        {
            let mut table = self.table();
            for item in batch.records {
                let Some(name) = item.service else { continue };
                let Ok(service) = ServiceKey::new(&name.namespace, &name.group, &name.name) else {
                    continue;
                };
                match item.record {
                    Some(rpb::sync_record::Record::Upsert(instance)) => {
                        if let Some(instance) = crate::api::instance_from_message(instance) {
                            changes.extend(table.register(&service, instance, now));
                        }
                    }
                    Some(rpb::sync_record::Record::Remove(id)) => {
                        changes.extend(table.deregister(&service, &id).ok())
                    }
                    Some(rpb::sync_record::Record::Beat(id)) => {
                        if let Ok(change) = table.beat(&service, &id, now) {
                            changes.extend(change);
                        } else {
                            ack.unknown.push(rpb::Beat {
                                service: Some(name),
                                instance_id: id,
                            });
                        }
                    }
                    Some(rpb::sync_record::Record::Replace(view)) => {
                        let instances = view
                            .instances
                            .into_iter()
                            .filter_map(crate::api::instance_from_message)
                            .collect();
                        changes.extend(table.replace(&service, instances, now));
                    }
                    None => {}
                }
            }
            metrics::set_instances(table.instance_count());
        }
        self.publish(changes);
        let live = self.inner.peers.live(now);
        let mut mine = Vec::new();
        {
            let table = self.table();
            for theirs in batch.checksums {
                let Some(name) = theirs.service else { continue };
                let Ok(service) = ServiceKey::new(&name.namespace, &name.group, &name.name) else {
                    continue;
                };
                if table.checksum(&service) == theirs.checksum {
                    continue;
                }
                match peers::owner(&service, &live) {
                    owner if owner == batch.from_node => ack.stale.push(name),
                    owner if owner == self.inner.core.node_id() => {
                        let view = table.list(&service, false, &LabelSelector::default());
                        mine.push(record(
                            &service,
                            rpb::sync_record::Record::Replace(crate::api::view_message(&view)),
                        ));
                    }
                    _ => {}
                }
            }
        }
        self.inner.peers.send_to(batch.from_node, mine);
        ack
    }
}

fn record(service: &ServiceKey, record: rpb::sync_record::Record) -> rpb::SyncRecord {
    rpb::SyncRecord {
        service: Some(crate::api::service_name(service)),
        record: Some(record),
    }
}

/// A change as records for peers.
fn change_records(change: &ServiceChange) -> Vec<rpb::SyncRecord> {
    let upserts = change.upserted.iter().map(|i| {
        record(
            &change.service,
            rpb::sync_record::Record::Upsert(crate::api::instance_message(i)),
        )
    });
    let removes = change.removed.iter().map(|id| {
        record(
            &change.service,
            rpb::sync_record::Record::Remove(id.clone()),
        )
    });
    upserts.chain(removes).collect()
}

fn parse_service_path(path: &str) -> Option<ServiceKey> {
    let mut parts = path.splitn(3, '/');
    let (namespace, group, name) = (parts.next()?, parts.next()?, parts.next()?);
    ServiceKey::new(namespace, group, name).ok()
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    cella_base::prefix_end(prefix.as_bytes())
}
