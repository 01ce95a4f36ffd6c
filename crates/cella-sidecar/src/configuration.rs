//! Dapr's configuration API over Cella's config center.
//!
//! Mapping: a Dapr store name is a config **namespace**; a Dapr key is a **data id** in the
//! sidecar's config group (`DEFAULT_GROUP` unless `--config-group` says otherwise). An
//! item's `value` is the release content, its `version` the release number, its `metadata`
//! the format, the content hash, the group and whether the release is a gray candidate.
//! Every read and every subscription identifies the sidecar's app (client id
//! `{app-id}@{host}:{port}` and the sidecar's labels), so a gray release reaches the app
//! exactly when its target selects it.
//!
//! Subscriptions: each `subscribe` opens one SDK [`Subscription`] (one push stream, kept
//! open across reconnects) for its keys, or with no keys for the whole store (every config
//! of the namespace's group, those created later included), and POSTs each change to the
//! app at `/configuration/{store}/{key}` with the body `{"id": subscription-id, "items":
//! {key: item}}`. Values the app already had when it subscribed are not sent again.
//!
//! Deletions: Dapr's item has no deleted flag (its stores differ: Redis sends the key with
//! no item at all), so a deleted config is sent as an item with an empty `value` and
//! `version` and the metadata `"deleted": "true"` (and its `group`); an app that treats an
//! empty value as "unset" needs nothing else.
//!
//! Delivery ([`config_push`](crate::config_push)): keys are delivered independently; a
//! delivery the app fails (no answer, or not 2xx) is retried with backoff from 100 ms
//! doubling to 5 s, ten attempts in all, then logged and dropped; a newer change of the key
//! replaces a pending retry, so the app never gets an older value after a newer one.
//! Unsubscribing ends pending retries. Limits: a config deleted between the subscribe's
//! read and the start of its push stream is not reported.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cella_sdk::config::{pb, ConfigKey, ConfigUpdate, Configs, Identity, Subscription};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::AppChannel;
use crate::config_push::Pusher;
use crate::SidecarError;

/// How the sidecar reaches the config center and names its app there.
pub(crate) struct ConfigStores {
    configs: Configs,
    endpoint: String,
    token: Option<String>,
    group: String,
    identity: Identity,
    app: AppChannel,
    watching: Mutex<HashMap<String, Watching>>,
}

/// One live subscription: its push stream and the task that forwards changes to the app.
struct Watching {
    store: String,
    _live: Subscription,
    forwarder: JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// A Dapr configuration item for `release`.
pub(crate) fn item(release: &pb::Release) -> Value {
    json!({
        "value": release.content,
        "version": release.number.to_string(),
        "metadata": {
            "format": release.format,
            "hash": release.hash,
            "group": release.key.as_ref().map(|k| k.group.as_str()).unwrap_or_default(),
            "gray": release.gray.to_string(),
        },
    })
}

/// A Dapr configuration item for a pushed change (the push does not say whether it is gray).
fn update_item(update: &ConfigUpdate) -> Value {
    json!({
        "value": update.content,
        "version": update.number.to_string(),
        "metadata": {"format": update.format, "hash": update.hash, "group": update.key.group},
    })
}

/// The Dapr configuration item sent for a deleted config: empty, and marked deleted.
fn deleted_item(key: &ConfigKey) -> Value {
    json!({
        "value": "",
        "version": "",
        "metadata": {"deleted": "true", "group": key.group},
    })
}

/// What the push stream reported about one config.
enum Pushed {
    Changed(ConfigUpdate),
    Deleted(ConfigKey),
}

impl ConfigStores {
    pub fn new(
        configs: Configs,
        endpoint: String,
        token: Option<String>,
        group: String,
        identity: Identity,
        app: AppChannel,
    ) -> Arc<ConfigStores> {
        Arc::new(ConfigStores {
            configs,
            endpoint,
            token,
            group,
            identity,
            app,
            watching: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, store: &str, data_id: &str) -> ConfigKey {
        ConfigKey::new(store, &self.group, data_id)
    }

    fn error(&self, store: &str, error: cella_sdk::Error) -> SidecarError {
        match error {
            cella_sdk::Error::NotFound { .. } => SidecarError::ConfigStoreNotFound {
                store: store.to_owned(),
            },
            cella_sdk::Error::InvalidArgument { message } => {
                SidecarError::InvalidConfigRequest { message }
            }
            other => SidecarError::ConfigGet {
                store: store.to_owned(),
                message: other.to_string(),
            },
        }
    }

    /// The keys asked for, or every key of the store's group when none are; fails for an
    /// unknown store.
    async fn resolve_keys(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<Vec<String>, SidecarError> {
        if keys.is_empty() {
            let states = self
                .configs
                .list(store, &self.group)
                .await
                .map_err(|e| self.error(store, e))?;
            return Ok(states
                .iter()
                .filter_map(|s| s.current.as_ref().or(s.gray.as_ref()))
                .filter_map(|r| r.key.as_ref().map(|k| k.data_id.clone()))
                .collect());
        }
        let namespaces = self
            .configs
            .list_namespaces()
            .await
            .map_err(|e| self.error(store, e))?;
        if !namespaces.namespaces.iter().any(|n| n.name == store) {
            return Err(SidecarError::ConfigStoreNotFound {
                store: store.to_owned(),
            });
        }
        Ok(keys)
    }

    /// Dapr's item map for `keys` of `store` (all keys when empty), as the app's gray
    /// status selects; keys without a config are left out.
    pub async fn get(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<BTreeMap<String, (u64, Value)>, SidecarError> {
        let keys = self.resolve_keys(store, keys).await?;
        let mut items = BTreeMap::new();
        for data_id in keys {
            match self
                .configs
                .get(&self.key(store, &data_id), &self.identity)
                .await
            {
                Ok(release) => {
                    items.insert(data_id, (release.number, item(&release)));
                }
                Err(cella_sdk::Error::NotFound { .. }) => {}
                Err(error) => return Err(self.error(store, error)),
            }
        }
        Ok(items)
    }

    /// Subscribes the app to changes of `keys` of `store` (none: the whole store); returns
    /// the subscription id.
    pub async fn subscribe(
        self: &Arc<Self>,
        store: &str,
        keys: Vec<String>,
    ) -> Result<String, SidecarError> {
        let keys_asked = keys.clone();
        let keys = self.resolve_keys(store, keys).await?;
        let held: HashMap<String, u64> = self
            .get(store, keys)
            .await?
            .into_iter()
            .map(|(k, (number, _))| (k, number))
            .collect();
        let id = crate::pubsub::new_event_id();
        let mut builder = Subscription::builder(&self.endpoint)
            .client(&self.identity.client_id, self.identity.labels.clone());
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if keys_asked.is_empty() {
            builder = builder.watch_group(store, &self.group);
        }
        for data_id in &keys_asked {
            builder = builder.watch(self.key(store, data_id));
        }
        let live = builder.start().await.map_err(|e| self.error(store, e))?;
        let (changes, received) = mpsc::unbounded_channel();
        let deletions = changes.clone();
        live.on_change(move |update| {
            let _ = changes.send(Pushed::Changed(update.clone()));
        });
        live.on_delete(move |key| {
            let _ = deletions.send(Pushed::Deleted(key.clone()));
        });
        let forwarder =
            tokio::spawn(Arc::clone(self).forward(store.to_owned(), id.clone(), held, received));
        let watching = Watching {
            store: store.to_owned(),
            _live: live,
            forwarder,
        };
        if let Ok(mut all) = self.watching.lock() {
            all.insert(id.clone(), watching);
        }
        Ok(id)
    }

    /// Ends subscription `id` of `store`.
    pub fn unsubscribe(&self, store: &str, id: &str) -> Result<(), SidecarError> {
        let removed = self.watching.lock().ok().and_then(|mut all| {
            if all.get(id).is_some_and(|w| w.store == store) {
                all.remove(id)
            } else {
                None
            }
        });
        match removed {
            Some(_) => Ok(()),
            None => Err(SidecarError::ConfigSubscriptionNotFound {
                store: store.to_owned(),
                id: id.to_owned(),
            }),
        }
    }

    /// Queues each change the app does not hold yet for `/configuration/{store}/{key}`.
    async fn forward(
        self: Arc<Self>,
        store: String,
        id: String,
        mut held: HashMap<String, u64>,
        mut changes: mpsc::UnboundedReceiver<Pushed>,
    ) {
        let mut pusher = Pusher::new(self.app.clone());
        while let Some(pushed) = changes.recv().await {
            let (data_id, item) = match pushed {
                Pushed::Changed(update) => {
                    let data_id = update.key.data_id.clone();
                    if held.insert(data_id.clone(), update.number) == Some(update.number) {
                        continue;
                    }
                    (data_id, update_item(&update))
                }
                Pushed::Deleted(key) => {
                    held.remove(&key.data_id);
                    (key.data_id.clone(), deleted_item(&key))
                }
            };
            let mut items = Map::new();
            items.insert(data_id.clone(), item);
            let body = json!({ "id": id, "items": items });
            pusher.push(
                format!("/configuration/{store}/{data_id}"),
                Bytes::from(body.to_string()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_carry_value_version_and_metadata() {
        let release = pb::Release {
            key: Some(pb::ConfigKey {
                namespace: "prod".into(),
                group: "DEFAULT_GROUP".into(),
                data_id: "feature.flag".into(),
            }),
            number: 7,
            content: "on".into(),
            format: "text".into(),
            hash: "abc".into(),
            gray: true,
            ..Default::default()
        };
        assert_eq!(
            item(&release),
            json!({
                "value": "on",
                "version": "7",
                "metadata": {"format": "text", "hash": "abc", "group": "DEFAULT_GROUP", "gray": "true"},
            })
        );
        let update = ConfigUpdate {
            key: ConfigKey::new("prod", "DEFAULT_GROUP", "feature.flag"),
            number: 8,
            hash: "def".into(),
            format: "text".into(),
            content: "off".into(),
        };
        assert_eq!(update_item(&update)["version"], "8");
        assert_eq!(update_item(&update)["value"], "off");
        assert!(update_item(&update)["metadata"].get("gray").is_none());
        let deleted = deleted_item(&update.key);
        assert_eq!(
            (&deleted["value"], &deleted["version"]),
            (&json!(""), &json!(""))
        );
        assert_eq!(deleted["metadata"]["deleted"], "true");
    }
}
