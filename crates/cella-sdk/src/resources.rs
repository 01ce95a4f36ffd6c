//! Resources: declarative objects (`apiVersion: cella.dev/v1`, `kind`, `metadata`, `spec`)
//! such as `Topic` and `ConsumerGroup`. An app declares its topology in a YAML file and
//! applies it at start; applying is idempotent, so every instance may do it.
//!
//! ```no_run
//! # async fn demo() -> cella_sdk::Result<()> {
//! let client = cella_sdk::Client::connect("127.0.0.1:7070").await?;
//! let topology = "apiVersion: cella.dev/v1\nkind: Topic\nmetadata: {name: orders}\nspec: {queues: 8}\n";
//! for applied in client.resources().apply_yaml(topology).await? {
//!     println!("{}/{} {}", applied.resource.kind, applied.name(), applied.outcome);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;

pub use cella_proto::cella::resource::v1 as pb;
use pb::resource_service_client::ResourceServiceClient;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Transport;
use crate::{Error, Result};

/// What one apply did to one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The resource as stored, with its status and version.
    pub resource: pb::Resource,
    /// `created`, `configured` or `unchanged`.
    pub outcome: String,
}

impl Applied {
    /// The resource's name.
    pub fn name(&self) -> &str {
        self.resource
            .metadata
            .as_ref()
            .map_or("", |m| m.name.as_str())
    }
}

/// One document of a resource file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: DocumentMeta,
    #[serde(default)]
    spec: Option<Value>,
    /// Written by `cella get -o yaml`; ignored on apply.
    #[serde(default, rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DocumentMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    resource_version: i64,
}

/// Parses a YAML (or JSON) file of one or more `---`-separated resources; empty documents
/// are skipped. The server checks the fields; this only checks the shape.
pub fn parse_documents(text: &str) -> Result<Vec<pb::Resource>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |e: &dyn std::fmt::Display| Error::InvalidArgument {
            message: format!("document {}: {e}", i + 1),
        };
        let value = Value::deserialize(doc).map_err(|e| invalid(&e))?;
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            return Err(invalid(
                &"must be a mapping of apiVersion, kind, metadata and spec",
            ));
        }
        let doc: Document = serde_json::from_value(value).map_err(|e| invalid(&e))?;
        out.push(pb::Resource {
            api_version: doc.api_version,
            kind: doc.kind,
            metadata: Some(pb::ObjectMeta {
                name: doc.metadata.name,
                namespace: doc.metadata.namespace,
                labels: doc.metadata.labels,
                resource_version: doc.metadata.resource_version,
            }),
            spec_json: doc.spec.map(|s| s.to_string()).unwrap_or_default(),
            status_json: String::new(),
        });
    }
    Ok(out)
}

/// The resource API of one node.
#[derive(Debug, Clone)]
pub struct Resources {
    client: ResourceServiceClient<Transport>,
}

impl Resources {
    pub(crate) fn new(transport: Transport) -> Self {
        Resources {
            client: ResourceServiceClient::new(transport),
        }
    }

    /// Creates or updates one resource.
    pub async fn apply(&self, resource: pb::Resource) -> Result<Applied> {
        let resp = self
            .client
            .clone()
            .apply(pb::ApplyRequest {
                resource: Some(resource),
            })
            .await?
            .into_inner();
        Ok(Applied {
            resource: resp.resource.unwrap_or_default(),
            outcome: resp.outcome,
        })
    }

    /// Applies every resource of a YAML file, in order; stops at the first refusal (the
    /// ones before it stay applied, and applying the file again is safe).
    pub async fn apply_yaml(&self, text: &str) -> Result<Vec<Applied>> {
        let mut applied = Vec::new();
        for resource in parse_documents(text)? {
            applied.push(self.apply(resource).await?);
        }
        Ok(applied)
    }

    /// One resource; `namespace` empty for kinds that have none (or the default one).
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<pb::Resource> {
        let req = pb::GetRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        Ok(self.client.clone().get(req).await?.into_inner())
    }

    /// Every resource of `kind` (in `namespace`, or all when empty).
    pub async fn list(&self, kind: &str, namespace: &str) -> Result<Vec<pb::Resource>> {
        let req = pb::ListRequest {
            kind: kind.into(),
            namespace: namespace.into(),
        };
        Ok(self.client.clone().list(req).await?.into_inner().items)
    }

    /// Deletes a resource; returns what was stored.
    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<pb::Resource> {
        let req = pb::DeleteRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        Ok(self.client.clone().delete(req).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_and_empty_ones_are_skipped() {
        let text = "---\napiVersion: cella.dev/v1\nkind: Topic\nmetadata:\n  name: orders\n  labels: {team: checkout}\nspec:\n  queues: 8\n---\n---\napiVersion: cella.dev/v1\nkind: ConsumerGroup\nmetadata: {name: billing}\n";
        let docs = parse_documents(text).expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].kind, "Topic");
        assert_eq!(docs[0].spec_json, r#"{"queues":8}"#);
        let meta = docs[0].metadata.as_ref().expect("metadata");
        assert_eq!(
            meta.labels.get("team").map(String::as_str),
            Some("checkout")
        );
        assert_eq!(docs[1].spec_json, "");
    }

    #[test]
    fn a_misspelt_field_names_the_document_and_the_field() {
        let err = parse_documents("kind: Topic\n---\nkind: Topic\nspecs: {}\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("document 2") && text.contains("specs"),
            "{text}"
        );
        assert!(parse_documents("- a\n- b\n").is_err());
    }
}
