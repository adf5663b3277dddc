//! `wattchdog check-config`: validates a config file (resolving its devices' register
//! maps and its brokers' topic maps), a wide-CSV mapping or a register map.

use crate::app::cli::CheckConfigArgs;
use crate::app::Summary;
use crate::model::DeviceKind;
use crate::protocol::registers::RegisterMap;
use crate::source::csv::WideMapping;
use crate::Config;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// One read request of a poll cycle (fields in alphabetical order, as the JSON has
/// always had them).
#[derive(Debug, Serialize)]
pub struct PollRequest {
    /// Registers or bits.
    pub count: u16,
    /// Modbus function code.
    pub function: u8,
    /// First address.
    pub start: u16,
}

/// A Modbus device as the poller will read it.
#[derive(Debug, Serialize)]
pub struct PolledDevice {
    /// Address (`host:port`).
    pub address: String,
    /// Device name.
    pub name: String,
    /// Register-map profile.
    pub profile: String,
    /// Read requests per poll cycle.
    pub requests: Vec<PollRequest>,
    /// Site.
    pub site: String,
    /// Unit id.
    pub unit: u8,
}

/// The file is valid; what it sets up. JSON (`--json`): the Modbus devices' poll plans.
#[derive(Debug, Serialize)]
pub struct CheckSummary {
    /// The file checked.
    #[serde(skip)]
    pub file: PathBuf,
    /// What it configures, one phrase each.
    #[serde(skip)]
    pub details: Vec<String>,
    /// The Modbus devices and their read requests.
    pub modbus: Vec<PolledDevice>,
    /// The wide-CSV mapping, with its defaults filled in (`--mapping`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<WideMapping>,
}

impl fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ok", self.file.display())?;
        if !self.details.is_empty() {
            write!(f, ", {}", self.details.join("; "))?;
        }
        writeln!(f)
    }
}

impl Summary for CheckSummary {
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// `wattchdog check-config`.
pub fn run(a: CheckConfigArgs) -> anyhow::Result<CheckSummary> {
    let mut summary = CheckSummary {
        file: a.file.clone(),
        details: Vec::new(),
        modbus: Vec::new(),
        mapping: None,
    };
    if a.mapping {
        let m = WideMapping::load(&a.file)?;
        summary.details.push(m.describe());
        summary.mapping = Some(m);
    } else if a.register_map {
        let m = crate::tomlfile::load(&a.file, RegisterMap::from_toml_str)?;
        summary.details.push(format!(
            "profile {} ({}), {} registers",
            m.profile,
            m.kind,
            m.registers.len()
        ));
    } else if a.bacnet_map {
        let m = crate::tomlfile::load(
            &a.file,
            crate::protocol::bacnet_map::BacnetMap::from_toml_str,
        )?;
        let writable: Vec<String> = m
            .objects
            .iter()
            .filter(|o| o.writable)
            .map(|o| format!("{} ({})", o.object, o.metric))
            .collect();
        summary.details.push(format!(
            "profile {} ({}), {} objects ({} polled), writable: {}",
            m.profile,
            m.kind,
            m.objects.len(),
            m.objects.iter().filter(|o| o.poll).count(),
            if writable.is_empty() {
                "none".to_owned()
            } else {
                writable.join(", ")
            }
        ));
    } else if a.object_map {
        let m = crate::tomlfile::load(&a.file, crate::protocol::mib::ObjectMap::from_toml_str)?;
        summary.details.push(format!(
            "profile {} ({}), {} objects ({} walked columns), {} trap rules",
            m.profile,
            m.kind,
            m.objects.len(),
            m.columns().count(),
            m.traps.len()
        ));
    } else {
        check_config(&a.file, &mut summary)?;
    }
    Ok(summary)
}

fn check_config(file: &Path, summary: &mut CheckSummary) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let origin = file.display().to_string();
    let devices = cfg.modbus.resolve(base, &origin)?;
    let brokers = cfg.mqtt.resolve(base, &origin)?;
    let agents = cfg.snmp.resolve(base, &origin)?;
    let controllers = cfg.bacnet.resolve(base, &origin)?;
    summary.modbus = devices
        .iter()
        .map(|d| PolledDevice {
            address: d.address.clone(),
            name: d.name.to_string(),
            profile: d.map.profile.clone(),
            requests: d
                .requests
                .iter()
                .map(|r| PollRequest {
                    count: r.count,
                    function: r.function(),
                    start: r.start,
                })
                .collect(),
            site: d.site.to_string(),
            unit: d.unit,
        })
        .collect();
    let parts = &mut summary.details;
    let forests: Vec<String> = DeviceKind::ALL
        .iter()
        .filter_map(|&k| {
            cfg.models
                .get(k)
                .as_ref()
                .map(|m| format!("{k} ({})", m.origin))
        })
        .collect();
    if !forests.is_empty() {
        parts.push(format!("iforest models: {}", forests.join(", ")));
    }
    if !devices.is_empty() {
        let requests: usize = devices.iter().map(|d| d.requests.len()).sum();
        parts.push(format!(
            "{} Modbus devices, {} read requests per poll cycle",
            devices.len(),
            requests
        ));
        let ports: Vec<String> = cfg.wire.ports().iter().map(u16::to_string).collect();
        parts.push(format!(
            "packet captures: Modbus on TCP ports {}",
            ports.join(", ")
        ));
        for d in cfg.wire.unmatched() {
            eprintln!("warning: {d}: a host name, which packet captures cannot be matched to; give its IP address");
        }
    }
    for b in &brokers {
        parts.push(format!(
            "MQTT {} subscribing to {}",
            b.cfg.url,
            b.map.filters().join(" ")
        ));
    }
    if !agents.is_empty() {
        let gets: usize = agents.iter().map(|d| d.gets.len()).sum();
        let walks: usize = agents.iter().map(|d| d.map.columns().count()).sum();
        parts.push(format!(
            "{} SNMP devices, {gets} GETs and {walks} table columns walked per poll cycle",
            agents.len()
        ));
    }
    if let Some(l) = &cfg.snmp.trap_listen {
        parts.push(format!("SNMP traps on {l}"));
    }
    if !controllers.is_empty() {
        let objects: usize = controllers
            .iter()
            .map(|d| d.map.objects.iter().filter(|o| o.poll).count())
            .sum();
        parts.push(format!(
            "{} BACnet/IP devices, {objects} objects read per poll cycle{}",
            controllers.len(),
            if cfg.bacnet.cov {
                " and subscribed to (COV)"
            } else {
                ""
            }
        ));
        let ports: Vec<String> = cfg.wire.bacnet_ports().iter().map(u16::to_string).collect();
        parts.push(format!(
            "packet captures: BACnet/IP on UDP ports {}",
            ports.join(", ")
        ));
    }
    for sink in &cfg.soc.syslog {
        // What `run` reads at start: a TLS sink's authority file.
        let mut resolved = sink.clone();
        resolved.ca = sink.ca.as_ref().map(|ca| base.join(ca));
        crate::sink::syslog::tls_connector(&resolved)
            .map_err(|e| anyhow::anyhow!("{origin}: sinks.syslog {}: {e}", sink.name))?;
        parts.push(format!(
            "syslog {} to {} ({}, {})",
            sink.name,
            sink.address,
            format!("{:?}", sink.transport).to_lowercase(),
            format!("{:?}", sink.payload).to_lowercase()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_sinks_are_listed_and_their_tls_authority_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        let check = |ca: &str| {
            std::fs::write(
                &file,
                format!("[store]\npath = \"s.db\"\n[[sinks.syslog]]\nname = \"siem\"\naddress = \"siem.example:6514\"\ntransport = \"tls\"\nca = \"{ca}\"\n"),
            )
            .unwrap();
            run(CheckConfigArgs {
                file: file.clone(),
                mapping: false,
                register_map: false,
                object_map: false,
                bacnet_map: false,
                json: false,
            })
        };
        let err = check("missing.pem").unwrap_err().to_string();
        assert!(
            err.contains("sinks.syslog siem") && err.contains("missing.pem"),
            "{err}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["siem.example".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let text = check("ca.pem").unwrap().to_string();
        assert!(
            text.contains("syslog siem to siem.example:6514 (tls, cef)"),
            "{text}"
        );
    }

    #[test]
    fn a_config_with_a_device_says_what_it_polls_for_people_and_for_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "[modbus]\nsite = \"s\"\n[[modbus.devices]]\nname = \"ups-1\"\naddress = \"10.0.0.5:502\"\nunit = 3\nprofile = \"ups-generic\"\n",
        )
        .unwrap();
        let s = run(CheckConfigArgs {
            file: file.clone(),
            mapping: false,
            register_map: false,
            object_map: false,
            bacnet_map: false,
            json: false,
        })
        .unwrap();
        let text = s.to_string();
        assert!(
            text.starts_with(&format!("{}: ok, ", file.display())),
            "{text}"
        );
        assert!(text.contains("; 1 Modbus devices, "), "{text}");
        assert!(
            text.contains("packet captures: Modbus on TCP ports 502"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&s.json().unwrap()).unwrap();
        let d = &json["modbus"][0];
        assert_eq!(
            (d["name"].as_str(), d["unit"].as_u64()),
            (Some("ups-1"), Some(3))
        );
        assert!(!d["requests"].as_array().unwrap().is_empty());
        assert_eq!(s.exit_code(), 0);
    }
}
