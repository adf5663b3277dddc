//! Trained residual models, `<kind>.residual.json`: one [`Fitted`] model for a kind's
//! devices, fitted by `wattchdog train --detector residual` on a facility's own normal
//! captures. The model is in the facility's engineering units, so unlike the isolation
//! forests none is built in: it belongs to the site it was trained on. Untrusted input:
//! the version, every shape and every number are checked at load, and each problem is
//! an error naming the file.

use super::fit::Fitted;
use crate::detect::model_file::{
    parse_versioned, read_optional, ModelError, Provenance, VersionedFile,
};
use crate::model::DeviceKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The settings a model was fitted with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitSettings {
    /// Share of the variance the PCA components keep.
    pub variance: f64,
    /// Quantile of the training scores the thresholds start from.
    pub quantile: f64,
    /// Factor on that quantile.
    pub margin: f64,
    /// Von Neumann ratio below which a metric counts as a slow drift.
    pub drift_ratio: f64,
    /// Frames over which slow metrics' changes are taken.
    pub drift_lag: usize,
}

impl From<&super::ResidualParams> for FitSettings {
    fn from(p: &super::ResidualParams) -> Self {
        Self {
            variance: p.variance,
            quantile: p.quantile,
            margin: p.margin,
            drift_ratio: p.drift_ratio,
            drift_lag: p.drift_lag,
        }
    }
}

/// A residual model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidualFile {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Always `residual` (so a file cannot be mistaken for another detector's).
    pub detector: String,
    /// Device kind it judges.
    pub kind: String,
    /// How it was fitted.
    pub settings: FitSettings,
    /// The model.
    pub model: Fitted,
    /// Where it came from (`every` is 1: every frame is a row).
    pub provenance: Provenance,
}

/// A model loaded for one kind, with where it came from.
#[derive(Debug)]
pub struct ResidualModel {
    /// The file's model.
    pub model: std::sync::Arc<Fitted>,
    /// The file it came from.
    pub origin: String,
}

impl VersionedFile for ResidualFile {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl ResidualFile {
    /// Parses and checks a model; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        parse_versioned(text, origin, FORMAT_VERSION, |f: &Self| {
            if f.detector != "residual" {
                return Err(format!("is a model of {:?}, not residual", f.detector));
            }
            f.model.check()
        })
    }

    /// The model as pretty JSON (small: a few matrices of the metric count squared).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Loads `<dir>/<kind>.residual.json`; `Ok(None)` when there is none.
pub fn load(dir: &Path, kind: &str) -> Result<Option<ResidualModel>, ModelError> {
    let path = dir.join(format!("{kind}.residual.json"));
    let origin = path.display().to_string();
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let file = ResidualFile::from_json(&text, &origin)?;
    if file.kind != kind {
        return Err(ModelError::Invalid {
            path: origin,
            problem: format!("is a model of {:?}, expected {kind}", file.kind),
        });
    }
    Ok(Some(ResidualModel {
        model: std::sync::Arc::new(file.model),
        origin,
    }))
}

/// Loads every custom kind's model in `dir`: `<name>.residual.json` where `name` is
/// not a kind of the vocabulary (those are loaded by kind).
pub fn load_custom(
    dir: &Path,
) -> Result<BTreeMap<String, std::sync::Arc<ResidualModel>>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_str()?
                .strip_suffix(".residual.json")?
                .to_owned();
            let builtin = DeviceKind::parse(&name) != DeviceKind::Other || name == "other";
            (!builtin).then_some(name)
        })
        .collect();
    names.sort();
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(m) = load(dir, &name)? {
            out.insert(name, std::sync::Arc::new(m));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::model_file::Input;
    use crate::detect::residual::ResidualParams;
    use ndarray::Array2;
    use proptest::prelude::*;

    fn file() -> ResidualFile {
        let rows = Array2::from_shape_fn((200, 3), |(i, j)| {
            let x = (i * 7 % 13) as f64;
            [x, 2.0 * x + (i % 3) as f64 * 0.1, (i * 5 % 11) as f64][j]
        });
        let p = ResidualParams::default();
        let metrics = ["flow", "power", "temp"].map(String::from).to_vec();
        ResidualFile {
            format_version: FORMAT_VERSION,
            detector: "residual".into(),
            kind: "chiller".into(),
            settings: FitSettings::from(&p),
            model: Fitted::fit(&[rows.view()], metrics, &p).unwrap(),
            provenance: Provenance {
                inputs: vec![Input {
                    file: "x.jsonl".into(),
                    sha256: "00".into(),
                }],
                rows: 200,
                labelled_rows_left_out: 0,
                devices: vec!["site/chiller-1".into()],
                threshold_quantile: p.quantile,
                every: 1,
                warmup_samples: 0,
                wattchdog: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn round_trips_and_names_every_problem() {
        let f = file();
        assert_eq!(ResidualFile::from_json(&f.to_json(), "m.json").unwrap(), f);
        let err = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(file()).unwrap();
            change(&mut v);
            ResidualFile::from_json(&v.to_string(), "m.json")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&|v| v["format_version"] = 2.into()).contains("format_version"));
        assert!(err(&|v| v["detector"] = "iforest".into()).contains("not residual"));
        assert!(err(&|v| v["model"]["columns"][1] = "flow".into()).contains("named twice"));
        assert!(err(&|v| v["model"]["slow"] = serde_json::json!([false])).contains("slow"));
        assert!(err(&|v| v["model"]["thresholds"][0] = (-1.0).into()).contains("positive"));
        assert!(err(&|v| v["model"]["lag"] = 5.into()).contains("lag"));
        assert!(err(&|v| v["model"]["mean"]["data"][0] = "x".into()).starts_with("model m.json:"));
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "chiller").unwrap().is_none());
        std::fs::write(dir.path().join("ups.residual.json"), file().to_json()).unwrap();
        let e = load(dir.path(), "ups").unwrap_err().to_string();
        assert!(
            e.contains("ups.residual.json") && e.contains("expected ups"),
            "{e}"
        );
    }

    proptest! {
        /// Arbitrary text, and valid files with one byte changed, never panic.
        #[test]
        fn loading_never_panics(junk in ".{0,200}", at in 0usize..4000, byte in any::<u8>()) {
            let _ = ResidualFile::from_json(&junk, "m.json");
            let mut text = file().to_json().into_bytes();
            let i = at % text.len();
            text[i] = byte;
            if let Ok(t) = String::from_utf8(text) {
                let _ = ResidualFile::from_json(&t, "m.json");
            }
        }
    }
}
