//! What an incident responder reads after a replay: scores against labels and the
//! self-contained HTML report.

pub mod eval;
pub mod html;

use crate::model::{Alert, AlertStatus, Incident, Role};
use crate::pipeline::{PipelineStats, ScorePoint};
use crate::source::{BadReason, FileStats};
use crate::time::{format_duration, format_ts};
use serde::Serialize;
use std::collections::BTreeMap;

/// The replay summary and report.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// Per-file counters.
    pub files: Vec<FileStats>,
    /// Lines read in all files.
    pub lines: u64,
    /// Bad lines in all files.
    pub bad_lines: u64,
    /// Bad lines by reason, all files.
    pub bad_by_reason: BTreeMap<BadReason, u64>,
    /// Pipeline counters (readings, commands, late, frames, findings).
    #[serde(flatten)]
    pub pipeline: PipelineStats,
    /// Detectors that ran.
    pub detectors: Vec<&'static str>,
    /// How they judged (e.g. whether the protocol detector's learned rules applied).
    pub notes: Vec<String>,
    /// Device names seen, in order of first appearance.
    pub devices: Vec<String>,
    /// First event time.
    pub first_ts: Option<String>,
    /// Last event time.
    pub last_ts: Option<String>,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Readings per wall-clock second.
    pub readings_per_s: f64,
    /// Alerts, final state, in order of opening.
    pub alerts: Vec<Alert>,
    /// Incidents, final state, in order of opening.
    pub incidents: Vec<Incident>,
    /// Files that ended early on an I/O error.
    pub errors: Vec<String>,
    /// Every finding's score, when asked for (`ReplayOptions::keep_scores`).
    #[serde(skip)]
    pub scores: Vec<ScorePoint>,
}

impl ReplayReport {
    /// A human summary (for stderr).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let p = &self.pipeline;
        let _ = writeln!(
            s,
            "replayed {} file{}: {} readings, {} commands in {:.2} s ({:.0} readings/s)",
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            p.readings,
            p.commands,
            self.elapsed_s,
            self.readings_per_s
        );
        for f in &self.files {
            if let Some(w) = &f.wire {
                let _ = writeln!(
                    s,
                    "{}: {} packets, {} TCP connections; {} Modbus requests: {} answered ({} with an exception), {} unanswered; {} unsolicited responses; segments: {} retransmitted, {} out of order, {} holes",
                    f.file,
                    w.packets,
                    w.connections,
                    w.requests,
                    w.responses,
                    w.exceptions,
                    w.unanswered,
                    w.unsolicited,
                    w.retransmissions,
                    w.out_of_order,
                    w.gaps
                );
            }
        }
        if let (Some(a), Some(b)) = (&self.first_ts, &self.last_ts) {
            let span = crate::time::TimeFormat::Auto.parse(b).unwrap_or(0)
                - crate::time::TimeFormat::Auto.parse(a).unwrap_or(0);
            let _ = writeln!(s, "event time {a} → {b} ({})", format_duration(span));
        }
        if self.bad_lines > 0 {
            // In packet captures a "line" is a packet number.
            let reasons: Vec<String> = self
                .bad_by_reason
                .iter()
                .map(|(r, c)| format!("{} {c}", r.as_str()))
                .collect();
            let _ = writeln!(s, "bad lines: {} ({})", self.bad_lines, reasons.join(", "));
            for b in self.files.iter().flat_map(|f| f.first_bad.iter()).take(5) {
                let _ = writeln!(
                    s,
                    "  {}:{} {}: {}",
                    b.file,
                    b.line,
                    b.reason.as_str(),
                    b.detail
                );
            }
        } else {
            let _ = writeln!(s, "bad lines: 0");
        }
        let _ = writeln!(
            s,
            "late readings (beyond the reorder tolerance): {}",
            p.late
        );
        for note in &self.notes {
            let _ = writeln!(s, "{note}");
        }
        if p.ahead > 0 {
            let _ = writeln!(
                s,
                "events dated far ahead of the site's time (held apart, used only if it caught up): {}",
                p.ahead
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        let open = self
            .alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Open)
            .count();
        let _ = writeln!(
            s,
            "alerts: {} ({} still open at the end) in {} incident{}",
            self.alerts.len(),
            open,
            self.incidents.len(),
            if self.incidents.len() == 1 { "" } else { "s" }
        );
        // Each incident as its story: what started it, then how far it reached.
        for i in &self.incidents {
            let roles = |r: Role| {
                self.alerts
                    .iter()
                    .filter(|a| a.incident_id == i.id && a.role == r)
                    .count()
            };
            let _ = writeln!(
                s,
                "  {} {:<8} {} → {}  {}",
                i.id,
                format!("{:?}", i.severity).to_lowercase(),
                format_ts(i.start),
                format_ts(i.end),
                i.headline,
            );
            let _ = writeln!(
                s,
                "      cause {}; {} consequences, {} recovery, {} alerts in all [{}]",
                i.cause,
                roles(Role::Consequence),
                roles(Role::Recovery),
                i.alerts.len(),
                i.techniques.join(", ")
            );
        }
        s
    }
}
