//! A resource as users write it (YAML or JSON, camelCase fields) and as it is stored, with
//! the envelope's rules and the conversions to and from the wire messages.

use std::collections::BTreeMap;

use cella_proto::cella::resource::v1 as rpb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ResourceError, ResourceResult};

/// The only API version: `cella.dev/v1`.
pub const API_VERSION: &str = "cella.dev/v1";
/// Longest name, namespace, label key or label value.
const MAX_NAME: usize = 253;

/// A resource: envelope, desired state (`spec`) and reported state (`status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Which kind, e.g. `Topic`; its block defines `spec` and `status`.
    pub kind: String,
    /// Name, namespace, labels, version.
    #[serde(default)]
    pub metadata: Metadata,
    /// The desired state, a JSON object.
    #[serde(default = "empty_object")]
    pub spec: Value,
    /// What the block reports, a JSON object; ignored on apply.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub status: Value,
}

/// Identity and labels of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Unique per kind and namespace.
    #[serde(default)]
    pub name: String,
    /// Empty for kinds that are not namespaced.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Core revision of the last change; on apply, non-zero means "only if unchanged since".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: i64,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The resource did not exist.
    Created,
    /// Its spec or labels changed.
    Configured,
    /// It was already as given.
    Unchanged,
}

impl Outcome {
    /// `created`, `configured` or `unchanged`, as kubectl prints them.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty)
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Checks a name-like field: 1–253 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub(crate) fn check_name(field: &str, value: &str) -> ResourceResult<()> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ResourceError::invalid(
            field,
            format!("must be 1-{MAX_NAME} of [A-Za-z0-9._-], starting with a letter or digit (got {value:?})"),
        ))
    }
}

impl Resource {
    /// Checks the envelope: version, name, labels and an object spec. The kind and the
    /// namespace are checked against the kind's block by the service.
    pub(crate) fn check_envelope(&self) -> ResourceResult<()> {
        if self.api_version != API_VERSION {
            return Err(ResourceError::invalid(
                "apiVersion",
                format!("must be {API_VERSION:?} (got {:?})", self.api_version),
            ));
        }
        check_name("metadata.name", &self.metadata.name)?;
        for (key, value) in &self.metadata.labels {
            check_name("metadata.labels (key)", key)?;
            if value.len() > MAX_NAME {
                return Err(ResourceError::invalid(
                    format!("metadata.labels.{key}"),
                    format!("must be at most {MAX_NAME} bytes"),
                ));
            }
        }
        if !self.spec.is_object() {
            return Err(ResourceError::invalid("spec", "must be an object"));
        }
        Ok(())
    }

    /// The resource as a wire message.
    pub fn to_proto(&self) -> rpb::Resource {
        rpb::Resource {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            metadata: Some(rpb::ObjectMeta {
                name: self.metadata.name.clone(),
                namespace: self.metadata.namespace.clone(),
                labels: self.metadata.labels.clone().into_iter().collect(),
                resource_version: self.metadata.resource_version,
            }),
            spec_json: self.spec.to_string(),
            status_json: match is_empty_object(&self.status) {
                true => String::new(),
                false => self.status.to_string(),
            },
        }
    }

    /// A resource from its wire message; `spec_json` must be a JSON object (empty = `{}`).
    pub fn from_proto(msg: rpb::Resource) -> ResourceResult<Resource> {
        let meta = msg.metadata.unwrap_or_default();
        let spec = match msg.spec_json.trim() {
            "" => empty_object(),
            text => serde_json::from_str(text)
                .map_err(|e| ResourceError::invalid("spec_json", format!("must be JSON: {e}")))?,
        };
        Ok(Resource {
            api_version: msg.api_version,
            kind: msg.kind,
            metadata: Metadata {
                name: meta.name,
                namespace: meta.namespace,
                labels: meta.labels.into_iter().collect(),
                resource_version: meta.resource_version,
            },
            spec,
            status: empty_object(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(spec: Value) -> Resource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Topic",
            "metadata": { "name": "orders", "labels": { "team": "checkout" } },
            "spec": spec,
        }))
        .expect("resource parses")
    }

    #[test]
    fn envelope_rules_name_the_field() {
        assert_eq!(
            topic(serde_json::json!({"queues": 8})).check_envelope(),
            Ok(())
        );
        let mut r = topic(serde_json::json!({}));
        r.api_version = "v1".into();
        assert!(
            matches!(r.check_envelope(), Err(ResourceError::InvalidField { field, .. }) if field == "apiVersion")
        );
        let mut r = topic(serde_json::json!({}));
        r.metadata.name = "-bad".into();
        assert!(
            matches!(r.check_envelope(), Err(ResourceError::InvalidField { field, .. }) if field == "metadata.name")
        );
        let r = topic(serde_json::json!([1, 2]));
        assert!(
            matches!(r.check_envelope(), Err(ResourceError::InvalidField { field, .. }) if field == "spec")
        );
    }

    #[test]
    fn wire_form_round_trips() {
        let mut r = topic(serde_json::json!({"queues": 8, "flush": "async"}));
        r.metadata.resource_version = 42;
        let back = Resource::from_proto(r.to_proto()).expect("round trip");
        assert_eq!(back, r);
        let bad = rpb::Resource {
            spec_json: "{not json".into(),
            ..Default::default()
        };
        assert!(
            matches!(Resource::from_proto(bad), Err(ResourceError::InvalidField { field, .. }) if field == "spec_json")
        );
    }
}
