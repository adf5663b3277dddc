//! Reading TOML files people write (config, facility descriptions): one error type whose
//! messages name the file, and the key and line or the rule a value breaks.

use serde::de::DeserializeOwned;
use std::path::Path;
use thiserror::Error;

/// Why a TOML file could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TomlError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Syntax error, wrong type or unknown key (the message names key, line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value breaks a rule.
    #[error("{path}: {key} {rule}")]
    Invalid {
        /// The file.
        path: String,
        /// Dotted key.
        key: String,
        /// The rule it breaks.
        rule: String,
    },
}

/// Reads a file to text.
pub fn read(path: &Path) -> Result<String, TomlError> {
    std::fs::read_to_string(path).map_err(|source| TomlError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a file and hands its text to `parse` with the path as the origin.
pub fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str, &str) -> Result<T, TomlError>,
) -> Result<T, TomlError> {
    parse(&read(path)?, &path.display().to_string())
}

/// Parses TOML text; `origin` names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| TomlError::Parse {
        path: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// `Ok` when `ok`, else an error saying that `key` breaks `rule`.
pub fn check(origin: &str, key: &str, ok: bool, rule: &str) -> Result<(), TomlError> {
    if ok {
        Ok(())
    } else {
        Err(TomlError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            rule: rule.to_owned(),
        })
    }
}

/// A parameter that breaks a rule: its key within the component's table and the rule.
/// Components check their own parameters; the config file adds where they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Dotted key, relative to the component's table.
    pub key: String,
    /// The rule it breaks.
    pub rule: String,
}

impl Broken {
    /// The same key inside the table `prefix`.
    pub fn under(self, prefix: &str) -> Self {
        Self {
            key: format!("{prefix}.{}", self.key),
            rule: self.rule,
        }
    }

    /// The error naming the file and the full key (`prefix.key`).
    pub fn within(self, prefix: &str, origin: &str) -> TomlError {
        let b = if prefix.is_empty() {
            self
        } else {
            self.under(prefix)
        };
        TomlError::Invalid {
            path: origin.to_owned(),
            key: b.key,
            rule: b.rule,
        }
    }
}

/// `Ok` when `ok`, else `key` breaks `rule` (for a component's own `check()`).
pub fn rule(ok: bool, key: impl Into<String>, rule: &str) -> Result<(), Broken> {
    if ok {
        Ok(())
    } else {
        Err(Broken {
            key: key.into(),
            rule: rule.to_owned(),
        })
    }
}
