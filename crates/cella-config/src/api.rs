//! The config center's API in wire messages: converts `cella.config.v1` requests to domain
//! calls and results back. gRPC and REST both call this, so they cannot drift, and each
//! maps [`ConfigError`] to its status in one place.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cella_proto::cella::config::v1 as cpb;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::acl::{Caller, Permission};
use crate::diff;
use crate::error::{ConfigError, ConfigResult};
use crate::gray::ClientIdentity;
use crate::hub::Hub;
use crate::model::{
    AclEntry, AuditRecord, ConfigGroup, ConfigKey, GrayTarget, Head, Namespace, Release,
};
use crate::service::{ConfigService, PublishInput};
use crate::session::{Change, Session};

/// Most configs one watch stream may follow.
pub const MAX_WATCHED_CONFIGS: usize = 10_000;
/// How long a watch waits for the hub's first load before failing with Unavailable.
const HUB_READY_WAIT: Duration = Duration::from_secs(10);

/// A stream of watch responses.
pub type WatchStream = Pin<Box<dyn Stream<Item = ConfigResult<cpb::WatchResponse>> + Send>>;

/// The config center as the API serves it: the domain service plus the push hub.
#[derive(Clone)]
pub struct ConfigApi {
    pub(crate) service: ConfigService,
    pub(crate) hub: Hub,
}

fn key_of(key: Option<cpb::ConfigKey>) -> ConfigResult<ConfigKey> {
    let k = key.ok_or_else(|| ConfigError::InvalidField {
        field: "key",
        rule: "is required".into(),
    })?;
    let key = ConfigKey::new(&k.namespace, &k.group, &k.data_id);
    key.validate()?;
    Ok(key)
}

pub(crate) fn key_pb(k: &ConfigKey) -> cpb::ConfigKey {
    cpb::ConfigKey {
        namespace: k.namespace.clone(),
        group: k.group.clone(),
        data_id: k.data_id.clone(),
    }
}

pub(crate) fn release_pb(r: &Release) -> cpb::Release {
    cpb::Release {
        key: Some(key_pb(&r.key)),
        number: r.number,
        content: r.content.clone(),
        format: r.format.as_str().into(),
        hash: r.hash.clone(),
        author: r.author.clone(),
        comment: r.comment.clone(),
        created_unix_ms: r.created_unix_ms,
        gray: r.gray,
    }
}

fn target_pb(t: &GrayTarget) -> cpb::GrayTarget {
    cpb::GrayTarget {
        labels: t.labels.clone().into_iter().collect(),
        client_ids: t.client_ids.clone(),
        percentage: t.percentage,
    }
}

fn target_of(t: Option<cpb::GrayTarget>) -> GrayTarget {
    let t = t.unwrap_or_default();
    GrayTarget {
        labels: t.labels.into_iter().collect(),
        client_ids: t.client_ids,
        percentage: t.percentage,
    }
}

pub(crate) fn client_of(c: Option<cpb::ClientIdentity>) -> ClientIdentity {
    let c = c.unwrap_or_default();
    ClientIdentity {
        client_id: c.client_id,
        labels: c.labels.into_iter().collect(),
    }
}

fn state_pb(h: &Head) -> cpb::ConfigState {
    cpb::ConfigState {
        current: Some(release_pb(&h.current)),
        gray: h.gray.as_ref().map(|g| release_pb(&g.release)),
        gray_target: h.gray.as_ref().map(|g| target_pb(&g.target)),
        latest_number: h.latest,
    }
}

fn namespace_pb(n: Namespace) -> cpb::Namespace {
    cpb::Namespace {
        name: n.name,
        description: n.description,
        created_unix_ms: n.created_unix_ms,
    }
}

fn acl_pb(namespace: &str, entries: &[AclEntry]) -> cpb::AclResponse {
    cpb::AclResponse {
        namespace: namespace.into(),
        entries: entries
            .iter()
            .map(|e| cpb::AclEntry {
                name: e.name.clone(),
                token: String::new(),
                read: e.read,
                write: e.write,
                publish: e.publish,
            })
            .collect(),
    }
}

fn audit_pb(a: AuditRecord) -> cpb::AuditEntry {
    cpb::AuditEntry {
        time_unix_ms: a.time_unix_ms,
        actor: a.actor,
        action: a.action,
        key: Some(key_pb(&a.key)),
        release: a.release,
        comment: a.comment,
    }
}

fn change_pb(c: Change) -> cpb::ConfigChange {
    cpb::ConfigChange {
        key: Some(key_pb(&c.key)),
        deleted: c.release.is_none(),
        release: c.release.as_ref().map(release_pb),
    }
}

impl ConfigApi {
    /// The API over a service; starts the push hub on the service's core.
    pub fn new(service: ConfigService) -> Self {
        let hub = Hub::start(service.core().clone());
        Self { service, hub }
    }

    /// The domain service.
    pub fn service(&self) -> &ConfigService {
        &self.service
    }

    /// The push hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Creates a namespace.
    pub async fn create_namespace(
        &self,
        req: cpb::CreateNamespaceRequest,
    ) -> ConfigResult<cpb::Namespace> {
        Ok(namespace_pb(
            self.service
                .create_namespace(&req.name, &req.description)
                .await?,
        ))
    }

    /// Lists namespaces.
    pub async fn list_namespaces(&self) -> ConfigResult<cpb::ListNamespacesResponse> {
        let namespaces = self.service.list_namespaces().await?;
        Ok(cpb::ListNamespacesResponse {
            namespaces: namespaces.into_iter().map(namespace_pb).collect(),
        })
    }

    /// Deletes an empty namespace.
    pub async fn delete_namespace(
        &self,
        caller: &Caller,
        req: cpb::DeleteNamespaceRequest,
    ) -> ConfigResult<cpb::DeleteNamespaceResponse> {
        self.service.delete_namespace(caller, &req.name).await?;
        Ok(cpb::DeleteNamespaceResponse {})
    }

    /// Publishes a release.
    pub async fn publish(
        &self,
        caller: &Caller,
        req: cpb::PublishRequest,
    ) -> ConfigResult<cpb::Release> {
        let input = PublishInput {
            key: key_of(req.key)?,
            content: req.content,
            format: req.format,
            author: req.author,
            comment: req.comment,
            base: req.base_release,
        };
        Ok(release_pb(&self.service.publish(caller, input).await?))
    }

    /// What a client receives, or a given release.
    pub async fn get(
        &self,
        caller: &Caller,
        req: cpb::GetConfigRequest,
    ) -> ConfigResult<cpb::GetConfigResponse> {
        let key = key_of(req.key)?;
        let release = self
            .service
            .get(caller, &key, &client_of(req.client), req.release)
            .await?;
        Ok(cpb::GetConfigResponse {
            release: Some(release_pb(&release)),
        })
    }

    /// A config's current and gray releases.
    pub async fn get_state(
        &self,
        caller: &Caller,
        req: cpb::GetStateRequest,
    ) -> ConfigResult<cpb::ConfigState> {
        Ok(state_pb(
            &self.service.state(caller, &key_of(req.key)?).await?,
        ))
    }

    /// Configs of a namespace.
    pub async fn list(
        &self,
        caller: &Caller,
        req: cpb::ListConfigsRequest,
    ) -> ConfigResult<cpb::ListConfigsResponse> {
        let heads = self
            .service
            .list(caller, &req.namespace, &req.group)
            .await?;
        Ok(cpb::ListConfigsResponse {
            configs: heads.iter().map(state_pb).collect(),
        })
    }

    /// Release history, newest first, without content.
    pub async fn history(
        &self,
        caller: &Caller,
        req: cpb::HistoryRequest,
    ) -> ConfigResult<cpb::HistoryResponse> {
        let releases = self
            .service
            .history(caller, &key_of(req.key)?, req.limit)
            .await?;
        Ok(cpb::HistoryResponse {
            releases: releases.iter().map(release_pb).collect(),
        })
    }

    /// Line diff between two releases.
    pub async fn diff(
        &self,
        caller: &Caller,
        req: cpb::DiffRequest,
    ) -> ConfigResult<cpb::DiffResponse> {
        let lines = self
            .service
            .diff(caller, &key_of(req.key)?, req.from_release, req.to_release)
            .await?;
        Ok(cpb::DiffResponse {
            unified: diff::render(&lines),
            lines: lines
                .iter()
                .map(|l| cpb::DiffLine {
                    op: l.op().into(),
                    text: l.text().into(),
                })
                .collect(),
        })
    }

    /// A new release equal to an old one.
    pub async fn rollback(
        &self,
        caller: &Caller,
        req: cpb::RollbackRequest,
    ) -> ConfigResult<cpb::Release> {
        let key = key_of(req.key)?;
        let release = self
            .service
            .rollback(
                caller,
                &key,
                req.to_release,
                &req.author,
                &req.comment,
                req.base_release,
            )
            .await?;
        Ok(release_pb(&release))
    }

    /// Starts a gray release.
    pub async fn start_gray(
        &self,
        caller: &Caller,
        req: cpb::StartGrayRequest,
    ) -> ConfigResult<cpb::Release> {
        let input = PublishInput {
            key: key_of(req.key)?,
            content: req.content,
            format: req.format,
            author: req.author,
            comment: req.comment,
            base: req.base_release,
        };
        let release = self
            .service
            .start_gray(caller, input, target_of(req.target))
            .await?;
        Ok(release_pb(&release))
    }

    /// Promotes the gray candidate.
    pub async fn promote_gray(
        &self,
        caller: &Caller,
        req: cpb::GrayActionRequest,
    ) -> ConfigResult<cpb::Release> {
        let key = key_of(req.key)?;
        Ok(release_pb(
            &self.service.promote_gray(caller, &key, &req.author).await?,
        ))
    }

    /// Aborts the gray candidate.
    pub async fn abort_gray(
        &self,
        caller: &Caller,
        req: cpb::GrayActionRequest,
    ) -> ConfigResult<cpb::ConfigState> {
        let key = key_of(req.key)?;
        Ok(state_pb(
            &self.service.abort_gray(caller, &key, &req.author).await?,
        ))
    }

    /// Deletes a config and its history.
    pub async fn delete(
        &self,
        caller: &Caller,
        req: cpb::DeleteConfigRequest,
    ) -> ConfigResult<cpb::DeleteConfigResponse> {
        let key = key_of(req.key)?;
        let deleted = self.service.delete(caller, &key, &req.author).await?;
        Ok(cpb::DeleteConfigResponse { deleted })
    }

    /// Sets a namespace's ACL.
    pub async fn set_acl(
        &self,
        caller: &Caller,
        req: cpb::SetAclRequest,
    ) -> ConfigResult<cpb::AclResponse> {
        let entries = req
            .entries
            .into_iter()
            .map(|e| AclEntry {
                name: e.name,
                token: e.token,
                read: e.read,
                write: e.write,
                publish: e.publish,
            })
            .collect();
        let acl = self
            .service
            .set_acl(caller, &req.namespace, entries)
            .await?;
        Ok(acl_pb(&req.namespace, &acl.entries))
    }

    /// A namespace's ACL, without tokens.
    pub async fn get_acl(
        &self,
        caller: &Caller,
        req: cpb::GetAclRequest,
    ) -> ConfigResult<cpb::AclResponse> {
        let acl = self.service.get_acl(caller, &req.namespace).await?;
        Ok(acl_pb(&req.namespace, &acl.entries))
    }

    /// A namespace's audit log, newest first.
    pub async fn audit(
        &self,
        caller: &Caller,
        req: cpb::AuditRequest,
    ) -> ConfigResult<cpb::AuditResponse> {
        let records = self
            .service
            .audit(caller, &req.namespace, req.limit)
            .await?;
        Ok(cpb::AuditResponse {
            entries: records.into_iter().map(audit_pb).collect(),
        })
    }

    /// Opens a watch on configs and whole groups: the first message holds what differs from
    /// the hashes sent (possibly nothing), later ones each change as it happens.
    pub async fn watch(
        &self,
        caller: &Caller,
        req: cpb::WatchRequest,
    ) -> ConfigResult<WatchStream> {
        let listed = req.configs.len() + req.groups.len();
        if listed > MAX_WATCHED_CONFIGS {
            return Err(ConfigError::InvalidField {
                field: "configs",
                rule: format!(
                    "configs and groups together must list at most {MAX_WATCHED_CONFIGS} \
                     entries (got {listed})"
                ),
            });
        }
        let mut held = Vec::with_capacity(req.configs.len());
        for w in req.configs {
            held.push((key_of(w.key)?, w.hash));
        }
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let group = ConfigGroup::new(&g.namespace, &g.group);
            group.validate()?;
            groups.push(group);
        }
        let namespaces: HashSet<&str> = held
            .iter()
            .map(|(k, _)| k.namespace.as_str())
            .chain(groups.iter().map(|g| g.namespace.as_str()))
            .collect();
        for ns in namespaces {
            self.service.authorize(caller, ns, Permission::Read).await?;
        }
        let changes = self.hub.subscribe();
        self.hub.wait_ready(HUB_READY_WAIT).await?;
        let session = Session::new(client_of(req.client), held).with_groups(groups);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(stream_session(self.hub.clone(), session, changes, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Feeds one watch stream until the client goes away.
async fn stream_session(
    hub: Hub,
    mut session: Session,
    mut changes: broadcast::Receiver<Arc<ConfigKey>>,
    tx: mpsc::Sender<ConfigResult<cpb::WatchResponse>>,
) {
    let first = session.check_all(&hub);
    let respond = |changes: Vec<Change>| {
        Ok(cpb::WatchResponse {
            changes: changes.into_iter().map(change_pb).collect(),
        })
    };
    if tx.send(respond(first)).await.is_err() {
        return;
    }
    loop {
        let mut found = Vec::new();
        tokio::select! {
            msg = changes.recv() => match msg {
                Ok(key) => found.extend(session.check(&hub, &key)),
                Err(broadcast::error::RecvError::Lagged(_)) => found.extend(session.check_all(&hub)),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tx.closed() => return,
        }
        // Take whatever else is already queued, so a burst goes out as one message.
        loop {
            match changes.try_recv() {
                Ok(key) => found.extend(session.check(&hub, &key)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    found.extend(session.check_all(&hub))
                }
                Err(_) => break,
            }
        }
        if !found.is_empty() && tx.send(respond(found)).await.is_err() {
            return;
        }
    }
}
