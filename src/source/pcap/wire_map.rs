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
    pub(super) site: crate::model::Name,
    pub(super) name: crate::model::Name,
    pub(super) kind: crate::model::Name,
    pub(super) map: Arc<RegisterMap>,
}

/// A BACnet/IP device on the wire.
#[derive(Debug)]
pub(super) struct BacnetOnWire {
    pub(super) site: crate::model::Name,
    pub(super) name: crate::model::Name,
    pub(super) kind: crate::model::Name,
    pub(super) map: Arc<crate::protocol::bacnet_map::BacnetMap>,
}

/// What a capture is read with: Modbus ports and the devices behind server addresses,
/// BACnet/IP ports and devices.
#[derive(Debug, Default)]
pub struct WireMap {
    pub(super) ports: FxHashSet<u16>,
    pub(super) devices: FxHashMap<(SocketAddr, u8), Arc<WireDevice>>,
    pub(super) bacnet_ports: FxHashSet<u16>,
    pub(super) bacnet: FxHashMap<SocketAddr, BacnetOnWire>,
    pub(super) site: String,
    pub(super) response_timeout: i64,
    pub(super) unmatched: Vec<String>,
}

impl WireMap {
    /// Port 502 and `[pcap] ports`, and the devices of `[[modbus.devices]]` (already
    /// resolved with their register maps). Packets carry addresses, not names: a device
    /// given by host name (other than `localhost`) cannot be recognised and is listed in
    /// [`WireMap::unmatched`].
    ///
    /// BACnet/IP: UDP port 47808, `[pcap] bacnet_ports` and the devices of
    /// `[[bacnet.devices]]` by address.
    pub fn new(
        cfg: &PcapConfig,
        site: &str,
        plans: &[DevicePlan],
        bacnet: &[crate::source::bacnet::BacnetPlan],
    ) -> Self {
        let mut ports: FxHashSet<u16> = cfg.ports.iter().copied().collect();
        ports.insert(502);
        let mut devices = FxHashMap::default();
        let mut unmatched = Vec::new();
        let mut bacnet_ports: FxHashSet<u16> = cfg.bacnet_ports.iter().copied().collect();
        bacnet_ports.insert(crate::protocol::bacnet::PORT);
        let mut bacnet_devices = FxHashMap::default();
        for p in bacnet {
            let addrs = addresses(&p.address);
            if addrs.is_empty() {
                unmatched.push(format!("{} ({})", p.name, p.address));
            }
            for a in addrs {
                bacnet_ports.insert(a.port());
                bacnet_devices.insert(
                    a,
                    BacnetOnWire {
                        site: p.site.clone(),
                        name: p.name.clone(),
                        kind: p.map.kind.clone(),
                        map: p.map.clone(),
                    },
                );
            }
        }
        for p in plans {
            let addrs = addresses(&p.address);
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
            bacnet_ports,
            bacnet: bacnet_devices,
            site: site.to_owned(),
            response_timeout: cfg.response_timeout.max(1),
            unmatched,
        }
    }

    /// The object maps of the BACnet devices recognised by address, by (site, name).
    pub fn bacnet_maps(&self) -> crate::protocol::bacnet_map::BacnetMaps {
        self.bacnet
            .values()
            .map(|d| ((d.site.to_string(), d.name.to_string()), d.map.clone()))
            .collect()
    }

    /// The UDP ports read as BACnet/IP, sorted.
    pub fn bacnet_ports(&self) -> Vec<u16> {
        sorted(&self.bacnet_ports)
    }

    /// The register map of a configured device, by site and name.
    pub fn map_of(&self, site: &str, name: &str) -> Option<Arc<RegisterMap>> {
        self.devices
            .values()
            .find(|d| &*d.site == site && &*d.name == name)
            .map(|d| d.map.clone())
    }

    /// The register maps of the devices recognised by address, by (site, name).
    pub fn device_maps(&self) -> DeviceMaps {
        self.devices
            .values()
            .map(|d| ((d.site.to_string(), d.name.to_string()), d.map.clone()))
            .collect()
    }

    /// The TCP ports read as Modbus, sorted.
    pub fn ports(&self) -> Vec<u16> {
        sorted(&self.ports)
    }

    /// Devices whose address is a host name, which packets cannot be matched to.
    pub fn unmatched(&self) -> &[String] {
        &self.unmatched
    }
}

/// The socket addresses a configured `host:port` stands for on the wire (`localhost`
/// both loopbacks; another host name none: packets carry addresses).
fn addresses(address: &str) -> Vec<SocketAddr> {
    match address.parse::<SocketAddr>() {
        Ok(a) => vec![a],
        Err(_) => match address.rsplit_once(':') {
            Some(("localhost", port)) => port.parse::<u16>().map_or(Vec::new(), |port| {
                vec![
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                ]
            }),
            _ => Vec::new(),
        },
    }
}

fn sorted(ports: &FxHashSet<u16>) -> Vec<u16> {
    let mut p: Vec<u16> = ports.iter().copied().collect();
    p.sort_unstable();
    p
}
