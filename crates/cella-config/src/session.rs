//! One watching client's view: the configs it watches, the groups it watches whole, and the
//! hash of what it holds of each config. Given the hub, it answers "what must this client
//! be sent now" — the release its gray status selects, or a deletion — and remembers what it
//! sent. Used by the gRPC watch stream and the Nacos long-polling listener.
//!
//! A watched group covers every config in it, those created later included: a config of
//! the group the client does not hold counts as held with hash "" (nothing), so its
//! creation is a change. A group's config that is deleted is forgotten again, so a session
//! does not grow with configs that come and go.

use std::collections::HashMap;

use crate::gray::{self, ClientIdentity};
use crate::hub::Hub;
use crate::model::{ConfigGroup, ConfigKey, Release};

/// Something a client must learn about one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Which config.
    pub key: ConfigKey,
    /// The release it now selects; None if the config no longer exists.
    pub release: Option<Release>,
}

/// A client's watched configs and groups, and the hashes it holds ("" = nothing).
#[derive(Debug, Clone)]
pub struct Session {
    client: ClientIdentity,
    held: HashMap<ConfigKey, String>,
    groups: Vec<ConfigGroup>,
}

impl Session {
    /// A session for `client` holding `held` (config → hash of the content it has).
    pub fn new(
        client: ClientIdentity,
        held: impl IntoIterator<Item = (ConfigKey, String)>,
    ) -> Self {
        Self {
            client,
            held: held.into_iter().collect(),
            groups: Vec::new(),
        }
    }

    /// The session also watching every config of `groups`, present and future.
    pub fn with_groups(mut self, groups: impl IntoIterator<Item = ConfigGroup>) -> Self {
        self.groups.extend(groups);
        self
    }

    fn in_group(&self, key: &ConfigKey) -> bool {
        self.groups.iter().any(|g| g.holds(key))
    }

    /// Whether the session watches `key`, by name or by its group.
    pub fn watches(&self, key: &ConfigKey) -> bool {
        self.held.contains_key(key) || self.in_group(key)
    }

    /// The change for `key` if what the client should hold differs from what it holds;
    /// records it as sent.
    pub fn check(&mut self, hub: &Hub, key: &ConfigKey) -> Option<Change> {
        let in_group = self.in_group(key);
        let held = match self.held.get(key) {
            Some(hash) => hash.as_str(),
            None if in_group => "",
            None => return None,
        };
        let head = hub.head(key);
        let selected = head.as_deref().map(|h| gray::select(h, &self.client));
        let want = selected.map_or("", |r| r.hash.as_str());
        if want == held {
            return None;
        }
        if want.is_empty() && in_group {
            self.held.remove(key);
        } else {
            self.held.insert(key.clone(), want.to_string());
        }
        Some(Change {
            key: key.clone(),
            release: selected.cloned(),
        })
    }

    /// Changes for every watched config (the first answer, and after lagging).
    pub fn check_all(&mut self, hub: &Hub) -> Vec<Change> {
        let mut keys: Vec<ConfigKey> = self.held.keys().cloned().collect();
        for group in &self.groups {
            keys.extend(
                hub.keys_in(group)
                    .into_iter()
                    .filter(|k| !self.held.contains_key(k)),
            );
        }
        keys.iter().filter_map(|k| self.check(hub, k)).collect()
    }
}
