//! What analysts taught: a command seen on the wire that they acknowledged as
//! `expected` (a BMS rewriting a setpoint, a maintenance laptop) becomes an exception
//! scoped to exactly that behaviour — this client, this function, these registers, this
//! device at this site — so the next identical command raises nothing, and anything
//! else (another client, another register, another device) still does.
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
const MAX_ADDRESSES: usize = 256;

/// One taught exception.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    /// Content-derived id (`ex-…`).
    pub id: String,
    /// Site.
    pub site: String,
    /// Device written to.
    pub device: String,
    /// The client (address) that wrote.
    pub client: String,
    /// Modbus function code.
    pub function: u8,
    /// Register or coil addresses written.
    pub addresses: Vec<u32>,
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

/// A write's particulars, read from a `protocol` alert's or finding's evidence.
fn write_of(evidence: &Value) -> Option<(&str, u8, u32)> {
    let client = evidence.get("client")?.as_str()?;
    let function = u8::try_from(evidence.get("function")?.as_u64()?).ok()?;
    let address = u32::try_from(evidence.get("address")?.as_u64()?).ok()?;
    Some((client, function, address))
}

impl Exception {
    /// The exception an `expected` acknowledgement of `alert` (its stored JSON) teaches;
    /// an error says why the alert cannot be taught (only commands on the wire can).
    pub fn from_alert(alert: &Value, by: &str, note: &str, at: &str) -> Result<Self, String> {
        let text = |k: &str| alert.get(k).and_then(Value::as_str).unwrap_or_default();
        let (client, function, address) = (text("detector") == "protocol")
            .then(|| write_of(alert.get("evidence")?))
            .flatten()
            .ok_or(
                "only a command seen on the wire (a protocol alert naming its client, function \
                 and register) can be taught as expected",
            )?;
        let (site, device) = (text("site"), text("device"));
        let id = format!(
            "ex-{:016x}",
            crate::correlate::fnv(&[
                site.as_bytes(),
                device.as_bytes(),
                client.as_bytes(),
                &[function],
                &address.to_le_bytes()
            ])
        );
        Ok(Self {
            id,
            site: site.to_owned(),
            device: device.to_owned(),
            client: client.to_owned(),
            function,
            addresses: vec![address],
            by: by.to_owned(),
            at: at.to_owned(),
            note: note.to_owned(),
            alert: text("id").to_owned(),
        })
    }

    /// Whether a finding on `site`/`device` is exactly the taught behaviour.
    pub fn covers(&self, site: &str, device: &str, f: &Finding) -> bool {
        f.detector == "protocol"
            && self.site == site
            && self.device == device
            && write_of(&f.evidence).is_some_and(|(client, function, address)| {
                client == self.client
                    && function == self.function
                    && self.addresses.contains(&address)
            })
    }

    fn check(&self) -> Result<(), String> {
        if self.id.is_empty() || self.site.is_empty() || self.device.is_empty() {
            return Err(format!(
                "exception {:?}: id, site and device are needed",
                self.id
            ));
        }
        if self.client.is_empty() || self.addresses.is_empty() {
            return Err(format!(
                "exception {}: a client and addresses are needed",
                self.id
            ));
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(format!(
                "exception {}: at most {MAX_ADDRESSES} addresses",
                self.id
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    exception: Vec<Exception>,
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
    use crate::model::{attack, Severity};

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
            reason: String::new(),
            evidence: serde_json::json!({"client": client, "function": function, "address": address, "values": [700]}),
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
                f.evidence
            );
        }
    }

    #[test]
    fn only_commands_can_be_taught() {
        assert!(Exception::from_alert(&alert_json("cusum"), "a", "", "t").is_err());
        let mut no_client = alert_json("protocol");
        no_client["evidence"] = serde_json::json!({"function": 43});
        assert!(Exception::from_alert(&no_client, "a", "", "t").is_err());
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
    }
}
