//! `cella config`: namespaces, publish, get, history, diff, rollback, gray, delete, audit.
//!
//! A config is named `NAMESPACE/GROUP/DATA_ID` (data ids hold no `/`).

use std::io::{self, Write};

use cella_sdk::config::{pb, ConfigKey, Identity, PublishOptions};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::{emit, Format, Render};
use crate::{Remote, UsageError};

/// The `config` verbs.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create or list namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Publish a new release of a config.
    Publish(PublishArgs),
    /// Print a config's content (what a client with --client-id/--label receives).
    Get(GetArgs),
    /// List a config's releases, newest first.
    History(HistoryArgs),
    /// Show the line diff between two releases.
    Diff(DiffArgs),
    /// Publish a new release equal to an old one.
    Rollback(RollbackArgs),
    /// Gray releases: start, promote, abort.
    #[command(subcommand)]
    Gray(GrayCommand),
    /// Delete a config and its history.
    Delete(KeyArg),
    /// Show a namespace's audit log, newest first.
    Audit(AuditArgs),
}

/// `config namespace` verbs.
#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace.
    Create {
        /// Its name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List namespaces.
    List,
}

/// A config's name.
#[derive(Debug, Args)]
pub struct KeyArg {
    /// NAMESPACE/GROUP/DATA_ID.
    key: String,
}

impl KeyArg {
    fn key(&self) -> Result<ConfigKey, UsageError> {
        let parts: Vec<&str> = self.key.split('/').collect();
        match parts.as_slice() {
            [ns, group, id] if !ns.is_empty() && !group.is_empty() && !id.is_empty() => {
                Ok(ConfigKey::new(ns, group, id))
            }
            _ => Err(UsageError(format!(
                "config {:?} must be NAMESPACE/GROUP/DATA_ID",
                self.key
            ))),
        }
    }
}

/// Where new content comes from, and how it is described.
#[derive(Debug, Args)]
pub struct ContentArgs {
    /// The content.
    #[arg(long, conflicts_with = "file")]
    content: Option<String>,
    /// Read the content from this file.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// text | json | yaml | toml | properties (default: from the file extension, else text).
    #[arg(long)]
    format: Option<String>,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
    /// Who (shown in history and audit; a token's name wins when the namespace has an ACL).
    #[arg(long, env = "USER", default_value = "")]
    author: String,
    /// Publish only if this is still the current release (0: the config must not exist).
    #[arg(long, value_name = "N")]
    base: Option<u64>,
}

impl ContentArgs {
    fn read(&self) -> anyhow::Result<(String, PublishOptions)> {
        let content = match (&self.content, &self.file) {
            (Some(c), _) => c.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("--file {}: {e}", path.display())))?,
            (None, None) => return Err(UsageError("give --content or --file".into()).into()),
        };
        let from_ext = self
            .file
            .as_ref()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .filter(|e| ["json", "yaml", "yml", "toml", "properties"].contains(e))
            .map(str::to_string);
        let options = PublishOptions {
            format: self.format.clone().or(from_ext).unwrap_or_default(),
            author: self.author.clone(),
            comment: self.comment.clone(),
            base_release: self.base,
        };
        Ok((content, options))
    }
}

/// `config publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    content: ContentArgs,
}

/// `config get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    key: KeyArg,
    /// That release instead of the current one.
    #[arg(long, value_name = "N")]
    release: Option<u64>,
    /// Ask as this client id (gray releases select on it).
    #[arg(long, default_value = "")]
    client_id: String,
    /// Ask with this label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

/// `config history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    key: KeyArg,
    /// At most N releases (0: 100).
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

/// `config diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The older release.
    from: u64,
    /// The newer release.
    to: u64,
}

/// `config rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The release to return to.
    to: u64,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
    /// Who.
    #[arg(long, env = "USER", default_value = "")]
    author: String,
    /// Roll back only if this is still the current release.
    #[arg(long, value_name = "N")]
    base: Option<u64>,
}

/// `config gray` verbs.
#[derive(Debug, Subcommand)]
pub enum GrayCommand {
    /// Publish a candidate to the clients a target selects.
    Start(GrayStartArgs),
    /// Make the candidate current for everyone.
    Promote(KeyArg),
    /// Drop the candidate.
    Abort(KeyArg),
}

/// `config gray start`.
#[derive(Debug, Args)]
pub struct GrayStartArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    content: ContentArgs,
    /// Select clients with this label, KEY=VALUE (repeatable; all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Select this client id (repeatable).
    #[arg(long = "client-id", value_name = "ID")]
    client_ids: Vec<String>,
    /// Select this share of clients, 0-100, by a stable hash.
    #[arg(long)]
    percentage: Option<u32>,
}

/// `config audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The namespace.
    namespace: String,
    /// At most N entries (0: 100).
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

fn labels(pairs: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(UsageError(format!("--label {p:?} must be KEY=VALUE"))),
        })
        .collect()
}

/// Runs one `config` verb; arguments are checked before connecting.
pub async fn run(command: ConfigCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Namespace(NamespaceCommand::Create { name, description }) => {
            let configs = remote.connect().await?.config();
            let ns = configs.create_namespace(&name, &description).await?;
            emit(format, &Line(format!("namespace {} created", ns.name), ns))
        }
        ConfigCommand::Namespace(NamespaceCommand::List) => {
            let list = remote.connect().await?.config().list_namespaces().await?;
            let text = list
                .namespaces
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>()
                .join("\n");
            emit(format, &Line(text, list))
        }
        ConfigCommand::Publish(args) => {
            let key = args.key.key()?;
            let (content, options) = args.content.read()?;
            let release = remote
                .connect()
                .await?
                .config()
                .publish(&key, &content, options)
                .await?;
            emit(format, &ReleaseLine(release))
        }
        ConfigCommand::Get(args) => {
            let key = args.key.key()?;
            let identity = Identity {
                client_id: args.client_id.clone(),
                labels: labels(&args.labels)?.into_iter().collect(),
            };
            let configs = remote.connect().await?.config();
            let release = match args.release {
                Some(n) => configs.get_number(&key, n).await?,
                None => configs.get(&key, &identity).await?,
            };
            emit(
                format,
                &Line(release.content.trim_end_matches('\n').to_string(), release),
            )
        }
        ConfigCommand::History(args) => {
            let key = args.key.key()?;
            let releases = remote
                .connect()
                .await?
                .config()
                .history(&key, args.limit)
                .await?;
            emit(format, &History(releases))
        }
        ConfigCommand::Diff(args) => {
            let key = args.key.key()?;
            let diff = remote
                .connect()
                .await?
                .config()
                .diff(&key, args.from, args.to)
                .await?;
            emit(
                format,
                &Line(diff.unified.trim_end_matches('\n').to_string(), diff),
            )
        }
        ConfigCommand::Rollback(args) => {
            let key = args.key.key()?;
            let options = PublishOptions {
                format: String::new(),
                author: args.author,
                comment: args.comment,
                base_release: args.base,
            };
            let release = remote
                .connect()
                .await?
                .config()
                .rollback(&key, args.to, options)
                .await?;
            emit(format, &ReleaseLine(release))
        }
        ConfigCommand::Gray(GrayCommand::Start(args)) => {
            let key = args.key.key()?;
            let (content, options) = args.content.read()?;
            let target = pb::GrayTarget {
                labels: labels(&args.labels)?.into_iter().collect(),
                client_ids: args.client_ids,
                percentage: args.percentage,
            };
            let configs = remote.connect().await?.config();
            let release = configs.start_gray(&key, &content, target, options).await?;
            emit(format, &ReleaseLine(release))
        }
        ConfigCommand::Gray(GrayCommand::Promote(arg)) => {
            let key = arg.key()?;
            let release = remote
                .connect()
                .await?
                .config()
                .promote_gray(&key, "")
                .await?;
            emit(format, &ReleaseLine(release))
        }
        ConfigCommand::Gray(GrayCommand::Abort(arg)) => {
            let key = arg.key()?;
            let state = remote
                .connect()
                .await?
                .config()
                .abort_gray(&key, "")
                .await?;
            let current = state.current.as_ref().map_or(0, |r| r.number);
            emit(
                format,
                &Line(format!("gray aborted; current release {current}"), state),
            )
        }
        ConfigCommand::Delete(arg) => {
            let key = arg.key()?;
            let deleted = remote.connect().await?.config().delete(&key, "").await?;
            let text = if deleted { "deleted" } else { "not found" };
            emit(
                format,
                &Line(text.into(), serde_json::json!({ "deleted": deleted })),
            )
        }
        ConfigCommand::Audit(args) => {
            let entries = remote
                .connect()
                .await?
                .config()
                .audit(&args.namespace, args.limit)
                .await?;
            emit(format, &Audit(entries))
        }
    }
}

/// A result printed as one text block in a table, as the message in JSON/YAML.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Line<T: Serialize>(#[serde(skip)] String, T);

impl<T: Serialize> Render for Line<T> {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.0)
    }
}

fn release_summary(r: &pb::Release) -> String {
    let gray = if r.gray { " (gray)" } else { "" };
    let comment = if r.comment.is_empty() {
        String::new()
    } else {
        format!(": {}", r.comment)
    };
    format!(
        "release {}{gray} {} {} by {}{comment}",
        r.number,
        r.format,
        r.hash,
        if r.author.is_empty() {
            "anonymous"
        } else {
            &r.author
        }
    )
}

/// One release, summarised.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ReleaseLine(pb::Release);

impl Render for ReleaseLine {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", release_summary(&self.0))
    }
}

/// Releases, one per line.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct History(Vec<pb::Release>);

impl Render for History {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        for r in &self.0 {
            writeln!(out, "{}", release_summary(r))?;
        }
        Ok(())
    }
}

/// Audit entries, one per line.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Audit(Vec<pb::AuditEntry>);

impl Render for Audit {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        for e in &self.0 {
            let key = e.key.as_ref().map_or(String::new(), |k| {
                format!("{}/{}/{}", k.namespace, k.group, k.data_id)
            });
            writeln!(
                out,
                "{} {} {} {} release {} {}",
                e.time_unix_ms, e.actor, e.action, key, e.release, e.comment
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_labels_are_checked_before_connecting() {
        let ok = KeyArg {
            key: "dev/g/app.yaml".into(),
        }
        .key()
        .unwrap();
        assert_eq!(ok, ConfigKey::new("dev", "g", "app.yaml"));
        for bad in ["dev/g", "dev//x", "a/b/c/d"] {
            assert!(KeyArg { key: bad.into() }.key().is_err(), "{bad}");
        }
        assert_eq!(
            labels(&["zone=eu".into()]).unwrap(),
            [("zone".to_string(), "eu".to_string())]
        );
        assert!(labels(&["zone".into()]).is_err());
    }
}
