//! How results are printed: a human table (the default), or JSON / YAML of small view structs.
//!
//! JSON prints one document per line and YAML one `---` document per result, so streamed
//! results (watch events, keep-alive refreshes) can be read one by one.

use std::fmt;
use std::io::{self, Write};

use base64::Engine;
use serde::Serialize;

/// The `--output` format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines, like etcdctl's.
    Table,
    /// One JSON document per result.
    Json,
    /// One YAML document per result.
    Yaml,
}

/// A result the CLI prints: serde gives JSON and YAML, `write_table` the human form.
pub trait Render: Serialize {
    /// Writes the human form.
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()>;
}

/// Prints `view` to stdout in `format`.
pub fn emit(format: Format, view: &impl Render) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        Format::Table => view.write_table(&mut out)?,
        Format::Json => {
            serde_json::to_writer(&mut out, view)?;
            writeln!(out)?;
        }
        Format::Yaml => {
            writeln!(out, "---")?;
            serde_yaml::to_writer(&mut out, view)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The human form of `view`, for tests of a verb's table output.
#[cfg(test)]
pub fn table(view: &impl Render) -> String {
    let mut out = Vec::new();
    view.write_table(&mut out).expect("writing to a Vec");
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes for display: the text itself when it is UTF-8, otherwise `{"base64": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Text {
    /// Valid UTF-8, shown as is.
    Utf8(String),
    /// Anything else, base64-encoded (standard alphabet, padded).
    Base64 {
        /// The encoded bytes.
        base64: String,
    },
}

impl From<&[u8]> for Text {
    fn from(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Text::Utf8(text.to_owned()),
            Err(_) => Text::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Utf8(text) => f.write_str(text),
            Text::Base64 { base64 } => write!(f, "base64:{base64}"),
        }
    }
}

/// Writes `rows` under `headers` in space-padded columns.
pub fn write_columns(
    out: &mut dyn Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stays_text_and_binary_becomes_base64() {
        assert_eq!(Text::from(&b"hello"[..]), Text::Utf8("hello".to_owned()));
        let binary = Text::from(&b"\xff\x00"[..]);
        assert_eq!(
            serde_json::to_string(&binary).ok().as_deref(),
            Some(r#"{"base64":"/wA="}"#)
        );
        assert_eq!(binary.to_string(), "base64:/wA=");
    }

    #[test]
    fn columns_line_up() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["1".to_owned(), "alpha".to_owned()],
            vec!["22".to_owned(), "b".to_owned()],
        ];
        write_columns(&mut out, &["ID", "NAME"], &rows).expect("writing to a Vec");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "ID  NAME\n1   alpha\n22  b\n"
        );
    }
}
