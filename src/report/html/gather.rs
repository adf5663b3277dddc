//! The second read of the captures: the telemetry and commands inside the incidents'
//! windows, reduced to what a plot of `WIDTH` columns can show.

use super::{reduce, CONTEXT_MS, MAX_METRICS, WIDTH};
use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::{Alert, Command, Ts};
use crate::report::ReplayReport;
use crate::source::{open_capture, ByteCounter, OpenOptions, SourceError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Telemetry and commands inside the incidents' windows.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// `(device, metric)` → reduced `(ts, value)` points, in time order.
    pub series: BTreeMap<(String, String), Vec<(Ts, f64)>>,
    /// Commands on the incidents' devices inside their windows.
    pub commands: Vec<Command>,
}

/// A plotted series: device and metric.
type SeriesKey = (String, String);

/// The window and metrics each incident's plots cover.
pub(super) fn windows(report: &ReplayReport) -> Vec<(Ts, Ts, Vec<SeriesKey>)> {
    let by_id: BTreeMap<&str, &Alert> = report.alerts.iter().map(|a| (a.id.as_str(), a)).collect();
    report
        .incidents
        .iter()
        .map(|inc| {
            let alerts: Vec<&Alert> = inc
                .alerts
                .iter()
                .filter_map(|id| by_id.get(id.as_str()).copied())
                .collect();
            let from = alerts.iter().map(|a| a.ts).min().unwrap_or(inc.start) - CONTEXT_MS;
            let to = alerts.iter().map(|a| a.last_seen).max().unwrap_or(inc.end) + CONTEXT_MS;
            let mut metrics = Vec::new();
            for a in &alerts {
                for m in &a.metrics {
                    let key = (a.device.clone(), m.clone());
                    if !metrics.contains(&key) && metrics.len() < MAX_METRICS {
                        metrics.push(key);
                    }
                }
            }
            (from, to, metrics)
        })
        .collect()
}

/// Reads the captures again for the telemetry the incidents' plots need.
pub fn gather(
    report: &ReplayReport,
    inputs: &[PathBuf],
    how: &OpenOptions,
) -> Result<Telemetry, SourceError> {
    let wins = windows(report);
    // (device, metric) → windows; device → windows (for commands).
    let mut want: BTreeMap<(String, String), Vec<(Ts, Ts)>> = BTreeMap::new();
    let mut devices: BTreeMap<String, Vec<(Ts, Ts)>> = BTreeMap::new();
    for ((from, to, metrics), inc) in wins.iter().zip(&report.incidents) {
        for m in metrics {
            want.entry(m.clone()).or_default().push((*from, *to));
        }
        for d in &inc.devices {
            devices.entry(d.clone()).or_default().push((*from, *to));
        }
    }
    let inside = |w: &[(Ts, Ts)], ts: Ts| w.iter().any(|&(a, b)| a <= ts && ts <= b);
    let mut raw: BTreeMap<(String, String), Vec<(Ts, f64)>> = BTreeMap::new();
    let mut commands = Vec::new();
    for path in inputs {
        let mut src = open_capture(path, how, &ByteCounter::default())?;
        let mut reg = Registry::new(how_points(report));
        // Per point: which wanted series it is, decided once.
        let mut slot: Vec<Option<Option<(String, String)>>> = Vec::new();
        while let Some(ev) = src.next_event(&mut reg) {
            match ev {
                Event::Sample {
                    ts, point, value, ..
                } => {
                    let i = point as usize;
                    if slot.len() <= i {
                        slot.resize(i + 1, None);
                    }
                    let key = slot[i].get_or_insert_with(|| {
                        let p = reg.point(point);
                        let key = (reg.device(p.device).name.clone(), p.metric.clone());
                        want.contains_key(&key).then_some(key)
                    });
                    if let Some(key) = key {
                        if inside(&want[key], ts) {
                            raw.entry(key.clone()).or_default().push((ts, value));
                        }
                    }
                }
                Event::Command(c) => {
                    if devices.get(&c.device).is_some_and(|w| inside(w, c.ts)) {
                        commands.push(*c);
                    }
                }
                Event::Traffic(_) => {}
            }
        }
    }
    commands.sort_by(|a, b| (a.ts, &a.device, &a.client).cmp(&(b.ts, &b.device, &b.client)));
    let mut series = BTreeMap::new();
    for (key, mut pts) in raw {
        pts.sort_by_key(|p| p.0);
        let w = &want[&key];
        let (lo, hi) = (
            w.iter().map(|x| x.0).min().unwrap_or(0),
            w.iter().map(|x| x.1).max().unwrap_or(0),
        );
        series.insert(key, reduce(&pts, lo, hi, WIDTH as usize));
    }
    Ok(Telemetry { series, commands })
}

fn how_points(report: &ReplayReport) -> usize {
    (report.devices.len() * 64).max(100_000)
}
