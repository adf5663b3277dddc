//! The link layer: timestamps in each interface's units, and the IP packet inside each
//! frame (Ethernet with VLAN tags, Linux cooked v1/v2, BSD loopback, raw IP).

use crate::model::Ts;
use etherparse::{EtherType, LaxSlicedPacket};
use pcap_parser::Linktype;

#[derive(Clone, Copy)]
pub(super) struct Link {
    pub(super) linktype: Linktype,
    /// Timestamp units per second.
    pub(super) resolution: u64,
    /// Seconds added to every timestamp (pcapng `if_tsoffset`).
    pub(super) offset: i64,
}

/// A packet's time in epoch milliseconds, if it is a time wattchdog can handle.
pub(super) fn to_ms(raw: u64, link: Link) -> Option<Ts> {
    let ms = u128::from(raw) * 1000 / u128::from(link.resolution.max(1));
    let ts = i64::try_from(ms)
        .ok()?
        .checked_add(link.offset.checked_mul(1000)?)?;
    crate::time::epoch_to_ms(ts as f64).filter(|t| *t >= 0)
}

/// The IP and TCP layers of a packet, loosely (a snaplen-cut packet still shows its
/// headers).
pub(super) fn slice(linktype: Linktype, data: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    match linktype {
        Linktype::ETHERNET => LaxSlicedPacket::from_ethernet(data).ok(),
        Linktype::LINUX_SLL if data.len() >= 16 => Some(LaxSlicedPacket::from_ether_type(
            EtherType(u16::from_be_bytes([data[14], data[15]])),
            &data[16..],
        )),
        Linktype::LINUX_SLL2 if data.len() >= 20 => Some(LaxSlicedPacket::from_ether_type(
            EtherType(u16::from_be_bytes([data[0], data[1]])),
            &data[20..],
        )),
        Linktype::NULL | Linktype::LOOP if data.len() >= 4 => {
            LaxSlicedPacket::from_ip(&data[4..]).ok()
        }
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => LaxSlicedPacket::from_ip(data).ok(),
        _ => None,
    }
}
