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
