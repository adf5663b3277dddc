//! The dashboard's view of the facility: each device's latest values, a short history of
//! its key metrics for sparklines, whether it is online, and its anomaly score (the
//! highest `score / threshold` of its open alerts: above 1 means above threshold).

use crate::model::{Alert, AlertStatus, Name, Quality, Reading, Severity, Ts};
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
/// device and metric already seen allocates nothing, and a reading of the device before
/// (sources send a device's readings together) looks nothing up.
#[derive(Debug, Default)]
pub struct Board {
    /// Every device, in the order first seen.
    views: Vec<DeviceView>,
    /// Where each is in `views`, by site and name.
    index: BTreeMap<String, BTreeMap<String, usize>>,
    /// The last reading's site and device (shared names compare by address first).
    last: Option<(Name, Name, usize)>,
}

impl Board {
    /// Folds in one reading.
    pub fn reading(&mut self, r: &Reading) {
        let at = match &self.last {
            Some((site, device, at)) if *site == r.site && *device == r.device => *at,
            _ => {
                let at = self.place(r);
                self.last = Some((r.site.clone(), r.device.clone(), at));
                at
            }
        };
        let d = &mut self.views[at];
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

    /// Where a device is in `views`, if it has reported.
    fn at(&self, site: &str, device: &str) -> Option<usize> {
        self.index.get(site).and_then(|s| s.get(device)).copied()
    }

    /// Where the reading's device is in `views`, adding it if new.
    fn place(&mut self, r: &Reading) -> usize {
        if let Some(at) = self.at(&r.site, &r.device) {
            return at;
        }
        let at = self.views.len();
        self.views.push(DeviceView {
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
        });
        self.index
            .entry(r.site.to_string())
            .or_default()
            .insert(r.device.to_string(), at);
        at
    }

    /// Folds in an alert snapshot (opened, escalated or closed).
    pub fn alert(&mut self, a: &Alert) {
        let Some(at) = self.at(&a.site, &a.device) else {
            return;
        };
        let d = &mut self.views[at];
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

    /// Positions in `views`, by site and name.
    fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.index.values().flat_map(|s| s.values().copied())
    }

    fn views(&self) -> impl Iterator<Item = &DeviceView> {
        self.order().map(|at| &self.views[at])
    }

    /// The devices changed since the last call (a reading or an alert marks a device),
    /// by site and name, as they are: the caller sends them on and updates their gauges
    /// without copying every device's maps once a second.
    pub fn take_dirty(&mut self) -> Vec<&DeviceView> {
        let changed: Vec<usize> = self.order().filter(|&at| self.views[at].dirty).collect();
        for &at in &changed {
            self.views[at].dirty = false;
        }
        changed.iter().map(|&at| &self.views[at]).collect()
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
    fn devices_are_listed_by_site_and_name_whatever_order_they_came_in() {
        let mut b = Board::default();
        let seen = [
            ("s2", "b", 1.0),
            ("s1", "z", 2.0),
            ("s1", "a", 3.0),
            ("s2", "b", 4.0),
        ];
        for (site, device, v) in seen {
            // Names allocated per reading (equal, not shared) find the same device.
            let mut r = reading("supply_temp_c", v);
            r.site = site.into();
            r.device = device.into();
            b.reading(&r);
        }
        let tiles: Vec<_> = b
            .take_dirty()
            .iter()
            .map(|d| {
                (
                    d.site.as_str(),
                    d.device.as_str(),
                    d.values["supply_temp_c"],
                )
            })
            .collect();
        assert_eq!(
            tiles,
            [("s1", "a", 3.0), ("s1", "z", 2.0), ("s2", "b", 4.0)]
        );
        assert!(b.take_dirty().is_empty());
        let mut a = Alert::sample("al-1", 1000, Severity::High, AlertStatus::Open);
        (a.site, a.device) = ("s1".into(), "z".into());
        b.alert(&a);
        let changed: Vec<_> = b.take_dirty().iter().map(|d| d.device.clone()).collect();
        assert_eq!(changed, ["z"]);
        assert_eq!(
            b.snapshot()[1].score,
            1.5,
            "its alert's score over threshold"
        );
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
