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
//! open across reconnects) for its keys (with no keys: the store's keys that exist at that
//! moment) and POSTs each change to the app at `/configuration/{store}/{key}` with the body
//! `{"id": subscription-id, "items": {key: item}}`. Values the app already had when it
//! subscribed are not sent again. Limits: deletions are not delivered; a delivery the app
//! fails is logged, not retried (the next change carries the whole value again).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cella_sdk::config::{pb, ConfigKey, ConfigUpdate, Configs, Identity, Subscription};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::AppChannel;
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

    /// Subscribes the app to changes of `keys` of `store`; returns the subscription id.
    pub async fn subscribe(
        self: &Arc<Self>,
        store: &str,
        keys: Vec<String>,
    ) -> Result<String, SidecarError> {
        let keys = self.resolve_keys(store, keys).await?;
        let held: HashMap<String, u64> = self
            .get(store, keys.clone())
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
        for data_id in &keys {
            builder = builder.watch(self.key(store, data_id));
        }
        let live = builder.start().await.map_err(|e| self.error(store, e))?;
        let (changes, received) = mpsc::unbounded_channel();
        live.on_change(move |update| {
            let _ = changes.send(update.clone());
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

    /// POSTs each change the app does not hold yet to `/configuration/{store}/{key}`.
    async fn forward(
        self: Arc<Self>,
        store: String,
        id: String,
        mut held: HashMap<String, u64>,
        mut changes: mpsc::UnboundedReceiver<ConfigUpdate>,
    ) {
        while let Some(update) = changes.recv().await {
            let data_id = update.key.data_id.clone();
            if held.get(&data_id) == Some(&update.number) {
                continue;
            }
            held.insert(data_id.clone(), update.number);
            let mut items = Map::new();
            items.insert(data_id.clone(), update_item(&update));
            let body = json!({ "id": id, "items": items });
            let path = format!("/configuration/{store}/{data_id}");
            let sent = self
                .app
                .post(
                    &path,
                    "application/json",
                    Bytes::from(body.to_string()),
                    &[],
                )
                .await;
            match sent {
                Ok(answer) if (200..300).contains(&answer.status) => {}
                Ok(answer) => {
                    tracing::warn!(%path, status = answer.status, "the app refused a config change")
                }
                Err(error) => tracing::warn!(%path, %error, "config change not delivered"),
            }
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
    }
}
