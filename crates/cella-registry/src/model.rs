//! What the registry stores: services and their instances, with the rules every field obeys.
//!
//! Validation lives here, beside the types, so every API (gRPC, REST, Nacos) refuses the same
//! bad input with the same message.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, RegistryResult};

/// The namespace every registry has; others are created explicitly.
pub const DEFAULT_NAMESPACE: &str = "public";
/// The group a service belongs to when none is named (Nacos's default).
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// The cluster an instance belongs to when none is named (Nacos's default).
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// Labels that place an instance in the topology (ARCHITECTURE.md).
pub const TOPOLOGY_LABELS: [&str; 5] = ["region", "zone", "cell", "lane", "version"];
/// The largest weight an instance may carry (Nacos's bound).
pub const MAX_WEIGHT: f64 = 10_000.0;

const MAX_NAME_LEN: usize = 128;
const MAX_LABEL_LEN: usize = 63;
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 1024;

/// Names a service: namespace, group and service name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Environment or tenant the service lives in.
    pub namespace: String,
    /// Group within the namespace.
    pub group: String,
    /// The service's name.
    pub name: String,
}

impl ServiceKey {
    /// A key checked against the naming rules; empty namespace and group take the defaults.
    pub fn new(namespace: &str, group: &str, name: &str) -> RegistryResult<Self> {
        let namespace = or_default(namespace, DEFAULT_NAMESPACE);
        let group = or_default(group, DEFAULT_GROUP);
        check_name("namespace", namespace)?;
        check_name("group", group)?;
        check_name("service", name)?;
        Ok(Self {
            namespace: namespace.to_string(),
            group: group.to_string(),
            name: name.to_string(),
        })
    }

    /// Nacos's grouped form, `group@@name`.
    pub fn grouped_name(&self) -> String {
        format!("{}@@{}", self.group, self.name)
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.name)
    }
}

/// `value`, or `default` when it is empty.
pub fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() {
        default
    } else {
        value
    }
}

/// Names are 1–128 characters of letters, digits and `-_.:`.
pub fn check_name(field: &'static str, value: &str) -> RegistryResult<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidField {
            field,
            rule: "must be 1-128 characters of letters, digits and -_.:".into(),
        })
    }
}

/// An instance's id within its service: `ip#port#cluster`, as Nacos forms it.
pub fn instance_id(ip: &str, port: u16, cluster: &str) -> String {
    format!("{ip}#{port}#{cluster}")
}

/// One running copy of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within the service: `ip#port#cluster`.
    pub id: String,
    /// Address clients connect to (an IP or a host name).
    pub ip: String,
    /// Port clients connect to.
    pub port: u16,
    /// Relative share of traffic, 0 to 10,000 (0 takes it out of weighted balancing).
    pub weight: f64,
    /// Whether the instance takes traffic at all (an operator's switch).
    pub enabled: bool,
    /// Whether its heartbeats (or probes) are current.
    pub healthy: bool,
    /// Ephemeral instances live by heartbeats; persistent ones are stored in the core and probed.
    pub ephemeral: bool,
    /// Nacos's cluster name inside the service.
    pub cluster: String,
    /// Topology and selection labels (region, zone, cell, lane, version, and others).
    pub labels: BTreeMap<String, String>,
    /// Free-form data the instance publishes about itself.
    pub metadata: BTreeMap<String, String>,
}

/// What a client asks to register; checked by [`InstanceSpec::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Address clients connect to.
    pub ip: String,
    /// Port clients connect to; 0 means "not given" and is refused.
    pub port: u32,
    /// Relative share of traffic, 0 to 10,000.
    pub weight: f64,
    /// Whether the instance takes traffic.
    pub enabled: bool,
    /// Heartbeat-driven (true) or stored and probed (false).
    pub ephemeral: bool,
    /// Nacos's cluster name; empty for the default.
    pub cluster: String,
    /// Selection labels.
    pub labels: BTreeMap<String, String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Default for InstanceSpec {
    fn default() -> Self {
        Self {
            ip: String::new(),
            port: 0,
            weight: 1.0,
            enabled: true,
            ephemeral: true,
            cluster: String::new(),
            labels: BTreeMap::new(),
            metadata: BTreeMap::new(),
        }
    }
}

impl InstanceSpec {
    /// Checks every field and returns the instance it describes (healthy until proven not).
    pub fn validate(self) -> RegistryResult<Instance> {
        if self.ip.is_empty() || self.ip.len() > 253 || self.ip.contains(char::is_whitespace) {
            return Err(invalid(
                "ip",
                "must be an IP address or host name, 1-253 characters",
            ));
        }
        let port = match u16::try_from(self.port) {
            Ok(port) if port > 0 => port,
            _ => return Err(invalid("port", "must be given, from 1 to 65535")),
        };
        if !(0.0..=MAX_WEIGHT).contains(&self.weight) || self.weight.is_nan() {
            return Err(invalid("weight", "must be from 0 to 10000"));
        }
        let cluster = or_default(&self.cluster, DEFAULT_CLUSTER).to_string();
        check_name("cluster", &cluster)?;
        for (key, value) in &self.labels {
            check_label("labels", key, value)?;
        }
        check_metadata(&self.metadata)?;
        let mut labels = self.labels;
        // Topology keys given as metadata (the only place Nacos clients can put them) count
        // as labels too, so selectors and locality see them.
        for key in TOPOLOGY_LABELS {
            if let Some(value) = self.metadata.get(key) {
                check_label("metadata", key, value)?;
                labels
                    .entry(key.to_string())
                    .or_insert_with(|| value.clone());
            }
        }
        Ok(Instance {
            id: instance_id(&self.ip, port, &cluster),
            ip: self.ip,
            port,
            weight: self.weight,
            enabled: self.enabled,
            healthy: true,
            ephemeral: self.ephemeral,
            cluster,
            labels,
            metadata: self.metadata,
        })
    }
}

fn invalid(field: &'static str, rule: &str) -> RegistryError {
    RegistryError::InvalidField {
        field,
        rule: rule.into(),
    }
}

/// Label keys and values: 1–63 characters of letters, digits and `-_.`, starting with a letter
/// or digit (Kubernetes' rule, so selectors read the same everywhere).
pub fn check_label(field: &'static str, key: &str, value: &str) -> RegistryResult<()> {
    let well_formed = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_LABEL_LEN
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !well_formed(key) {
        return Err(RegistryError::InvalidField {
            field,
            rule: format!("label key {key:?} must be 1-63 characters of letters, digits and -_., starting with a letter or digit"),
        });
    }
    if !well_formed(value) {
        return Err(RegistryError::InvalidField {
            field,
            rule: format!("label {key}={value:?}: the value must be 1-63 characters of letters, digits and -_., starting with a letter or digit"),
        });
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> RegistryResult<()> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(invalid("metadata", "may hold at most 64 entries"));
    }
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_LABEL_LEN {
            return Err(invalid("metadata", "keys must be 1-63 characters"));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(invalid(
                "metadata",
                "values must be at most 1024 characters",
            ));
        }
    }
    Ok(())
}

/// Per-service health timing and protection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSettings {
    /// How often ephemeral instances are asked to beat, in milliseconds.
    pub beat_interval_ms: u64,
    /// Silence after which an ephemeral instance is marked unhealthy, in milliseconds.
    pub unhealthy_after_ms: u64,
    /// Silence after which an ephemeral instance is removed, in milliseconds.
    pub remove_after_ms: u64,
    /// If one sweep would mark more than this share (0 to 1) of the service's instances
    /// unhealthy, it changes nothing and raises the protection alarm; 0 turns protection off.
    pub protect_threshold: f64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            beat_interval_ms: 5_000,
            unhealthy_after_ms: 15_000,
            remove_after_ms: 30_000,
            protect_threshold: 0.0,
        }
    }
}

impl ServiceSettings {
    /// Checks the timings are ordered (beat < unhealthy ≤ remove) and the threshold a share.
    pub fn validate(self) -> RegistryResult<Self> {
        if self.beat_interval_ms == 0 {
            return Err(invalid("beat_interval_ms", "must be at least 1"));
        }
        if self.unhealthy_after_ms <= self.beat_interval_ms {
            return Err(invalid(
                "unhealthy_after_ms",
                "must be greater than beat_interval_ms",
            ));
        }
        if self.remove_after_ms < self.unhealthy_after_ms {
            return Err(invalid(
                "remove_after_ms",
                "must be at least unhealthy_after_ms",
            ));
        }
        if !(0.0..=1.0).contains(&self.protect_threshold) || self.protect_threshold.is_nan() {
            return Err(invalid("protect_threshold", "must be from 0 to 1"));
        }
        Ok(self)
    }

    pub(crate) fn unhealthy_after(&self) -> Duration {
        Duration::from_millis(self.unhealthy_after_ms)
    }

    pub(crate) fn remove_after(&self) -> Duration {
        Duration::from_millis(self.remove_after_ms)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value`: the label is present with this value.
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
}

/// A parsed label selector, `key=value,key!=value` (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    /// Parses `key=value,key!=value`; an empty string selects everything.
    pub fn parse(text: &str) -> RegistryResult<Self> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else {
                return Err(RegistryError::InvalidField {
                    field: "selector",
                    rule: format!("{part:?} must be key=value or key!=value"),
                });
            };
            let (LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v)) = &requirement;
            check_label("selector", k, v)?;
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ip: &str, port: u32) -> InstanceSpec {
        InstanceSpec {
            ip: ip.into(),
            port,
            ..Default::default()
        }
    }

    fn rule_field(err: RegistryError) -> &'static str {
        match err {
            RegistryError::InvalidField { field, .. } => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_spec_becomes_a_healthy_instance_with_nacos_style_id() {
        let mut s = spec("10.0.0.1", 8080);
        s.metadata.insert("zone".into(), "z1".into());
        let instance = s.validate().expect("valid");
        assert_eq!(instance.id, "10.0.0.1#8080#DEFAULT");
        assert!(instance.healthy);
        assert_eq!(instance.labels.get("zone").map(String::as_str), Some("z1"));
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(rule_field(spec("", 80).validate().unwrap_err()), "ip");
        assert_eq!(
            rule_field(spec("10.0.0.1", 0).validate().unwrap_err()),
            "port"
        );
        assert_eq!(
            rule_field(spec("10.0.0.1", 70_000).validate().unwrap_err()),
            "port"
        );
        let mut heavy = spec("10.0.0.1", 80);
        heavy.weight = 10_001.0;
        assert_eq!(rule_field(heavy.validate().unwrap_err()), "weight");
        let mut labelled = spec("10.0.0.1", 80);
        labelled.labels.insert("zone".into(), "bad value".into());
        assert_eq!(rule_field(labelled.validate().unwrap_err()), "labels");
        assert_eq!(
            rule_field(ServiceKey::new("", "", "a/b").unwrap_err()),
            "service"
        );
    }

    #[test]
    fn settings_must_be_ordered() {
        let mut s = ServiceSettings {
            unhealthy_after_ms: 5_000,
            ..Default::default()
        };
        assert_eq!(rule_field(s.validate().unwrap_err()), "unhealthy_after_ms");
        s.unhealthy_after_ms = 15_000;
        s.remove_after_ms = 10_000;
        assert_eq!(rule_field(s.validate().unwrap_err()), "remove_after_ms");
        s.remove_after_ms = 30_000;
        s.protect_threshold = 1.5;
        assert_eq!(rule_field(s.validate().unwrap_err()), "protect_threshold");
    }

    #[test]
    fn selectors_parse_and_match() {
        let selector = LabelSelector::parse("zone=z1, lane!=gray").expect("valid");
        let mut labels = BTreeMap::from([("zone".to_string(), "z1".to_string())]);
        assert!(selector.matches(&labels));
        labels.insert("lane".into(), "gray".into());
        assert!(!selector.matches(&labels));
        assert!(LabelSelector::parse("").expect("empty").matches(&labels));
        assert_eq!(
            rule_field(LabelSelector::parse("zone").unwrap_err()),
            "selector"
        );
        assert_eq!(
            rule_field(LabelSelector::parse("zone=a b").unwrap_err()),
            "selector"
        );
    }
}
