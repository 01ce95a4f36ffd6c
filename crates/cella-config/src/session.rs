//! One watching client's view: the configs it watches and the hash of what it holds of
//! each. Given the hub, it answers "what must this client be sent now" — the release its
//! gray status selects, or a deletion — and remembers what it sent. Used by the gRPC watch
//! stream and the Nacos long-polling listener.

use std::collections::HashMap;

use crate::gray::{self, ClientIdentity};
use crate::hub::Hub;
use crate::model::{ConfigKey, Release};

/// Something a client must learn about one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Which config.
    pub key: ConfigKey,
    /// The release it now selects; None if the config no longer exists.
    pub release: Option<Release>,
}

/// A client's watched configs and the hashes it holds ("" = nothing).
#[derive(Debug, Clone)]
pub struct Session {
    client: ClientIdentity,
    held: HashMap<ConfigKey, String>,
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
        }
    }

    /// Whether the session watches `key`.
    pub fn watches(&self, key: &ConfigKey) -> bool {
        self.held.contains_key(key)
    }

    /// The change for `key` if what the client should hold differs from what it holds;
    /// records it as sent.
    pub fn check(&mut self, hub: &Hub, key: &ConfigKey) -> Option<Change> {
        let held = self.held.get_mut(key)?;
        let head = hub.head(key);
        let selected = head.as_deref().map(|h| gray::select(h, &self.client));
        let want = selected.map_or("", |r| r.hash.as_str());
        if want == held.as_str() {
            return None;
        }
        *held = want.to_string();
        Some(Change {
            key: key.clone(),
            release: selected.cloned(),
        })
    }

    /// Changes for every watched config (the first answer, and after lagging).
    pub fn check_all(&mut self, hub: &Hub) -> Vec<Change> {
        let keys: Vec<ConfigKey> = self.held.keys().cloned().collect();
        keys.iter().filter_map(|k| self.check(hub, k)).collect()
    }
}
