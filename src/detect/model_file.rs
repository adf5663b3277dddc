//! What every trained model file shares (`models/<kind>.<detector>.json`): where it
//! came from, how a version is checked before the rest is read, and the error that
//! names the file. Each detector's own format is beside it (`iforest/file.rs`,
//! `residual/file.rs`). A model file is untrusted input.

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// One training input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// File name (without its directory).
    pub file: String,
    /// SHA-256 of its bytes (hex).
    pub sha256: String,
}

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The captures.
    pub inputs: Vec<Input>,
    /// Feature rows trained on.
    pub rows: usize,
    /// Rows left out because they fell in labelled windows.
    pub labelled_rows_left_out: usize,
    /// Devices the rows came from.
    pub devices: Vec<String>,
    /// Quantile of the training scores taken as the threshold.
    pub threshold_quantile: f64,
    /// Every n-th frame of a device was kept.
    pub every: u32,
    /// Samples a device had before its rows were kept.
    pub warmup_samples: u64,
    /// wattchdog version that trained it.
    pub wattchdog: String,
}

/// Why a model file cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Unreadable.
    #[error("cannot read model {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not the JSON of a model.
    #[error("model {path}: {message}")]
    Parse {
        /// File.
        path: String,
        /// serde_json's message (with line and column).
        message: String,
    },
    /// Parsed, but not usable.
    #[error("model {path}: {problem}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A model file that says which format it is in.
pub trait VersionedFile: serde::de::DeserializeOwned {
    /// The file's `format_version`.
    fn format_version(&self) -> u32;
}

/// Parses a versioned model file of any detector, then runs `check`. An old or future
/// file says so instead of failing on a field: its version is read on its own only when
/// the whole file does not parse (a forest is megabytes of JSON, read once, not twice).
/// `origin` names the file in errors.
pub fn parse_versioned<T: VersionedFile>(
    text: &str,
    origin: &str,
    version: u32,
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ModelError> {
    let wrong_version = |found: Option<u64>| ModelError::Invalid {
        path: origin.to_owned(),
        problem: format!(
            "format_version {found:?}; this build reads {version} (retrain with `wattchdog train`)"
        ),
    };
    let m: T = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            // Only the version, the rest skipped unread.
            #[derive(serde::Deserialize)]
            struct Versioned {
                format_version: Option<serde_json::Value>,
            }
            // `None`: not even a JSON object; `Some(None)`: no usable version.
            let found = serde_json::from_str::<Versioned>(text)
                .ok()
                .map(|v| v.format_version.and_then(|v| v.as_u64()));
            return Err(match found {
                Some(found) if found != Some(u64::from(version)) => wrong_version(found),
                _ => ModelError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                },
            });
        }
    };
    if m.format_version() != version {
        return Err(wrong_version(Some(u64::from(m.format_version()))));
    }
    check(&m).map_err(|problem| ModelError::Invalid {
        path: origin.to_owned(),
        problem,
    })?;
    Ok(m)
}

/// The `models` directories one detector was given, each with the kinds it serves and
/// whether any of their models was in it. A directory that is missing, or holds none of
/// the models it was named for, is an error: either would turn the detector's trained
/// models off without a word.
#[derive(Debug, Default)]
pub struct ModelDirs(std::collections::BTreeMap<std::path::PathBuf, (Vec<String>, bool)>);

impl ModelDirs {
    /// Notes that `dir` serves `kind`; errors when it is not a readable directory.
    pub fn serve(&mut self, dir: &Path, kind: &str) -> Result<(), ModelError> {
        if !self.0.contains_key(dir) {
            let meta = std::fs::metadata(dir).map_err(|source| ModelError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            if !meta.is_dir() {
                return Err(ModelError::Invalid {
                    path: dir.display().to_string(),
                    problem: "is not a directory".into(),
                });
            }
        }
        self.0
            .entry(dir.to_owned())
            .or_default()
            .0
            .push(kind.to_owned());
        Ok(())
    }

    /// Notes that a model was found in `dir`.
    pub fn found(&mut self, dir: &Path) {
        if let Some(e) = self.0.get_mut(dir) {
            e.1 = true;
        }
    }

    /// Errors for the first directory in which no model was found.
    pub fn check(&self, detector: &str) -> Result<(), ModelError> {
        match self.0.iter().find(|(_, (_, found))| !found) {
            None => Ok(()),
            Some((dir, (kinds, _))) => Err(ModelError::Invalid {
                path: dir.display().to_string(),
                problem: format!(
                    "holds no {detector} model of the kinds it is set for ({}): expected a file such as {}.{detector}.json",
                    kinds.join(", "),
                    kinds.first().map_or("chiller", String::as_str)
                ),
            }),
        }
    }
}

/// Reads a model file's text; `Ok(None)` when there is no such file.
pub fn read_optional(path: &Path) -> Result<Option<String>, ModelError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}
