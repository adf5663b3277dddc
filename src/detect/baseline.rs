//! A protocol baseline: what the protocol detector learned from a clean capture, as a
//! file (`wattchdog learn CLEAN -o baseline.toml`), so a responder can learn last week's
//! capture and judge today's (`replay|eval --baseline baseline.toml`).
//!
//! Its writes are `[[exception]]` tables, the format analysts' `expected`
//! acknowledgements export to (so `--exceptions` reads a baseline's writes too); its
//! `[[talker]]` tables say which client asked which device for what, how busy its
//! busiest minute was, and whether it polls.

use crate::correlate::exceptions::{Exception, MAX_EXCEPTIONS};
use serde::{Deserialize, Serialize};

/// Talkers a baseline may hold.
pub const MAX_TALKERS: usize = 100_000;
/// (function, address) ranges one talker may hold.
pub const MAX_RANGES: usize = 65_536;

/// A protocol baseline file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// What it was learned from (capture files and event-time span).
    #[serde(default)]
    pub learned_from: String,
    /// Every write seen: client, device, function and registers.
    #[serde(default)]
    pub exception: Vec<Exception>,
    /// Every client's requests to every device.
    #[serde(default)]
    pub talker: Vec<Talker>,
}

/// One client's requests to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Talker {
    /// Site.
    pub site: String,
    /// Device (a configured name, or `server:port/unitN`).
    pub device: String,
    /// Client address.
    pub client: String,
    /// It asked for the same read again: a polling master.
    #[serde(default)]
    pub polls: bool,
    /// Its busiest minute, in requests (to every device).
    #[serde(default)]
    pub busiest_minute: u64,
    /// `[function, address]` of every request it made to the device.
    #[serde(default)]
    pub ranges: Vec<[u16; 2]>,
}

impl Baseline {
    /// Parses a baseline file; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let b: Self = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        if b.exception.len() > MAX_EXCEPTIONS || b.talker.len() > MAX_TALKERS {
            return Err(format!(
                "{origin}: more than {MAX_EXCEPTIONS} writes or {MAX_TALKERS} talkers"
            ));
        }
        if let Some(t) = b.talker.iter().find(|t| t.ranges.len() > MAX_RANGES) {
            return Err(format!(
                "{origin}: talker {} on {} has more than {MAX_RANGES} ranges",
                t.client, t.device
            ));
        }
        if let Some(x) = b.exception.iter().find(|x| x.write.is_none()) {
            return Err(format!("{origin}: exception {} is not a write", x.id));
        }
        // The exceptions' own rules (ids, scopes) as `--exceptions` checks them.
        crate::correlate::exceptions::Exceptions::from_toml(
            &crate::correlate::exceptions::Exceptions::to_toml(&b.exception),
            origin,
        )?;
        Ok(b)
    }

    /// The file.
    pub fn to_toml(&self) -> String {
        let head = format!(
            "# wattchdog protocol baseline: what the protocol detector learned from\n# {}\n\n",
            self.learned_from
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
        );
        head + &toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_reads_back_and_refuses_what_is_not_one() {
        let b = Baseline {
            learned_from: "clean.pcap".into(),
            exception: Vec::new(),
            talker: vec![Talker {
                site: "ams1".into(),
                device: "chiller-1".into(),
                client: "10.20.0.5".into(),
                polls: true,
                busiest_minute: 120,
                ranges: vec![[3, 1000], [4, 2000]],
            }],
        };
        let text = b.to_toml();
        assert_eq!(Baseline::from_toml(&text, "b.toml").unwrap(), b);
        let err = Baseline::from_toml("[[talker]]\nsite = 1\n", "b.toml").unwrap_err();
        assert!(err.starts_with("b.toml"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn baseline_files_never_panic(junk in ".{0,400}") {
            let _ = Baseline::from_toml(&junk, "p.toml");
        }
    }
}
