//! Scoring alerts against labels, event-based.
//!
//! - A labelled scenario is *detected* when an alert naming one of its devices starts
//!   inside `[start, end + grace]`; its delay is that alert's start minus `start`.
//! - An incident (alerts grouped by `incident_id`, starting at its first alert) is
//!   *false* when it starts outside every `[start, end + grace]`.
//! - Recall = detected / labelled; precision = true incidents / incidents; F1 from both;
//!   false incidents are also given per day of capture.

use crate::model::{Role, Ts};
use crate::time::{format_duration, TimeFormat};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use thiserror::Error;

/// Why labels could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EvalError {
    /// No sidecar.
    #[error("{capture} has no labels: expected {expected} or, in a wide CSV, a label column (see README, \"Labels sidecar\")")]
    NoLabels {
        /// The capture.
        capture: String,
        /// The sidecar looked for.
        expected: String,
    },
    /// A capture could not be read for its label columns.
    #[error(transparent)]
    Capture(#[from] crate::source::SourceError),
    /// A capture read for its label columns gave nothing, or ended early.
    #[error("{0}")]
    Unread(String),
    /// Unreadable or malformed sidecar.
    #[error("{path}: {message}")]
    BadLabels {
        /// The sidecar.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One labelled window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LabelWindow {
    /// Onset.
    #[serde(with = "crate::time::serde_ts")]
    pub start: Ts,
    /// End.
    #[serde(with = "crate::time::serde_ts")]
    pub end: Ts,
    /// Scenario name.
    pub scenario: String,
    /// Devices involved.
    pub devices: Vec<String>,
}

/// Labelled windows, and warnings about them.
pub type Labels = (Vec<LabelWindow>, Vec<String>);

/// Reads a labels sidecar, checking it: malformed entries are errors; windows that
/// overlap are warnings (returned), as they make detection ambiguous.
pub fn load_labels(path: &Path) -> Result<Labels, EvalError> {
    let bad = |message: String| EvalError::BadLabels {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut labels: Vec<LabelWindow> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a labels array: {e}")))?;
    for (i, l) in labels.iter().enumerate() {
        if l.end < l.start {
            return Err(bad(format!(
                "label {i} ({}) ends before it starts",
                l.scenario
            )));
        }
        if l.devices.is_empty() {
            return Err(bad(format!("label {i} ({}) names no device", l.scenario)));
        }
    }
    labels.sort_by_key(|l| l.start);
    let warnings = labels
        .windows(2)
        .filter(|w| w[1].start < w[0].end)
        .map(|w| {
            format!(
                "{}: labels {} and {} overlap",
                path.display(),
                w[0].scenario,
                w[1].scenario
            )
        })
        .collect();
    Ok((labels, warnings))
}

/// The minimal view of an alert eval needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AlertView {
    /// Alert id.
    pub id: String,
    /// Start.
    #[serde(with = "crate::time::serde_ts")]
    pub ts: Ts,
    /// Device.
    pub device: String,
    /// Detector.
    pub detector: String,
    /// Incident.
    pub incident_id: String,
    /// Part in the incident (alert files written before roles existed: each a cause).
    #[serde(default = "cause")]
    pub role: Role,
}

fn cause() -> Role {
    Role::Cause
}

/// Per-scenario results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioScore {
    /// Labelled occurrences.
    pub labelled: usize,
    /// Detected occurrences.
    pub detected: usize,
    /// Median delay of the detected ones, seconds.
    pub median_delay_s: Option<f64>,
    /// Delays, seconds.
    pub delays_s: Vec<f64>,
    /// Detectors that caught it (first alert), with counts.
    pub first_detectors: BTreeMap<String, usize>,
    /// Occurrences with an incident of their own (caused inside the window).
    pub own_incident: usize,
    /// Occurrences whose first own incident has its cause on a labelled device.
    pub cause_on_labelled_device: usize,
}

/// The score of a set of captures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Score {
    /// Per scenario.
    pub scenarios: BTreeMap<String, ScenarioScore>,
    /// Labelled windows.
    pub labelled: usize,
    /// Detected windows.
    pub detected: usize,
    /// Incidents.
    pub incidents: usize,
    /// Incidents starting outside every window (+ grace).
    pub false_incidents: usize,
    /// Alerts.
    pub alerts: usize,
    /// Alerts starting outside every window (+ grace): false alarms an incident may hide.
    pub false_alerts: usize,
    /// Capture days.
    pub days: f64,
    /// False incidents per day.
    pub false_incidents_per_day: f64,
    /// Recall over windows.
    pub recall: f64,
    /// Precision over incidents.
    pub precision: f64,
    /// F1.
    pub f1: f64,
    /// When the false incidents started, and their first alert's device and detector.
    pub false_incident_starts: Vec<String>,
    /// Windows with an incident caused inside them.
    pub own_incident: usize,
    /// Windows whose first own incident's cause is on a labelled device.
    pub cause_on_labelled_device: usize,
    /// Per window, the cause-role alerts starting inside it (+ grace).
    pub cause_alerts_per_window: Vec<usize>,
    /// Per window, all alerts starting inside it (+ grace).
    pub alerts_per_window: Vec<usize>,
    /// Median of `cause_alerts_per_window`.
    pub median_cause_alerts: Option<f64>,
    /// Median of `alerts_per_window`.
    pub median_alerts: Option<f64>,
    /// Incidents with alerts inside two or more windows: attacks told as one.
    pub merged_incidents: usize,
}

/// Scores one capture's alerts (final states; repeated snapshots of an id are fine).
pub fn score_capture(
    score: &mut Score,
    labels: &[LabelWindow],
    alerts: &[AlertView],
    span: (Ts, Ts),
    grace: i64,
) {
    // The last snapshot of an id is its state (a role can change).
    let mut by_id: BTreeMap<&str, &AlertView> = BTreeMap::new();
    for a in alerts {
        by_id.insert(&a.id, a);
    }
    let alerts: Vec<&AlertView> = by_id.into_values().collect();
    for l in labels {
        let s = score.scenarios.entry(l.scenario.clone()).or_default();
        s.labelled += 1;
        score.labelled += 1;
        let first = alerts
            .iter()
            .filter(|a| l.devices.contains(&a.device) && a.ts >= l.start && a.ts <= l.end + grace)
            .min_by_key(|a| (a.ts, &a.id));
        if let Some(a) = first {
            s.detected += 1;
            score.detected += 1;
            s.delays_s.push((a.ts - l.start) as f64 / 1000.0);
            *s.first_detectors.entry(a.detector.clone()).or_default() += 1;
        }
        let inside: Vec<&&AlertView> = alerts
            .iter()
            .filter(|a| a.ts >= l.start && a.ts <= l.end + grace)
            .collect();
        let causes: Vec<&&AlertView> = inside
            .iter()
            .copied()
            .filter(|a| a.role == Role::Cause)
            .collect();
        score.alerts_per_window.push(inside.len());
        score.cause_alerts_per_window.push(causes.len());
        if let Some(c) = causes.iter().min_by_key(|a| (a.ts, &a.id)) {
            s.own_incident += 1;
            score.own_incident += 1;
            if l.devices.contains(&c.device) {
                s.cause_on_labelled_device += 1;
                score.cause_on_labelled_device += 1;
            }
        }
    }
    let mut windows_of: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for a in &alerts {
        for (i, l) in labels.iter().enumerate() {
            if a.ts >= l.start && a.ts <= l.end + grace {
                windows_of.entry(&a.incident_id).or_default().insert(i);
            }
        }
    }
    score.merged_incidents += windows_of.values().filter(|w| w.len() > 1).count();
    for a in &alerts {
        score.alerts += 1;
        if !labels
            .iter()
            .any(|l| a.ts >= l.start && a.ts <= l.end + grace)
        {
            score.false_alerts += 1;
        }
    }
    let mut incidents: BTreeMap<&str, &AlertView> = BTreeMap::new();
    for a in &alerts {
        let e = incidents.entry(&a.incident_id).or_insert(a);
        if (a.ts, &a.id) < (e.ts, &e.id) {
            *e = a;
        }
    }
    for first in incidents.values() {
        score.incidents += 1;
        let explained = labels
            .iter()
            .any(|l| first.ts >= l.start && first.ts <= l.end + grace);
        if !explained {
            score.false_incidents += 1;
            score.false_incident_starts.push(format!(
                "{} {} {}",
                crate::time::format_ts(first.ts),
                first.device,
                first.detector
            ));
        }
    }
    score.days += (span.1 - span.0).max(0) as f64 / 86_400_000.0;
}

impl Score {
    /// Computes the ratios once every capture is in.
    pub fn finish(&mut self) {
        for s in self.scenarios.values_mut() {
            let mut d = s.delays_s.clone();
            d.sort_by(f64::total_cmp);
            s.median_delay_s = (!d.is_empty()).then(|| {
                let m = d.len() / 2;
                if d.len() % 2 == 1 {
                    d[m]
                } else {
                    (d[m - 1] + d[m]) / 2.0
                }
            });
        }
        self.median_cause_alerts = median(&self.cause_alerts_per_window);
        self.median_alerts = median(&self.alerts_per_window);
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.recall = ratio(self.detected, self.labelled);
        self.precision = ratio(self.incidents - self.false_incidents, self.incidents);
        self.f1 = if self.recall + self.precision > 0.0 {
            2.0 * self.recall * self.precision / (self.recall + self.precision)
        } else {
            0.0
        };
        self.false_incidents_per_day = if self.days > 0.0 {
            self.false_incidents as f64 / self.days
        } else {
            0.0
        };
    }

    /// The table for people.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<26} {:>9} {:>13}  first detectors",
            "scenario", "detected", "median delay"
        );
        for (name, sc) in &self.scenarios {
            let delay = sc
                .median_delay_s
                .map(|d| format_duration((d * 1000.0) as i64))
                .unwrap_or_else(|| "-".into());
            let dets: Vec<String> = sc
                .first_detectors
                .iter()
                .map(|(d, n)| format!("{d}×{n}"))
                .collect();
            let _ = writeln!(
                s,
                "{name:<26} {:>5}/{:<3} {delay:>13}  {}",
                sc.detected,
                sc.labelled,
                dets.join(" ")
            );
        }
        let _ = writeln!(
            s,
            "recall {:.3}  precision {:.3}  F1 {:.3}  incidents {} ({} false, {:.2} per day over {:.2} days)  alerts {} ({} outside every window)",
            self.recall,
            self.precision,
            self.f1,
            self.incidents,
            self.false_incidents,
            self.false_incidents_per_day,
            self.days,
            self.alerts,
            self.false_alerts
        );
        let med = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m}"));
        let _ = writeln!(
            s,
            "incidents per attack: {}/{} attacks have their own, the cause on a labelled device for {}/{}; cause alerts per attack median {} (all alerts {}); {} incident{} merged attacks",
            self.own_incident,
            self.labelled,
            self.cause_on_labelled_device,
            self.labelled,
            med(self.median_cause_alerts),
            med(self.median_alerts),
            self.merged_incidents,
            if self.merged_incidents == 1 { "" } else { "s" },
        );
        for f in &self.false_incident_starts {
            let _ = writeln!(s, "  false incident: {f}");
        }
        s
    }
}

/// One point of a delay–false-alarm curve: the score with one parameter at one value.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// The parameter's value.
    pub value: toml::Value,
    /// Detected windows.
    pub detected: usize,
    /// Labelled windows.
    pub labelled: usize,
    /// Alerts starting outside every window (+ grace), per capture day.
    pub false_alerts_per_day: f64,
    /// Incidents starting outside every window (+ grace), per capture day.
    pub false_incidents_per_day: f64,
    /// Median (nearest rank) delay over every detected window, seconds.
    pub median_delay_s: Option<f64>,
    /// 90th percentile (nearest rank) of those delays, seconds.
    pub p90_delay_s: Option<f64>,
    /// The whole score.
    pub score: Score,
}

/// How detection delay trades against false alarms as one parameter moves
/// (`wattchdog eval --sweep`).
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    /// The parameter, `detector.field`, set for every device kind.
    pub key: String,
    /// One point per value, in the order given.
    pub points: Vec<CurvePoint>,
}

impl Curve {
    /// Adds the (finished) score of `value`.
    pub fn push(&mut self, value: toml::Value, score: Score) {
        let mut delays: Vec<f64> = score
            .scenarios
            .values()
            .flat_map(|s| s.delays_s.iter().copied())
            .collect();
        delays.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len().max(1)) - 1;
            delays.get(i).copied()
        };
        let per_day = |n: usize| {
            if score.days > 0.0 {
                n as f64 / score.days
            } else {
                0.0
            }
        };
        self.points.push(CurvePoint {
            value,
            detected: score.detected,
            labelled: score.labelled,
            false_alerts_per_day: per_day(score.false_alerts),
            false_incidents_per_day: score.false_incidents_per_day,
            median_delay_s: rank(0.5),
            p90_delay_s: rank(0.9),
            score,
        });
    }

    /// The table for people: one line per value, then each scenario's median delay.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let delay = |d: Option<f64>| d.map_or("-".into(), |d| format_duration((d * 1000.0) as i64));
        let width = self.key.len().max(8);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<width$} {:>9} {:>17} {:>20} {:>13} {:>10}",
            self.key,
            "detected",
            "false alerts/day",
            "false incidents/day",
            "median delay",
            "p90 delay"
        );
        for p in &self.points {
            let _ = writeln!(
                s,
                "{:<width$} {:>5}/{:<3} {:>17.2} {:>20.2} {:>13} {:>10}",
                p.value.to_string(),
                p.detected,
                p.labelled,
                p.false_alerts_per_day,
                p.false_incidents_per_day,
                delay(p.median_delay_s),
                delay(p.p90_delay_s)
            );
        }
        let scenarios: BTreeSet<&String> = self
            .points
            .iter()
            .flat_map(|p| p.score.scenarios.keys())
            .collect();
        if scenarios.is_empty() {
            return s;
        }
        let _ = write!(s, "\nmedian delay by scenario\n{:<26}", self.key);
        for p in &self.points {
            let _ = write!(s, " {:>10}", p.value.to_string());
        }
        for name in scenarios {
            let _ = write!(s, "\n{name:<26}");
            for p in &self.points {
                let d = p.score.scenarios.get(name).and_then(|sc| sc.median_delay_s);
                let _ = write!(s, " {:>10}", delay(d));
            }
        }
        s.push('\n');
        s
    }
}

fn median(v: &[usize]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    let m = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[m] as f64),
        _ => Some((v[m - 1] + v[m]) as f64 / 2.0),
    }
}

/// The devices the labels name that the capture never mentioned.
pub fn unknown_devices(labels: &[LabelWindow], known: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = labels
        .iter()
        .flat_map(|l| l.devices.iter())
        .filter(|d| !known.contains(*d))
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Parses an RFC 3339 timestamp of a report (helper for callers).
pub fn parse_ts(s: &str) -> Option<Ts> {
    TimeFormat::Auto.parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(start: Ts, end: Ts, scenario: &str, device: &str) -> LabelWindow {
        LabelWindow {
            start,
            end,
            scenario: scenario.into(),
            devices: vec![device.into()],
        }
    }

    fn alert(id: &str, ts: Ts, device: &str, incident: &str) -> AlertView {
        AlertView {
            id: id.into(),
            ts,
            device: device.into(),
            detector: "ewma_z".into(),
            incident_id: incident.into(),
            role: Role::Cause,
        }
    }

    fn consequence(a: AlertView) -> AlertView {
        AlertView {
            role: Role::Consequence,
            ..a
        }
    }

    #[test]
    fn incidents_are_judged_per_attack() {
        let labels = [
            label(1000, 2000, "a", "d1"),
            label(10_000, 11_000, "b", "d2"),
            label(20_000, 21_000, "c", "d3"),
        ];
        let alerts = [
            // a: caused on its device, one consequence elsewhere.
            alert("a1", 1100, "d1", "i1"),
            consequence(alert("a2", 1200, "d9", "i1")),
            // b: caused on the wrong device, and a late snapshot turns that cause into a
            // consequence of the real one (the last snapshot of an id counts).
            alert("b1", 10_100, "d9", "i2"),
            alert("b2", 10_200, "d2", "i2"),
            consequence(alert("b1", 10_100, "d9", "i2")),
            // c: told as part of b's incident.
            consequence(alert("c1", 20_100, "d3", "i2")),
        ];
        let mut s = Score::default();
        score_capture(&mut s, &labels, &alerts, (0, 86_400_000), 500);
        s.finish();
        assert_eq!((s.own_incident, s.cause_on_labelled_device), (2, 2));
        assert_eq!(s.cause_alerts_per_window, [1, 1, 0]);
        assert_eq!(s.alerts_per_window, [2, 2, 1]);
        assert_eq!(
            (s.median_cause_alerts, s.median_alerts),
            (Some(1.0), Some(2.0))
        );
        assert_eq!(s.merged_incidents, 1, "i2 spans b and c");
        assert_eq!(s.scenarios["c"].own_incident, 0);
        assert!(s.render().contains("2/3 attacks have their own"));
    }

    #[test]
    fn a_curve_point_pools_the_delays_of_every_scenario() {
        let mut s = Score::default();
        for (name, delays) in [("a", vec![1.0, 9.0, 3.0]), ("b", vec![5.0, 2.0])] {
            let sc = s.scenarios.entry(name.into()).or_default();
            sc.delays_s = delays;
        }
        (s.days, s.false_alerts, s.detected, s.labelled) = (2.0, 3, 5, 6);
        s.finish();
        let mut c = Curve {
            key: "physics.cusum_threshold".into(),
            points: Vec::new(),
        };
        c.push(toml::Value::Float(25.0), s);
        c.push(toml::Value::Float(50.0), Score::default());
        let p = &c.points[0];
        // Pooled and sorted: 1 2 3 5 9; nearest ranks 3 and 5.
        assert_eq!((p.median_delay_s, p.p90_delay_s), (Some(3.0), Some(9.0)));
        assert_eq!(p.false_alerts_per_day, 1.5);
        assert_eq!((p.detected, p.labelled), (5, 6));
        assert_eq!(
            (c.points[1].median_delay_s, c.points[1].false_alerts_per_day),
            (None, 0.0)
        );
        let text = c.render();
        assert!(
            text.contains("\na                                  3s          -"),
            "{text}"
        );
    }

    #[test]
    fn detection_delay_and_false_incidents() {
        let labels = [
            label(1000, 2000, "a", "d1"),
            label(10_000, 11_000, "b", "d2"),
        ];
        let alerts = [
            alert("x", 1500, "d1", "i1"),
            alert("y", 1600, "d2", "i1"),         // wrong device for a
            alert("z", 50_000, "d2", "i2"),       // nothing labelled then
            alert("w", 11_000 + 300, "d2", "i3"), // within grace
        ];
        let mut s = Score::default();
        score_capture(&mut s, &labels, &alerts, (0, 86_400_000), 500);
        s.finish();
        assert_eq!((s.detected, s.labelled), (2, 2));
        assert_eq!(s.scenarios["a"].median_delay_s, Some(0.5));
        assert_eq!((s.incidents, s.false_incidents), (3, 1));
        assert!((s.precision - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.false_incidents_per_day, 1.0);
    }

    #[test]
    fn labels_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.labels.json");
        std::fs::write(&p, "[{\"start\":\"2026-01-01T00:00:00Z\"}]").unwrap();
        assert!(load_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("not a labels array"));
        std::fs::write(
            &p,
            r#"[{"start":"2026-01-01T00:10:00Z","end":"2026-01-01T00:00:00Z","scenario":"a","devices":["d"]}]"#,
        )
        .unwrap();
        assert!(load_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("ends before"));
        std::fs::write(
            &p,
            r#"[{"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:10:00Z","scenario":"a","devices":["d"]},
                {"start":"2026-01-01T00:05:00Z","end":"2026-01-01T00:20:00Z","scenario":"b","devices":["d"]}]"#,
        )
        .unwrap();
        let (l, w) = load_labels(&p).unwrap();
        assert_eq!((l.len(), w.len()), (2, 1));
        let known: BTreeSet<String> = ["x".to_string()].into();
        assert_eq!(unknown_devices(&l, &known), vec!["d".to_string()]);
    }
}
