//! The config center's data model and where it lives in the core.
//!
//! Core key layout (values are JSON of the records below):
//!
//! ```text
//! /cella/config/ns/{ns}                          Namespace (exists = the namespace exists)
//! /cella/config/acl/{ns}                         Acl (absent = the namespace is open)
//! /cella/config/head/{ns}/{group}/{data_id}      Head: current release, gray candidate
//! /cella/config/rel/{ns}/{group}/{data_id}/{n}   Release n, never changed once written
//! /cella/config/audit/{ns}/{unix_ms}/{group}/{data_id}/{n}/{action}   AuditRecord
//! ```
//!
//! A release key and its head are written in one core txn that also checks the head's
//! mod revision and the namespace key, so the head always points at releases that exist and
//! concurrent publishers cannot both win. `{n}` is zero-padded so keys sort by number.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};
use crate::format::Format;

/// The prefix of every config-center key in the core.
pub(crate) const ROOT: &str = "/cella/config/";
/// The prefix of head keys, which the push hub watches.
pub(crate) const HEAD_PREFIX: &str = "/cella/config/head/";
/// The namespace Nacos clients use when they name no tenant; it always exists.
pub const PUBLIC_NAMESPACE: &str = "public";
/// Longest namespace, group or data id.
const MAX_NAME_LEN: usize = 128;

/// Checks a namespace, group or data id: 1–128 of `A-Z a-z 0-9 . _ - :`.
pub(crate) fn check_name(field: &'static str, value: &str) -> ConfigResult<()> {
    if value.is_empty() {
        return Err(ConfigError::InvalidField {
            field,
            rule: "is required".into(),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ConfigError::InvalidField {
            field,
            rule: format!("must be at most {MAX_NAME_LEN} bytes (got {})", value.len()),
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(ConfigError::InvalidField {
            field,
            rule: format!("may hold only letters, digits and . _ - : (found {bad:?})"),
        });
    }
    Ok(())
}

/// Where a config lives: namespace → group → data id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfigKey {
    /// Environment or tenant.
    pub namespace: String,
    /// Group within the namespace.
    pub group: String,
    /// The config's id within the group.
    pub data_id: String,
}

impl ConfigKey {
    /// A key from its three parts (unchecked; see [`ConfigKey::validate`]).
    pub fn new(namespace: &str, group: &str, data_id: &str) -> Self {
        Self {
            namespace: namespace.into(),
            group: group.into(),
            data_id: data_id.into(),
        }
    }

    /// Checks all three parts.
    pub fn validate(&self) -> ConfigResult<()> {
        check_name("namespace", &self.namespace)?;
        check_name("group", &self.group)?;
        check_name("data_id", &self.data_id)
    }

    pub(crate) fn head_key(&self) -> String {
        format!("{HEAD_PREFIX}{self}")
    }

    pub(crate) fn release_prefix(&self) -> String {
        format!("{ROOT}rel/{self}/")
    }

    pub(crate) fn release_key(&self, number: u64) -> String {
        format!("{}{number:020}", self.release_prefix())
    }

    /// Parses a head key back into a config key.
    pub(crate) fn from_head_key(key: &[u8]) -> Option<ConfigKey> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(HEAD_PREFIX)?;
        let mut parts = rest.split('/');
        let (ns, group, id) = (parts.next()?, parts.next()?, parts.next()?);
        parts
            .next()
            .is_none()
            .then(|| ConfigKey::new(ns, group, id))
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// A group of a namespace: what a watch on a whole group follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConfigGroup {
    /// Environment or tenant.
    pub namespace: String,
    /// Group within the namespace.
    pub group: String,
}

impl ConfigGroup {
    /// A group from its two parts (unchecked; see [`ConfigGroup::validate`]).
    pub fn new(namespace: &str, group: &str) -> Self {
        Self {
            namespace: namespace.into(),
            group: group.into(),
        }
    }

    /// Checks both parts.
    pub fn validate(&self) -> ConfigResult<()> {
        check_name("namespace", &self.namespace)?;
        check_name("group", &self.group)
    }

    /// Whether `key` is a config of this group.
    pub fn holds(&self, key: &ConfigKey) -> bool {
        key.namespace == self.namespace && key.group == self.group
    }
}

pub(crate) fn namespace_key(ns: &str) -> String {
    format!("{ROOT}ns/{ns}")
}

pub(crate) fn acl_key(ns: &str) -> String {
    format!("{ROOT}acl/{ns}")
}

pub(crate) fn audit_prefix(ns: &str) -> String {
    format!("{ROOT}audit/{ns}/")
}

/// The exclusive end of the range of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    cella_base::prefix_end(prefix.as_bytes())
}

/// A namespace: an environment or tenant; configs live only in namespaces that exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it was created, ms since the Unix epoch.
    pub created_unix_ms: u64,
}

/// One immutable, numbered release of a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Which config.
    pub key: ConfigKey,
    /// 1, 2, 3 … per config; never reused while the config exists.
    pub number: u64,
    /// The content.
    pub content: String,
    /// Its declared format.
    pub format: Format,
    /// MD5 of the content, lowercase hex.
    pub hash: String,
    /// Who published it.
    pub author: String,
    /// Why.
    pub comment: String,
    /// When, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Published as a gray candidate.
    pub gray: bool,
}

/// Which clients a gray candidate goes to. A client is selected if its id is listed, or
/// every label matches (when labels are given), or its stable hash bucket is below the
/// percentage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GrayTarget {
    /// Labels a client must all carry.
    pub labels: BTreeMap<String, String>,
    /// Client ids selected by name.
    pub client_ids: Vec<String>,
    /// Share of clients, 0–100, chosen by a stable hash of client id and data id.
    pub percentage: Option<u32>,
}

impl GrayTarget {
    /// Checks the target names somebody and the percentage is 0–100.
    pub fn validate(&self) -> ConfigResult<()> {
        if let Some(p) = self.percentage {
            if p > 100 {
                return Err(ConfigError::InvalidField {
                    field: "target.percentage",
                    rule: format!("must be between 0 and 100 (got {p})"),
                });
            }
        }
        if self.labels.is_empty() && self.client_ids.is_empty() && self.percentage.is_none() {
            return Err(ConfigError::InvalidField {
                field: "target",
                rule: "must give labels, client_ids or a percentage".into(),
            });
        }
        Ok(())
    }
}

/// A running gray release: the candidate and who gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gray {
    /// The candidate release (also stored under its release key).
    pub release: Release,
    /// Who gets it.
    pub target: GrayTarget,
}

/// A config's state, stored at its head key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The highest release number used.
    pub latest: u64,
    /// What clients get unless a gray release selects them.
    pub current: Release,
    /// The gray release in progress, if any.
    pub gray: Option<Gray>,
}

/// One token of a namespace's ACL and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AclEntry {
    /// Who the token is, as the audit log shows it.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// get, list, history, diff, watch, audit.
    pub read: bool,
    /// delete configs, change the ACL, delete the namespace.
    pub write: bool,
    /// publish, rollback, gray start / promote / abort.
    pub publish: bool,
}

/// A namespace's ACL; a namespace without one is open.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acl {
    /// The tokens.
    pub entries: Vec<AclEntry>,
}

/// One change, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// Who: the token's name when the namespace has an ACL, else the author given.
    pub actor: String,
    /// publish | rollback | gray-start | gray-promote | gray-abort | delete | acl.
    pub action: String,
    /// Which config (group and data id empty for namespace-wide changes).
    pub key: ConfigKey,
    /// The release it made or affected (0 = none).
    pub release: u64,
    /// The comment given, or what happened.
    pub comment: String,
}

impl AuditRecord {
    pub(crate) fn core_key(&self) -> String {
        let group = if self.key.group.is_empty() {
            "-"
        } else {
            &self.key.group
        };
        let id = if self.key.data_id.is_empty() {
            "-"
        } else {
            &self.key.data_id
        };
        format!(
            "{}{:016}/{group}/{id}/{:020}/{}",
            audit_prefix(&self.key.namespace),
            self.time_unix_ms,
            self.release,
            self.action
        )
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("config records always serialize to JSON")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> ConfigResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ConfigError::Internal(format!("stored {what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_the_documented_alphabet_only() {
        check_name("group", "DEFAULT_GROUP").unwrap();
        check_name("data_id", "app.yaml:v-1").unwrap();
        for bad in ["", "a/b", "sp ace", &"x".repeat(129)] {
            let err = check_name("data_id", bad).unwrap_err();
            assert!(err.to_string().contains("`data_id`"), "{err}");
        }
    }

    #[test]
    fn head_keys_round_trip_and_releases_sort_by_number() {
        let key = ConfigKey::new("prod", "g", "app.json");
        assert_eq!(
            ConfigKey::from_head_key(key.head_key().as_bytes()),
            Some(key.clone())
        );
        assert!(ConfigKey::from_head_key(b"/cella/config/head/a/b").is_none());
        assert!(key.release_key(9) < key.release_key(10));
        assert!(key.release_key(10).starts_with(&key.release_prefix()));
        assert_eq!(prefix_end("a/"), b"a0".to_vec());
    }

    #[test]
    fn gray_targets_need_someone_and_a_percentage_in_range() {
        let err = GrayTarget::default().validate().unwrap_err();
        assert!(err.to_string().contains("`target`"), "{err}");
        let err = GrayTarget {
            percentage: Some(101),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("between 0 and 100"), "{err}");
        GrayTarget {
            percentage: Some(100),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
