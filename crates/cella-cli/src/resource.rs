//! The declarative verbs: `cella apply -f FILE`, `cella get KIND [NAME]`, `cella delete KIND
//! NAME`, over resources such as `Topic` and `ConsumerGroup`.
//!
//! `get -o yaml` prints resources in the form `apply -f` reads, so the two round-trip.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use cella_sdk::resources::{pb, Applied};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::output::{emit, write_columns, Format, Render};
use crate::Remote;

/// `cella apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML file of one or more `---`-separated resources; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
}

/// `cella get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The kind, e.g. topic, topics, Topic, consumergroup.
    kind: String,
    /// One resource's name; all of the kind when omitted.
    name: Option<String>,
    /// Namespace, for namespaced kinds (all namespaces when listing without it).
    #[arg(short = 'n', long, default_value = "")]
    namespace: String,
}

/// `cella delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The kind.
    kind: String,
    /// The resource's name.
    name: String,
    /// Namespace, for namespaced kinds.
    #[arg(short = 'n', long, default_value = "")]
    namespace: String,
}

/// A resource in its natural form, as `apply -f` reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceView {
    api_version: String,
    kind: String,
    metadata: MetadataView,
    spec: Value,
    #[serde(skip_serializing_if = "Value::is_null")]
    status: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataView {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    namespace: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    resource_version: i64,
}

fn json_or_null(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

impl From<pb::Resource> for ResourceView {
    fn from(r: pb::Resource) -> Self {
        let meta = r.metadata.unwrap_or_default();
        ResourceView {
            api_version: r.api_version,
            kind: r.kind,
            metadata: MetadataView {
                name: meta.name,
                namespace: meta.namespace,
                labels: meta.labels.into_iter().collect(),
                resource_version: meta.resource_version,
            },
            spec: json_or_null(&r.spec_json),
            status: json_or_null(&r.status_json),
        }
    }
}

impl ResourceView {
    /// `topic/orders`, as kubectl names a resource.
    fn reference(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.metadata.name)
    }
}

/// Resources listed by `get` (one document per resource in JSON/YAML).
#[derive(Serialize)]
#[serde(transparent)]
struct ListView(Vec<ResourceView>);

impl Render for ListView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.metadata.name.clone(),
                    r.metadata.namespace.clone(),
                    r.metadata.resource_version.to_string(),
                    r.spec.to_string(),
                ]
            })
            .collect();
        write_columns(
            out,
            &["KIND", "NAME", "NAMESPACE", "VERSION", "SPEC"],
            &rows,
        )
    }
}

impl Render for ResourceView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.reference())?;
        writeln!(out, "  version: {}", self.metadata.resource_version)?;
        writeln!(out, "  spec:    {}", self.spec)?;
        if !self.status.is_null() {
            writeln!(out, "  status:  {}", self.status)?;
        }
        Ok(())
    }
}

/// What `apply` did, resource by resource.
#[derive(Serialize)]
struct AppliedView {
    outcome: String,
    resource: ResourceView,
}

impl Render for AppliedView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{} {}", self.resource.reference(), self.outcome)
    }
}

/// Runs `cella apply -f`.
pub async fn apply(args: ApplyArgs, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let docs = cella_sdk::resources::parse_documents(&text)?;
    anyhow::ensure!(
        !docs.is_empty(),
        "{}: no resources in the file",
        args.file.display()
    );
    let resources = remote.connect().await?.resources();
    for doc in docs {
        let Applied { resource, outcome } = resources.apply(doc).await?;
        emit(
            format,
            &AppliedView {
                outcome,
                resource: resource.into(),
            },
        )?;
    }
    Ok(())
}

/// Runs `cella get`.
pub async fn get(args: GetArgs, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let resources = remote.connect().await?.resources();
    match args.name {
        Some(name) => {
            let view: ResourceView = resources
                .get(&args.kind, &args.namespace, &name)
                .await?
                .into();
            emit(format, &view)
        }
        None => {
            let items = resources.list(&args.kind, &args.namespace).await?;
            let views: Vec<ResourceView> = items.into_iter().map(Into::into).collect();
            if format == Format::Table {
                return emit(format, &ListView(views));
            }
            views.iter().try_for_each(|view| emit(format, view))
        }
    }
}

/// Runs `cella delete`.
pub async fn delete(args: DeleteArgs, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let resources = remote.connect().await?.resources();
    let gone: ResourceView = resources
        .delete(&args.kind, &args.namespace, &args.name)
        .await?
        .into();
    emit(
        format,
        &AppliedView {
            outcome: "deleted".into(),
            resource: gone,
        },
    )
}
