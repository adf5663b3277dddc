//! **staleness**: denial of view — a device, or one of its points, went silent.
//!
//! - Each point's usual sampling interval is learned by the feature store.
//! - On every watermark advance, a device whose newest sample is older than
//!   `factor ×` its fastest point's interval (and at least `min_silence`) is a
//!   device-level finding; a point silent that long while its device still talks is a
//!   point-level finding.
//! - A silence must also be longer than the point's **precedent**: the second longest
//!   gap between its samples over its last `precedent_samples` (a device's: the least
//!   of its points'). A point reported at irregular times (a traffic sensor, a gateway
//!   that flushes when it can) has its own normal gaps, and one no longer than gaps it
//!   already had twice lately is not news. The second longest, not the longest: one
//!   silence, an attacker's blackout among them, never excuses the next (the window:
//!   [`super::precedent`]). A point polled steadily has gaps of an interval or two, far
//!   under `min_silence`, so this changes nothing there.
//! - A point that keeps answering with bad readings only (NaN, out of range, a `bad`
//!   quality flag) for as long as would count as silence is denial of view too: the
//!   device answers, but nobody can see the value.
//! - Judged on event time, so a replay at any speed gives the same findings. A reading
//!   with bad quality still counts as the device answering.
//!
//! Blind spots: silence at the very end of a capture (nothing moves the watermark past
//! it), devices that never produced `min_samples` samples, and a silence no longer
//! than two of the point's last `precedent_samples` gaps.

use super::{precedent::Precedent, Arrival, Detector, PerKind, PointTable};
use crate::feature::FeatureStore;
use crate::model::attack;
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::{Finding, Quality, Severity, Ts, Words};
use crate::time::{format_duration, format_ts, serde_duration};
use crate::tomlfile::{rule, Broken};
use serde::Deserialize;
use serde_json::json;

/// Parameters of the staleness detector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StalenessParams {
    /// Whether the detector runs for this kind.
    pub enabled: bool,
    /// Silence longer than this many usual intervals is a finding.
    pub factor: f64,
    /// Silence shorter than this is never a finding (e.g. `"15s"`).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    pub min_silence: i64,
    /// Samples a point needs before its interval is trusted.
    pub min_samples: u64,
    /// Gaps over which a silence's precedent is remembered (0: no precedent).
    pub precedent_samples: u32,
}

impl StalenessParams {
    /// The first parameter that breaks a rule, if any.
    pub fn check(&self) -> Result<(), Broken> {
        rule(self.factor > 1.0, "factor", "must be greater than 1")?;
        rule(self.min_silence >= 0, "min_silence", "must not be negative")?;
        Ok(())
    }
}

impl Default for StalenessParams {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 10.0,
            min_silence: 15_000,
            min_samples: 10,
            precedent_samples: 600,
        }
    }
}

/// The staleness detector.
pub struct Staleness {
    params: PerKind<StalenessParams>,
    gaps: PointTable<Precedent>,
}

impl Staleness {
    /// Builds it from per-kind parameters.
    pub fn new(params: PerKind<StalenessParams>) -> Self {
        Self {
            params,
            gaps: PointTable::default(),
        }
    }

    /// The second longest recent gap of point `p`, in ms (0 when none is known).
    fn precedent(&self, p: PointId) -> f64 {
        self.gaps.get(p).map_or(0.0, Precedent::second)
    }
}

impl Detector for Staleness {
    fn name(&self) -> &'static str {
        "staleness"
    }

    /// A device that declares itself offline (a Sparkplug death certificate, a gateway's
    /// last will: `online = 0`) is denial of view at once, before any silence.
    fn observe(&mut self, frame: &crate::feature::Frame<'_>, out: &mut Vec<Finding>) {
        let params = self.params.get(frame.kind());
        if !params.enabled {
            return;
        }
        if params.precedent_samples > 0 {
            for (p, st) in frame.good() {
                if st.prev_ts != Ts::MIN {
                    let gap = (st.ts - st.prev_ts) as f64;
                    self.gaps
                        .get_or_insert(p, Precedent::default)
                        .count(Some(gap), params.precedent_samples);
                }
            }
        }
        if let Some(st) = frame.metric("online").filter(|st| st.value == 0.0) {
            out.push(declared_offline(
                frame.registry,
                frame.device,
                frame.ts,
                st.value,
            ));
        }
    }

    /// A declared death needs no other reading: found on arrival.
    fn arrival(&mut self, r: &Arrival<'_>, out: &mut Vec<Finding>) {
        let info = r.registry.point(r.point);
        let kind = r.registry.device(info.device).kind;
        if self.params.get(kind).enabled
            && info.metric == "online"
            && r.value == 0.0
            && r.quality == Quality::Good
        {
            out.push(declared_offline(r.registry, info.device, r.ts, r.value));
        }
    }

    fn tick(&mut self, now: Ts, store: &FeatureStore, reg: &Registry, out: &mut Vec<Finding>) {
        let states = store.points();
        for (d, dev) in reg.devices().iter().enumerate() {
            let params = self.params.get(dev.kind);
            if !params.enabled {
                continue;
            }
            // The fastest known interval and the newest sample, in one pass.
            let (interval, last) = dev
                .points
                .iter()
                .filter_map(|&p| states.get(p as usize))
                .filter(|s| s.n >= params.min_samples && s.interval_ms > 0.0)
                .fold((f64::INFINITY, Ts::MIN), |(iv, last), s| {
                    (iv.min(s.interval_ms), last.max(s.ts))
                });
            if last == Ts::MIN {
                continue;
            }
            let limit = |iv: f64| (params.factor * iv).max(params.min_silence as f64);
            let silence = (now - last) as f64;
            // The precedent only when the silence is long enough to need it.
            let precedent = (silence > limit(interval)).then(|| {
                dev.points
                    .iter()
                    .map(|&p| self.precedent(p))
                    .fold(f64::INFINITY, f64::min)
            });
            if let Some(precedent) = precedent.filter(|&p| silence > p) {
                out.push(Finding {
                    ts: now,
                    device: d as u32,
                    metrics: Vec::new(),
                    detector: "staleness",
                    score: silence / interval,
                    threshold: params.factor,
                    severity: Severity::High,
                    technique: attack::DENIAL_OF_VIEW,
                    words: Words::made(
                        format!(
                            "{} has sent nothing for {} (since {}); it usually reports every {}",
                            dev.name,
                            format_duration(now - last),
                            format_ts(last),
                            format_duration(interval.round() as i64)
                        ),
                        json!({"last_seen": format_ts(last), "silence_ms": now - last, "usual_interval_ms": interval, "precedent_ms": precedent}),
                    ),
                });
                continue;
            }
            for &p in &dev.points {
                let Some(s) = states.get(p as usize) else {
                    continue;
                };
                if s.n < params.min_samples || s.interval_ms <= 0.0 {
                    continue;
                }
                let metric = &reg.point(p).metric;
                let point_finding = |gap: Ts, severity, words: Words| Finding {
                    ts: now,
                    device: d as u32,
                    metrics: vec![metric.clone()],
                    detector: "staleness",
                    score: gap as f64 / s.interval_ms,
                    threshold: params.factor,
                    severity,
                    technique: attack::DENIAL_OF_VIEW,
                    words,
                };
                let blind = now - s.good_ts;
                let silence = now - s.ts;
                if s.quality != Quality::Good && blind as f64 > limit(s.interval_ms) {
                    out.push(point_finding(
                        blind,
                        Severity::Medium,
                        Words::made(
                            format!(
                                "{metric} of {} has come only as bad readings for {} (last good value {} at {}); it usually comes every {}",
                                dev.name,
                                format_duration(blind),
                                s.value,
                                format_ts(s.good_ts),
                                format_duration(s.interval_ms.round() as i64),
                            ),
                            json!({"last_good": format_ts(s.good_ts), "bad_for_ms": blind, "last_good_value": s.value, "usual_interval_ms": s.interval_ms}),
                        ),
                    ));
                } else if silence as f64 > limit(s.interval_ms)
                    && silence as f64 > self.precedent(p)
                {
                    out.push(point_finding(
                        silence,
                        Severity::Low,
                        Words::made(
                            format!(
                                "{metric} of {} has not been reported for {} while the device still reports; it usually comes every {}",
                                dev.name,
                                format_duration(silence),
                                format_duration(s.interval_ms.round() as i64),
                            ),
                            json!({"last_seen": format_ts(s.ts), "silence_ms": silence, "usual_interval_ms": s.interval_ms, "precedent_ms": self.precedent(p)}),
                        ),
                    ));
                }
            }
        }
    }
}

/// A device's own word that it is offline.
fn declared_offline(reg: &Registry, device: DeviceId, ts: Ts, online: f64) -> Finding {
    let name = &reg.device(device).name;
    Finding {
        ts,
        device,
        metrics: vec!["online".into()],
        detector: "staleness",
        score: 1.0,
        threshold: 1.0,
        severity: Severity::High,
        technique: attack::DENIAL_OF_VIEW,
        words: Words::made(
            format!("{name} declared itself offline (death certificate or last will)"),
            json!({"online": online, "at": format_ts(ts)}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feature::{FeatureParams, FeatureStore};
    use crate::model::points::Registry;

    #[test]
    fn device_gap_and_point_gap() {
        let mut reg = Registry::new(10);
        let a = reg.intern("s", "ups-1", "ups", "load_pct").unwrap();
        let b = reg
            .intern("s", "ups-1", "ups", "battery_charge_pct")
            .unwrap();
        let mut st = FeatureStore::new(FeatureParams::default());
        let mut det = Staleness::new(PerKind::from_fn(|_| StalenessParams::default()));
        let mut out = Vec::new();
        // 60 s of both points at 1 Hz: no finding.
        for t in 0..60 {
            st.update(&reg, a, t * 1000, 50.0, Quality::Good);
            st.update(&reg, b, t * 1000, 90.0, Quality::Good);
            det.tick(t * 1000, &st, &reg, &mut out);
        }
        assert!(out.is_empty());
        // Only `a` keeps coming: a point-level finding once b is 15 s silent.
        for t in 60..80 {
            st.update(&reg, a, t * 1000, 50.0, Quality::Good);
            det.tick(t * 1000, &st, &reg, &mut out);
        }
        assert!(!out.is_empty());
        assert!(out
            .iter()
            .all(|f| f.metrics == vec!["battery_charge_pct".to_string()]));
        assert_eq!(out[0].ts, 75_000);
        out.clear();
        // Everything stops: device-level finding after 15 s.
        for t in 80..100 {
            det.tick(t * 1000, &st, &reg, &mut out);
        }
        let dev: Vec<_> = out.iter().filter(|f| f.metrics.is_empty()).collect();
        assert_eq!(dev.first().map(|f| f.ts), Some(95_000));
        assert_eq!(dev[0].severity, Severity::High);
    }

    /// A point reported once a minute, ticked every second until `end`, its reports at
    /// `times` (ms); the findings.
    fn silences(times: &[Ts], end: Ts, precedent_samples: u32) -> Vec<Finding> {
        let mut reg = Registry::new(10);
        let p = reg.intern("s", "gw-1", "ups", "load_pct").unwrap();
        let device = reg.point(p).device;
        let mut st = FeatureStore::new(FeatureParams::default());
        let mut det = Staleness::new(PerKind::from_fn(|_| StalenessParams {
            precedent_samples,
            ..StalenessParams::default()
        }));
        let mut out = Vec::new();
        let mut next = times.iter().copied().peekable();
        let mut now = times[0];
        while now <= end {
            while let Some(t) = next.next_if(|&t| t <= now) {
                st.update(&reg, p, t, 50.0, Quality::Good);
                let frame = crate::feature::Frame {
                    ts: t,
                    device,
                    updated: &[p],
                    store: &st,
                    registry: &reg,
                };
                det.observe(&frame, &mut out);
            }
            det.tick(now, &st, &reg, &mut out);
            now += 1000;
        }
        out
    }

    /// A gateway that reports once a minute but went quiet for half an hour twice: a
    /// 25-minute silence is its normal, a 40-minute one is news; and the second
    /// half-hour was news too, since one silence never excuses the next.
    #[test]
    fn a_silence_no_longer_than_two_recent_gaps_is_the_points_normal() {
        const MIN: Ts = 60_000;
        let mut times = Vec::new();
        let mut t = 0;
        let gap_at = std::collections::BTreeMap::from([(50, 30), (120, 30), (200, 25), (260, 40)]);
        for i in 0..300 {
            times.push(t);
            t += gap_at.get(&i).copied().unwrap_or(1) * MIN;
        }
        let out = silences(&times, t, 600);
        let found_in = |out: &[Finding], i: usize| {
            out.iter()
                .filter(|f| f.ts > times[i] && f.ts < times[i + 1])
                .count()
        };
        assert!(found_in(&out, 50) > 0, "the first half-hour");
        assert!(found_in(&out, 120) > 0, "the second half-hour");
        assert_eq!(
            found_in(&out, 200),
            0,
            "25 minutes, shorter than two gaps before"
        );
        assert!(found_in(&out, 260) > 0, "40 minutes, longer than any");
        let found: usize = [50, 120, 260].map(|i| found_in(&out, i)).iter().sum();
        assert_eq!(found, out.len(), "nothing outside the four silences");
        // Without a precedent, every silence past ten intervals is a finding.
        assert!(found_in(&silences(&times, t, 0), 200) > 0);
    }

    /// A UPS whose power register answers NaN (bad quality) for 35 s: the device talks,
    /// the value is gone, and that is denial of view, not silence-free health.
    #[test]
    fn a_point_answering_only_bad_readings_is_denial_of_view() {
        let mut reg = Registry::new(10);
        let power = reg.intern("s", "ups-1", "ups", "output_power_kw").unwrap();
        let load = reg.intern("s", "ups-1", "ups", "load_pct").unwrap();
        let mut st = FeatureStore::new(FeatureParams::default());
        let mut det = Staleness::new(PerKind::from_fn(|_| StalenessParams::default()));
        let mut out = Vec::new();
        for t in 0..60 {
            st.update(&reg, power, t * 1000, 300.0, Quality::Good);
            st.update(&reg, load, t * 1000, 50.0, Quality::Good);
            det.tick(t * 1000, &st, &reg, &mut out);
        }
        for t in 60..95 {
            st.update(&reg, power, t * 1000, 300.0, Quality::Bad);
            st.update(&reg, load, t * 1000, 50.0, Quality::Good);
            det.tick(t * 1000, &st, &reg, &mut out);
        }
        assert!(!out.is_empty(), "35 s of bad readings seen");
        assert!(out.iter().all(|f| f.metrics == ["output_power_kw"]
            && f.technique == attack::DENIAL_OF_VIEW
            && f.reason().contains("only as bad readings")));
        // The first finding once 15 s (the minimum silence) passed without a good value.
        assert_eq!(out[0].ts, 75_000);
        out.clear();
        st.update(&reg, power, 95_000, 301.0, Quality::Good);
        det.tick(95_000, &st, &reg, &mut out);
        assert!(out.is_empty(), "a good reading ends it");
    }

    #[test]
    fn a_declared_death_is_denial_of_view_at_once() {
        let mut h = crate::detect::testkit::Harness::new();
        let mut det = Staleness::new(PerKind::from_fn(|_| StalenessParams::default()));
        h.feed_frame(&mut det, "chiller", &[("online", 1.0), ("flow_lps", 40.0)]);
        assert!(h.findings.is_empty());
        h.feed_frame(&mut det, "chiller", &[("online", 0.0)]);
        assert_eq!(h.findings.len(), 1);
        let f = &h.findings[0].1;
        assert_eq!(
            (f.severity, f.metrics.clone()),
            (Severity::High, vec!["online".to_owned()])
        );
        assert!(f.reason().contains("offline"));
    }

    #[test]
    fn on_arrival_a_declared_death_is_found_at_once() {
        let mut h = crate::detect::testkit::Harness::new();
        let mut d = Staleness::new(PerKind::from_fn(|_| StalenessParams::default()));
        assert!(h.arrive(&mut d, "ups", "online", 0, 1.0).is_empty());
        let got = h.arrive(&mut d, "ups", "online", 5_000, 0.0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].technique, attack::DENIAL_OF_VIEW);
    }
}
