//! The resource service: routes each resource to the block that owns its kind, and keeps
//! the declarations in the core.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cella_core::Core;
use cella_proto::etcdserverpb as pb;
use futures::future::BoxFuture;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use serde_json::Value;

use crate::error::{ResourceError, ResourceResult};
use crate::model::{check_name, Outcome, Resource};

/// Where resources live in the core.
const PREFIX: &str = "/cella/resources/";
/// The namespace of namespaced kinds when none is given.
const DEFAULT_NAMESPACE: &str = "default";

/// What a kind's block answers: a status object, or why it refused.
pub type KindFuture<'a, T> = BoxFuture<'a, ResourceResult<T>>;

/// A kind of resource, served by the block that owns it.
pub trait Kind: Send + Sync + 'static {
    /// The kind's name as written in `kind:`, e.g. `Topic`.
    fn name(&self) -> &'static str;

    /// Whether resources of this kind live in a namespace.
    fn namespaced(&self) -> bool;

    /// Checks the whole spec first, then makes the block's state match it and returns the
    /// status. Must be idempotent, and must change nothing when it refuses.
    fn apply<'a>(&'a self, resource: &'a Resource) -> KindFuture<'a, Value>;

    /// Removes what the block made for the resource (or refuses, changing nothing).
    fn delete<'a>(&'a self, resource: &'a Resource) -> KindFuture<'a, ()>;
}

/// The resource service over one core. Cheap to clone.
#[derive(Clone)]
pub struct Resources {
    core: Core,
    kinds: Arc<BTreeMap<&'static str, Arc<dyn Kind>>>,
}

impl Resources {
    /// A service storing in `core` and serving `kinds`.
    pub fn new(core: Core, kinds: Vec<Arc<dyn Kind>>) -> Resources {
        let kinds = kinds.into_iter().map(|k| (k.name(), k)).collect();
        Resources {
            core,
            kinds: Arc::new(kinds),
        }
    }

    /// The kind named `name`: exactly, ignoring case, or as a plural (`topics`).
    fn kind(&self, name: &str) -> ResourceResult<&Arc<dyn Kind>> {
        let lower = name.to_ascii_lowercase();
        self.kinds
            .iter()
            .find(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k == lower || format!("{k}s") == lower
            })
            .map(|(_, kind)| kind)
            .ok_or_else(|| ResourceError::UnknownKind {
                kind: name.to_string(),
                known: self.kinds.keys().copied().collect::<Vec<_>>().join(", "),
            })
    }

    /// The namespace a resource of `kind` lives in, given what the caller wrote.
    fn namespace_of(kind: &dyn Kind, given: &str) -> ResourceResult<String> {
        match (kind.namespaced(), given) {
            (true, "") => Ok(DEFAULT_NAMESPACE.to_string()),
            (true, ns) => check_name("metadata.namespace", ns).map(|()| ns.to_string()),
            (false, "") => Ok(String::new()),
            (false, _) => Err(ResourceError::invalid(
                "metadata.namespace",
                format!("must be empty: {} is not namespaced", kind.name()),
            )),
        }
    }

    /// Creates or updates `resource`; returns it as stored, with status and version.
    pub async fn apply(&self, mut resource: Resource) -> ResourceResult<(Resource, Outcome)> {
        resource.check_envelope()?;
        let kind = self.kind(&resource.kind)?.clone();
        if resource.kind != kind.name() {
            return Err(ResourceError::invalid(
                "kind",
                format!(
                    "must be written {:?} (got {:?})",
                    kind.name(),
                    resource.kind
                ),
            ));
        }
        resource.metadata.namespace =
            Self::namespace_of(kind.as_ref(), &resource.metadata.namespace)?;
        let key = key_of(
            kind.name(),
            &resource.metadata.namespace,
            &resource.metadata.name,
        );
        let stored = self.load(&key).await?;
        let stored_version = stored.as_ref().map_or(0, |s| s.metadata.resource_version);
        let expected = resource.metadata.resource_version;
        if expected != 0 && expected != stored_version {
            return Err(self.conflict(&resource, expected, stored_version));
        }
        resource.status = kind.apply(&resource).await?;
        let outcome = match &stored {
            None => Outcome::Created,
            Some(s) if s.spec == resource.spec && s.metadata.labels == resource.metadata.labels => {
                Outcome::Unchanged
            }
            Some(_) => Outcome::Configured,
        };
        if let Some(s) =
            stored.filter(|s| outcome == Outcome::Unchanged && s.status == resource.status)
        {
            return Ok((s, Outcome::Unchanged));
        }
        resource.metadata.resource_version = 0;
        let value = serde_json::to_vec(&resource).map_err(|e| ResourceError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let written = self
            .core
            .txn(pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: Bytes::from(key.clone()),
                    target_union: Some(TargetUnion::ModRevision(stored_version)),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp {
                    request: Some(Op::RequestPut(pb::PutRequest {
                        key: Bytes::from(key.clone()),
                        value: Bytes::from(value),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        if !written.succeeded {
            // Another apply won the race; the block's state is the other apply's or ours,
            // and re-applying converges.
            let now = self.load(&key).await?;
            let now = now.map_or(0, |s| s.metadata.resource_version);
            return Err(self.conflict(&resource, stored_version, now));
        }
        resource.metadata.resource_version = written.header.map_or(0, |h| h.revision);
        Ok((resource, outcome))
    }

    fn conflict(&self, resource: &Resource, expected: i64, stored: i64) -> ResourceError {
        ResourceError::Conflict {
            kind: resource.kind.clone(),
            name: resource.metadata.name.clone(),
            expected,
            stored,
        }
    }

    /// One resource.
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> ResourceResult<Resource> {
        let kind = self.kind(kind)?;
        let namespace = Self::namespace_of(kind.as_ref(), namespace)?;
        check_name("name", name)?;
        self.load(&key_of(kind.name(), &namespace, name))
            .await?
            .ok_or_else(|| ResourceError::NotFound {
                kind: kind.name().to_string(),
                namespace,
                name: name.to_string(),
            })
    }

    /// Every resource of `kind`, in `namespace` or (empty) in all, ordered by namespace and name.
    pub async fn list(&self, kind: &str, namespace: &str) -> ResourceResult<Vec<Resource>> {
        let kind = self.kind(kind)?;
        let mut prefix = format!("{PREFIX}{}/", kind.name());
        if kind.namespaced() && !namespace.is_empty() {
            check_name("namespace", namespace)?;
            prefix.push_str(&format!("{namespace}/"));
        }
        let resp = self
            .core
            .range(pb::RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(cella_base::prefix_end(prefix.as_bytes())),
                ..Default::default()
            })
            .await?;
        resp.kvs.iter().map(decode).collect()
    }

    /// Deletes a resource after its block removed what it made; returns what was stored.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> ResourceResult<Resource> {
        let resource = self.get(kind, namespace, name).await?;
        let kind = self.kind(kind)?;
        kind.delete(&resource).await?;
        let key = key_of(kind.name(), &resource.metadata.namespace, name);
        self.core
            .delete_range(pb::DeleteRangeRequest {
                key: Bytes::from(key),
                ..Default::default()
            })
            .await?;
        Ok(resource)
    }

    async fn load(&self, key: &str) -> ResourceResult<Option<Resource>> {
        let resp = self
            .core
            .range(pb::RangeRequest {
                key: Bytes::from(key.to_string()),
                ..Default::default()
            })
            .await?;
        resp.kvs.first().map(decode).transpose()
    }
}

/// The core key of a resource; cluster-scoped kinds use `_` as namespace.
fn key_of(kind: &str, namespace: &str, name: &str) -> String {
    let namespace = if namespace.is_empty() { "_" } else { namespace };
    format!("{PREFIX}{kind}/{namespace}/{name}")
}

fn decode(kv: &cella_proto::mvccpb::KeyValue) -> ResourceResult<Resource> {
    let mut resource: Resource =
        serde_json::from_slice(&kv.value).map_err(|e| ResourceError::Corrupt {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            reason: e.to_string(),
        })?;
    resource.metadata.resource_version = kv.mod_revision;
    Ok(resource)
}
