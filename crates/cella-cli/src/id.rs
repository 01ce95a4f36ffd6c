//! `cella id`: unique ids from a node — snowflake ids of a layout (`next`, `batch`), their
//! parts (`decode`), segment-mode ids of a business tag (`segment`), and the layouts served.

use std::io::{self, Write};

use clap::Subcommand;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::output::{emit, Format, Render};
use crate::Remote;

/// The `id` verbs.
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Print one id of a layout.
    Next {
        /// Layout name: snowflake64, order32, or one configured on the node.
        #[arg(long)]
        layout: String,
        /// A tag field's value, as NAME=VALUE (e.g. order32's type, db, table); repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, u64)>,
    },
    /// Print COUNT ids of a layout, one per line, increasing.
    Batch {
        /// Layout name.
        #[arg(long)]
        layout: String,
        /// How many ids (1 to the node's limit, 10,000 by default).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// A tag field's value, as NAME=VALUE; repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, u64)>,
    },
    /// Print an id's parts as JSON.
    Decode {
        /// Layout name.
        #[arg(long)]
        layout: String,
        /// The id.
        id: String,
    },
    /// Print the next COUNT segment-mode ids of a business tag, one per line.
    Segment {
        /// Business tag (a-z, 0-9, '_', '-', '.').
        tag: String,
        /// How many ids.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// List the layouts the node serves.
    Layouts,
}

fn parse_tag(input: &str) -> Result<(String, u64), String> {
    let bad = || format!("tag {input:?} must look like NAME=VALUE with VALUE a whole number >= 0");
    let (name, value) = input.split_once('=').ok_or_else(bad)?;
    let value = value.trim().parse().map_err(|_| bad())?;
    Ok((name.trim().to_owned(), value))
}

fn borrowed(tags: &[(String, u64)]) -> Vec<(&str, u64)> {
    tags.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

/// Runs one `id` verb.
pub async fn run(command: IdCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let ids = remote.connect().await?.ids();
    match command {
        IdCommand::Next { layout, tags } => {
            let id = ids.next_with(&layout, &borrowed(&tags)).await?;
            emit(
                format,
                &IdsView {
                    layout,
                    ids: vec![id],
                },
            )
        }
        IdCommand::Batch {
            layout,
            count,
            tags,
        } => {
            let batch = ids.batch_with(&layout, count, &borrowed(&tags)).await?;
            emit(format, &IdsView { layout, ids: batch })
        }
        IdCommand::Decode { layout, id } => {
            let decoded = ids.decode(&layout, &id).await?;
            emit(
                format,
                &DecodedView {
                    layout: decoded.layout,
                    id: decoded.id,
                    unix_ms: decoded.unix_ms,
                    parts: Parts(decoded.fields),
                },
            )
        }
        IdCommand::Segment { tag, count } => {
            let got = ids.segment(&tag, count).await?;
            emit(
                format,
                &IdsView {
                    layout: format!("segment:{tag}"),
                    ids: got.iter().map(u64::to_string).collect(),
                },
            )
        }
        IdCommand::Layouts => {
            let layouts = ids.layouts().await?;
            let views = layouts
                .iter()
                .map(|l| LayoutView {
                    name: l.name().to_owned(),
                    radix: format!("{:?}", l.spec().radix).to_lowercase(),
                    fields: l
                        .spec()
                        .fields
                        .iter()
                        .map(|f| format!("{}:{:?}:{}", f.name, f.kind, f.width).to_lowercase())
                        .collect(),
                })
                .collect();
            emit(format, &LayoutsView { layouts: views })
        }
    }
}

/// Ids, printed one per line.
#[derive(Debug, Serialize)]
struct IdsView {
    layout: String,
    ids: Vec<String>,
}

impl Render for IdsView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        for id in &self.ids {
            writeln!(out, "{id}")?;
        }
        Ok(())
    }
}

/// Field values in layout order, serialized as one map.
#[derive(Debug)]
struct Parts(Vec<(String, u64)>);

impl Serialize for Parts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A decoded id; its human form is JSON too.
#[derive(Debug, Serialize)]
struct DecodedView {
    layout: String,
    id: String,
    unix_ms: u64,
    parts: Parts,
}

impl Render for DecodedView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)
    }
}

#[derive(Debug, Serialize)]
struct LayoutView {
    name: String,
    radix: String,
    fields: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LayoutsView {
    layouts: Vec<LayoutView>,
}

impl Render for LayoutsView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        for l in &self.layouts {
            writeln!(out, "{}\t{}\t{}", l.name, l.radix, l.fields.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_as_name_equals_value() {
        assert_eq!(parse_tag("db=12"), Ok(("db".into(), 12)));
        for bad in ["db", "db=-1", "db=x", "=1x"] {
            assert!(parse_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decoded_parts_keep_layout_order_in_json() {
        let view = DecodedView {
            layout: "order32".into(),
            id: "1".into(),
            unix_ms: 5,
            parts: Parts(vec![
                ("timestamp".into(), 1),
                ("sequence".into(), 2),
                ("db".into(), 3),
            ]),
        };
        assert_eq!(
            serde_json::to_string(&view).expect("serializes"),
            r#"{"layout":"order32","id":"1","unix_ms":5,"parts":{"timestamp":1,"sequence":2,"db":3}}"#
        );
    }
}
