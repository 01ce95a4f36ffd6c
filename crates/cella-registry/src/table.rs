//! The instance table: the registry's state and every decision about it, without I/O.
//!
//! Time is passed in (`now`, from the registry's clock), so expiry and protection are tested
//! with plain values. Each mutation returns what it changed as a [`ServiceChange`] carrying
//! the service's new version; the registry pushes those to subscribers, who apply them in
//! version order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::error::{RegistryError, RegistryResult};
use crate::model::{Instance, LabelSelector, ServiceKey, ServiceSettings};

/// The instances of every service known to this node.
#[derive(Debug, Default)]
pub struct Table {
    services: HashMap<ServiceKey, ServiceEntry>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    settings: ServiceSettings,
    version: u64,
    /// Changed only through [`ServiceEntry::put`], [`ServiceEntry::take`] and
    /// [`ServiceEntry::set_healthy`] (or with `fingerprint` adjusted beside), so that the
    /// fingerprint stays exact.
    instances: BTreeMap<String, Slot>,
    /// Wrapping sum of [`instance_hash`] over the instances: the service's checksum, kept
    /// as instances change so peers compare services without walking them.
    fingerprint: u64,
    /// Whether the last sweep held back changes because too many instances went silent.
    protecting: bool,
}

/// A hash of what peers must agree on about an instance (id, address, health, weight,
/// labels, metadata). `DefaultHasher::new()` has fixed keys, so every node of one build
/// agrees.
fn instance_hash(i: &Instance) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (
        &i.id,
        &i.ip,
        i.port,
        i.weight.to_bits(),
        i.enabled,
        i.healthy,
        i.ephemeral,
    )
        .hash(&mut hasher);
    (&i.cluster, &i.labels, &i.metadata).hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug)]
struct Slot {
    instance: Instance,
    last_beat: Duration,
}

/// One service's change, to be pushed to its subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceChange {
    /// The service that changed.
    pub service: ServiceKey,
    /// Its version after the change; versions only grow.
    pub version: u64,
    /// Instances added or modified, in full.
    pub upserted: Vec<Instance>,
    /// Ids of instances removed.
    pub removed: Vec<String>,
}

/// A service's instances as a client sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// The service.
    pub service: ServiceKey,
    /// Its current version.
    pub version: u64,
    /// Its health timing.
    pub settings: ServiceSettings,
    /// The instances selected, ordered by id.
    pub instances: Vec<Instance>,
    /// True while protection holds back expiry (the list may include silent instances).
    pub protecting: bool,
}

/// What a sweep does to a silent ephemeral instance.
#[derive(Debug, Clone, Copy)]
enum Due {
    /// Silent past `remove_after`.
    Remove,
    /// Silent past `unhealthy_after`, and still healthy.
    MarkUnhealthy,
}

/// What a sweep did.
#[derive(Debug, Default, PartialEq)]
pub struct Sweep {
    /// Changes made (instances marked unhealthy or removed).
    pub changes: Vec<ServiceChange>,
    /// Services whose protection alarm is raised after this sweep.
    pub protecting: Vec<ServiceKey>,
    /// Whether instances are still due because the sweep's budget ran out.
    pub more: bool,
}

impl ServiceEntry {
    /// Adds or replaces the slot of its instance's id.
    fn put(&mut self, slot: Slot) {
        self.fingerprint = self.fingerprint.wrapping_add(instance_hash(&slot.instance));
        if let Some(old) = self.instances.insert(slot.instance.id.clone(), slot) {
            self.fingerprint = self.fingerprint.wrapping_sub(instance_hash(&old.instance));
        }
    }

    /// Removes an instance.
    fn take(&mut self, id: &str) -> Option<Slot> {
        let old = self.instances.remove(id)?;
        self.fingerprint = self.fingerprint.wrapping_sub(instance_hash(&old.instance));
        Some(old)
    }

    /// Sets an instance's health; the instance as it is now when that changed it.
    fn set_healthy(&mut self, id: &str, healthy: bool) -> Option<Instance> {
        let slot = self.instances.get_mut(id)?;
        if slot.instance.healthy == healthy {
            return None;
        }
        let before = instance_hash(&slot.instance);
        slot.instance.healthy = healthy;
        self.fingerprint = self
            .fingerprint
            .wrapping_sub(before)
            .wrapping_add(instance_hash(&slot.instance));
        Some(slot.instance.clone())
    }

    fn change(
        &mut self,
        service: &ServiceKey,
        upserted: Vec<Instance>,
        removed: Vec<String>,
    ) -> ServiceChange {
        self.version += 1;
        ServiceChange {
            service: service.clone(),
            version: self.version,
            upserted,
            removed,
        }
    }
}

impl Table {
    /// Adds or replaces an instance; its heartbeat clock starts now. `None` when the
    /// instance was already registered exactly so (a repeated registration is a heartbeat).
    pub fn register(
        &mut self,
        service: &ServiceKey,
        instance: Instance,
        now: Duration,
    ) -> Option<ServiceChange> {
        let entry = self.services.entry(service.clone()).or_default();
        let id = instance.id.clone();
        if let Some(slot) = entry.instances.get_mut(&id) {
            slot.last_beat = now;
            if slot.instance == instance {
                return None;
            }
        }
        entry.put(Slot {
            instance: instance.clone(),
            last_beat: now,
        });
        Some(entry.change(service, vec![instance], Vec::new()))
    }

    /// Removes an instance.
    pub fn deregister(&mut self, service: &ServiceKey, id: &str) -> RegistryResult<ServiceChange> {
        let entry = self.entry_mut(service, id)?;
        entry.take(id);
        Ok(entry.change(service, Vec::new(), vec![id.to_string()]))
    }

    /// Records a heartbeat; a silent instance that beats again turns healthy.
    pub fn beat(
        &mut self,
        service: &ServiceKey,
        id: &str,
        now: Duration,
    ) -> RegistryResult<Option<ServiceChange>> {
        let entry = self.entry_mut(service, id)?;
        let slot = entry
            .instances
            .get_mut(id)
            .ok_or_else(|| not_found(service, id))?;
        slot.last_beat = now;
        if slot.instance.healthy || !slot.instance.ephemeral {
            return Ok(None);
        }
        let upserted = entry.set_healthy(id, true).into_iter().collect();
        Ok(Some(entry.change(service, upserted, Vec::new())))
    }

    /// Sets a persistent instance's health from a probe; `None` when it did not change.
    pub fn set_health(
        &mut self,
        service: &ServiceKey,
        id: &str,
        healthy: bool,
    ) -> Option<ServiceChange> {
        let entry = self.services.get_mut(service)?;
        let upserted = vec![entry.set_healthy(id, healthy)?];
        Some(entry.change(service, upserted, Vec::new()))
    }

    /// Sets a service's health timing (creating the service if it has no instances yet).
    pub fn configure(&mut self, service: &ServiceKey, settings: ServiceSettings) {
        self.services.entry(service.clone()).or_default().settings = settings;
    }

    /// A service's settings (the defaults for a service never seen).
    pub fn settings(&self, service: &ServiceKey) -> ServiceSettings {
        self.services
            .get(service)
            .map(|e| e.settings)
            .unwrap_or_default()
    }

    /// The service's instances matching `selector`, healthy and enabled ones only if asked.
    /// While protection holds, the held instances count as healthy: they are the last good set.
    pub fn list(
        &self,
        service: &ServiceKey,
        healthy_only: bool,
        selector: &LabelSelector,
    ) -> ServiceView {
        let Some(entry) = self.services.get(service) else {
            return ServiceView {
                service: service.clone(),
                version: 0,
                settings: ServiceSettings::default(),
                instances: Vec::new(),
                protecting: false,
            };
        };
        let instances = entry
            .instances
            .values()
            .map(|slot| &slot.instance)
            .filter(|i| !healthy_only || (i.healthy && i.enabled))
            .filter(|i| selector.matches(&i.labels))
            .cloned()
            .collect();
        ServiceView {
            service: service.clone(),
            version: entry.version,
            settings: entry.settings,
            instances,
            protecting: entry.protecting,
        }
    }

    /// Services in a namespace (and group, when given), sorted.
    pub fn services(&self, namespace: &str, group: Option<&str>) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| k.namespace == namespace && group.is_none_or(|g| k.group == g))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// Every persistent instance, for probing.
    pub fn persistent_instances(&self) -> Vec<(ServiceKey, Instance)> {
        self.services
            .iter()
            .flat_map(|(key, entry)| {
                entry
                    .instances
                    .values()
                    .filter(|slot| !slot.instance.ephemeral)
                    .map(move |slot| (key.clone(), slot.instance.clone()))
            })
            .collect()
    }

    /// One instance, if registered.
    pub fn instance(&self, service: &ServiceKey, id: &str) -> Option<Instance> {
        let slot = self.services.get(service)?.instances.get(id)?;
        Some(slot.instance.clone())
    }

    /// Makes the service's instances exactly `instances` (an owner's copy, repairing this
    /// node's); their heartbeat clocks restart now. `None` when nothing differed.
    pub fn replace(
        &mut self,
        service: &ServiceKey,
        instances: Vec<Instance>,
        now: Duration,
    ) -> Option<ServiceChange> {
        let entry = self.services.entry(service.clone()).or_default();
        let wanted: BTreeMap<String, Instance> =
            instances.into_iter().map(|i| (i.id.clone(), i)).collect();
        let removed: Vec<String> = entry
            .instances
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        let mut upserted = Vec::new();
        for id in &removed {
            entry.take(id);
        }
        for (id, instance) in wanted {
            match entry.instances.get_mut(&id) {
                Some(slot) if slot.instance == instance => slot.last_beat = now,
                _ => {
                    upserted.push(instance.clone());
                    entry.put(Slot {
                        instance,
                        last_beat: now,
                    });
                }
            }
        }
        if upserted.is_empty() && removed.is_empty() {
            return None;
        }
        Some(entry.change(service, upserted, removed))
    }

    /// A checksum of the service's instances (ids, addresses, health, weights, labels,
    /// metadata): equal on two nodes when their copies agree. Kept as instances change, so
    /// asking costs nothing.
    pub fn checksum(&self, service: &ServiceKey) -> u64 {
        self.services.get(service).map_or(0, |e| e.fingerprint)
    }

    /// Every service this node knows.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        self.services.keys().cloned().collect()
    }

    pub fn instance_count(&self) -> usize {
        self.services.values().map(|e| e.instances.len()).sum()
    }

    /// Marks silent ephemeral instances unhealthy and removes long-silent ones, in the
    /// services `owned` selects — unless, for a service with protection on, more than its
    /// threshold would turn unhealthy at once: then nothing changes for that service and its
    /// alarm is raised until the silence ends. At most `budget` instances change per call;
    /// [`Sweep::more`] says when others are still due.
    pub fn sweep(
        &mut self,
        now: Duration,
        owned: impl Fn(&ServiceKey) -> bool,
        budget: usize,
    ) -> Sweep {
        let mut sweep = Sweep::default();
        let mut budget = budget.max(1);
        for (service, entry) in &mut self.services {
            if !owned(service) {
                continue;
            }
            let settings = entry.settings;
            let due = |slot: &Slot| -> Option<Due> {
                if !slot.instance.ephemeral {
                    return None;
                }
                let silence = now.saturating_sub(slot.last_beat);
                if silence > settings.remove_after() {
                    Some(Due::Remove)
                } else if silence > settings.unhealthy_after() && slot.instance.healthy {
                    Some(Due::MarkUnhealthy)
                } else {
                    None
                }
            };
            // Counted before anything is collected, so the protection check allocates nothing.
            let (mut due_count, mut going) = (0, 0);
            for slot in entry.instances.values() {
                if due(slot).is_some() {
                    due_count += 1;
                    going += usize::from(slot.instance.healthy);
                }
            }
            let total = entry.instances.len();
            let threshold = settings.protect_threshold;
            entry.protecting =
                threshold > 0.0 && total > 0 && going as f64 / total as f64 > threshold;
            if entry.protecting {
                sweep.protecting.push(service.clone());
                continue;
            }
            if due_count == 0 {
                continue;
            }
            if budget == 0 {
                sweep.more = true;
                continue;
            }
            let mut to_unhealthy = Vec::new();
            let mut to_remove = Vec::new();
            for (id, slot) in &entry.instances {
                if to_unhealthy.len() + to_remove.len() == budget {
                    sweep.more = true;
                    break;
                }
                match due(slot) {
                    Some(Due::Remove) => to_remove.push(id.clone()),
                    Some(Due::MarkUnhealthy) => to_unhealthy.push(id.clone()),
                    None => {}
                }
            }
            let upserted: Vec<Instance> = to_unhealthy
                .iter()
                .filter_map(|id| entry.set_healthy(id, false))
                .collect();
            for id in &to_remove {
                entry.take(id);
            }
            budget -= to_unhealthy.len() + to_remove.len();
            sweep
                .changes
                .push(entry.change(service, upserted, to_remove));
        }
        sweep
    }

    fn entry_mut(&mut self, service: &ServiceKey, id: &str) -> RegistryResult<&mut ServiceEntry> {
        self.services
            .get_mut(service)
            .filter(|e| e.instances.contains_key(id))
            .ok_or_else(|| not_found(service, id))
    }
}

fn not_found(service: &ServiceKey, id: &str) -> RegistryError {
    RegistryError::InstanceNotFound {
        service: service.to_string(),
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceSpec;

    fn key() -> ServiceKey {
        ServiceKey::new("", "", "orders").expect("valid key")
    }

    fn instance(port: u32) -> Instance {
        InstanceSpec {
            ip: "10.0.0.1".into(),
            port,
            ..Default::default()
        }
        .validate()
        .expect("valid instance")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    impl Table {
        fn sweep_all(&mut self, now: Duration) -> Sweep {
            self.sweep(now, |_| true, usize::MAX)
        }
    }

    #[test]
    fn replace_makes_a_copy_equal_to_the_owners_and_checksums_agree() {
        let mut owner = Table::default();
        let mut copy = Table::default();
        owner.register(&key(), instance(1), secs(0));
        owner.register(&key(), instance(2), secs(0));
        copy.register(&key(), instance(3), secs(0));
        assert_ne!(owner.checksum(&key()), copy.checksum(&key()));
        let view = owner.list(&key(), false, &LabelSelector::default());
        let change = copy
            .replace(&key(), view.instances, secs(1))
            .expect("differs");
        assert_eq!(change.removed, vec!["10.0.0.1#3#DEFAULT".to_string()]);
        assert_eq!(change.upserted.len(), 2);
        assert_eq!(owner.checksum(&key()), copy.checksum(&key()));
        let again = owner
            .list(&key(), false, &LabelSelector::default())
            .instances;
        assert!(copy.replace(&key(), again, secs(2)).is_none());
    }

    #[test]
    fn a_sweep_changes_at_most_its_budget_and_says_when_more_are_due() {
        let mut table = Table::default();
        for port in 1..=25 {
            table.register(&key(), instance(port), secs(0));
        }
        let mut changed = 0;
        let mut slices = 0;
        loop {
            let sweep = table.sweep(secs(100), |_| true, 10);
            let n: usize = sweep
                .changes
                .iter()
                .map(|c| c.upserted.len() + c.removed.len())
                .sum();
            assert!(n <= 10, "a slice changed {n}");
            changed += n;
            slices += 1;
            if !sweep.more {
                break;
            }
        }
        assert_eq!((changed, slices), (25, 3));
        assert!(all(&table).is_empty(), "every silent instance is gone");
    }

    /// The service's checksum computed from scratch.
    fn recomputed(table: &Table) -> u64 {
        table.services.get(&key()).map_or(0, |e| {
            e.instances.values().fold(0, |sum: u64, s| {
                sum.wrapping_add(instance_hash(&s.instance))
            })
        })
    }

    #[test]
    fn the_kept_checksum_equals_one_computed_afresh_after_every_kind_of_change() {
        let mut table = Table::default();
        let check = |table: &Table| assert_eq!(table.checksum(&key()), recomputed(table));
        for port in 1..=6 {
            table.register(&key(), instance(port), secs(0));
            check(&table);
        }
        let mut heavier = instance(2);
        heavier.weight = 3.0;
        table.register(&key(), heavier, secs(1));
        check(&table);
        table
            .deregister(&key(), &instance(3).id)
            .expect("registered");
        check(&table);
        assert!(!table
            .sweep(secs(20), |_| true, usize::MAX)
            .changes
            .is_empty());
        check(&table);
        table
            .beat(&key(), &instance(1).id, secs(21))
            .expect("known");
        check(&table);
        assert!(table.sweep(secs(40), |_| true, 2).more);
        check(&table);
        table.replace(&key(), vec![instance(7), instance(1)], secs(41));
        check(&table);
        table.set_health(&key(), &instance(7).id, false);
        check(&table);
        assert_ne!(table.checksum(&key()), 0);
    }

    #[test]
    fn only_owned_services_are_swept() {
        let mut table = Table::default();
        table.register(&key(), instance(1), secs(0));
        assert!(table.sweep(secs(100), |_| false, 10).changes.is_empty());
        assert_eq!(table.sweep(secs(100), |_| true, 10).changes.len(), 1);
    }

    fn all(table: &Table) -> Vec<Instance> {
        table
            .list(&key(), false, &LabelSelector::default())
            .instances
    }

    #[test]
    fn silent_instances_turn_unhealthy_then_disappear_on_the_default_windows() {
        let mut table = Table::default();
        table.register(&key(), instance(1), secs(0));
        table.register(&key(), instance(2), secs(0));
        for t in 1..=40 {
            table
                .beat(&key(), "10.0.0.1#2#DEFAULT", secs(t))
                .expect("registered");
        }
        assert_eq!(
            table.sweep_all(secs(15)),
            Sweep::default(),
            "15 s is not yet past the window"
        );
        let sweep = table.sweep_all(secs(16));
        assert_eq!(sweep.changes.len(), 1);
        assert!(!sweep.changes[0].upserted[0].healthy);
        let healthy = table
            .list(&key(), true, &LabelSelector::default())
            .instances;
        assert_eq!(healthy.len(), 1);
        assert_eq!(
            all(&table).len(),
            2,
            "unhealthy instances are still listed when asked"
        );
        let sweep = table.sweep_all(secs(31));
        assert_eq!(
            sweep.changes[0].removed,
            vec!["10.0.0.1#1#DEFAULT".to_string()]
        );
        assert_eq!(all(&table).len(), 1);
        assert_eq!(
            sweep.changes[0].version, 4,
            "two registrations, unhealthy, removed"
        );
    }

    #[test]
    fn a_beat_revives_an_unhealthy_instance() {
        let mut table = Table::default();
        table.register(&key(), instance(1), secs(0));
        table.sweep_all(secs(20));
        let change = table
            .beat(&key(), "10.0.0.1#1#DEFAULT", secs(21))
            .expect("known")
            .expect("a change");
        assert!(change.upserted[0].healthy);
        assert_eq!(table.beat(&key(), "10.0.0.1#1#DEFAULT", secs(22)), Ok(None));
        assert!(matches!(
            table.beat(&key(), "10.0.0.9#1#DEFAULT", secs(22)),
            Err(RegistryError::InstanceNotFound { .. })
        ));
    }

    #[test]
    fn protection_holds_the_last_good_set_when_too_many_go_silent_at_once() {
        let mut table = Table::default();
        table.configure(
            &key(),
            ServiceSettings {
                protect_threshold: 0.5,
                ..Default::default()
            },
        );
        for port in 1..=4 {
            table.register(&key(), instance(port), secs(0));
        }
        // Three of four go silent: 75% > 50%, so nothing changes and the alarm is raised.
        for t in 1..=40 {
            table
                .beat(&key(), "10.0.0.1#4#DEFAULT", secs(t))
                .expect("registered");
        }
        let sweep = table.sweep_all(secs(40));
        assert!(sweep.changes.is_empty());
        assert_eq!(sweep.protecting, vec![key()]);
        let view = table.list(&key(), true, &LabelSelector::default());
        assert_eq!(view.instances.len(), 4);
        assert!(view.protecting);
        // Two come back: one silent of four is 25%, so it is evicted and the alarm clears.
        for port in 2..=3 {
            table
                .beat(&key(), &format!("10.0.0.1#{port}#DEFAULT"), secs(41))
                .expect("registered");
        }
        let sweep = table.sweep_all(secs(41));
        assert!(sweep.protecting.is_empty());
        assert_eq!(
            sweep.changes[0].removed,
            vec!["10.0.0.1#1#DEFAULT".to_string()]
        );
    }

    #[test]
    fn repeated_registration_is_a_beat_and_changes_nothing() {
        let mut table = Table::default();
        assert!(table.register(&key(), instance(1), secs(0)).is_some());
        assert!(table.register(&key(), instance(1), secs(10)).is_none());
        assert!(
            table.sweep_all(secs(20)).changes.is_empty(),
            "the repeat restarted the window"
        );
    }

    #[test]
    fn persistent_instances_never_expire_by_silence() {
        let mut table = Table::default();
        let mut stored = instance(1);
        stored.ephemeral = false;
        table.register(&key(), stored, secs(0));
        assert!(table.sweep_all(secs(1000)).changes.is_empty());
        let change = table
            .set_health(&key(), "10.0.0.1#1#DEFAULT", false)
            .expect("changed");
        assert!(!change.upserted[0].healthy);
        assert!(table
            .set_health(&key(), "10.0.0.1#1#DEFAULT", false)
            .is_none());
    }

    #[test]
    fn deregistering_an_unknown_instance_changes_nothing() {
        let mut table = Table::default();
        table.register(&key(), instance(1), secs(0));
        assert!(table.deregister(&key(), "nope").is_err());
        assert_eq!(
            table.list(&key(), false, &LabelSelector::default()).version,
            1
        );
        assert_eq!(
            table
                .deregister(&key(), "10.0.0.1#1#DEFAULT")
                .expect("known")
                .version,
            2
        );
    }
}
