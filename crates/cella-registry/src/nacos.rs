//! Nacos's v1 HTTP open API for naming, so apps using Nacos clients in HTTP mode work against
//! Cella unchanged: instance register / modify / deregister / beat / list / detail, and the
//! service list. Parameters come from the query string or a form body, as Nacos accepts them.
//! Errors answer with an HTTP status and a plain-text message, as Nacos does.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use cella_core::gateway::{self, ApiError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{RegistryError, RegistryResult};
use crate::model::{instance_id, or_default, Instance, InstanceSpec, LabelSelector, ServiceKey};
use crate::registry::Registry;

/// Nacos's code for "this instance is unknown: register it again".
const RESOURCE_NOT_FOUND: i64 = 20404;
/// Nacos's code for a successful beat.
const OK: i64 = 10200;

/// The Nacos naming routes.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/nacos/v1/ns/instance",
            get(instance_detail)
                .post(register)
                .put(register)
                .delete(deregister),
        )
        .route("/nacos/v1/ns/instance/beat", put(beat))
        .route("/nacos/v1/ns/instance/list", get(list))
        .route("/nacos/v1/ns/service/list", get(service_list))
        .with_state(registry)
}

/// Query string and form body, merged (the body wins).
struct Params(HashMap<String, String>);

impl Params {
    fn new(query: HashMap<String, String>, body: &Bytes) -> RegistryResult<Self> {
        let mut all = query;
        if !body.is_empty() {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| RegistryError::InvalidField {
                    field: "body",
                    rule: format!("must be a form (application/x-www-form-urlencoded): {e}"),
                })?;
            all.extend(form);
        }
        Ok(Self(all))
    }

    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn parse<T: std::str::FromStr>(&self, name: &'static str, default: T) -> RegistryResult<T> {
        match self.0.get(name).map(|s| s.trim()) {
            None | Some("") => Ok(default),
            Some(text) => text.parse().map_err(|_| RegistryError::InvalidField {
                field: name,
                rule: format!("{text:?} is not a valid value"),
            }),
        }
    }

    /// `serviceName` may carry its group as `group@@name`.
    fn service(&self) -> RegistryResult<ServiceKey> {
        let (group, name) = match self.get("serviceName").split_once("@@") {
            Some((group, name)) => (group, name),
            None => (self.get("groupName"), self.get("serviceName")),
        };
        if name.is_empty() {
            return Err(RegistryError::InvalidField {
                field: "serviceName",
                rule: "must be given".into(),
            });
        }
        ServiceKey::new(self.get("namespaceId"), group, name)
    }

    fn metadata(
        &self,
        field: &'static str,
        text: &str,
    ) -> RegistryResult<BTreeMap<String, String>> {
        if text.trim().is_empty() {
            return Ok(BTreeMap::new());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| RegistryError::InvalidField {
            field,
            rule: format!("must be a JSON object of strings: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(RegistryError::InvalidField {
                field,
                rule: "must be a JSON object of strings".into(),
            });
        };
        Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect())
    }

    fn instance_spec(&self) -> RegistryResult<InstanceSpec> {
        let defaults = InstanceSpec::default();
        Ok(InstanceSpec {
            ip: self.get("ip").to_string(),
            port: self.port()?,
            weight: self.parse("weight", defaults.weight)?,
            enabled: self.parse("enabled", defaults.enabled)?,
            ephemeral: self.parse("ephemeral", defaults.ephemeral)?,
            cluster: self.cluster().to_string(),
            labels: BTreeMap::new(),
            metadata: self.metadata("metadata", self.get("metadata"))?,
        })
    }

    fn port(&self) -> RegistryResult<u32> {
        self.parse("port", 0u32)
    }

    fn cluster(&self) -> &str {
        let cluster = self.get("clusterName");
        if cluster.is_empty() {
            self.get("cluster")
        } else {
            cluster
        }
    }

    fn instance_id(&self) -> RegistryResult<String> {
        let port = u16::try_from(self.port()?).ok().filter(|p| *p > 0).ok_or(
            RegistryError::InvalidField {
                field: "port",
                rule: "must be given, from 1 to 65535".into(),
            },
        )?;
        Ok(instance_id(
            self.get("ip"),
            port,
            or_default(self.cluster(), crate::model::DEFAULT_CLUSTER),
        ))
    }
}

fn error(err: RegistryError) -> Response {
    (
        gateway::http_status(err.grpc_code()),
        format!("caused: {err}"),
    )
        .into_response()
}

fn reply(result: RegistryResult<Response>) -> Response {
    result.unwrap_or_else(error)
}

async fn register(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    reply(
        async {
            let params = Params::new(query, &body)?;
            registry
                .register(&params.service()?, params.instance_spec()?)
                .await?;
            Ok("ok".into_response())
        }
        .await,
    )
}

async fn deregister(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    reply(
        async {
            let params = Params::new(query, &body)?;
            match registry
                .deregister(&params.service()?, &params.instance_id()?)
                .await
            {
                // Nacos answers ok for an instance that is already gone.
                Ok(()) | Err(RegistryError::InstanceNotFound { .. }) => Ok("ok".into_response()),
                Err(e) => Err(e),
            }
        }
        .await,
    )
}

/// The `beat` parameter Nacos clients send: the instance as they registered it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BeatInfo {
    #[serde(default)]
    ip: String,
    #[serde(default)]
    port: u32,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

async fn beat(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    reply(
        async {
            let params = Params::new(query, &body)?;
            let service = params.service()?;
            let info: Option<BeatInfo> =
                match params.get("beat") {
                    "" => None,
                    text => Some(serde_json::from_str(text).map_err(|e| {
                        RegistryError::InvalidField {
                            field: "beat",
                            rule: format!("must be the JSON beat info: {e}"),
                        }
                    })?),
                };
            let id = match &info {
                Some(info) => {
                    let port = u16::try_from(info.port).unwrap_or(0);
                    instance_id(
                        &info.ip,
                        port,
                        or_default(&info.cluster, crate::model::DEFAULT_CLUSTER),
                    )
                }
                None => params.instance_id()?,
            };
            let beat = [(service.clone(), id)];
            let known = registry.beat(&beat).into_iter().all(|r| r.is_ok());
            let interval = registry.settings(&service).beat_interval_ms;
            let code = match (known, info) {
                (true, _) => OK,
                // Nacos re-registers an unknown instance from the beat info it carries.
                (false, Some(info)) => {
                    let spec = InstanceSpec {
                        ip: info.ip,
                        port: info.port,
                        weight: info.weight.unwrap_or(1.0),
                        cluster: info.cluster,
                        metadata: info.metadata,
                        ..Default::default()
                    };
                    registry.register(&service, spec).await?;
                    OK
                }
                (false, None) => RESOURCE_NOT_FOUND,
            };
            Ok(axum::Json(
                json!({ "clientBeatInterval": interval, "code": code, "lightBeatEnabled": true }),
            )
            .into_response())
        }
        .await,
    )
}

fn host(service: &ServiceKey, instance: &Instance, registry: &Registry) -> Value {
    let settings = registry.settings(service);
    json!({
        "instanceId": format!("{}#{}", instance.id, service.grouped_name()),
        "ip": instance.ip,
        "port": instance.port,
        "weight": instance.weight,
        "healthy": instance.healthy,
        "enabled": instance.enabled,
        "ephemeral": instance.ephemeral,
        "clusterName": instance.cluster,
        "serviceName": service.grouped_name(),
        "metadata": instance.metadata,
        "instanceHeartBeatInterval": settings.beat_interval_ms,
        "instanceHeartBeatTimeOut": settings.unhealthy_after_ms,
        "ipDeleteTimeout": settings.remove_after_ms,
    })
}

async fn list(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    reply((|| {
        let params = Params::new(query, &Bytes::new())?;
        let service = params.service()?;
        let healthy_only = params.parse("healthyOnly", false)?;
        let clusters: Vec<&str> = params
            .get("clusters")
            .split(',')
            .filter(|c| !c.is_empty())
            .collect();
        let view = registry.list(&service, healthy_only, &LabelSelector::default())?;
        let hosts: Vec<Value> = view
            .instances
            .iter()
            .filter(|i| clusters.is_empty() || clusters.contains(&i.cluster.as_str()))
            .map(|i| host(&service, i, &registry))
            .collect();
        Ok(axum::Json(json!({
            "name": service.grouped_name(),
            "groupName": service.group,
            "clusters": params.get("clusters"),
            "cacheMillis": 10_000,
            "hosts": hosts,
            "lastRefTime": view.version,
            "checksum": view.version.to_string(),
            "allIPs": false,
            "reachProtectionThreshold": view.protecting,
            "valid": true,
        }))
        .into_response())
    })())
}

async fn instance_detail(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    reply((|| {
        let params = Params::new(query, &Bytes::new())?;
        let service = params.service()?;
        let id = params.instance_id()?;
        let view = registry.list(&service, false, &LabelSelector::default())?;
        let instance = view.instances.iter().find(|i| i.id == id).ok_or_else(|| {
            RegistryError::InstanceNotFound {
                service: service.to_string(),
                id: id.clone(),
            }
        })?;
        let mut detail = host(&service, instance, &registry);
        detail["service"] = json!(service.grouped_name());
        detail["cluster"] = json!(instance.cluster);
        Ok(axum::Json(detail).into_response())
    })())
}

async fn service_list(
    State(registry): State<Registry>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    reply((|| {
        let params = Params::new(query, &Bytes::new())?;
        let namespace = or_default(params.get("namespaceId"), crate::model::DEFAULT_NAMESPACE);
        let group = or_default(params.get("groupName"), crate::model::DEFAULT_GROUP);
        let page_no: usize = params.parse("pageNo", 1)?;
        let page_size: usize = params.parse("pageSize", 20)?;
        if page_no == 0 || page_size == 0 {
            return Err(RegistryError::InvalidField {
                field: "pageNo",
                rule: "pageNo and pageSize must be at least 1".into(),
            });
        }
        let services = registry.services(namespace, Some(group))?;
        let doms: Vec<&str> = services
            .iter()
            .skip((page_no - 1).saturating_mul(page_size))
            .take(page_size)
            .map(|s| s.name.as_str())
            .collect();
        Ok(axum::Json(json!({ "count": services.len(), "doms": doms })).into_response())
    })())
}
