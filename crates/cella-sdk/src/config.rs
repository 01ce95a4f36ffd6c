//! The config center: calls ([`Configs`]) and live, cached subscriptions ([`Subscription`]).
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! use cella_sdk::config::{ConfigKey, Subscription};
//! #[derive(serde::Deserialize)]
//! struct App { port: u16 }
//! let key = ConfigKey::new("prod", "web", "app.yaml");
//! let live = Subscription::builder("127.0.0.1:7070")
//!     .client("pod-1", [("zone", "eu-1")])
//!     .cache_dir("./config-cache")
//!     .watch(key.clone())
//!     .start()
//!     .await?;
//! live.on_change(|update| println!("{} is now release {}", update.key, update.number));
//! let app: Option<App> = live.get_typed(&key)?;
//! # Ok(()) }
//! ```
//!
//! A [`Subscription`] watches configs by key and whole groups (a group covers its configs
//! created later too). It keeps one watch stream open to the server and reconnects when it
//! drops, sending the hashes it holds so the server sends only what changed, deletions made
//! meanwhile included. Every config it
//! receives is written to the cache directory before callbacks run, so an app that starts
//! while the server is unreachable serves its last config from disk.
//!
//! Cache layout: `{cache_dir}/{namespace}/{group}/{data_id}.json`, the JSON of a
//! [`CachedConfig`]. Each write goes to a `.tmp` file that is fsynced and renamed over the
//! old one, so after a crash a cache file holds either the old or the new config, never a
//! mix; a leftover `.tmp` is ignored. A file that does not parse is ignored (the server's
//! copy replaces it on the next connection).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cella_proto::cella::config::v1::config_service_client::ConfigServiceClient;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Transport;
use crate::{Client, Error, Result};

/// The config center's wire messages (`cella.config.v1`).
pub use cella_proto::cella::config::v1 as pb;

/// Where a config lives: namespace → group → data id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfigKey {
    /// Environment or tenant.
    pub namespace: String,
    /// Group within the namespace.
    pub group: String,
    /// The config's id.
    pub data_id: String,
}

impl ConfigKey {
    /// A key from its three parts.
    pub fn new(namespace: &str, group: &str, data_id: &str) -> Self {
        Self {
            namespace: namespace.into(),
            group: group.into(),
            data_id: data_id.into(),
        }
    }

    fn wire(&self) -> Option<pb::ConfigKey> {
        Some(pb::ConfigKey {
            namespace: self.namespace.clone(),
            group: self.group.clone(),
            data_id: self.data_id.clone(),
        })
    }

    fn from_wire(key: Option<&pb::ConfigKey>) -> Option<ConfigKey> {
        key.map(|k| ConfigKey::new(&k.namespace, &k.group, &k.data_id))
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// Who this client is; gray releases select on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Stable instance id.
    pub client_id: String,
    /// Labels such as `zone=eu-1`.
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    fn wire(&self) -> Option<pb::ClientIdentity> {
        if self.client_id.is_empty() && self.labels.is_empty() {
            return None;
        }
        Some(pb::ClientIdentity {
            client_id: self.client_id.clone(),
            labels: self.labels.clone().into_iter().collect(),
        })
    }
}

/// Decodes `content` of `format` into `T`: json, yaml, toml; properties as a flat map of
/// `key=value` lines; text only into a string.
pub fn decode<T: DeserializeOwned>(key: &ConfigKey, format: &str, content: &str) -> Result<T> {
    let fail = |reason: String| Error::Decode {
        key: key.to_string(),
        format: format.to_string(),
        reason,
    };
    match format {
        "json" => serde_json::from_str(content).map_err(|e| fail(e.to_string())),
        "yaml" => serde_yaml::from_str(content).map_err(|e| fail(e.to_string())),
        "toml" => toml::from_str(content).map_err(|e| fail(e.to_string())),
        "properties" => {
            let map: serde_json::Map<String, serde_json::Value> = content
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
                .map(|l| {
                    let at = l.find(['=', ':']).unwrap_or(l.len());
                    let value = l.get(at + 1..).unwrap_or("").trim();
                    (
                        l[..at].trim().to_string(),
                        serde_json::Value::String(value.into()),
                    )
                })
                .collect();
            serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| fail(e.to_string()))
        }
        _ => serde_json::from_value(serde_json::Value::String(content.into()))
            .map_err(|e| fail(e.to_string())),
    }
}

/// What to publish besides the content.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// text | json | yaml | toml | properties (empty = text).
    pub format: String,
    /// Who publishes.
    pub author: String,
    /// Why.
    pub comment: String,
    /// Publish only if this is still the current release (0 = config must not exist).
    pub base_release: Option<u64>,
}

/// Config center calls over the client's connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Configs {
    rpc: ConfigServiceClient<Transport>,
}

impl Configs {
    pub(crate) fn new(transport: Transport) -> Self {
        Self {
            rpc: ConfigServiceClient::new(transport),
        }
    }

    /// Creates a namespace.
    pub async fn create_namespace(&self, name: &str, description: &str) -> Result<pb::Namespace> {
        let req = pb::CreateNamespaceRequest {
            name: name.into(),
            description: description.into(),
        };
        Ok(self.rpc.clone().create_namespace(req).await?.into_inner())
    }

    /// Every namespace.
    pub async fn list_namespaces(&self) -> Result<pb::ListNamespacesResponse> {
        let req = pb::ListNamespacesRequest {};
        Ok(self.rpc.clone().list_namespaces(req).await?.into_inner())
    }

    /// Publishes `content` as the new current release.
    pub async fn publish(
        &self,
        key: &ConfigKey,
        content: &str,
        options: PublishOptions,
    ) -> Result<pb::Release> {
        let req = pb::PublishRequest {
            key: key.wire(),
            content: content.into(),
            format: options.format,
            author: options.author,
            comment: options.comment,
            base_release: options.base_release,
        };
        Ok(self.rpc.clone().publish(req).await?.into_inner())
    }

    /// What `identity` receives now (the gray candidate if it is targeted).
    pub async fn get(&self, key: &ConfigKey, identity: &Identity) -> Result<pb::Release> {
        self.get_release(key, identity, None).await
    }

    /// Release `number` of a config.
    pub async fn get_number(&self, key: &ConfigKey, number: u64) -> Result<pb::Release> {
        self.get_release(key, &Identity::default(), Some(number))
            .await
    }

    async fn get_release(
        &self,
        key: &ConfigKey,
        identity: &Identity,
        number: Option<u64>,
    ) -> Result<pb::Release> {
        let req = pb::GetConfigRequest {
            key: key.wire(),
            client: identity.wire(),
            release: number,
        };
        let resp = self.rpc.clone().get(req).await?.into_inner();
        resp.release.ok_or(Error::StreamClosed {
            stream: "config get",
        })
    }

    /// What `identity` receives now, decoded by the config's format.
    pub async fn get_typed<T: DeserializeOwned>(
        &self,
        key: &ConfigKey,
        identity: &Identity,
    ) -> Result<T> {
        let release = self.get(key, identity).await?;
        decode(key, &release.format, &release.content)
    }

    /// Current release and gray candidate.
    pub async fn state(&self, key: &ConfigKey) -> Result<pb::ConfigState> {
        let req = pb::GetStateRequest { key: key.wire() };
        Ok(self.rpc.clone().get_state(req).await?.into_inner())
    }

    /// Every config of `namespace` (of one `group`; empty = every group), with its current
    /// release and gray candidate. Fails with not found for an unknown namespace.
    pub async fn list(&self, namespace: &str, group: &str) -> Result<Vec<pb::ConfigState>> {
        let req = pb::ListConfigsRequest {
            namespace: namespace.into(),
            group: group.into(),
        };
        Ok(self.rpc.clone().list(req).await?.into_inner().configs)
    }

    /// Releases, newest first, without content (`limit` 0 = 100).
    pub async fn history(&self, key: &ConfigKey, limit: u32) -> Result<Vec<pb::Release>> {
        let req = pb::HistoryRequest {
            key: key.wire(),
            limit,
        };
        Ok(self.rpc.clone().history(req).await?.into_inner().releases)
    }

    /// Line diff from release `from` to release `to`.
    pub async fn diff(&self, key: &ConfigKey, from: u64, to: u64) -> Result<pb::DiffResponse> {
        let req = pb::DiffRequest {
            key: key.wire(),
            from_release: from,
            to_release: to,
        };
        Ok(self.rpc.clone().diff(req).await?.into_inner())
    }

    /// Publishes a new release equal to release `to`.
    pub async fn rollback(
        &self,
        key: &ConfigKey,
        to: u64,
        options: PublishOptions,
    ) -> Result<pb::Release> {
        let req = pb::RollbackRequest {
            key: key.wire(),
            to_release: to,
            author: options.author,
            comment: options.comment,
            base_release: options.base_release,
        };
        Ok(self.rpc.clone().rollback(req).await?.into_inner())
    }

    /// Starts a gray release of `content` for `target`.
    pub async fn start_gray(
        &self,
        key: &ConfigKey,
        content: &str,
        target: pb::GrayTarget,
        options: PublishOptions,
    ) -> Result<pb::Release> {
        let req = pb::StartGrayRequest {
            key: key.wire(),
            content: content.into(),
            format: options.format,
            author: options.author,
            comment: options.comment,
            target: Some(target),
            base_release: options.base_release,
        };
        Ok(self.rpc.clone().start_gray(req).await?.into_inner())
    }

    /// Makes the gray candidate current.
    pub async fn promote_gray(&self, key: &ConfigKey, author: &str) -> Result<pb::Release> {
        let req = pb::GrayActionRequest {
            key: key.wire(),
            author: author.into(),
        };
        Ok(self.rpc.clone().promote_gray(req).await?.into_inner())
    }

    /// Drops the gray candidate.
    pub async fn abort_gray(&self, key: &ConfigKey, author: &str) -> Result<pb::ConfigState> {
        let req = pb::GrayActionRequest {
            key: key.wire(),
            author: author.into(),
        };
        Ok(self.rpc.clone().abort_gray(req).await?.into_inner())
    }

    /// Deletes a config and its history; false if it did not exist.
    pub async fn delete(&self, key: &ConfigKey, author: &str) -> Result<bool> {
        let req = pb::DeleteConfigRequest {
            key: key.wire(),
            author: author.into(),
        };
        Ok(self.rpc.clone().delete(req).await?.into_inner().deleted)
    }

    /// A namespace's audit log, newest first (`limit` 0 = 100).
    pub async fn audit(&self, namespace: &str, limit: u32) -> Result<Vec<pb::AuditEntry>> {
        let req = pb::AuditRequest {
            namespace: namespace.into(),
            limit,
        };
        Ok(self.rpc.clone().audit(req).await?.into_inner().entries)
    }

    /// Opens a raw watch stream on the `held` configs (with the hashes held) and every
    /// config of `groups`: first what differs from what is held, then changes.
    pub async fn watch(
        &self,
        identity: &Identity,
        held: impl IntoIterator<Item = (ConfigKey, String)>,
        groups: Vec<pb::WatchedGroup>,
    ) -> Result<tonic::Streaming<pb::WatchResponse>> {
        let req = pb::WatchRequest {
            client: identity.wire(),
            configs: held
                .into_iter()
                .map(|(k, hash)| pb::WatchedConfig {
                    key: k.wire(),
                    hash,
                })
                .collect(),
            groups,
        };
        Ok(self.rpc.clone().watch(req).await?.into_inner())
    }
}

/// A config as a subscription holds it (and as the disk cache stores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedConfig {
    /// Which config.
    pub key: ConfigKey,
    /// Its release number.
    pub number: u64,
    /// MD5 of the content.
    pub hash: String,
    /// Its format.
    pub format: String,
    /// The content.
    pub content: String,
}

/// What a change callback receives.
pub type ConfigUpdate = CachedConfig;

type Callback = Box<dyn Fn(&ConfigUpdate) + Send + Sync>;
type DeleteCallback = Box<dyn Fn(&ConfigKey) + Send + Sync>;

/// The change and deletion callbacks, called in the order changes arrive.
#[derive(Default)]
struct Callbacks {
    changed: Vec<Callback>,
    deleted: Vec<DeleteCallback>,
}

struct Shared {
    configs: RwLock<HashMap<ConfigKey, CachedConfig>>,
    callbacks: Mutex<Callbacks>,
    updates: watch::Sender<u64>,
    connected: watch::Sender<bool>,
    cache_dir: Option<PathBuf>,
}

/// Options for [`Subscription::start`].
#[derive(Debug, Clone)]
pub struct SubscriptionBuilder {
    endpoint: String,
    token: Option<String>,
    identity: Identity,
    cache_dir: Option<PathBuf>,
    keys: Vec<ConfigKey>,
    groups: Vec<pb::WatchedGroup>,
    retry_pause: Duration,
}

impl SubscriptionBuilder {
    /// Identifies this client (id and labels) for gray releases.
    pub fn client<K: Into<String>, V: Into<String>>(
        mut self,
        client_id: &str,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.identity = Identity {
            client_id: client_id.into(),
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        };
        self
    }

    /// Sends `authorization: Bearer <token>`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Keeps a copy of every config under `dir` and starts from it.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Adds a config to watch.
    pub fn watch(mut self, key: ConfigKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds a whole group to watch: every config of `group` in `namespace`, those created
    /// after the subscription started included.
    pub fn watch_group(mut self, namespace: &str, group: &str) -> Self {
        self.groups.push(pb::WatchedGroup {
            namespace: namespace.into(),
            group: group.into(),
        });
        self
    }

    /// Whether `key` is one of the watched groups' configs.
    fn in_group(&self, key: &ConfigKey) -> bool {
        self.groups
            .iter()
            .any(|g| g.namespace == key.namespace && g.group == key.group)
    }

    /// Pause between reconnection attempts (default 500 ms).
    pub fn retry_pause(mut self, pause: Duration) -> Self {
        self.retry_pause = pause;
        self
    }

    /// Loads the cache, then follows the server in the background (reconnecting as needed).
    /// Returns at once; use [`Subscription::wait_connected`] to wait for the first answer.
    pub async fn start(self) -> Result<Subscription> {
        let mut configs = HashMap::new();
        if let Some(dir) = &self.cache_dir {
            for key in &self.keys {
                if let Some(cached) = read_cache(dir, key).await {
                    configs.insert(key.clone(), cached);
                }
            }
            for group in &self.groups {
                for cached in read_cached_group(dir, group).await {
                    configs.insert(cached.key.clone(), cached);
                }
            }
        }
        let (updates, _) = watch::channel(0);
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            configs: RwLock::new(configs),
            callbacks: Mutex::new(Callbacks::default()),
            updates,
            connected,
            cache_dir: self.cache_dir.clone(),
        });
        let task = tokio::spawn(follow(self, Arc::clone(&shared)));
        Ok(Subscription { shared, task })
    }
}

/// Live configs: what the server last sent (or the disk cache held), kept current by one
/// watch stream that reconnects on its own. Dropping it stops the stream.
pub struct Subscription {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Starts configuring a subscription to the node at `endpoint`.
    pub fn builder(endpoint: &str) -> SubscriptionBuilder {
        SubscriptionBuilder {
            endpoint: endpoint.into(),
            token: None,
            identity: Identity::default(),
            cache_dir: None,
            keys: Vec::new(),
            groups: Vec::new(),
            retry_pause: Duration::from_millis(500),
        }
    }

    /// The config as last received (or loaded from the cache).
    pub fn get(&self, key: &ConfigKey) -> Option<CachedConfig> {
        self.shared.configs.read().ok()?.get(key).cloned()
    }

    /// The config decoded by its format into `T`.
    pub fn get_typed<T: DeserializeOwned>(&self, key: &ConfigKey) -> Result<Option<T>> {
        self.get(key)
            .map(|c| decode(key, &c.format, &c.content))
            .transpose()
    }

    /// Calls `f` after each change is applied (and cached).
    pub fn on_change(&self, f: impl Fn(&ConfigUpdate) + Send + Sync + 'static) {
        if let Ok(mut callbacks) = self.shared.callbacks.lock() {
            callbacks.changed.push(Box::new(f));
        }
    }

    /// Calls `f` with the key of each watched config deleted on the server, after the
    /// deletion is applied (and removed from the cache). Changes and deletions reach the
    /// callbacks in the order the server sent them.
    pub fn on_delete(&self, f: impl Fn(&ConfigKey) + Send + Sync + 'static) {
        if let Ok(mut callbacks) = self.shared.callbacks.lock() {
            callbacks.deleted.push(Box::new(f));
        }
    }

    /// Whether the watch stream is open now.
    pub fn is_connected(&self) -> bool {
        *self.shared.connected.borrow()
    }

    /// Waits until the stream is open and its first answer applied, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.connected.subscribe();
        let opened = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await,
            Ok(Ok(_))
        );
        opened
    }

    /// Waits until `pred` holds for the configs, rechecking after each change, at most
    /// `timeout`; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Subscription) -> bool,
    ) -> bool {
        let mut rx = self.shared.updates.subscribe();
        let wait = async {
            loop {
                if pred(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && pred(self)
    }
}

/// Connects, watches, applies; on any failure waits and reconnects, forever.
async fn follow(options: SubscriptionBuilder, shared: Arc<Shared>) {
    loop {
        if let Err(e) = follow_once(&options, &shared).await {
            tracing::debug!(error = %e, "config subscription: reconnecting");
        }
        shared.connected.send_replace(false);
        tokio::time::sleep(options.retry_pause).await;
    }
}

async fn follow_once(options: &SubscriptionBuilder, shared: &Shared) -> Result<()> {
    let mut builder = Client::builder(&options.endpoint).connect_timeout(Duration::from_secs(2));
    if let Some(token) = &options.token {
        builder = builder.token(token);
    }
    let client = builder.connect().await?;
    let held: Vec<(ConfigKey, String)> = {
        let configs = shared.configs.read().map_err(|_| Error::StreamClosed {
            stream: "config watch",
        })?;
        // The group's configs held are listed too, so the server reports their deletions.
        let mut held: Vec<(ConfigKey, String)> = options
            .keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    configs.get(k).map(|c| c.hash.clone()).unwrap_or_default(),
                )
            })
            .collect();
        held.extend(
            configs
                .values()
                .filter(|c| options.in_group(&c.key) && !options.keys.contains(&c.key))
                .map(|c| (c.key.clone(), c.hash.clone())),
        );
        held
    };
    let mut stream = client
        .config()
        .watch(&options.identity, held, options.groups.clone())
        .await?;
    let mut first = true;
    while let Some(resp) = stream.message().await? {
        for change in resp.changes {
            apply(shared, change).await;
        }
        if first {
            shared.connected.send_replace(true);
            first = false;
        }
    }
    Err(Error::StreamClosed {
        stream: "config watch",
    })
}

/// Applies one change: disk, then memory, then callbacks; so whatever the app has seen in
/// memory is already in the cache an app restarted now would start from.
async fn apply(shared: &Shared, change: pb::ConfigChange) {
    let Some(key) = ConfigKey::from_wire(change.key.as_ref()) else {
        return;
    };
    let update = change
        .release
        .filter(|_| !change.deleted)
        .map(|r| CachedConfig {
            key: key.clone(),
            number: r.number,
            hash: r.hash,
            format: r.format,
            content: r.content,
        });
    if let Some(dir) = &shared.cache_dir {
        let written = match &update {
            Some(c) => write_cache(dir, c).await,
            None => remove_cache(dir, &key).await,
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "config subscription: cache not updated");
        }
    }
    if let Ok(mut configs) = shared.configs.write() {
        match &update {
            Some(c) => configs.insert(key.clone(), c.clone()),
            None => configs.remove(&key),
        };
    }
    if let Ok(callbacks) = shared.callbacks.lock() {
        match &update {
            Some(update) => callbacks.changed.iter().for_each(|f| f(update)),
            None => callbacks.deleted.iter().for_each(|f| f(&key)),
        }
    }
    shared.updates.send_modify(|n| *n += 1);
}

fn cache_path(dir: &Path, key: &ConfigKey) -> PathBuf {
    dir.join(&key.namespace)
        .join(&key.group)
        .join(format!("{}.json", key.data_id))
}

async fn read_cache(dir: &Path, key: &ConfigKey) -> Option<CachedConfig> {
    let bytes = tokio::fs::read(cache_path(dir, key)).await.ok()?;
    serde_json::from_slice::<CachedConfig>(&bytes)
        .ok()
        .filter(|c| c.key == *key)
}

/// Every cached config of `group` (files that do not parse or name another key are skipped).
async fn read_cached_group(dir: &Path, group: &pb::WatchedGroup) -> Vec<CachedConfig> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir.join(&group.namespace).join(&group.group)).await
    else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some(data_id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let key = ConfigKey::new(&group.namespace, &group.group, data_id);
        if let Some(cached) = read_cache(dir, &key).await {
            found.push(cached);
        }
    }
    found
}

async fn write_cache(dir: &Path, config: &CachedConfig) -> Result<()> {
    let path = cache_path(dir, &config.key);
    let fail = |e: std::io::Error| Error::Cache {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(fail)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::Cache {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let file = tokio::fs::File::create(&tmp).await.map_err(fail)?;
    let mut file = file;
    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes)
        .await
        .map_err(fail)?;
    file.sync_all().await.map_err(fail)?;
    tokio::fs::rename(&tmp, &path).await.map_err(fail)
}

async fn remove_cache(dir: &Path, key: &ConfigKey) -> Result<()> {
    match tokio::fs::remove_file(cache_path(dir, key)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Cache {
            path: cache_path(dir, key).display().to_string(),
            reason: e.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct App {
        port: u16,
        name: String,
    }

    #[test]
    fn typed_decoding_follows_the_format() {
        let key = ConfigKey::new("n", "g", "d");
        let want = App {
            port: 80,
            name: "a".into(),
        };
        assert_eq!(
            decode::<App>(&key, "json", r#"{"port": 80, "name": "a"}"#).unwrap(),
            want
        );
        assert_eq!(
            decode::<App>(&key, "yaml", "port: 80\nname: a\n").unwrap(),
            want
        );
        assert_eq!(
            decode::<App>(&key, "toml", "port = 80\nname = \"a\"\n").unwrap(),
            want
        );
        let props: BTreeMap<String, String> =
            decode(&key, "properties", "# c\nport=80\nname : a\n").unwrap();
        assert_eq!(props["port"], "80");
        assert_eq!(props["name"], "a");
        assert_eq!(decode::<String>(&key, "text", "hello").unwrap(), "hello");
        let err = decode::<App>(&key, "json", "{}").unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_cache_round_trips_reads_whole_groups_and_ignores_other_keys_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = ConfigKey::new("n", "g", "app.json");
        let config = CachedConfig {
            key: key.clone(),
            number: 3,
            hash: "h".into(),
            format: "json".into(),
            content: "{}".into(),
        };
        write_cache(dir.path(), &config).await.unwrap();
        assert_eq!(read_cache(dir.path(), &key).await, Some(config.clone()));
        assert_eq!(
            read_cache(dir.path(), &ConfigKey::new("n", "g", "other")).await,
            None
        );
        let neighbour = CachedConfig {
            key: ConfigKey::new("n", "g", "db.yaml"),
            ..config.clone()
        };
        write_cache(dir.path(), &neighbour).await.unwrap();
        let elsewhere = CachedConfig {
            key: ConfigKey::new("n", "h", "app.json"),
            ..config.clone()
        };
        write_cache(dir.path(), &elsewhere).await.unwrap();
        let group = pb::WatchedGroup {
            namespace: "n".into(),
            group: "g".into(),
        };
        let mut cached = read_cached_group(dir.path(), &group).await;
        cached.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(cached, [config.clone(), neighbour]);
        remove_cache(dir.path(), &key).await.unwrap();
        assert_eq!(read_cache(dir.path(), &key).await, None);
        remove_cache(dir.path(), &key).await.unwrap();
    }
}
