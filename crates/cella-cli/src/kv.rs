//! `cella kv`: put, get, del and watch keys.

use std::io::{self, Write};

use cella_sdk::kv::{
    DeleteOptions, DeleteResult, KeyRange, KeyValue, PutOptions, PutResult, RangeOptions,
    RangeResult,
};
use cella_sdk::watch::{EventKind, WatchBatch, WatchOptions};
use cella_sdk::{LeaseId, Revision};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::Serialize;

use crate::output::{emit, Format, Render, Text};
use crate::{until_interrupted, Remote, UsageError};

/// The `kv` verbs.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write KEY = VALUE.
    Put(PutArgs),
    /// Read KEY, or every key under it with --prefix.
    Get(GetArgs),
    /// Delete KEY, or every key under it with --prefix.
    Del(DelArgs),
    /// Print changes to KEY (or under it with --prefix) until Ctrl-C or SIGTERM.
    Watch(WatchArgs),
}

/// Which keys a verb acts on.
#[derive(Debug, Args)]
pub struct Keys {
    /// The key (with --prefix, the prefix; "" and --prefix means every key).
    key: String,
    /// Act on every key starting with KEY.
    #[arg(long)]
    prefix: bool,
}

impl Keys {
    fn range(&self) -> Result<KeyRange, UsageError> {
        match (self.prefix, self.key.is_empty()) {
            (true, _) => Ok(KeyRange::prefix(self.key.clone())),
            (false, true) => Err(UsageError(
                "KEY must not be empty (use --prefix \"\" for every key)".to_owned(),
            )),
            (false, false) => Ok(KeyRange::key(self.key.clone())),
        }
    }
}

/// `kv put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value.
    value: String,
    /// Attach the key to this lease (hex id); the key is deleted when the lease ends.
    #[arg(long, value_name = "ID")]
    lease: Option<LeaseId>,
    /// Print the key's previous value.
    #[arg(long)]
    prev_kv: bool,
}

/// `kv get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    keys: Keys,
    /// Read as of this revision (0: the newest).
    #[arg(long, value_name = "N", value_parser = parse_non_negative("--rev"), allow_negative_numbers = true)]
    rev: Option<i64>,
    /// Return at most N keys (0: no limit).
    #[arg(long, value_name = "N", value_parser = parse_non_negative("--limit"), allow_negative_numbers = true)]
    limit: Option<i64>,
    /// Print keys without values.
    #[arg(long)]
    keys_only: bool,
    /// Answer from the contacted node without a consensus round (may be stale).
    #[arg(long)]
    serializable: bool,
}

/// `kv del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    #[command(flatten)]
    keys: Keys,
    /// Print the deleted keys and values.
    #[arg(long)]
    prev_kv: bool,
}

/// `kv watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    keys: Keys,
    /// Replay history from this revision on before live changes (0: only new changes).
    #[arg(long, value_name = "N", value_parser = parse_non_negative("--rev"), allow_negative_numbers = true)]
    rev: Option<i64>,
    /// Print each key's previous value with its event.
    #[arg(long)]
    prev_kv: bool,
}

/// A clap parser for integers that must be >= 0, naming `flag` in its error.
fn parse_non_negative(flag: &'static str) -> impl Fn(&str) -> Result<i64, String> + Clone {
    move |input| match input.parse::<i64>() {
        Ok(number) if number >= 0 => Ok(number),
        Ok(_) => Err(format!("{flag} must be >= 0")),
        Err(_) => Err(format!("{flag} must be an integer >= 0")),
    }
}

/// Runs one `kv` verb.
///
/// Arguments are checked before connecting, so bad usage exits 2 whatever the server's state.
pub async fn run(command: KvCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    match command {
        KvCommand::Put(args) => {
            let mut options = PutOptions::new();
            if let Some(lease) = args.lease {
                options = options.lease(lease);
            }
            if args.prev_kv {
                options = options.prev_kv();
            }
            let kv = remote.connect().await?.kv();
            let result = kv.put_with(args.key, args.value, options).await?;
            emit(format, &PutView::from(result))
        }
        KvCommand::Get(args) => {
            let mut options = RangeOptions::new();
            if let Some(rev) = args.rev {
                options = options.revision(Revision(rev));
            }
            if let Some(limit) = args.limit {
                // The parser let only limits >= 0 through, so nothing is lost.
                options = options.limit(limit.unsigned_abs());
            }
            if args.keys_only {
                options = options.keys_only();
            }
            if args.serializable {
                options = options.serializable();
            }
            let keys = args.keys.range()?;
            let result = remote.connect().await?.kv().range(keys, options).await?;
            emit(format, &RangeView::new(result, !args.keys_only))
        }
        KvCommand::Del(args) => {
            let mut options = DeleteOptions::new();
            if args.prev_kv {
                options = options.prev_kv();
            }
            let keys = args.keys.range()?;
            let kv = remote.connect().await?.kv();
            let result = kv.delete_range(keys, options).await?;
            emit(format, &DeleteView::from(result))
        }
        KvCommand::Watch(args) => {
            let mut options = WatchOptions::new();
            if let Some(rev) = args.rev {
                options = options.start_revision(Revision(rev));
            }
            if args.prev_kv {
                options = options.prev_kv();
            }
            let keys = args.keys.range()?;
            let mut stream = remote.connect().await?.watch().watch(keys, options).await?;
            until_interrupted(async move {
                while let Some(batch) = stream.next().await {
                    emit(format, &WatchView::from(batch?))?;
                }
                Ok(())
            })
            .await
        }
    }
}

/// A key-value pair as printed.
#[derive(Debug, Serialize)]
struct KeyValueView {
    key: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Text>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
}

impl KeyValueView {
    fn new(kv: KeyValue, with_value: bool) -> Self {
        KeyValueView {
            key: Text::from(&kv.key[..]),
            value: with_value.then(|| Text::from(&kv.value[..])),
            create_revision: kv.create_revision.0,
            mod_revision: kv.mod_revision.0,
            version: kv.version,
            lease: kv.lease.map(|lease| lease.to_string()),
        }
    }

    /// etcdctl's form: the key on one line, the value on the next.
    fn write_lines(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.key)?;
        if let Some(value) = &self.value {
            writeln!(out, "{value}")?;
        }
        Ok(())
    }
}

impl From<KeyValue> for KeyValueView {
    fn from(kv: KeyValue) -> Self {
        KeyValueView::new(kv, true)
    }
}

#[derive(Debug, Serialize)]
struct PutView {
    revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KeyValueView>,
}

impl From<PutResult> for PutView {
    fn from(result: PutResult) -> Self {
        PutView {
            revision: result.revision.0,
            prev_kv: result.prev_kv.map(KeyValueView::from),
        }
    }
}

impl Render for PutView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "OK")?;
        self.prev_kv.iter().try_for_each(|kv| kv.write_lines(out))
    }
}

#[derive(Debug, Serialize)]
struct RangeView {
    revision: i64,
    count: i64,
    more: bool,
    kvs: Vec<KeyValueView>,
}

impl RangeView {
    fn new(result: RangeResult, with_values: bool) -> Self {
        RangeView {
            revision: result.revision.0,
            count: result.count,
            more: result.more,
            kvs: result
                .kvs
                .into_iter()
                .map(|kv| KeyValueView::new(kv, with_values))
                .collect(),
        }
    }
}

impl Render for RangeView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        self.kvs.iter().try_for_each(|kv| kv.write_lines(out))
    }
}

#[derive(Debug, Serialize)]
struct DeleteView {
    revision: i64,
    deleted: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prev_kvs: Vec<KeyValueView>,
}

impl From<DeleteResult> for DeleteView {
    fn from(result: DeleteResult) -> Self {
        DeleteView {
            revision: result.revision.0,
            deleted: result.deleted,
            prev_kvs: result
                .prev_kvs
                .into_iter()
                .map(KeyValueView::from)
                .collect(),
        }
    }
}

impl Render for DeleteView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.deleted)?;
        self.prev_kvs.iter().try_for_each(|kv| kv.write_lines(out))
    }
}

#[derive(Debug, Serialize)]
struct WatchView {
    revision: i64,
    events: Vec<EventView>,
}

#[derive(Debug, Serialize)]
struct EventView {
    #[serde(rename = "type")]
    kind: &'static str,
    kv: KeyValueView,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KeyValueView>,
}

impl From<WatchBatch> for WatchView {
    fn from(batch: WatchBatch) -> Self {
        let events = batch.events.into_iter().map(|event| {
            let (kind, with_value) = match event.kind {
                EventKind::Put => ("PUT", true),
                EventKind::Delete => ("DELETE", false),
            };
            EventView {
                kind,
                kv: KeyValueView::new(event.kv, with_value),
                prev_kv: event.prev_kv.map(KeyValueView::from),
            }
        });
        WatchView {
            revision: batch.revision.0,
            events: events.collect(),
        }
    }
}

impl Render for WatchView {
    /// etcdctl's form: the event type, the previous key and value if asked for, the key and value.
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        for event in &self.events {
            writeln!(out, "{}", event.kind)?;
            if let Some(prev_kv) = &event.prev_kv {
                prev_kv.write_lines(out)?;
            }
            event.kv.write_lines(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_numbers_name_the_flag_and_the_rule() {
        let parse = parse_non_negative("--limit");
        assert_eq!(parse("-1"), Err("--limit must be >= 0".to_owned()));
        assert_eq!(
            parse("ten"),
            Err("--limit must be an integer >= 0".to_owned())
        );
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn empty_key_needs_prefix() {
        let keys = |key: &str, prefix| Keys {
            key: key.to_owned(),
            prefix,
        };
        assert!(keys("", false).range().is_err());
        assert_eq!(keys("", true).range().ok(), Some(KeyRange::prefix("")));
        assert_eq!(keys("a", false).range().ok(), Some(KeyRange::key("a")));
    }
}
