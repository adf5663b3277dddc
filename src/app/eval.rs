//! `wattchdog eval`: replays labelled captures (or reads alerts already raised) and
//! scores the detections against the labels.

use crate::app::cli::EvalArgs;
use crate::app::load_config;
use crate::app::replay::{capture_labels, replay, write_html_report, HtmlSource, ReplayOptions};
use crate::app::Summary;
use crate::model::{Alert, Ts};
use crate::report::eval::{self, AlertView, EvalError, LabelWindow, Score};
use crate::sink::discard;
use crate::source::csv::WideMapping;
use crate::source::OpenOptions;
use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// The score (human text or JSON on standard output).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct EvalSummary(pub Score);

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.render())
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

/// `wattchdog eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<EvalSummary> {
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let baseline = a
        .baseline
        .as_deref()
        .map(crate::app::replay::load_baseline)
        .transpose()?;
    let grace = crate::time::parse_duration(&a.grace).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        a.alerts.is_none() || a.files.len() == 1,
        "--alerts scores one capture: give exactly one"
    );
    anyhow::ensure!(
        a.report_html.is_none() || a.files.len() == 1,
        "--report-html reports one capture: give exactly one"
    );
    let mut score = Score::default();
    let mut html = None;
    for file in &a.files {
        let labels_path = crate::sim::labels_path(file);
        let how = OpenOptions::from_config(&cfg, mapping.clone());
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
                let report = replay(&cfg, &opts, &mut discard())?;
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
        eval::score_capture(&mut score, &labels, &alerts, span, grace);
    }
    score.finish();
    if let (Some(p), Some((opts, report, labels))) = (&a.report_html, html) {
        let source = HtmlSource {
            cfg: &cfg,
            config_path: a.config.as_deref(),
            opts: &opts,
        };
        write_html_report(p, &source, &report, labels, Some(score.clone()), grace)?;
    }
    Ok(EvalSummary(score))
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
