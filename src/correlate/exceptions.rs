//! What analysts taught. An alert acknowledged as `expected` becomes an exception scoped
//! to exactly the behaviour it showed, so the same thing raises nothing again and
//! anything else still does:
//! - a **command** seen on the wire (a BMS rewriting a setpoint, a maintenance laptop):
//!   this client, this function, these registers, this device at this site;
//! - a **metric's new level** (a setpoint changed on purpose, a new load): drift findings
//!   (`ewma_z`, `cusum`) on that one metric of that device while it stays near the level
//!   the alert saw — within half the step from the old level on either side. A further
//!   step, a return to the old level, another metric, and every detector that judges
//!   more than drift (limits, physics, protocol, …) still alert.
//!
//! Exceptions live in the store (with who, when and why; revocable), are applied live
//! through a shared set, and travel as TOML (`[[exception]]`) so a replay can use the
//! same ones (`replay --exceptions FILE`).

use crate::model::Finding;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, PoisonError, RwLock};

/// Exceptions kept at most; the next is refused (an analyst's list, not a data sink).
pub const MAX_EXCEPTIONS: usize = 10_000;
/// Registers one exception may cover.
pub const MAX_ADDRESSES: usize = 256;
/// The detectors whose findings a metric's new level explains: they judge one metric
/// against its own learned baseline and nothing else.
const DRIFT_DETECTORS: [&str; 2] = ["ewma_z", "cusum"];

/// One taught exception: exactly one of `write` and `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    /// Content-derived id (`ex-…`).
    pub id: String,
    /// Site.
    pub site: String,
    /// Device.
    pub device: String,
    /// A command on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Write>,
    /// A metric's new level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Who taught it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    #[serde(default)]
    pub note: String,
    /// The alert it was taught from.
    #[serde(default)]
    pub alert: String,
}

/// This client writing these registers with this function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Write {
    /// The client (address) that wrote.
    pub client: String,
    /// Modbus function code.
    pub function: u8,
    /// Register or coil addresses written.
    pub addresses: Vec<u32>,
}

/// This metric at a level within `low..=high`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// The metric.
    pub metric: String,
    /// Lowest level covered.
    pub low: f64,
    /// Highest level covered.
    pub high: f64,
}

/// A write's particulars, read from a `protocol` alert's or finding's evidence.
fn write_of(evidence: &Value) -> Option<(&str, u8, u32)> {
    let client = evidence.get("client")?.as_str()?;
    let function = u8::try_from(evidence.get("function")?.as_u64()?).ok()?;
    let address = u32::try_from(evidence.get("address")?.as_u64()?).ok()?;
    Some((client, function, address))
}

/// The level a drift finding saw, and the baseline it left: `ewma_z` says `value` and
/// `baseline_mean`, `cusum` its block mean and the reference at the drift's start.
fn level_of(evidence: &Value) -> Option<(f64, f64)> {
    let num = |k: &str| evidence.get(k)?.as_f64().filter(|v| v.is_finite());
    num("value")
        .zip(num("baseline_mean"))
        .or_else(|| num("block_mean").zip(num("reference_at_start")))
}

/// The single metric a finding or alert is about.
fn one_metric(metrics: &[String]) -> Option<&str> {
    match metrics {
        [m] => Some(m),
        _ => None,
    }
}

impl Exception {
    /// The exception for `client` writing `addresses` (the first names it) of a device
    /// with `function`.
    pub fn of_write(
        site: &str,
        device: &str,
        client: &str,
        function: u8,
        addresses: Vec<u32>,
        (by, note, at): (&str, &str, &str),
        alert: &str,
    ) -> Self {
        let first = addresses.first().copied().unwrap_or_default();
        let key = [client.as_bytes(), &[function], &first.to_le_bytes()].concat();
        Self {
            id: Self::id_of(site, device, &key),
            site: site.to_owned(),
            device: device.to_owned(),
            write: Some(Write {
                client: client.to_owned(),
                function,
                addresses,
            }),
            level: None,
            by: by.to_owned(),
            at: at.to_owned(),
            note: note.to_owned(),
            alert: alert.to_owned(),
        }
    }

    fn id_of(site: &str, device: &str, key: &[u8]) -> String {
        format!(
            "ex-{:016x}",
            crate::correlate::fnv(&[site.as_bytes(), device.as_bytes(), key])
        )
    }

    /// The exception an `expected` acknowledgement of `alert` (its stored JSON) teaches;
    /// an error says why the alert cannot be taught.
    pub fn from_alert(alert: &Value, by: &str, note: &str, at: &str) -> Result<Self, String> {
        let text = |k: &str| alert.get(k).and_then(Value::as_str).unwrap_or_default();
        let evidence = alert.get("evidence").unwrap_or(&Value::Null);
        let detector = text("detector");
        let (site, device) = (text("site"), text("device"));
        let taught = (by, note, at);
        if detector == "protocol" {
            let (client, function, address) = write_of(evidence).ok_or(
                "this protocol alert names no single write (client, function and register)",
            )?;
            return Ok(Self::of_write(
                site,
                device,
                client,
                function,
                vec![address],
                taught,
                text("id"),
            ));
        }
        if !DRIFT_DETECTORS.contains(&detector) {
            return Err(format!(
                "only a command seen on the wire (protocol) or a metric's new level ({}) can \
                 be taught as expected; {detector} judges more than that",
                DRIFT_DETECTORS.join(", ")
            ));
        }
        let metrics: Vec<String> = alert
            .get("metrics")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        let metric = one_metric(&metrics).ok_or("this drift names no single metric")?;
        let (level, old) = level_of(evidence).ok_or("this drift says no level")?;
        let half = (level - old).abs() / 2.0;
        if half <= 0.0 || !half.is_finite() {
            return Err("this drift left no level to learn".into());
        }
        let (low, high) = (level - half, level + half);
        let key = [metric.as_bytes(), &low.to_le_bytes(), &high.to_le_bytes()].concat();
        Ok(Self {
            id: Self::id_of(site, device, &key),
            site: site.to_owned(),
            device: device.to_owned(),
            write: None,
            level: Some(Level {
                metric: metric.to_owned(),
                low,
                high,
            }),
            by: by.to_owned(),
            at: at.to_owned(),
            note: note.to_owned(),
            alert: text("id").to_owned(),
        })
    }

    /// Whether a finding on `site`/`device` is exactly the taught behaviour.
    pub fn covers(&self, site: &str, device: &str, f: &Finding) -> bool {
        if self.site != site || self.device != device {
            return false;
        }
        if let Some(w) = &self.write {
            return f.detector == "protocol"
                && write_of(&f.evidence()).is_some_and(|(client, function, address)| {
                    client == w.client && function == w.function && w.addresses.contains(&address)
                });
        }
        self.level.as_ref().is_some_and(|l| {
            DRIFT_DETECTORS.contains(&f.detector)
                && one_metric(&f.metrics) == Some(l.metric.as_str())
                && level_of(&f.evidence()).is_some_and(|(v, _)| (l.low..=l.high).contains(&v))
        })
    }

    fn check(&self) -> Result<(), String> {
        let id = &self.id;
        if id.is_empty() || self.site.is_empty() || self.device.is_empty() {
            return Err(format!("exception {id:?}: id, site and device are needed"));
        }
        match (&self.write, &self.level) {
            (Some(w), None) => {
                if w.client.is_empty() || w.addresses.is_empty() {
                    return Err(format!("exception {id}: a client and addresses are needed"));
                }
                if w.addresses.len() > MAX_ADDRESSES {
                    return Err(format!("exception {id}: at most {MAX_ADDRESSES} addresses"));
                }
            }
            (None, Some(l)) => {
                if l.metric.is_empty()
                    || !(l.low.is_finite() && l.high.is_finite() && l.low <= l.high)
                {
                    return Err(format!(
                        "exception {id}: a metric and finite low <= high are needed"
                    ));
                }
            }
            _ => return Err(format!("exception {id}: exactly one of write or level")),
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    exception: Vec<Exception>,
    /// A protocol baseline's other parts (`detect::baseline`): its writes are
    /// exceptions too, so `--exceptions` reads a baseline and uses those.
    #[serde(default, skip_serializing, rename = "learned_from")]
    _learned_from: String,
    #[serde(default, skip_serializing, rename = "talker")]
    _talker: Vec<toml::Table>,
}

/// The exceptions in force, shared by whoever teaches (the HTTP API) and whoever applies
/// them (the correlator). Cloning shares.
#[derive(Clone, Debug, Default)]
pub struct Exceptions(Arc<RwLock<Vec<Exception>>>);

impl Exceptions {
    /// A set holding `list`.
    pub fn new(list: Vec<Exception>) -> Self {
        Self(Arc::new(RwLock::new(list)))
    }

    /// Parses an exceptions file (`[[exception]]` tables); `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let f: File = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        if f.exception.len() > MAX_EXCEPTIONS {
            return Err(format!("{origin}: more than {MAX_EXCEPTIONS} exceptions"));
        }
        for e in &f.exception {
            e.check().map_err(|m| format!("{origin}: {m}"))?;
        }
        Ok(Self::new(f.exception))
    }

    /// The set as an exceptions file.
    pub fn to_toml(list: &[Exception]) -> String {
        toml::to_string(&File {
            exception: list.to_vec(),
            _learned_from: String::new(),
            _talker: Vec::new(),
        })
        .unwrap_or_default()
    }

    /// Adds one (replacing one with the same id); false when the set is full.
    pub fn add(&self, e: Exception) -> bool {
        let mut v = self.0.write().unwrap_or_else(PoisonError::into_inner);
        v.retain(|x| x.id != e.id);
        if v.len() >= MAX_EXCEPTIONS {
            return false;
        }
        v.push(e);
        true
    }

    /// Removes one; whether it was there.
    pub fn revoke(&self, id: &str) -> bool {
        let mut v = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let before = v.len();
        v.retain(|x| x.id != id);
        v.len() != before
    }

    /// The exceptions in force.
    pub fn list(&self) -> Vec<Exception> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a finding on `site`/`device` is taught behaviour.
    pub fn covers(&self, site: &str, device: &str, f: &Finding) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|e| e.covers(site, device, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{attack, Severity, Words};
    use serde_json::json;

    fn write(client: &str, function: u8, address: u32) -> Finding {
        Finding {
            ts: 0,
            device: 0,
            metrics: Vec::new(),
            detector: "protocol",
            score: 2.0,
            threshold: 1.0,
            severity: Severity::High,
            technique: attack::MANIPULATION_OF_CONTROL,
            words: Words::made(
                String::new(),
                serde_json::json!({"client": client, "function": function, "address": address, "values": [700]}),
            ),
        }
    }

    fn alert_json(detector: &str) -> Value {
        serde_json::json!({
            "id": "al-1", "site": "ams1", "device": "chiller-2", "detector": detector,
            "evidence": {"client": "10.20.0.5", "function": 6, "address": 1201, "values": [700]}
        })
    }

    #[test]
    fn an_exception_covers_exactly_the_taught_write() {
        let e =
            Exception::from_alert(&alert_json("protocol"), "alice", "BMS rewrite", "t").unwrap();
        let set = Exceptions::new(vec![e]);
        assert!(set.covers("ams1", "chiller-2", &write("10.20.0.5", 6, 1201)));
        for (site, device, f) in [
            ("ams1", "chiller-2", write("10.66.0.99", 6, 1201)), // another client
            ("ams1", "chiller-2", write("10.20.0.5", 6, 1202)),  // another register
            ("ams1", "chiller-2", write("10.20.0.5", 16, 1201)), // another function
            ("ams1", "chiller-1", write("10.20.0.5", 6, 1201)),  // another device
            ("fra2", "chiller-2", write("10.20.0.5", 6, 1201)),  // another site
        ] {
            assert!(
                !set.covers(site, device, &f),
                "{site} {device} {:?}",
                f.evidence()
            );
        }
    }

    #[test]
    fn only_a_single_write_or_a_single_metrics_level_can_be_taught() {
        for detector in ["physics", "limits", "iforest", "flatline"] {
            assert!(Exception::from_alert(&alert_json(detector), "a", "", "t").is_err());
        }
        let mut no_client = alert_json("protocol");
        no_client["evidence"] = serde_json::json!({"function": 43});
        assert!(Exception::from_alert(&no_client, "a", "", "t").is_err());
        let mut two_metrics = drift_json("ewma_z", 12.0, 9.0);
        two_metrics["metrics"] = serde_json::json!(["a", "b"]);
        assert!(Exception::from_alert(&two_metrics, "a", "", "t").is_err());
        assert!(Exception::from_alert(&drift_json("ewma_z", 9.0, 9.0), "a", "", "t").is_err());
    }

    fn drift_json(detector: &str, value: f64, baseline: f64) -> Value {
        serde_json::json!({
            "id": "al-2", "site": "ams1", "device": "chiller-2", "detector": detector,
            "metrics": ["supply_temp_c"],
            "evidence": {"value": value, "baseline_mean": baseline}
        })
    }

    fn drift(detector: &'static str, metric: &str, evidence: Value) -> Finding {
        Finding {
            detector,
            metrics: vec![metric.to_owned()],
            words: Words::made(String::new(), evidence),
            ..write("x", 6, 0)
        }
    }

    #[test]
    fn a_new_level_covers_drift_near_it_and_nothing_else() {
        // Supply temperature moved from 9 to 12 °C on purpose.
        let e = Exception::from_alert(&drift_json("ewma_z", 12.0, 9.0), "bob", "", "t").unwrap();
        let l = e.level.clone().unwrap();
        assert_eq!(
            (l.metric.as_str(), l.low, l.high),
            ("supply_temp_c", 10.5, 13.5)
        );
        let set = Exceptions::new(vec![e]);
        let ewma = |v: f64| json!({"value": v, "baseline_mean": 9.0});
        let cusum = |v: f64| json!({"block_mean": v, "reference_at_start": 9.0});
        assert!(set.covers(
            "ams1",
            "chiller-2",
            &drift("ewma_z", "supply_temp_c", ewma(12.4))
        ));
        assert!(set.covers(
            "ams1",
            "chiller-2",
            &drift("cusum", "supply_temp_c", cusum(11.0))
        ));
        for (device, f) in [
            ("chiller-2", drift("ewma_z", "supply_temp_c", ewma(15.0))), // a further step
            ("chiller-2", drift("ewma_z", "supply_temp_c", ewma(9.2))),  // back to the old
            ("chiller-2", drift("ewma_z", "return_temp_c", ewma(12.0))), // another metric
            ("chiller-2", drift("limits", "supply_temp_c", ewma(12.0))), // another detector
            ("chiller-1", drift("ewma_z", "supply_temp_c", ewma(12.0))), // another device
        ] {
            assert!(!set.covers("ams1", device, &f), "{device} {f:?}");
        }
        // It travels as TOML like a write.
        let text = Exceptions::to_toml(&set.list());
        assert_eq!(
            Exceptions::from_toml(&text, "x").unwrap().list(),
            set.list()
        );
    }

    proptest::proptest! {
        #[test]
        fn files_never_panic(junk in ".{0,300}", at in 0usize..400, byte in proptest::prelude::any::<u8>()) {
            let _ = Exceptions::from_toml(&junk, "p.toml");
            let e = Exception::from_alert(&alert_json("protocol"), "a", "n", "t").unwrap();
            let mut bytes = Exceptions::to_toml(&[e]).into_bytes();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(t) = std::str::from_utf8(&bytes) {
                let _ = Exceptions::from_toml(t, "p.toml");
            }
        }
    }

    #[test]
    fn exceptions_travel_as_toml_and_can_be_revoked() {
        let e = Exception::from_alert(&alert_json("protocol"), "alice", "why", "t").unwrap();
        let text = Exceptions::to_toml(std::slice::from_ref(&e));
        assert!(text.contains("[[exception]]"), "{text}");
        let back = Exceptions::from_toml(&text, "x.toml").unwrap();
        assert_eq!(back.list(), std::slice::from_ref(&e));
        assert!(back.revoke(&e.id) && !back.revoke(&e.id));
        assert!(back.list().is_empty());
        let err = Exceptions::from_toml("[[exception]]\nid = \"x\"\n", "bad.toml").unwrap_err();
        assert!(err.starts_with("bad.toml"), "{err}");
        let both = text.replace(
            "[exception.write]",
            "[exception.level]\nmetric = \"m\"\nlow = 1.0\nhigh = 2.0\n\n[exception.write]",
        );
        let err = Exceptions::from_toml(&both, "both.toml").unwrap_err();
        assert!(err.contains("exactly one"), "{err}\n{both}");
    }
}
