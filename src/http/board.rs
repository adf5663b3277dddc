//! The dashboard's view of the facility: each device's latest values, a short history of
//! its key metrics for sparklines, whether it is online, and its anomaly score (the
//! highest `score / threshold` of its open alerts: above 1 means above threshold).

use crate::model::{Alert, AlertStatus, Quality, Reading, Severity};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Points kept per sparkline.
const HISTORY: usize = 120;

/// The metrics drawn as sparklines, per kind (others: the first two seen).
fn key_metrics(kind: &str) -> &'static [&'static str] {
    match kind {
        "ups" => &["output_power_kw", "battery_charge_pct"],
        "chiller" => &["supply_temp_c", "power_kw"],
        "crah" => &["supply_air_temp_c", "return_air_temp_c"],
        "pdu" => &["it_load_kw"],
        "env" => &["room_temp_c"],
        "grid_meter" => &["active_power_kw", "frequency_hz"],
        _ => &[],
    }
}

/// One device tile.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// Site.
    pub site: String,
    /// Device.
    pub device: String,
    /// Kind.
    pub kind: String,
    /// Event time of the newest reading (RFC 3339).
    pub last_seen: String,
    /// Latest good value of every metric.
    pub values: BTreeMap<String, f64>,
    /// Metrics whose latest reading was bad (NaN, out of range, flagged): their value
    /// above is the last good one, not a live one.
    pub bad_quality: BTreeSet<String>,
    /// Recent values of the key metrics, oldest first.
    pub history: BTreeMap<String, VecDeque<f64>>,
    /// False after a death certificate or last will, until it reports again.
    pub online: bool,
    /// Highest `score / threshold` of its open alerts (0 when none).
    pub score: f64,
    /// Highest severity of its open alerts.
    pub severity: Option<Severity>,
    #[serde(skip)]
    open: BTreeMap<String, (f64, Severity)>,
}

/// Every device seen, and which changed since the last SSE update.
#[derive(Debug, Default)]
pub struct Board {
    devices: BTreeMap<(String, String), DeviceView>,
    dirty: BTreeSet<(String, String)>,
}

impl Board {
    /// Folds in one reading.
    pub fn reading(&mut self, r: &Reading) {
        let key = (r.site.clone(), r.device.clone());
        let d = self
            .devices
            .entry(key.clone())
            .or_insert_with(|| DeviceView {
                site: r.site.clone(),
                device: r.device.clone(),
                kind: r.kind.clone(),
                last_seen: String::new(),
                values: BTreeMap::new(),
                bad_quality: BTreeSet::new(),
                history: BTreeMap::new(),
                online: true,
                score: 0.0,
                severity: None,
                open: BTreeMap::new(),
            });
        d.last_seen = crate::time::format_ts(r.ts);
        if r.metric == "online" {
            d.online = r.value != 0.0;
        } else {
            d.online = true;
        }
        if r.quality != Quality::Good {
            d.bad_quality.insert(r.metric.clone());
            self.dirty.insert(key);
            return;
        }
        d.bad_quality.remove(&r.metric);
        d.values.insert(r.metric.clone(), r.value);
        let keys = key_metrics(&d.kind);
        let tracked = if keys.is_empty() {
            d.history.contains_key(&r.metric) || d.history.len() < 2
        } else {
            keys.contains(&r.metric.as_str())
        };
        if tracked && r.metric != "online" {
            let h = d.history.entry(r.metric.clone()).or_default();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(r.value);
        }
        self.dirty.insert(key);
    }

    /// Folds in an alert snapshot (opened, escalated or closed).
    pub fn alert(&mut self, a: &Alert) {
        let key = (a.site.clone(), a.device.clone());
        let Some(d) = self.devices.get_mut(&key) else {
            return;
        };
        match a.status {
            AlertStatus::Open => {
                let ratio = if a.threshold > 0.0 {
                    a.score / a.threshold
                } else {
                    1.0
                };
                d.open.insert(a.id.clone(), (ratio, a.severity));
            }
            AlertStatus::Closed => {
                d.open.remove(&a.id);
            }
        }
        d.score = d.open.values().map(|(s, _)| *s).fold(0.0, f64::max);
        d.severity = d.open.values().map(|(_, s)| *s).max();
        self.dirty.insert(key);
    }

    /// Every device, by site and name.
    pub fn snapshot(&self) -> Vec<DeviceView> {
        self.devices.values().cloned().collect()
    }

    /// The devices changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<DeviceView> {
        let keys = std::mem::take(&mut self.dirty);
        keys.iter()
            .filter_map(|k| self.devices.get(k).cloned())
            .collect()
    }

    /// `(site, device, kind, score)` of every device, for the metrics endpoint.
    pub fn scores(&self) -> Vec<(String, String, String, f64, bool)> {
        self.devices
            .values()
            .map(|d| {
                let (site, device, kind) = (d.site.clone(), d.device.clone(), d.kind.clone());
                (site, device, kind, d.score, d.online)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;

    fn reading(metric: &str, value: f64) -> Reading {
        Reading {
            ts: 1000,
            site: "s".into(),
            device: "chiller-1".into(),
            kind: "chiller".into(),
            metric: metric.into(),
            value,
            quality: Quality::Good,
        }
    }

    #[test]
    fn values_history_online_and_dirty_tracking() {
        let mut b = Board::default();
        for i in 0..200 {
            b.reading(&reading("supply_temp_c", f64::from(i)));
        }
        b.reading(&reading("flow_lps", 40.0));
        let d = &b.snapshot()[0];
        assert_eq!(d.history["supply_temp_c"].len(), HISTORY);
        assert_eq!(d.history["supply_temp_c"].back(), Some(&199.0));
        assert!(!d.history.contains_key("flow_lps"), "not a key metric");
        assert_eq!(b.take_dirty().len(), 1);
        assert!(b.take_dirty().is_empty());
        b.reading(&reading("online", 0.0));
        assert!(!b.snapshot()[0].online);
    }

    #[test]
    fn a_bad_reading_shows_as_bad_not_as_the_last_good_value_live() {
        let mut b = Board::default();
        b.reading(&reading("supply_temp_c", 7.0));
        let mut bad = reading("supply_temp_c", 7.0);
        bad.quality = Quality::Bad;
        b.reading(&bad);
        let d = &b.snapshot()[0];
        assert!(d.bad_quality.contains("supply_temp_c"));
        assert_eq!(d.history["supply_temp_c"].len(), 1, "no made-up sample");
        b.reading(&reading("supply_temp_c", 7.5));
        assert!(b.snapshot()[0].bad_quality.is_empty());
    }
}
