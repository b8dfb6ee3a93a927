//! Config errors, and finding where in the file a key path lies so every error can give its
//! line.

use std::{fmt, ops::Range, path::Path, path::PathBuf};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{Config, Invalid, Key};

/// Why a configuration file was rejected. Display is `<file>: <key>: <reason> (line L,
/// column C)`, always on one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{}: {}{reason}", .path.display(), at_start(*.position))]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// Where the parser stopped.
        position: Option<Position>,
        /// What the parser disliked.
        reason: String,
    },
    /// An unknown key, a value of the wrong type or outside its rules, or a failed check
    /// across fields.
    #[error("{}: {}{reason}{}", .path.display(), key_prefix(.key), at_end(*.position))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Dotted path of the offending key (`tls.upstream[0].verify`); empty for the root.
        key: String,
        /// Where the offending value (or table) starts.
        position: Option<Position>,
        /// What is wrong.
        reason: String,
    },
}

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

fn at_start(position: Option<Position>) -> String {
    position.map(|p| format!("{p}: ")).unwrap_or_default()
}

fn at_end(position: Option<Position>) -> String {
    position.map(|p| format!(" ({p})")).unwrap_or_default()
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Parses the TOML document, keeping every value's span.
pub(super) fn parse_document<'i>(
    text: &'i str,
    path: &Path,
) -> Result<Spanned<DeTable<'i>>, ConfigError> {
    DeTable::parse(text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        position: error.span().and_then(|span| position(text, span.start)),
        reason: one_line(error.message()),
    })
}

/// Deserializes the document into the model; errors carry the key path and the line.
pub(super) fn deserialize(
    document: &Spanned<DeTable<'_>>,
    text: &str,
    path: &Path,
) -> Result<Config, ConfigError> {
    let deserializer = toml::de::Deserializer::from(document.clone());
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let keys = keys_of(error.path());
        // toml gives a value inside an array the array's span; the path finds the value.
        let span = span_of(document, &keys).or_else(|| error.inner().span());
        ConfigError::Invalid {
            path: path.to_owned(),
            // A quoted key may hold a line break.
            key: one_line(&key_path(&keys)),
            position: span.and_then(|span| position(text, span.start)),
            reason: one_line(error.inner().message()),
        }
    })
}

/// Turns a failed cross-field check into an error at the line of its key.
pub(super) fn locate(
    invalid: Invalid,
    document: &Spanned<DeTable<'_>>,
    text: &str,
    path: &Path,
) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        key: key_path(&invalid.key),
        position: span_of(document, &invalid.key).and_then(|span| position(text, span.start)),
        reason: invalid.reason,
    }
}

/// The path serde_path_to_error recorded, as keys.
fn keys_of(path: &serde_path_to_error::Path) -> Vec<Key> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Key::Index(*index)),
            Segment::Map { key } => Some(Key::Name(key.clone())),
            Segment::Enum { variant } => Some(Key::Name(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// `tls.upstream[1].pattern`.
fn key_path(keys: &[Key]) -> String {
    let mut out = String::new();
    for key in keys {
        match key {
            Key::Name(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Key::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Where the value at `keys` lies in the document; for a key that is not there (a missing
/// one), where its closest present parent lies.
fn span_of(document: &Spanned<DeTable<'_>>, keys: &[Key]) -> Option<Range<usize>> {
    let mut span = document.span();
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = Some(document.get_ref());
    for key in keys {
        let next = match (key, table, value) {
            (Key::Name(name), Some(table), _) => table.get(name.as_str()),
            (Key::Index(index), _, Some(DeValue::Array(items))) => items.get(*index),
            _ => None,
        };
        let Some(next) = next else {
            break;
        };
        span = next.span();
        value = Some(next.get_ref());
        table = match next.get_ref() {
            DeValue::Table(inner) => Some(inner),
            _ => None,
        };
    }
    Some(span)
}

/// Keeps each error on one log line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> Option<Position> {
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    Some(Position { line, column })
}
