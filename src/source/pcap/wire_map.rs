//! Which TCP ports are Modbus and which configured device sits behind a server address
//! and unit id: what a capture is read with.

use super::PcapConfig;
use crate::protocol::registers::{DeviceMaps, RegisterMap};
use crate::source::modbus::DevicePlan;
use rustc_hash::{FxHashMap, FxHashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// A device on the wire: where its register map says what its registers mean.
#[derive(Debug)]
pub(super) struct WireDevice {
    pub(super) site: String,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) map: Arc<RegisterMap>,
}

/// What a capture is read with: Modbus ports and the devices behind server addresses.
#[derive(Debug, Default)]
pub struct WireMap {
    pub(super) ports: FxHashSet<u16>,
    pub(super) devices: FxHashMap<(SocketAddr, u8), Arc<WireDevice>>,
    pub(super) site: String,
    pub(super) response_timeout: i64,
    pub(super) unmatched: Vec<String>,
}

impl WireMap {
    /// Port 502 and `[pcap] ports`, and the devices of `[[modbus.devices]]` (already
    /// resolved with their register maps). Packets carry addresses, not names: a device
    /// given by host name (other than `localhost`) cannot be recognised and is listed in
    /// [`WireMap::unmatched`].
    pub fn new(cfg: &PcapConfig, site: &str, plans: &[DevicePlan]) -> Self {
        let mut ports: FxHashSet<u16> = cfg.ports.iter().copied().collect();
        ports.insert(502);
        let mut devices = FxHashMap::default();
        let mut unmatched = Vec::new();
        for p in plans {
            let addrs: Vec<SocketAddr> = match p.address.parse::<SocketAddr>() {
                Ok(a) => vec![a],
                Err(_) => match p.address.rsplit_once(':') {
                    Some(("localhost", port)) => port.parse::<u16>().map_or(Vec::new(), |port| {
                        vec![
                            SocketAddr::from(([127, 0, 0, 1], port)),
                            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                        ]
                    }),
                    _ => Vec::new(),
                },
            };
            if addrs.is_empty() {
                unmatched.push(format!("{} ({})", p.name, p.address));
            }
            let dev = Arc::new(WireDevice {
                site: p.site.clone(),
                name: p.name.clone(),
                kind: p.map.kind.clone(),
                map: p.map.clone(),
            });
            for a in addrs {
                ports.insert(a.port());
                devices.insert((a, p.unit), dev.clone());
            }
        }
        Self {
            ports,
            devices,
            site: site.to_owned(),
            response_timeout: cfg.response_timeout.max(1),
            unmatched,
        }
    }

    /// The register map of a configured device, by site and name.
    pub fn map_of(&self, site: &str, name: &str) -> Option<Arc<RegisterMap>> {
        self.devices
            .values()
            .find(|d| d.site == site && d.name == name)
            .map(|d| d.map.clone())
    }

    /// The register maps of the devices recognised by address, by (site, name).
    pub fn device_maps(&self) -> DeviceMaps {
        self.devices
            .values()
            .map(|d| ((d.site.clone(), d.name.clone()), d.map.clone()))
            .collect()
    }

    /// The TCP ports read as Modbus, sorted.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.ports.iter().copied().collect();
        p.sort_unstable();
        p
    }

    /// Devices whose address is a host name, which packets cannot be matched to.
    pub fn unmatched(&self) -> &[String] {
        &self.unmatched
    }
}
