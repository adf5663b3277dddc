//! BACnet/IP datagrams in a packet capture: the requests that change something become
//! [`Command`]s for the protocol detector — each write of a WriteProperty or
//! WritePropertyMultiple (object, property, value), and any other confirmed service
//! that is not a read or a subscription (DeviceCommunicationControl,
//! ReinitializeDevice, object and file services). Reads are not turned into readings
//! (the collector reads BACnet live; a capture's answers are not paired).

use super::exchange::Emitter;
use crate::model::event::Event;
use crate::model::{Command, Ts, WireProtocol};
use crate::protocol::bacnet::{self, confirmed, Apdu, Value};
use crate::source::BadReason;
use std::net::SocketAddr;

/// Services that only read or subscribe.
fn reads(service: u8) -> bool {
    matches!(
        service,
        confirmed::READ_PROPERTY
            | confirmed::READ_PROPERTY_MULTIPLE
            | confirmed::SUBSCRIBE_COV
            | confirmed::COV_NOTIFICATION
            | 26 // ReadRange
            | 28 // SubscribeCOVProperty
            | 0 // AcknowledgeAlarm
            | 2 // ConfirmedEventNotification
            | 29 // GetEventInformation
    )
}

/// One UDP payload from `src` to `dst` (packet `n`, capture time `now`).
pub(super) fn datagram(
    em: &mut Emitter,
    n: u64,
    now: Ts,
    (src, dst): (SocketAddr, SocketAddr),
    payload: &[u8],
) {
    if let Some(w) = &mut em.stats.wire {
        w.bacnet_datagrams += 1;
    }
    let d = match bacnet::decode(payload) {
        Ok(d) => d,
        Err(e) => {
            em.stats
                .bad_line(n, BadReason::BadBacnet, format!("{src} → {dst}: {e}"));
            return;
        }
    };
    let Some(Apdu::Confirmed {
        service,
        body,
        segmented,
        ..
    }) = d.apdu
    else {
        return;
    };
    if reads(service) {
        return;
    }
    // A request a BBMD relayed names its sender in the BVLC header.
    let client = d.forwarded_from.map_or_else(
        || src.ip().to_string(),
        |(ip, _)| std::net::Ipv4Addr::from(ip).to_string(),
    );
    let (site, device) = match em.map.bacnet.get(&dst) {
        Some(w) => (w.site.clone(), w.name.clone()),
        None => (em.map.site.clone(), format!("{dst}")),
    };
    let command = |address: u32, property: Option<u32>, value: Option<f64>| Command {
        ts: now,
        site: site.clone(),
        device: device.clone(),
        client: client.clone(),
        function: service,
        address,
        values: Vec::new(),
        protocol: WireProtocol::Bacnet,
        property,
        value,
    };
    let mut out = Vec::new();
    match service {
        confirmed::WRITE_PROPERTY | confirmed::WRITE_PROPERTY_MULTIPLE if !segmented => {
            match bacnet::decode_writes(service, body) {
                Ok(writes) => {
                    for w in writes {
                        let value = w.value.values.first().and_then(Value::number);
                        out.push(command(
                            w.object.to_u32(),
                            Some(w.value.property.property),
                            value,
                        ));
                    }
                }
                Err(e) => em.stats.bad_line(
                    n,
                    BadReason::BadBacnet,
                    format!("{src} → {dst}: write: {e}"),
                ),
            }
        }
        // A segmented write, or another service: the service itself is the finding.
        _ => out.push(command(0, None, None)),
    }
    if let Some(w) = &mut em.stats.wire {
        w.bacnet_commands += out.len() as u64;
    }
    em.queue
        .extend(out.into_iter().map(|c| Event::Command(Box::new(c))));
}
