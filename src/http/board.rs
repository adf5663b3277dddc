//! The dashboard's view of the facility: each device's latest values, a short history of
//! its key metrics for sparklines, whether it is online, and its anomaly score (the
//! highest `score / threshold` of its open alerts: above 1 means above threshold).

use crate::model::{Alert, AlertStatus, Quality, Reading, Severity, Ts};
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
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub last_seen: Ts,
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
    /// Changed since the last SSE update.
    #[serde(skip)]
    dirty: bool,
}

/// Every device seen, by site and name. Every reading passes through here: the path of a
/// device and metric already seen allocates nothing.
#[derive(Debug, Default)]
pub struct Board {
    devices: BTreeMap<String, BTreeMap<String, DeviceView>>,
}

impl Board {
    /// Folds in one reading.
    pub fn reading(&mut self, r: &Reading) {
        let site = match self.devices.get_mut(&*r.site) {
            Some(site) => site,
            None => self.devices.entry(r.site.to_string()).or_default(),
        };
        let d = match site.get_mut(&*r.device) {
            Some(d) => d,
            None => site
                .entry(r.device.to_string())
                .or_insert_with(|| DeviceView {
                    site: r.site.to_string(),
                    device: r.device.to_string(),
                    kind: r.kind.to_string(),
                    last_seen: r.ts,
                    values: BTreeMap::new(),
                    bad_quality: BTreeSet::new(),
                    history: BTreeMap::new(),
                    online: true,
                    score: 0.0,
                    severity: None,
                    open: BTreeMap::new(),
                    dirty: true,
                }),
        };
        d.dirty = true;
        d.last_seen = r.ts;
        d.online = &*r.metric != "online" || r.value != 0.0;
        if r.quality != Quality::Good {
            if !d.bad_quality.contains(&*r.metric) {
                d.bad_quality.insert(r.metric.to_string());
            }
            return;
        }
        d.bad_quality.remove(&*r.metric);
        match d.values.get_mut(&*r.metric) {
            Some(v) => *v = r.value,
            None => {
                d.values.insert(r.metric.to_string(), r.value);
            }
        }
        if &*r.metric == "online" {
            return;
        }
        let h = match d.history.get_mut(&*r.metric) {
            Some(h) => h,
            None => {
                let keys = key_metrics(&d.kind);
                let tracked = if keys.is_empty() {
                    d.history.len() < 2
                } else {
                    keys.contains(&&*r.metric)
                };
                if !tracked {
                    return;
                }
                d.history.entry(r.metric.to_string()).or_default()
            }
        };
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(r.value);
    }

    /// Folds in an alert snapshot (opened, escalated or closed).
    pub fn alert(&mut self, a: &Alert) {
        let Some(d) = self
            .devices
            .get_mut(&a.site)
            .and_then(|s| s.get_mut(&a.device))
        else {
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
        d.dirty = true;
    }

    /// Every device, by site and name.
    pub fn snapshot(&self) -> Vec<DeviceView> {
        self.views().cloned().collect()
    }

    fn views(&self) -> impl Iterator<Item = &DeviceView> {
        self.devices.values().flat_map(BTreeMap::values)
    }

    /// The devices changed since the last call (a reading or an alert marks a device),
    /// as they are: the caller sends them on and updates their gauges without copying
    /// every device's maps once a second.
    pub fn take_dirty(&mut self) -> Vec<&DeviceView> {
        self.devices
            .values_mut()
            .flat_map(BTreeMap::values_mut)
            .filter_map(|d| std::mem::take(&mut d.dirty).then_some(&*d))
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
