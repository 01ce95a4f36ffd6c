//! Content formats and their validation on publish.
//!
//! `text` accepts any UTF-8; `json`, `yaml` and `toml` must parse with their parsers;
//! `properties` is checked by [`check_properties`] (Java `.properties` syntax: logical lines
//! joined by a trailing backslash, `#`/`!` comments, `key=value`, `key:value` or
//! `key value`, `\u` escapes of four hex digits), rejecting empty keys and malformed escapes.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigResult};

/// The declared format of a config's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Any UTF-8 text.
    #[default]
    Text,
    /// A JSON document.
    Json,
    /// A YAML document.
    Yaml,
    /// A TOML document.
    Toml,
    /// Java properties.
    Properties,
}

impl Format {
    /// Every format, in the order the docs list them.
    pub const ALL: [Format; 5] = [
        Format::Text,
        Format::Json,
        Format::Yaml,
        Format::Toml,
        Format::Properties,
    ];

    /// The format's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Properties => "properties",
        }
    }

    /// Parses a wire name; an empty name is `text`.
    pub fn parse(name: &str) -> ConfigResult<Format> {
        if name.is_empty() {
            return Ok(Format::Text);
        }
        let lower = name.to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == lower || (lower == "yml" && *f == Format::Yaml))
            .ok_or_else(|| ConfigError::InvalidField {
                field: "format",
                rule: format!("must be one of text, json, yaml, toml, properties (got {name:?})"),
            })
    }

    /// Checks that `content` is valid in this format.
    pub fn validate(self, content: &str) -> ConfigResult<()> {
        let invalid = |reason: String| ConfigError::InvalidContent {
            format: self.as_str(),
            reason,
        };
        match self {
            Format::Text => Ok(()),
            Format::Json => serde_json::from_str::<serde_json::Value>(content)
                .map(drop)
                .map_err(|e| invalid(e.to_string())),
            Format::Yaml => serde_yaml::from_str::<serde_yaml::Value>(content)
                .map(drop)
                .map_err(|e| invalid(e.to_string())),
            Format::Toml => content
                .parse::<toml::Table>()
                .map(drop)
                .map_err(|e| invalid(e.message().to_string())),
            Format::Properties => check_properties(content).map_err(invalid),
        }
    }
}

/// Checks Java properties syntax; the error names the (1-based) physical line.
pub(crate) fn check_properties(content: &str) -> Result<(), String> {
    let lines: Vec<&str> = content.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let first = lines[i].trim_start();
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            i += 1;
            continue;
        }
        // Join continuation lines: a line ending in an odd number of backslashes continues.
        let mut logical = String::new();
        let mut piece = first;
        loop {
            let trailing = piece.len() - piece.trim_end_matches('\\').len();
            i += 1;
            if trailing % 2 == 1 {
                logical.push_str(&piece[..piece.len() - 1]);
                match lines.get(i) {
                    Some(next) => piece = next.trim_start(),
                    None => break,
                }
            } else {
                logical.push_str(piece);
                break;
            }
        }
        check_logical_line(&logical).map_err(|e| format!("line {start}: {e}"))?;
    }
    Ok(())
}

/// Checks one logical `key<sep>value` line.
fn check_logical_line(line: &str) -> Result<(), String> {
    let mut chars = line.chars().peekable();
    let mut key_len = 0;
    let mut in_key = true;
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    if hex.len() != 4 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                        return Err(format!(
                            "malformed escape \"\\u{hex}\": \\u takes four hex digits"
                        ));
                    }
                }
                Some(_) => {}
                None => return Err("a backslash ends the line".into()),
            }
            if in_key {
                key_len += 1;
            }
            continue;
        }
        if in_key {
            if c == '=' || c == ':' || c.is_whitespace() {
                in_key = false;
            } else {
                key_len += 1;
            }
        }
    }
    if key_len == 0 {
        return Err("a key is required before the separator".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_and_reject_unknown_ones() {
        assert_eq!(Format::parse("").unwrap(), Format::Text);
        assert_eq!(Format::parse("YAML").unwrap(), Format::Yaml);
        assert_eq!(Format::parse("yml").unwrap(), Format::Yaml);
        let err = Format::parse("xml").unwrap_err();
        assert!(err.to_string().contains("`format`"), "{err}");
    }

    #[test]
    fn each_format_accepts_valid_and_rejects_invalid_content() {
        let cases = [
            (Format::Json, "{\"a\": [1, 2]}", "{\"a\": "),
            (Format::Yaml, "a:\n  b: 1\n", "a: [1, 2\n"),
            (Format::Toml, "[server]\nport = 80\n", "port = = 80"),
            (Format::Properties, "a=1\nb : 2\nc 3\n# note\n", "=1\n"),
        ];
        for (format, good, bad) in cases {
            format.validate(good).unwrap();
            let err = format.validate(bad).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidContent { format: f, .. } if f == format.as_str()),
                "{format:?}: {err}"
            );
        }
        Format::Text.validate("anything { at all").unwrap();
    }

    #[test]
    fn properties_continuations_escapes_and_line_numbers() {
        check_properties("a = one \\\n    two\nb=\\u0041\n").unwrap();
        check_properties("path=c:\\\\dir\n").unwrap();
        let err = check_properties("a=1\n\nb=\\u00G1\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        let err = check_properties("ok=1\n: value\n").unwrap_err();
        assert!(err.contains("key is required"), "{err}");
    }
}
