//! The incident responder's report (`replay --report-html`, `eval --report-html`): one
//! self-contained HTML file — inline CSS and SVG, no script, no font, no request — that
//! opens anywhere, offline, years later, and diffs cleanly (one line says when it was
//! made; everything else depends only on the input).
//!
//! It holds the capture's provenance, a timeline of alerts per device with the labelled
//! windows beside them, and per incident the alerts, the telemetry of the metrics they
//! name from before the first alert to after the last (with commands marked and the
//! detectors' normalised scores under it), and the commands seen. The telemetry comes
//! from a second read of the captures, kept only inside the incidents' windows and
//! reduced to the minimum and maximum per pixel column.

mod gather;
mod reduce;
mod svg;

use gather::windows;
pub use gather::{gather, Telemetry};
pub use reduce::reduce;
use svg::{incident_plot, timeline};

use crate::model::{Alert, Command, Role, Severity, Ts};
use crate::pipeline::ScorePoint;
use crate::report::eval::{LabelWindow, Score};
use crate::report::ReplayReport;
use crate::time::{format_duration, format_ts};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Event time shown before an incident's first alert and after its last.
const CONTEXT_MS: Ts = 10 * 60_000;
/// Width of plots in pixels (and so of the min/max reduction).
const WIDTH: u32 = 900;
/// Metrics plotted per incident at most (the first named by its alerts).
const MAX_METRICS: usize = 8;
/// Device names listed in the header at most.
const MAX_DEVICES_LISTED: usize = 30;

/// A capture file as the header lists it.
#[derive(Debug, Clone)]
pub struct FileDigest {
    /// Name as given.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Everything the report shows besides the replay report itself.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The captures.
    pub files: Vec<FileDigest>,
    /// The config used: its path and SHA-256, or "built-in defaults".
    pub config: String,
    /// Labelled windows from the captures' sidecars.
    pub labels: Vec<LabelWindow>,
    /// The eval score, for `eval --report-html`.
    pub score: Option<Score>,
    /// Grace after a window's end within which an alert still detects it.
    pub grace: Ts,
    /// The one line that says when the report was made.
    pub generated: String,
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Renders the whole report.
pub fn render(
    report: &ReplayReport,
    ctx: &Context,
    tel: &Telemetry,
    scores: &[ScorePoint],
) -> String {
    let span = (
        report
            .first_ts
            .as_deref()
            .and_then(crate::report::eval::parse_ts)
            .unwrap_or(0),
        report
            .last_ts
            .as_deref()
            .and_then(crate::report::eval::parse_ts)
            .unwrap_or(0),
    );
    let mut h = String::with_capacity(1 << 20);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        h,
        "<title>wattchdog report: {}</title>",
        esc(&ctx
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    );
    h.push_str(STYLE);
    h.push_str("</head><body>\n<h1>wattchdog replay report</h1>\n");
    let _ = writeln!(h, "<p class=\"generated\">{}</p>", esc(&ctx.generated));
    // Header.
    h.push_str("<table class=\"meta\">\n");
    for f in &ctx.files {
        let _ = writeln!(
            h,
            "<tr><th>capture</th><td>{} ({} bytes)<br><code>sha256 {}</code></td></tr>",
            esc(&f.name),
            f.bytes,
            f.sha256
        );
    }
    let sites: BTreeSet<&str> = report
        .incidents
        .iter()
        .map(|i| i.site.as_str())
        .chain(report.alerts.iter().map(|a| a.site.as_str()))
        .collect();
    let _ = writeln!(
        h,
        "<tr><th>event time</th><td>{} → {} ({})</td></tr>",
        report.first_ts.as_deref().unwrap_or("–"),
        report.last_ts.as_deref().unwrap_or("–"),
        format_duration(span.1 - span.0)
    );
    let _ = writeln!(
        h,
        "<tr><th>sites</th><td>{}</td></tr>",
        esc(&sites.into_iter().collect::<Vec<_>>().join(", "))
    );
    // A scan can name hundreds of unit ids: list the first few.
    let shown: Vec<&str> = report
        .devices
        .iter()
        .take(MAX_DEVICES_LISTED)
        .map(String::as_str)
        .collect();
    let more = report.devices.len().saturating_sub(MAX_DEVICES_LISTED);
    let _ = writeln!(
        h,
        "<tr><th>devices</th><td>{} ({}{})</td></tr>",
        report.devices.len(),
        esc(&shown.join(", ")),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
    let p = &report.pipeline;
    let exchanges = if p.exchanges > 0 {
        format!(", {} Modbus exchanges", p.exchanges)
    } else {
        String::new()
    };
    let _ = writeln!(
        h,
        "<tr><th>events</th><td>{} readings, {} commands{exchanges}, {} late</td></tr>",
        p.readings, p.commands, p.late
    );
    let bad: Vec<String> = report
        .bad_by_reason
        .iter()
        .map(|(r, c)| format!("{} {c}", r.as_str()))
        .collect();
    let _ = writeln!(
        h,
        "<tr><th>bad input</th><td>{}{}</td></tr>",
        report.bad_lines,
        if bad.is_empty() {
            String::new()
        } else {
            format!(" ({})", bad.join(", "))
        }
    );
    for e in &report.errors {
        let _ = writeln!(h, "<tr><th>error</th><td>{}</td></tr>", esc(e));
    }
    let _ = writeln!(
        h,
        "<tr><th>detectors</th><td>{}</td></tr>",
        esc(&report.detectors.join(", "))
    );
    let _ = writeln!(h, "<tr><th>config</th><td>{}</td></tr>", esc(&ctx.config));
    let _ = writeln!(
        h,
        "<tr><th>wattchdog</th><td>{}</td></tr>",
        env!("CARGO_PKG_VERSION")
    );
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<p>{} incident{}, {} alert{}; {} labelled window{}.</p>",
        report.incidents.len(),
        if report.incidents.len() == 1 { "" } else { "s" },
        report.alerts.len(),
        if report.alerts.len() == 1 { "" } else { "s" },
        ctx.labels.len(),
        if ctx.labels.len() == 1 { "" } else { "s" }
    );
    // Timeline.
    h.push_str("<h2>Timeline</h2>\n<p class=\"legend\"><span class=\"sw crit\"></span>critical <span class=\"sw high\"></span>high <span class=\"sw med\"></span>medium <span class=\"sw low\"></span>low <span class=\"sw lab\"></span>labelled window</p>\n");
    h.push_str(&timeline(report, &ctx.labels, span));
    // Eval table.
    if let Some(score) = &ctx.score {
        h.push_str("<h2>Scenarios</h2>\n<table class=\"eval\"><tr><th>scenario</th><th>detected</th><th>median delay</th><th>first detectors</th><th>incident</th></tr>\n");
        for (name, s) in &score.scenarios {
            let link = first_detection(report, &ctx.labels, name, ctx.grace)
                .map(|id| format!("<a href=\"#{0}\">{0}</a>", esc(&id)))
                .unwrap_or_else(|| "missed".into());
            let delay = s
                .median_delay_s
                .map_or("–".into(), |d| format_duration((d * 1000.0) as i64));
            let first: Vec<String> = s
                .first_detectors
                .iter()
                .map(|(d, n)| format!("{d}×{n}"))
                .collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                s.detected,
                s.labelled,
                delay,
                esc(&first.join(" ")),
                link
            );
        }
        let _ = writeln!(
            h,
            "</table>\n<p>recall {:.3}, precision {:.3}, F1 {:.3}; {} false incident{} ({:.2} per day); {} alerts outside every window.</p>",
            score.recall,
            score.precision,
            score.f1,
            score.false_incidents,
            if score.false_incidents == 1 { "" } else { "s" },
            score.false_incidents_per_day,
            score.false_alerts
        );
        let _ = writeln!(
            h,
            "<p>{} of {} attacks have an incident of their own, its cause on a labelled device for {}; {} incident{} told two attacks as one.</p>",
            score.own_incident,
            score.labelled,
            score.cause_on_labelled_device,
            score.merged_incidents,
            if score.merged_incidents == 1 { "" } else { "s" },
        );
    }
    // Incidents.
    h.push_str("<h2>Incidents</h2>\n");
    let by_id: BTreeMap<&str, &Alert> = report.alerts.iter().map(|a| (a.id.as_str(), a)).collect();
    for (inc, (from, to, metrics)) in report.incidents.iter().zip(windows(report)) {
        let alerts: Vec<&Alert> = inc
            .alerts
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).copied())
            .collect();
        let _ = writeln!(h, "<section class=\"incident\" id=\"{}\">", esc(&inc.id));
        let _ = writeln!(
            h,
            "<h3><span class=\"sev {}\">{}</span> {} · {} → {}</h3>",
            sev_class(inc.severity),
            format!("{:?}", inc.severity).to_lowercase(),
            esc(&inc.id),
            format_ts(inc.start),
            format_ts(inc.end)
        );
        let _ = writeln!(h, "<p class=\"headline\"><b>{}</b></p>", esc(&inc.headline));
        let _ = writeln!(h, "<p>{}</p>", esc(&inc.summary));
        let _ = writeln!(
            h,
            "<p>ATT&amp;CK for ICS: {} · devices: {} · detectors: {}</p>",
            esc(&inc.techniques.join(", ")),
            esc(&inc.devices.join(", ")),
            esc(&inc.detectors.join(", "))
        );
        h.push_str("<table class=\"alerts\"><tr><th>opened</th><th>role</th><th>device</th><th>detector</th><th>severity</th><th>technique</th><th>score / threshold</th><th>summary</th></tr>\n");
        // The cause first, then its consequences and the recovery in time order.
        let mut alerts = alerts;
        alerts.sort_by_key(|a| (a.role != Role::Cause, a.ts));
        for a in &alerts {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{:.3} / {:.3}</td><td>{}</td></tr>",
                format_ts(a.ts),
                a.role.as_str(),
                esc(&a.device),
                a.detector,
                format!("{:?}", a.severity).to_lowercase(),
                a.technique.id,
                esc(a.technique.name),
                a.score,
                a.threshold,
                esc(&a.summary)
            );
        }
        h.push_str("</table>\n");
        let _ = writeln!(
            h,
            "<figure class=\"plot\" data-metrics=\"{}\">",
            metrics.len()
        );
        h.push_str(&incident_plot(
            inc,
            &alerts,
            (from, to),
            &metrics,
            tel,
            scores,
            &ctx.labels,
        ));
        let _ = writeln!(
            h,
            "<figcaption>{} before the first alert to {} after the last; blue lines are commands, shaded bands labelled windows.</figcaption></figure>",
            format_duration(CONTEXT_MS),
            format_duration(CONTEXT_MS)
        );
        let cmds: Vec<&Command> = tel
            .commands
            .iter()
            .filter(|c| inc.devices.contains(&c.device) && c.ts >= from && c.ts <= to)
            .collect();
        if !cmds.is_empty() {
            h.push_str("<table class=\"commands\"><tr><th>time</th><th>device</th><th>client</th><th>function</th><th>address</th><th>values</th></tr>\n");
            for c in cmds {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>",
                    format_ts(c.ts),
                    esc(&c.device),
                    esc(&c.client),
                    c.function,
                    c.address,
                    c.values
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn sev_class(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "crit",
        Severity::High => "high",
        Severity::Medium => "med",
        Severity::Low | Severity::Info => "low",
    }
}

/// The incident whose alert first detected a scenario (as eval counts it).
fn first_detection(
    report: &ReplayReport,
    labels: &[LabelWindow],
    scenario: &str,
    grace: Ts,
) -> Option<String> {
    labels
        .iter()
        .filter(|l| l.scenario == scenario)
        .filter_map(|l| {
            report
                .alerts
                .iter()
                .filter(|a| {
                    l.devices.contains(&a.device) && a.ts >= l.start && a.ts <= l.end + grace
                })
                .min_by_key(|a| a.ts)
        })
        .min_by_key(|a| a.ts)
        .map(|a| a.incident_id.clone())
}

const STYLE: &str = "<style>
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:960px;color:#1f2328;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0;width:100%}td,th{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f6f8fa}code{font-size:12px;word-break:break-all}.generated{color:#59636e;font-size:12px}
figure{margin:8px 0}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#59636e}
.incident{border-left:4px solid #d0d7de;padding-left:12px;margin:20px 0}
.sev{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:12px}
.crit{background:#da3633}.high{background:#f0883e}.med{background:#d29922}.low{background:#3fb950}
.sw{display:inline-block;width:12px;height:10px;margin:0 3px 0 10px}.sw.lab{background:rgba(110,64,201,.3)}
.label{display:inline-block;margin-right:8px}
</style>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_keeps_extremes_per_column_in_order() {
        let pts: Vec<(Ts, f64)> = (0..10_000)
            .map(|i| (i, if i == 5_003 { 99.0 } else { (i % 7) as f64 }))
            .collect();
        let r = reduce(&pts, 0, 9_999, 100);
        assert!(r.len() <= 200);
        assert!(r.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(r.contains(&(5_003, 99.0)), "the spike survives");
        assert_eq!(
            reduce(&pts[..50], 0, 49, 100).len(),
            50,
            "short series stay whole"
        );
    }

    proptest::proptest! {
        /// Whatever the series: at most two points per column, in time order, taken from
        /// the input, and the series' extremes kept.
        #[test]
        fn reduction_bounds(
            values in proptest::collection::vec(-1e6f64..1e6, 1..3000),
            gaps in proptest::collection::vec(0i64..50, 1..3000),
            columns in 1usize..300,
        ) {
            let mut t = 0;
            let pts: Vec<(Ts, f64)> = values.iter().zip(gaps.iter().cycle()).map(|(v, g)| { t += g; (t, *v) }).collect();
            let (lo, hi) = (pts[0].0, pts[pts.len() - 1].0);
            let r = reduce(&pts, lo, hi, columns);
            proptest::prop_assert!(r.len() <= 2 * columns || r.len() == pts.len());
            proptest::prop_assert!(r.windows(2).all(|w| w[0].0 <= w[1].0));
            proptest::prop_assert!(r.iter().all(|p| pts.contains(p)));
            let max = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            let min = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
            proptest::prop_assert!(r.iter().any(|p| p.1 == max) && r.iter().any(|p| p.1 == min));
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
