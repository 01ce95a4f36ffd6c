//! The config center's domain service: every operation, with no transport. Reads go to the
//! core linearizably; each change is one core txn that checks the namespace still exists
//! and the head is unchanged since it was read (retried a few times on a concurrent
//! change), and writes the release, the head and an audit record together.

use std::sync::Arc;

use cella_base::Clock;
use cella_core::Core;
use cella_proto::etcdserverpb as pb;
use serde::{Deserialize, Serialize};

use crate::acl::{self, Caller, Permission};
use crate::decide::{self, Draft, Plan};
use crate::diff::{diff_lines, DiffLine};
use crate::error::{ConfigError, ConfigResult};
use crate::format::Format;
use crate::gray::{self, ClientIdentity};
use crate::model::{
    self, acl_key, audit_prefix, namespace_key, Acl, AuditRecord, ConfigKey, GrayTarget, Head,
    Namespace, Release, HEAD_PREFIX, PUBLIC_NAMESPACE,
};
use crate::store::{self, Order};

/// How often a change is retried when another writer changed the config in between.
const MAX_ATTEMPTS: usize = 16;

/// Settings of the config center; the `[config]` table of the server's TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigSettings {
    /// Largest content of one release, in bytes. A head holds the current release and a
    /// gray candidate, so twice this must fit in the core's value limit.
    pub max_content_bytes: usize,
}

impl Default for ConfigSettings {
    fn default() -> Self {
        Self {
            max_content_bytes: 512 * 1024,
        }
    }
}

/// The publish request: what, in which format, by whom, on which base.
#[derive(Debug, Clone, Default)]
pub struct PublishInput {
    /// Which config.
    pub key: ConfigKey,
    /// The content.
    pub content: String,
    /// Its format name (empty = text).
    pub format: String,
    /// Who publishes (the audit log prefers the token's name when there is an ACL).
    pub author: String,
    /// Why.
    pub comment: String,
    /// Publish only if this is still the current release (0 = config must not exist).
    pub base: Option<u64>,
}

/// The config center over one core. Cheap to clone.
#[derive(Clone)]
pub struct ConfigService {
    core: Core,
    clock: Arc<dyn Clock>,
    settings: ConfigSettings,
}

impl ConfigService {
    /// A service over `core`; `clock` counts from the Unix epoch ([`UnixClock`] in a server).
    pub fn new(core: Core, clock: Arc<dyn Clock>, settings: ConfigSettings) -> Self {
        Self {
            core,
            clock,
            settings,
        }
    }

    /// The core this service stores in.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The settings in force.
    pub fn settings(&self) -> &ConfigSettings {
        &self.settings
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }

    // ---- namespaces -----------------------------------------------------------------

    /// Creates a namespace; an existing one is an error.
    pub async fn create_namespace(&self, name: &str, description: &str) -> ConfigResult<Namespace> {
        model::check_name("name", name)?;
        if name == PUBLIC_NAMESPACE {
            return Err(ConfigError::NamespaceExists {
                namespace: name.into(),
            });
        }
        let ns = Namespace {
            name: name.into(),
            description: description.into(),
            created_unix_ms: self.now_ms(),
        };
        let key = namespace_key(name);
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![store::mod_is(&key, 0)],
                success: vec![store::put(&key, model::encode(&ns))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ConfigError::NamespaceExists {
                namespace: name.into(),
            });
        }
        Ok(ns)
    }

    /// Every namespace, `public` first.
    pub async fn list_namespaces(&self) -> ConfigResult<Vec<Namespace>> {
        let (kvs, _) = store::list(
            &self.core,
            &format!("{}ns/", model::ROOT),
            0,
            Order::KeyAscending,
        )
        .await?;
        let mut out = vec![Namespace {
            name: PUBLIC_NAMESPACE.into(),
            description: "the default namespace (Nacos's empty tenant)".into(),
            created_unix_ms: 0,
        }];
        for (_, v) in kvs {
            out.push(model::decode("namespace", &v)?);
        }
        Ok(out)
    }

    /// Deletes an empty namespace and its ACL.
    pub async fn delete_namespace(&self, caller: &Caller, name: &str) -> ConfigResult<()> {
        model::check_name("name", name)?;
        if name == PUBLIC_NAMESPACE {
            return Err(ConfigError::InvalidField {
                field: "name",
                rule: "must not be \"public\": the public namespace cannot be deleted".into(),
            });
        }
        self.require_namespace(name).await?;
        self.authorize(caller, name, Permission::Write).await?;
        if store::any_under(&self.core, &format!("{HEAD_PREFIX}{name}/")).await? {
            return Err(ConfigError::NamespaceNotEmpty {
                namespace: name.into(),
            });
        }
        self.core
            .txn(pb::TxnRequest {
                compare: vec![],
                success: vec![
                    store::delete(&namespace_key(name)),
                    store::delete(&acl_key(name)),
                ],
                failure: vec![],
            })
            .await?;
        Ok(())
    }

    /// NotFound unless the namespace exists.
    pub async fn require_namespace(&self, name: &str) -> ConfigResult<()> {
        if name == PUBLIC_NAMESPACE
            || store::get(&self.core, &namespace_key(name))
                .await?
                .is_some()
        {
            return Ok(());
        }
        Err(ConfigError::NamespaceNotFound {
            namespace: name.into(),
        })
    }

    // ---- access ---------------------------------------------------------------------

    async fn load_acl(&self, namespace: &str) -> ConfigResult<Option<Acl>> {
        acl_from(store::get(&self.core, &acl_key(namespace)).await?)
    }

    /// Checks `caller` may do `permission` in `namespace`; returns the token's name if the
    /// namespace has an ACL.
    pub async fn authorize(
        &self,
        caller: &Caller,
        namespace: &str,
        permission: Permission,
    ) -> ConfigResult<Option<String>> {
        let acl = self.load_acl(namespace).await?;
        acl::check(acl.as_ref(), caller, namespace, permission)
    }

    /// Sets (or, with no entries, removes) a namespace's ACL.
    pub async fn set_acl(
        &self,
        caller: &Caller,
        namespace: &str,
        entries: Vec<model::AclEntry>,
    ) -> ConfigResult<Acl> {
        self.require_namespace(namespace).await?;
        let actor = self.authorize(caller, namespace, Permission::Write).await?;
        let acl = Acl { entries };
        acl::validate(&acl)?;
        let audit = AuditRecord {
            time_unix_ms: self.now_ms(),
            actor: actor.unwrap_or_else(|| "anonymous".into()),
            action: "acl".into(),
            key: ConfigKey::new(namespace, "", ""),
            release: 0,
            comment: format!("{} token(s)", acl.entries.len()),
        };
        let key = acl_key(namespace);
        let write = if acl.entries.is_empty() {
            store::delete(&key)
        } else {
            store::put(&key, model::encode(&acl))
        };
        self.core
            .txn(pb::TxnRequest {
                compare: vec![],
                success: vec![write, store::put(&audit.core_key(), model::encode(&audit))],
                failure: vec![],
            })
            .await?;
        Ok(acl)
    }

    /// A namespace's ACL (empty when open); needs read.
    pub async fn get_acl(&self, caller: &Caller, namespace: &str) -> ConfigResult<Acl> {
        self.require_namespace(namespace).await?;
        self.authorize(caller, namespace, Permission::Read).await?;
        Ok(self.load_acl(namespace).await?.unwrap_or_default())
    }

    /// The newest audit records of a namespace, newest first; needs read.
    pub async fn audit(
        &self,
        caller: &Caller,
        namespace: &str,
        limit: u32,
    ) -> ConfigResult<Vec<AuditRecord>> {
        self.require_namespace(namespace).await?;
        self.authorize(caller, namespace, Permission::Read).await?;
        let limit = if limit == 0 { 100 } else { limit };
        let (kvs, _) = store::list(
            &self.core,
            &audit_prefix(namespace),
            limit as i64,
            Order::NewestFirst,
        )
        .await?;
        kvs.iter()
            .map(|(_, v)| model::decode("audit record", v))
            .collect()
    }

    // ---- reads ----------------------------------------------------------------------

    /// A config's head and its mod revision, or None if it does not exist.
    pub(crate) async fn head(&self, key: &ConfigKey) -> ConfigResult<Option<(Head, i64)>> {
        head_from(store::get(&self.core, &key.head_key()).await?)
    }

    async fn existing_head(&self, key: &ConfigKey) -> ConfigResult<Head> {
        match self.head(key).await? {
            Some((h, _)) => Ok(h),
            None => {
                self.require_namespace(&key.namespace).await?;
                Err(ConfigError::ConfigNotFound {
                    key: key.to_string(),
                })
            }
        }
    }

    async fn readable(&self, caller: &Caller, key: &ConfigKey) -> ConfigResult<()> {
        key.validate()?;
        self.authorize(caller, &key.namespace, Permission::Read)
            .await?;
        Ok(())
    }

    /// What `client` receives now, or release `number` if given; needs read.
    pub async fn get(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        client: &ClientIdentity,
        number: Option<u64>,
    ) -> ConfigResult<Release> {
        self.readable(caller, key).await?;
        match number {
            Some(n) => self.release(key, n).await,
            None => Ok(gray::select(&self.existing_head(key).await?, client).clone()),
        }
    }

    /// A config's state: current release and gray candidate; needs read.
    pub async fn state(&self, caller: &Caller, key: &ConfigKey) -> ConfigResult<Head> {
        self.readable(caller, key).await?;
        self.existing_head(key).await
    }

    /// Every config of a namespace (of one group if given); needs read.
    pub async fn list(
        &self,
        caller: &Caller,
        namespace: &str,
        group: &str,
    ) -> ConfigResult<Vec<Head>> {
        model::check_name("namespace", namespace)?;
        self.require_namespace(namespace).await?;
        self.authorize(caller, namespace, Permission::Read).await?;
        let prefix = if group.is_empty() {
            format!("{HEAD_PREFIX}{namespace}/")
        } else {
            model::check_name("group", group)?;
            format!("{HEAD_PREFIX}{namespace}/{group}/")
        };
        let (kvs, _) = store::list(&self.core, &prefix, 0, Order::KeyAscending).await?;
        kvs.iter()
            .map(|(_, v)| model::decode("config head", v))
            .collect()
    }

    async fn release(&self, key: &ConfigKey, number: u64) -> ConfigResult<Release> {
        match store::get(&self.core, &key.release_key(number)).await? {
            Some((v, _)) => model::decode("release", &v),
            None => {
                self.existing_head(key).await?;
                Err(ConfigError::ReleaseNotFound {
                    key: key.to_string(),
                    number,
                })
            }
        }
    }

    /// Releases of a config, newest first, without their content; needs read.
    pub async fn history(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        limit: u32,
    ) -> ConfigResult<Vec<Release>> {
        self.readable(caller, key).await?;
        let limit = if limit == 0 { 100 } else { limit };
        let (kvs, _) = store::list(
            &self.core,
            &key.release_prefix(),
            limit as i64,
            Order::KeyDescending,
        )
        .await?;
        if kvs.is_empty() {
            self.existing_head(key).await?;
        }
        kvs.iter()
            .map(|(_, v)| {
                let mut r: Release = model::decode("release", v)?;
                r.content.clear();
                Ok(r)
            })
            .collect()
    }

    /// The line diff from release `from` to release `to`; needs read.
    pub async fn diff(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        from: u64,
        to: u64,
    ) -> ConfigResult<Vec<DiffLine>> {
        self.readable(caller, key).await?;
        let old = self.release(key, from).await?;
        let new = self.release(key, to).await?;
        Ok(diff_lines(&old.content, &new.content))
    }

    // ---- changes --------------------------------------------------------------------

    fn draft(&self, input: &PublishInput) -> ConfigResult<Draft> {
        input.key.validate()?;
        let format = Format::parse(&input.format)?;
        decide::check_content(&input.content, format, self.settings.max_content_bytes)?;
        Ok(Draft {
            key: input.key.clone(),
            content: input.content.clone(),
            format,
            author: input.author.clone(),
            comment: input.comment.clone(),
            now_unix_ms: self.now_ms(),
        })
    }

    /// Publishes a new current release; needs publish.
    pub async fn publish(&self, caller: &Caller, input: PublishInput) -> ConfigResult<Release> {
        let draft = self.draft(&input)?;
        let plan = self
            .change(
                caller,
                &input.key,
                &input.author,
                "publish",
                &input.comment,
                |head| decide::publish(head, &draft, input.base),
            )
            .await?;
        Ok(plan.head.current)
    }

    /// Starts a gray release of new content for `target`; needs publish.
    pub async fn start_gray(
        &self,
        caller: &Caller,
        input: PublishInput,
        target: GrayTarget,
    ) -> ConfigResult<Release> {
        target.validate()?;
        let draft = self.draft(&input)?;
        let plan = self
            .change(
                caller,
                &input.key,
                &input.author,
                "gray-start",
                &input.comment,
                |head| decide::start_gray(head, &draft, target.clone(), input.base),
            )
            .await?;
        plan.new_release
            .ok_or_else(|| ConfigError::Internal("a gray start always makes a release".into()))
    }

    /// Makes the gray candidate current; needs publish.
    pub async fn promote_gray(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        author: &str,
    ) -> ConfigResult<Release> {
        key.validate()?;
        let plan = self
            .change(caller, key, author, "gray-promote", "", |head| {
                decide::promote_gray(head, key)
            })
            .await?;
        Ok(plan.head.current)
    }

    /// Drops the gray candidate; needs publish.
    pub async fn abort_gray(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        author: &str,
    ) -> ConfigResult<Head> {
        key.validate()?;
        let plan = self
            .change(caller, key, author, "gray-abort", "", |head| {
                decide::abort_gray(head, key)
            })
            .await?;
        Ok(plan.head)
    }

    /// Publishes a new release equal to release `to`; needs publish.
    pub async fn rollback(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        to: u64,
        author: &str,
        comment: &str,
        base: Option<u64>,
    ) -> ConfigResult<Release> {
        key.validate()?;
        self.authorize(caller, &key.namespace, Permission::Publish)
            .await?;
        let old = self.release(key, to).await?;
        let now = self.now_ms();
        let plan = self
            .change(caller, key, author, "rollback", comment, |head| {
                decide::rollback(head, &old, author, comment, now, base)
            })
            .await?;
        Ok(plan.head.current)
    }

    /// Deletes a config and its releases; false if it did not exist. Needs write.
    pub async fn delete(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        author: &str,
    ) -> ConfigResult<bool> {
        key.validate()?;
        self.require_namespace(&key.namespace).await?;
        let actor = self
            .authorize(caller, &key.namespace, Permission::Write)
            .await?;
        let Some((head, _)) = self.head(key).await? else {
            return Ok(false);
        };
        let audit = AuditRecord {
            time_unix_ms: self.now_ms(),
            actor: actor.unwrap_or_else(|| or_anonymous(author)),
            action: "delete".into(),
            key: key.clone(),
            release: head.latest,
            comment: String::new(),
        };
        let resp = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![],
                success: vec![
                    store::delete(&key.head_key()),
                    store::delete_prefix(&key.release_prefix()),
                    store::put(&audit.core_key(), model::encode(&audit)),
                ],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded)
    }

    /// Reads the head, decides, and writes release + head + audit in one txn that holds
    /// only if the namespace exists and the head is unchanged; retries on a concurrent change.
    async fn change(
        &self,
        caller: &Caller,
        key: &ConfigKey,
        author: &str,
        action: &str,
        comment: &str,
        mut decide: impl FnMut(Option<&Head>) -> ConfigResult<Plan>,
    ) -> ConfigResult<Plan> {
        let ns_key = namespace_key(&key.namespace);
        let head_key = key.head_key();
        for _ in 0..MAX_ATTEMPTS {
            // Namespace, ACL and head in one read; the txn below re-checks the namespace and
            // the head, so a change between the two makes it fail and loop.
            let [namespace, acl, head] =
                store::get_many(&self.core, [&ns_key, &acl_key(&key.namespace), &head_key]).await?;
            if key.namespace != PUBLIC_NAMESPACE && namespace.is_none() {
                return Err(ConfigError::NamespaceNotFound {
                    namespace: key.namespace.clone(),
                });
            }
            let acl = acl_from(acl)?;
            let actor = acl::check(acl.as_ref(), caller, &key.namespace, Permission::Publish)?
                .unwrap_or_else(|| or_anonymous(author));
            let read = head_from(head)?;
            let rev = read.as_ref().map_or(0, |(_, r)| *r);
            let plan = decide(read.as_ref().map(|(h, _)| h))?;
            let audit = AuditRecord {
                time_unix_ms: self.now_ms(),
                actor: actor.clone(),
                action: action.into(),
                key: key.clone(),
                release: plan.release,
                comment: comment.into(),
            };
            let mut compare = vec![store::mod_is(&head_key, rev)];
            if key.namespace != PUBLIC_NAMESPACE {
                compare.push(store::exists(&ns_key));
            }
            let mut success = Vec::with_capacity(3);
            if let Some(release) = &plan.new_release {
                success.push(store::put(
                    &key.release_key(release.number),
                    model::encode(release),
                ));
            }
            success.push(store::put(&head_key, model::encode(&plan.head)));
            success.push(store::put(&audit.core_key(), model::encode(&audit)));
            let resp = self
                .core
                .txn(pb::TxnRequest {
                    compare,
                    success,
                    failure: vec![store::read(&ns_key)],
                })
                .await?;
            if resp.succeeded {
                return Ok(plan);
            }
        }
        Err(ConfigError::Contended {
            key: key.to_string(),
        })
    }
}

/// A namespace's ACL from its stored value, if it has one.
fn acl_from(found: Option<(Vec<u8>, i64)>) -> ConfigResult<Option<Acl>> {
    found.map(|(v, _)| model::decode("acl", &v)).transpose()
}

/// A config's head and its mod revision from the stored value, if the config exists.
fn head_from(found: Option<(Vec<u8>, i64)>) -> ConfigResult<Option<(Head, i64)>> {
    found
        .map(|(v, rev)| model::decode("config head", &v).map(|head| (head, rev)))
        .transpose()
}

fn or_anonymous(author: &str) -> String {
    if author.is_empty() {
        "anonymous".into()
    } else {
        author.into()
    }
}
