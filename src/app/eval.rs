//! `wattchdog eval`: replays labelled captures (or reads alerts already raised) and
//! scores the detections against the labels.

use crate::app::cli::EvalArgs;
use crate::app::load_config;
use crate::app::replay::{capture_labels, replay, write_html_report, HtmlSource, ReplayOptions};
use crate::app::Summary;
use crate::config::Config;
use crate::model::{Alert, Ts};
use crate::report::eval::{self, AlertView, Curve, EvalError, LabelWindow, Score};
use crate::sink::discard;
use crate::source::csv::WideMapping;
use crate::source::OpenOptions;
use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// The score, or the curve of a sweep (human text or JSON on standard output).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EvalSummary {
    /// One configuration's score.
    Score(Score),
    /// `--sweep`: a score per value of one parameter.
    Curve(Curve),
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match self {
            Self::Score(s) => s.render(),
            Self::Curve(c) => c.render(),
        })
    }
}

impl Summary for EvalSummary {}

/// Alerts of an alert-JSONL file, as eval sees them; each bad line is an error naming
/// `file:line`.
pub fn read_alerts(path: &Path) -> anyhow::Result<Vec<AlertView>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The span of event time the labels and the alerts cover.
fn span_of(labels: &[LabelWindow], alerts: &[AlertView]) -> (Ts, Ts) {
    let times = || alerts.iter().map(|a| a.ts);
    let lo = labels.iter().map(|l| l.start).chain(times()).min();
    let hi = labels.iter().map(|l| l.end).chain(times()).max();
    (lo.unwrap_or(0), hi.unwrap_or(0))
}

fn view(a: &Alert) -> AlertView {
    AlertView {
        id: a.id.clone(),
        ts: a.ts,
        device: a.device.clone(),
        detector: a.detector.to_owned(),
        incident_id: a.incident_id.clone(),
        role: a.role,
    }
}

/// `--sweep KEY=V1,V2,…`: the key and its values (each a TOML value).
fn parse_sweep(arg: &str) -> anyhow::Result<(String, Vec<toml::Value>)> {
    let (key, values) = arg
        .split_once('=')
        .context("--sweep takes KEY=V1,V2,… (e.g. physics.cusum_threshold=10,20,30)")?;
    let values = values
        .split(',')
        .map(|v| {
            let mut t: toml::Table = format!("v = {}", v.trim())
                .parse()
                .map_err(|_| anyhow::anyhow!("--sweep: `{v}` is not a TOML value"))?;
            t.remove("v")
                .with_context(|| format!("--sweep: `{v}` is not a TOML value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((key.trim().to_owned(), values))
}

/// What every replay of a run shares, read once (a sweep replays once per value).
struct Inputs {
    mapping: Option<WideMapping>,
    baseline: Option<crate::detect::baseline::Baseline>,
    grace: i64,
}

/// `wattchdog eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<EvalSummary> {
    anyhow::ensure!(
        a.alerts.is_none() || a.files.len() == 1,
        "--alerts scores one capture: give exactly one"
    );
    anyhow::ensure!(
        a.report_html.is_none() || a.files.len() == 1,
        "--report-html reports one capture: give exactly one"
    );
    let inputs = Inputs {
        mapping: a.mapping.as_deref().map(WideMapping::load).transpose()?,
        baseline: a
            .baseline
            .as_deref()
            .map(crate::app::replay::load_baseline)
            .transpose()?,
        grace: crate::time::parse_duration(&a.grace).map_err(anyhow::Error::msg)?,
    };
    if let Some(sweep) = &a.sweep {
        let (key, values) = parse_sweep(sweep)?;
        let mut curve = Curve {
            key: key.clone(),
            points: Vec::new(),
        };
        for value in values {
            let cfg = Config::load_setting(a.config.as_deref(), &key, &value)?;
            let (score, _) = score_files(&cfg, &a, &inputs)?;
            curve.push(value, score);
        }
        return Ok(EvalSummary::Curve(curve));
    }
    let cfg = load_config(a.config.as_deref())?;
    let (score, html) = score_files(&cfg, &a, &inputs)?;
    if let (Some(p), Some((opts, report, labels))) = (&a.report_html, html) {
        let source = HtmlSource {
            cfg: &cfg,
            config_path: a.config.as_deref(),
            opts: &opts,
        };
        write_html_report(
            p,
            &source,
            &report,
            labels,
            Some(score.clone()),
            inputs.grace,
        )?;
    }
    Ok(EvalSummary::Score(score))
}

/// What `--report-html` needs of the one capture replayed.
type HtmlParts = (
    ReplayOptions,
    crate::app::replay::ReplayReport,
    Vec<LabelWindow>,
);

/// Replays (or reads the alerts of) every capture and scores them against their labels.
fn score_files(
    cfg: &Config,
    a: &EvalArgs,
    inputs: &Inputs,
) -> anyhow::Result<(Score, Option<HtmlParts>)> {
    let Inputs {
        mapping,
        baseline,
        grace,
    } = inputs;
    let mut score = Score::default();
    let mut html = None;
    for file in &a.files {
        let labels_path = crate::sim::labels_path(file);
        let how = OpenOptions::from_config(cfg, mapping.clone());
        let Some((labels, warnings)) = capture_labels(file, &how)? else {
            return Err(EvalError::NoLabels {
                capture: file.display().to_string(),
                expected: labels_path.display().to_string(),
            }
            .into());
        };
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let (alerts, span) = match &a.alerts {
            Some(p) => {
                let alerts = read_alerts(p)?;
                let span = span_of(&labels, &alerts);
                (alerts, span)
            }
            None => {
                let opts = ReplayOptions {
                    inputs: vec![file.clone()],
                    mapping: mapping.clone(),
                    speed: None,
                    progress: false,
                    keep_scores: a.report_html.is_some(),
                    exceptions: None,
                    baseline: baseline.clone(),
                };
                let report = replay(cfg, &opts, &mut discard())?;
                // A capture read in part (or not at all) would be scored as if whole.
                if let Some(e) = report.errors.first() {
                    anyhow::bail!("{e}");
                }
                let known = report.devices.iter().cloned().collect();
                let unknown = eval::unknown_devices(&labels, &known);
                if !unknown.is_empty() {
                    eprintln!(
                        "warning: {} names devices the capture never mentions: {}",
                        labels_path.display(),
                        unknown.join(", ")
                    );
                }
                let ts = |t: &Option<String>| t.as_deref().and_then(eval::parse_ts).unwrap_or(0);
                let span = (ts(&report.first_ts), ts(&report.last_ts));
                let alerts = report.alerts.iter().map(view).collect();
                if a.report_html.is_some() {
                    html = Some((opts, report, labels.clone()));
                }
                (alerts, span)
            }
        };
        eval::score_capture(&mut score, &labels, &alerts, span, *grace);
    }
    score.finish();
    Ok((score, html))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_lines_are_read_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let line = r#"{"id":"a1","ts":"2026-07-07T00:00:01Z","device":"ups-1","detector":"cusum","incident_id":"in-1"}"#;
        std::fs::write(&p, format!("{line}\n\n{line}\nnot json\n")).unwrap();
        let err = read_alerts(&p).unwrap_err().to_string();
        assert!(err.ends_with("a.jsonl:4"), "{err}");
        std::fs::write(&p, format!("{line}\n")).unwrap();
        let alerts = read_alerts(&p).unwrap();
        assert_eq!(alerts[0].ts, 1_783_382_401_000);
        assert_eq!(
            span_of(&[], &alerts),
            (1_783_382_401_000, 1_783_382_401_000)
        );
    }
}
