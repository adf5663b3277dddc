//! Findings → alerts → incidents.
//!
//! - One open alert per (device, detector, metrics): repeated findings update it (peak
//!   score, latest time, count); its severity is the highest any finding earned, raised
//!   one level when a score reaches 3× its threshold.
//! - An alert closes when no finding refreshed it for `clear_after` (and at least three of
//!   its device's sampling intervals) of event time.
//! - A new alert joins its site's open incident when it starts within `incident_window`
//!   of the incident's latest activity, otherwise it opens one. An incident's severity is
//!   its alerts' highest, raised one level when two devices or three detectors agree.
//! - Ids are derived from content (site, device, detector, metrics, start), so a capture
//!   always gives the same ids and a webhook receiver can use them as idempotency keys.

use crate::feature::FeatureStore;
use crate::model::points::{DeviceId, Registry};
use crate::model::{Alert, AlertStatus, Finding, Incident, Severity, Ts};
use crate::time::serde_duration;
use crate::tomlfile::{rule, Broken};
use rustc_hash::FxHashMap;
use serde::Deserialize;

/// How findings become alerts and incidents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelatorParams {
    /// An alert closes after this long without a finding (at least 3 of the device's
    /// intervals). Default `"2m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub clear_after: i64,
    /// A new alert joins a site's open incident if it starts within this long of the
    /// incident's latest activity. Default `"15m"`.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub incident_window: i64,
}

impl Default for CorrelatorParams {
    fn default() -> Self {
        Self {
            clear_after: 120_000,
            incident_window: 900_000,
        }
    }
}

impl CorrelatorParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.clear_after >= 1, "clear_after", "must be at least 1ms")?;
        rule(
            self.incident_window >= 0,
            "incident_window",
            "must not be negative",
        )
    }
}

/// What the correlator emits: a new or changed alert or incident (a full snapshot).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An alert opened, escalated or closed.
    Alert(Alert),
    /// An incident opened, changed or closed.
    Incident(Incident),
}

type AlertKey = (DeviceId, &'static str, Vec<String>);

struct OpenIncident {
    incident: Incident,
    open_alerts: usize,
    max_alert: Severity,
}

/// The correlator.
pub struct Correlator {
    cfg: CorrelatorParams,
    open: FxHashMap<AlertKey, Alert>,
    incidents: FxHashMap<String, OpenIncident>,
}

/// A stable 64-bit FNV-1a hash, for content-derived ids.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

impl Correlator {
    /// A correlator with nothing open.
    pub fn new(cfg: CorrelatorParams) -> Self {
        Self {
            cfg,
            open: FxHashMap::default(),
            incidents: FxHashMap::default(),
        }
    }

    /// Folds one finding in; emits the alert (and incident) if it is new or escalated.
    pub fn observe(&mut self, f: Finding, reg: &Registry, out: &mut Vec<Output>) {
        let mut severity = f.severity;
        if f.score >= 3.0 * f.threshold {
            severity = severity.raised();
        }
        let key: AlertKey = (f.device, f.detector, f.metrics);
        if let Some(a) = self.open.get_mut(&key) {
            a.last_seen = a.last_seen.max(f.ts);
            a.findings += 1;
            if f.score > a.score {
                a.score = f.score;
                a.summary = f.reason;
                a.evidence = f.evidence;
            }
            let escalated = severity > a.severity;
            if escalated {
                a.severity = severity;
                out.push(Output::Alert(a.clone()));
            }
            let (id, ts, sev) = (a.incident_id.clone(), a.last_seen, a.severity);
            let site = a.site.clone();
            if let Some(inc) = self
                .incidents
                .get_mut(&site)
                .filter(|i| i.incident.id == id)
            {
                inc.incident.end = inc.incident.end.max(ts);
                if escalated && refresh_severity(inc, sev) {
                    out.push(Output::Incident(inc.incident.clone()));
                }
            }
            return;
        }
        let dev = reg.device(key.0);
        let metrics_joined = key.2.join(",");
        let id = format!(
            "al-{:016x}",
            fnv(&[
                dev.site.as_bytes(),
                dev.name.as_bytes(),
                key.1.as_bytes(),
                metrics_joined.as_bytes(),
                &f.ts.to_le_bytes()
            ])
        );
        let incident_id = self.join_incident(
            &dev.site,
            &dev.name,
            key.1,
            f.technique.id,
            &id,
            f.ts,
            severity,
            out,
        );
        let alert = Alert {
            id,
            ts: f.ts,
            // The sinks stamp the wall time (`sink::Stamp`).
            detected_at: String::new(),
            site: dev.site.clone(),
            device: dev.name.clone(),
            kind: dev.kind_name.clone(),
            metrics: key.2.clone(),
            detector: key.1,
            score: f.score,
            threshold: f.threshold,
            severity,
            technique: f.technique,
            summary: f.reason,
            evidence: f.evidence,
            incident_id,
            status: AlertStatus::Open,
            last_seen: f.ts,
            findings: 1,
        };
        out.push(Output::Alert(alert.clone()));
        self.open.insert(key, alert);
    }

    #[allow(clippy::too_many_arguments)]
    fn join_incident(
        &mut self,
        site: &str,
        device: &str,
        detector: &'static str,
        technique: &'static str,
        alert_id: &str,
        ts: Ts,
        severity: Severity,
        out: &mut Vec<Output>,
    ) -> String {
        let window = self.cfg.incident_window;
        if let Some(inc) = self.incidents.get_mut(site) {
            if ts - inc.incident.end <= window {
                inc.open_alerts += 1;
                let i = &mut inc.incident;
                i.end = i.end.max(ts);
                i.alerts.push(alert_id.to_owned());
                push_unique(&mut i.devices, device.to_owned());
                push_unique(&mut i.detectors, detector);
                push_unique(&mut i.techniques, technique);
                refresh_severity(inc, severity);
                inc.incident.summary = incident_summary(&inc.incident);
                out.push(Output::Incident(inc.incident.clone()));
                return inc.incident.id.clone();
            }
        }
        // The site's previous incident (if any) is past its window: it closes now.
        if let Some(old) = self.incidents.remove(site) {
            let mut i = old.incident;
            i.status = AlertStatus::Closed;
            out.push(Output::Incident(i));
        }
        let id = format!(
            "in-{:016x}",
            fnv(&[site.as_bytes(), alert_id.as_bytes(), &ts.to_le_bytes()])
        );
        let mut i = Incident {
            id: id.clone(),
            site: site.to_owned(),
            start: ts,
            end: ts,
            severity,
            alerts: vec![alert_id.to_owned()],
            devices: vec![device.to_owned()],
            detectors: vec![detector],
            techniques: vec![technique],
            summary: String::new(),
            status: AlertStatus::Open,
        };
        i.summary = incident_summary(&i);
        out.push(Output::Incident(i.clone()));
        self.incidents.insert(
            site.to_owned(),
            OpenIncident {
                incident: i,
                open_alerts: 1,
                max_alert: severity,
            },
        );
        id
    }

    /// Closes alerts that went quiet and incidents whose alerts are all closed and whose
    /// window has passed, as of event time `now`.
    pub fn tick(&mut self, now: Ts, reg: &Registry, store: &FeatureStore, out: &mut Vec<Output>) {
        let clear = self.cfg.clear_after;
        let mut closed = Vec::new();
        self.open.retain(|key, a| {
            let interval = reg
                .device(key.0)
                .points
                .iter()
                .filter_map(|&p| store.points().get(p as usize))
                .map(|s| s.interval_ms)
                .filter(|&i| i > 0.0)
                .fold(0.0f64, f64::max);
            let quiet = (clear as f64).max(3.0 * interval);
            if ((now - a.last_seen) as f64) < quiet {
                return true;
            }
            a.status = AlertStatus::Closed;
            closed.push(a.clone());
            false
        });
        closed.sort_by(|a, b| (a.last_seen, &a.id).cmp(&(b.last_seen, &b.id)));
        for a in closed {
            if let Some(inc) = self
                .incidents
                .get_mut(&a.site)
                .filter(|i| i.incident.id == a.incident_id)
            {
                inc.open_alerts = inc.open_alerts.saturating_sub(1);
            }
            out.push(Output::Alert(a));
        }
        let window = self.cfg.incident_window;
        let mut done: Vec<String> = self
            .incidents
            .iter()
            .filter(|(_, i)| i.open_alerts == 0 && now - i.incident.end > window)
            .map(|(site, _)| site.clone())
            .collect();
        done.sort();
        for site in done {
            if let Some(inc) = self.incidents.remove(&site) {
                let mut i = inc.incident;
                i.status = AlertStatus::Closed;
                out.push(Output::Incident(i));
            }
        }
    }

    /// Alerts still open, oldest first (for end-of-capture reports).
    pub fn open_alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.open.values().collect();
        v.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        v
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Sets an incident's severity from its highest alert severity, one level higher when
/// two devices or three detectors agree; returns whether it changed.
fn refresh_severity(inc: &mut OpenIncident, alert_severity: Severity) -> bool {
    inc.max_alert = inc.max_alert.max(alert_severity);
    let i = &mut inc.incident;
    let corroborated = i.devices.len() >= 2 || i.detectors.len() >= 3;
    let before = i.severity;
    i.severity = if corroborated {
        inc.max_alert.raised()
    } else {
        inc.max_alert
    };
    i.severity != before
}

fn incident_summary(i: &Incident) -> String {
    let alerts = i.alerts.len();
    format!(
        "{alerts} alert{} on {} at {} ({})",
        if alerts == 1 { "" } else { "s" },
        i.devices.join(", "),
        i.site,
        i.detectors.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attack;

    fn finding(
        reg: &mut Registry,
        device: &str,
        detector: &'static str,
        ts: Ts,
        score: f64,
    ) -> Finding {
        let p = reg
            .intern("s1", device, "chiller", "supply_temp_c")
            .unwrap();
        Finding {
            ts,
            device: reg.point(p).device,
            metrics: vec!["supply_temp_c".into()],
            detector,
            score,
            threshold: 6.0,
            severity: Severity::Low,
            technique: attack::MANIPULATION_OF_CONTROL,
            reason: format!("score {score}"),
            evidence: serde_json::json!({}),
        }
    }

    fn alerts(out: &[Output]) -> Vec<&Alert> {
        out.iter()
            .filter_map(|o| {
                if let Output::Alert(a) = o {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn repeated_findings_update_one_alert_which_closes_when_quiet() {
        let mut reg = Registry::new(10);
        let store = FeatureStore::default();
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        for t in 0..10 {
            let f = finding(&mut reg, "chiller-1", "ewma_z", t * 1000, 7.0 + t as f64);
            c.observe(f, &reg, &mut out);
        }
        // Opened once, escalated once when the score passed 3× the threshold.
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "{a:?}");
        c.observe(
            finding(&mut reg, "chiller-1", "ewma_z", 11_000, 19.0),
            &reg,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].severity, Severity::Medium);
        assert_eq!(a[0].id, a[1].id);
        out.clear();
        c.tick(100_000, &reg, &store, &mut out);
        assert!(alerts(&out).is_empty(), "not quiet long enough");
        c.tick(132_000, &reg, &store, &mut out);
        let a = alerts(&out);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].status, a[0].findings, a[0].last_seen),
            (AlertStatus::Closed, 11, 11_000)
        );
    }

    #[test]
    fn alerts_close_in_time_share_an_incident_and_corroboration_raises_it() {
        let mut reg = Registry::new(10);
        let mut c = Correlator::new(CorrelatorParams::default());
        let mut out = Vec::new();
        c.observe(
            finding(&mut reg, "chiller-1", "ewma_z", 0, 7.0),
            &reg,
            &mut out,
        );
        c.observe(
            finding(&mut reg, "chiller-2", "cusum", 60_000, 7.0),
            &reg,
            &mut out,
        );
        c.observe(
            finding(&mut reg, "chiller-1", "flatline", 3_600_000, 7.0),
            &reg,
            &mut out,
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].incident_id, a[1].incident_id);
        assert_ne!(a[1].incident_id, a[2].incident_id);
        let incidents: Vec<&Incident> = out
            .iter()
            .filter_map(|o| {
                if let Output::Incident(i) = o {
                    Some(i)
                } else {
                    None
                }
            })
            .collect();
        let first = incidents
            .iter()
            .rev()
            .find(|i| i.id == a[0].incident_id)
            .unwrap();
        assert_eq!(first.devices.len(), 2);
        assert_eq!(
            first.severity,
            Severity::Medium,
            "two devices agree: low → medium"
        );
        assert_eq!(
            first.status,
            AlertStatus::Closed,
            "closed when the next incident opened"
        );
    }

    #[test]
    fn ids_are_deterministic() {
        let run = || {
            let mut reg = Registry::new(10);
            let mut c = Correlator::new(CorrelatorParams::default());
            let mut out = Vec::new();
            c.observe(
                finding(&mut reg, "chiller-1", "ewma_z", 5, 7.0),
                &reg,
                &mut out,
            );
            alerts(&out)[0].id.clone()
        };
        assert_eq!(run(), run());
    }
}
