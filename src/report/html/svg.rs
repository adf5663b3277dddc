//! The SVG of the report: the timeline of alerts and labels, and each incident's plot
//! of telemetry, commands and scores (plotters' SVG backend).

use super::{esc, reduce, Telemetry, WIDTH};
use crate::model::{Alert, Incident, Severity, Ts};
use crate::pipeline::ScorePoint;
use crate::report::eval::LabelWindow;
use crate::report::ReplayReport;
use crate::time::format_ts;
use plotters::prelude::*;
use std::fmt::Write as _;

fn severity_colour(s: Severity) -> RGBColor {
    match s {
        Severity::Info => RGBColor(0x8b, 0x94, 0x9e),
        Severity::Low => RGBColor(0x3f, 0xb9, 0x50),
        Severity::Medium => RGBColor(0xd2, 0x99, 0x22),
        Severity::High => RGBColor(0xf0, 0x88, 0x3e),
        Severity::Critical => RGBColor(0xda, 0x36, 0x33),
    }
}

const LABEL_FILL: RGBColor = RGBColor(0x6e, 0x40, 0xc9);
const COMMAND: RGBColor = RGBColor(0x1f, 0x6f, 0xeb);

/// Clock time of a point on an axis of event time.
fn hhmm(ts: Ts, span: Ts) -> String {
    let t = format_ts(ts);
    // 2026-07-07T10:00:00.000Z → 10:00 (or 10:00:05 when the span is short).
    let end = if span <= 30 * 60_000 { 19 } else { 16 };
    t.get(11..end).unwrap_or(&t).to_owned()
}

/// The timeline: one lane per device with alerts (and per labelled device), alerts as
/// bars coloured by severity from opening to last finding, labelled windows as bands.
pub(super) fn timeline(report: &ReplayReport, labels: &[LabelWindow], span: (Ts, Ts)) -> String {
    let mut lanes: Vec<String> = Vec::new();
    for a in &report.alerts {
        if !lanes.contains(&a.device) {
            lanes.push(a.device.clone());
        }
    }
    for l in labels {
        for d in &l.devices {
            if !lanes.contains(d) {
                lanes.push(d.clone());
            }
        }
    }
    let height = 60 + 22 * lanes.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (lo, hi) = (span.0, span.1.max(span.0 + 1));
        let n = lanes.len().max(1) as f64;
        let chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(140)
            .build_cartesian_2d(lo..hi, 0f64..n);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        let _ = chart
            .configure_mesh()
            .disable_mesh()
            .disable_y_axis()
            .x_labels(8)
            .x_label_formatter(&|t| hhmm(*t, hi - lo))
            .draw();
        // Lane names at the left, level with their lanes.
        for (i, name) in lanes.iter().enumerate() {
            let (_, py) = chart.backend_coord(&(lo, n - i as f64 - 0.5));
            let _ = root.draw(&Text::new(
                name.clone(),
                (4, py - 6),
                ("sans-serif", 12).into_font(),
            ));
        }
        let row = |d: &str| {
            lanes
                .iter()
                .position(|x| x == d)
                .map(|i| n - i as f64 - 1.0)
        };
        let _ = chart.draw_series(labels.iter().flat_map(|l| {
            l.devices.iter().filter_map(|d| row(d)).map(move |y| {
                Rectangle::new(
                    [(l.start, y + 0.05), (l.end.max(l.start + 1), y + 0.95)],
                    LABEL_FILL.mix(0.18).filled(),
                )
            })
        }));
        let _ = chart.draw_series(report.alerts.iter().filter_map(|a| {
            let y = row(&a.device)?;
            // At least a few pixels wide, so a one-finding alert is visible.
            let min_w = (hi - lo) / WIDTH as i64 * 3;
            Some(Rectangle::new(
                [(a.ts, y + 0.25), (a.last_seen.max(a.ts + min_w), y + 0.75)],
                severity_colour(a.severity).filled(),
            ))
        }));
        // Labelled windows again, outlined on top, so none hides under an alert.
        let _ = chart.draw_series(labels.iter().flat_map(|l| {
            l.devices.iter().filter_map(|d| row(d)).map(move |y| {
                Rectangle::new(
                    [(l.start, y + 0.05), (l.end.max(l.start + 1), y + 0.95)],
                    LABEL_FILL.stroke_width(1),
                )
            })
        }));
        let _ = root.present();
    }
    // Hooks for tests and readers: which label and alert each shape is.
    let mut s = format!("<figure class=\"timeline\">{svg}<figcaption>");
    for l in labels {
        let _ = write!(
            s,
            "<span class=\"label\" data-label=\"{}\">{} {} → {} on {}</span> ",
            esc(&l.scenario),
            esc(&l.scenario),
            format_ts(l.start),
            format_ts(l.end),
            esc(&l.devices.join(", "))
        );
    }
    s.push_str("</figcaption></figure>");
    s
}

/// A chart over `[lo, hi]` of event time on `area`, with clock-time labels and a light mesh.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    (lo, hi): (Ts, Ts),
    y: std::ops::Range<f64>,
) -> Option<
    ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordi64, plotters::coord::types::RangedCoordf64>,
    >,
> {
    let mut chart = ChartBuilder::on(area)
        .margin(6)
        .caption(caption, ("sans-serif", 13))
        .x_label_area_size(18)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, y)
        .ok()?;
    let _ = chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(4)
        .x_label_formatter(&|t| hhmm(*t, hi - lo))
        .draw();
    Some(chart)
}

/// One incident's plots: each metric on its own panel, commands as vertical lines,
/// labelled windows as bands; then the alerts' scores over their thresholds.
pub(super) fn incident_plot(
    inc: &Incident,
    alerts: &[&Alert],
    window: (Ts, Ts),
    metrics: &[(String, String)],
    tel: &Telemetry,
    scores: &[ScorePoint],
    labels: &[LabelWindow],
) -> String {
    let (lo, hi) = window;
    let panel_h = 130u32;
    let panels = metrics.len() + 1;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, panel_h * panels as u32)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let areas = root.split_evenly((panels, 1));
        let commands: Vec<Ts> = tel
            .commands
            .iter()
            .filter(|c| inc.devices.contains(&c.device) && c.ts >= lo && c.ts <= hi)
            .map(|c| c.ts)
            .collect();
        let bands: Vec<(Ts, Ts)> = labels
            .iter()
            .filter(|l| {
                l.devices.iter().any(|d| inc.devices.contains(d)) && l.end >= lo && l.start <= hi
            })
            .map(|l| (l.start.max(lo), l.end.min(hi)))
            .collect();
        for (k, (device, metric)) in metrics.iter().enumerate() {
            let pts = tel
                .series
                .get(&(device.clone(), metric.clone()))
                .map_or(&[][..], |v| &v[..]);
            let (mut ymin, mut ymax) = pts
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            if pts.is_empty() {
                (ymin, ymax) = (0.0, 1.0);
            }
            let pad = ((ymax - ymin) * 0.08).max(1e-6);
            let caption = format!("{device} · {metric}");
            let Some(mut chart) = panel(&areas[k], &caption, (lo, hi), (ymin - pad)..(ymax + pad))
            else {
                continue;
            };
            let _ = chart.draw_series(bands.iter().map(|&(a, b)| {
                Rectangle::new(
                    [(a, ymin - pad), (b, ymax + pad)],
                    LABEL_FILL.mix(0.12).filled(),
                )
            }));
            let _ = chart.draw_series(commands.iter().map(|&t| {
                PathElement::new(
                    vec![(t, ymin - pad), (t, ymax + pad)],
                    COMMAND.stroke_width(1),
                )
            }));
            let _ = chart.draw_series(LineSeries::new(pts.iter().copied(), BLACK.stroke_width(1)));
        }
        // Scores over thresholds: above 1 is above the detector's threshold.
        let keyed: Vec<(&Alert, Vec<(Ts, f64)>)> = alerts
            .iter()
            .map(|a| {
                let pts = scores
                    .iter()
                    .filter(|s| {
                        s.device == a.device && s.detector == a.detector && s.metrics == a.metrics
                    })
                    .filter(|s| s.ts >= lo && s.ts <= hi && s.threshold > 0.0)
                    .map(|s| (s.ts, s.score / s.threshold))
                    .collect::<Vec<_>>();
                // Dots, not a line (findings come and go): a few per few pixels is enough.
                (*a, reduce(&pts, lo, hi, WIDTH as usize / 4))
            })
            .collect();
        let top = keyed
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold(2.0f64, f64::max)
            .min(50.0);
        if let Some(mut chart) = panel(
            &areas[panels - 1],
            "score ÷ threshold (1 = threshold)",
            (lo, hi),
            0f64..top * 1.05,
        ) {
            let _ = chart.draw_series(std::iter::once(PathElement::new(
                vec![(lo, 1.0), (hi, 1.0)],
                RED.stroke_width(1),
            )));
            for (a, pts) in &keyed {
                let colour = severity_colour(a.severity);
                let _ = chart.draw_series(
                    pts.iter()
                        .map(|&(t, v)| Circle::new((t, v.min(top)), 2, colour.filled())),
                );
            }
        }
        let _ = root.present();
    }
    svg
}
