//! Isolation-forest model files in `models/` (`<kind>.iforest.json`): the forest, the
//! feature list and scaler it expects, its alert threshold, and where it came from.
//! Untrusted input: the version, every length and every tree are checked at load, and
//! each problem is an error naming the file.

use super::forest::{IForestError, IsolationForest, IsolationForestValidParams};
use crate::detect::model_file::{parse_versioned, ModelError, Provenance, VersionedFile};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Per-feature standardisation: `(x − mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Means.
    pub mean: Vec<f64>,
    /// Scales (standard deviations; never zero).
    pub scale: Vec<f64>,
}

/// A model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Device kind it judges.
    pub kind: String,
    /// Feature names, in column order.
    pub features: Vec<String>,
    /// Standardisation applied before scoring.
    pub scaler: Scaler,
    /// Hyperparameters it was fitted with.
    pub params: IsolationForestValidParams,
    /// Scores at or above this are anomalous.
    pub threshold: f64,
    /// The forest.
    pub forest: IsolationForest,
    /// Provenance.
    pub provenance: Provenance,
}

impl VersionedFile for ModelFile {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl ModelFile {
    /// Parses and checks a model; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ModelError> {
        parse_versioned(text, origin, FORMAT_VERSION, Self::check)
    }

    /// Loads and checks a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The model as compact JSON (a forest is tens of thousands of nodes).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn check(&self) -> Result<(), String> {
        let n = self.features.len();
        if n == 0 {
            return Err("no features".into());
        }
        if self.scaler.mean.len() != n || self.scaler.scale.len() != n {
            return Err(format!(
                "{n} features but a scaler of {} means and {} scales",
                self.scaler.mean.len(),
                self.scaler.scale.len()
            ));
        }
        if self
            .scaler
            .mean
            .iter()
            .chain(&self.scaler.scale)
            .any(|v| !v.is_finite())
            || self.scaler.scale.iter().any(|s| *s <= 0.0)
        {
            return Err("scaler values must be finite and scales positive".into());
        }
        if self.forest.n_features != n {
            return Err(format!(
                "{n} features but a forest over {}",
                self.forest.n_features
            ));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!("threshold {} is not in (0, 1]", self.threshold));
        }
        self.forest
            .validate()
            .map_err(|e: IForestError| e.to_string())
    }

    /// Checks that `features` are the model's, in order (the caller's feature extractor
    /// and the model must agree).
    pub fn expects(&self, features: &[&str]) -> Result<(), String> {
        if self
            .features
            .iter()
            .map(String::as_str)
            .eq(features.iter().copied())
        {
            Ok(())
        } else {
            Err(format!(
                "the model expects features {:?}, the extractor gives {features:?}",
                self.features
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::iforest::forest::IsolationForestParams;
    use crate::detect::model_file::Input;
    use linfa::traits::Fit;
    use linfa::DatasetBase;
    use linfa::ParamGuard;
    use ndarray::Array2;
    use proptest::prelude::*;

    fn model() -> ModelFile {
        let x = Array2::from_shape_fn((64, 2), |(r, c)| (r * (c + 1)) as f64 % 7.0);
        let params = IsolationForestParams::default().n_trees(5).check().unwrap();
        let forest = params.fit(&DatasetBase::from(x)).unwrap();
        ModelFile {
            format_version: FORMAT_VERSION,
            kind: "chiller".into(),
            features: vec!["a".into(), "b".into()],
            scaler: Scaler {
                mean: vec![0.0, 0.0],
                scale: vec![1.0, 1.0],
            },
            params,
            threshold: 0.6,
            forest,
            provenance: Provenance {
                inputs: vec![Input {
                    file: "x.jsonl".into(),
                    sha256: "00".into(),
                }],
                rows: 64,
                labelled_rows_left_out: 0,
                devices: vec!["chiller-1".into()],
                threshold_quantile: 0.999,
                every: 1,
                warmup_samples: 600,
                wattchdog: "0.1.0".into(),
            },
        }
    }

    #[test]
    fn round_trips_and_names_every_problem() {
        let m = model();
        let back = ModelFile::from_json(&m.to_json(), "m.json").unwrap();
        assert_eq!(back, m);
        assert!(m.expects(&["a", "b"]).is_ok());
        assert!(m.expects(&["b", "a"]).is_err());
        let err = |f: &dyn Fn(&mut ModelFile)| {
            let mut bad = model();
            f(&mut bad);
            ModelFile::from_json(&bad.to_json(), "m.json")
                .unwrap_err()
                .to_string()
        };
        assert!(err(&|m| m.format_version = 2).contains("format_version"));
        assert!(err(&|m| m.features.push("c".into())).contains("3 features"));
        assert!(err(&|m| m.scaler.scale[0] = 0.0).contains("scales positive"));
        assert!(err(&|m| m.threshold = 1.5).contains("threshold"));
        assert!(err(&|m| m.forest.trees[0][0].left = 0).contains("tree 0"));
        let e = ModelFile::from_json("{\"format_version\": 1}", "m.json").unwrap_err();
        assert!(e.to_string().starts_with("model m.json:"), "{e}");
        // A file of another version says so, whatever else it holds.
        for text in [
            r#"{"format_version": 7, "trees": "elsewhere"}"#,
            r#"{"kind": "ups"}"#,
        ] {
            let e = ModelFile::from_json(text, "m.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("format_version") && e.contains("reads 1"), "{e}");
        }
    }

    proptest! {
        /// Arbitrary bytes, and valid files with one byte changed, never panic.
        #[test]
        fn loading_never_panics(junk in ".{0,200}", at in 0usize..4000, byte in any::<u8>()) {
            let _ = ModelFile::from_json(&junk, "m.json");
            let mut text = model().to_json().into_bytes();
            let i = at % text.len();
            text[i] = byte;
            if let Ok(t) = String::from_utf8(text) {
                let _ = ModelFile::from_json(&t, "m.json");
            }
        }
    }
}
