//! BACnet/IP datagrams in a packet capture: the requests that change something become
//! [`Command`]s for the protocol detector — each write of a WriteProperty or
//! WritePropertyMultiple (object, property, value), and any other confirmed service
//! that is not a read or a subscription (DeviceCommunicationControl,
//! ReinitializeDevice, object and file services). What a configured device reports —
//! its ReadProperty and ReadPropertyMultiple answers and its COV notifications —
//! becomes readings through its object map, with the collector's quality rules (fault,
//! out of service or unreliable: bad). Answers are not paired with requests (the ACK
//! names its objects), so an answer nobody asked for is read like any other.

use super::exchange::Emitter;
use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::{Command, Quality, Ts, WireProtocol};
use crate::protocol::bacnet::{
    self, confirmed, Apdu, CovNotification, ObjectId, ReadProperty, ReadPropertyMultipleAck, Value,
};
use crate::source::bacnet::Observed;
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
    reg: &mut Registry,
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
    let reported = match d.apdu {
        Some(Apdu::ComplexAck {
            service: service @ (confirmed::READ_PROPERTY | confirmed::READ_PROPERTY_MULTIPLE),
            segmented: false,
            body,
            ..
        }) => Some((service, body)),
        Some(ref a) => a
            .cov_notification()
            .map(|body| (confirmed::COV_NOTIFICATION, body)),
        None => None,
    };
    if let Some((service, body)) = reported {
        return report(em, reg, n, now, src, (service, body));
    }
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
        Some(w) => (w.site.to_string(), w.name.to_string()),
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

/// Readings from what a configured device at `src` reported: a ReadProperty or
/// ReadPropertyMultiple answer, or a COV notification (`service` says which).
fn report(
    em: &mut Emitter,
    reg: &mut Registry,
    n: u64,
    now: Ts,
    src: SocketAddr,
    (service, body): (u8, &[u8]),
) {
    let Some(device) = em.map.bacnet.get(&src) else {
        return;
    };
    let decoded: Result<Vec<(ObjectId, Observed)>, bacnet::DecodeError> = match service {
        confirmed::READ_PROPERTY_MULTIPLE => ReadPropertyMultipleAck::decode(body).map(|ack| {
            ack.0
                .iter()
                .map(|(object, results)| {
                    let ok = results
                        .iter()
                        .filter_map(|(p, r)| r.as_ref().ok().map(|v| (p.property, v.as_slice())));
                    (*object, Observed::of(ok))
                })
                .collect()
        }),
        confirmed::READ_PROPERTY => ReadProperty::decode_ack(body).map(|(rp, values)| {
            let one = std::iter::once((rp.property.property, values.as_slice()));
            vec![(rp.object, Observed::of(one))]
        }),
        _ => CovNotification::decode(body).map(|c| {
            let props = c
                .values
                .iter()
                .map(|pv| (pv.property.property, pv.values.as_slice()));
            vec![(c.object, Observed::of(props))]
        }),
    };
    let objects = match decoded {
        Ok(o) => o,
        Err(e) => {
            return em
                .stats
                .bad_line(n, BadReason::BadBacnet, format!("{src} reported: {e}"));
        }
    };
    for (object, seen) in objects {
        let Some((_, o)) = device.map.by_object(object).filter(|(_, o)| o.poll) else {
            continue;
        };
        // A status-flags answer alone (a ReadProperty of that property) says nothing of
        // the value.
        let Some(raw) = seen.value else { continue };
        let value = raw * o.scale + o.offset;
        if !value.is_finite() {
            continue;
        }
        let Ok(point) = reg.intern(&device.site, &device.name, &device.kind, &o.metric) else {
            continue;
        };
        let quality = if seen.trusted {
            Quality::Good
        } else {
            Quality::Bad
        };
        em.queue.push_back(Event::Sample {
            ts: now,
            point,
            value,
            quality,
        });
    }
}
