//! Modbus exchanges: ADUs cut from each direction of a connection, requests paired with
//! responses by transaction and unit id, and what each pair becomes (readings through the
//! register map, a command, traffic for the protocol detector).

use super::link::slice;
use super::reassembly::{Pushed, Stream};
use super::wire_map::WireDevice;
use super::{WireMap, WireStats};
use crate::model::event::{Event, Outcome, Traffic};
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::{Command, Quality, Ts, WireProtocol};
use crate::protocol::frame::{self, Mbap, Request, Response};
use crate::protocol::registers::{Table, Value};
use crate::source::{BadReason, FileStats};
use etherparse::{LaxNetSlice, TransportSlice};
use pcap_parser::Linktype;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One ADU as cut from a stream, with where and when it was seen.
pub(super) struct Seen<'a> {
    pub(super) server: SocketAddr,
    pub(super) client: &'a Arc<str>,
    pub(super) h: Mbap,
    pub(super) pdu: &'a [u8],
    pub(super) now: Ts,
    pub(super) packet: u64,
}

/// A request waiting for its response.
pub(super) struct Pending {
    pub(super) ts: Ts,
    pub(super) unit: u8,
    pub(super) pdu: Vec<u8>,
}

/// One TCP connection between a Modbus client and server.
pub(super) struct Conn {
    pub(super) client: SocketAddr,
    pub(super) server: SocketAddr,
    pub(super) client_name: Arc<str>,
    pub(super) to_server: Stream,
    pub(super) to_client: Stream,
    pub(super) pending: FxHashMap<u16, Pending>,
    pub(super) fin: [bool; 2],
}

/// A (server, unit) as the pipeline knows it.
pub(super) struct Slot {
    pub(super) device: DeviceId,
    pub(super) wire: Option<Arc<WireDevice>>,
    /// Point of each register of the map, interned on first use.
    pub(super) points: Vec<Option<PointId>>,
}

/// Everything but the connections, so a connection's stream can be read while events
/// are emitted.
pub(super) struct Emitter {
    pub(super) map: Arc<WireMap>,
    pub(super) stats: FileStats,
    pub(super) queue: VecDeque<Event>,
    pub(super) slots: FxHashMap<(SocketAddr, u8), Slot>,
    pub(super) words: Vec<u16>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn packet_in(
    conns: &mut FxHashMap<(SocketAddr, SocketAddr), Conn>,
    em: &mut Emitter,
    reg: &mut Registry,
    linktype: Linktype,
    now: Ts,
    cut: bool,
    data: &[u8],
) {
    em.stats.lines += 1;
    let n = em.stats.lines;
    let wire = em.stats.wire.get_or_insert_with(WireStats::default);
    wire.packets += 1;
    let Some(p) = slice(linktype, data) else {
        if !matches!(
            linktype,
            Linktype::ETHERNET
                | Linktype::LINUX_SLL
                | Linktype::LINUX_SLL2
                | Linktype::NULL
                | Linktype::LOOP
                | Linktype::RAW
                | Linktype::IPV4
                | Linktype::IPV6
        ) {
            em.stats.bad_line(
                n,
                BadReason::UnsupportedLink,
                format!("link type {linktype}"),
            );
        } else {
            em.stats
                .bad_line(n, BadReason::BadPacket, "link or IP header cut short");
        }
        return;
    };
    let (src, dst, incomplete) = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            if ip.is_payload_fragmented() {
                wire.other_packets += 1;
                return;
            }
            let h = ip.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                ip.payload().incomplete,
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.payload().incomplete,
            )
        }
        _ => {
            wire.other_packets += 1;
            return;
        }
    };
    if let Some(TransportSlice::Udp(udp)) = &p.transport {
        let (src, dst) = (
            SocketAddr::new(src, udp.source_port()),
            SocketAddr::new(dst, udp.destination_port()),
        );
        let ports = &em.map.bacnet_ports;
        if !ports.contains(&dst.port()) && !ports.contains(&src.port()) {
            wire.other_packets += 1;
        } else if cut || incomplete {
            em.stats.bad_line(
                n,
                BadReason::TruncatedPacket,
                "BACnet/IP datagram cut short",
            );
        } else {
            super::bacnet::datagram(em, reg, n, now, (src, dst), udp.payload());
        }
        return;
    }
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        wire.other_packets += 1;
        return;
    };
    let src = SocketAddr::new(src, tcp.source_port());
    let dst = SocketAddr::new(dst, tcp.destination_port());
    let key = if conns.contains_key(&(src, dst)) {
        (src, dst)
    } else if conns.contains_key(&(dst, src)) {
        (dst, src)
    } else if tcp.payload().is_empty() && !tcp.syn() {
        // The last ACKs of a closed connection, or a keep-alive: nothing to follow.
        wire.modbus_segments +=
            u64::from(em.map.ports.contains(&dst.port()) || em.map.ports.contains(&src.port()));
        return;
    } else if em.map.ports.contains(&dst.port()) {
        (src, dst)
    } else if em.map.ports.contains(&src.port()) {
        (dst, src)
    } else {
        wire.other_packets += 1;
        return;
    };
    wire.modbus_segments += 1;
    let conn = conns.entry(key).or_insert_with(|| {
        wire.connections += 1;
        Conn {
            client: key.0,
            server: key.1,
            client_name: Arc::from(key.0.ip().to_string()),
            to_server: Stream::default(),
            to_client: Stream::default(),
            pending: FxHashMap::default(),
            fin: [false; 2],
        }
    });
    let to_server = dst == conn.server;
    if cut || incomplete {
        em.stats.bad_line(
            n,
            BadReason::TruncatedPacket,
            "packet cut short (snaplen): its bytes are a hole in the stream",
        );
    }
    let stream = if to_server {
        &mut conn.to_server
    } else {
        &mut conn.to_client
    };
    let pushed = if cut || incomplete {
        stream.lost(tcp.sequence_number());
        Pushed::default()
    } else {
        stream.push(tcp.sequence_number(), tcp.syn(), tcp.payload())
    };
    em.count(&pushed);
    drain(conn, em, reg, now, n, to_server);
    expire(conn, em, reg, now);
    if tcp.rst() || tcp.fin() {
        conn.fin[usize::from(to_server)] = true;
        if tcp.rst() || conn.fin == [true; 2] {
            if let Some(mut c) = conns.remove(&key) {
                close(&mut c, em, reg, now);
            }
        }
    }
}

/// Cuts the ADUs now complete in one direction and handles each.
pub(super) fn drain(
    conn: &mut Conn,
    em: &mut Emitter,
    reg: &mut Registry,
    now: Ts,
    packet: u64,
    to_server: bool,
) {
    let Conn {
        client,
        server,
        client_name,
        to_server: up,
        to_client: down,
        pending,
        ..
    } = conn;
    let stream = if to_server { up } else { down };
    while let Some(adu) = stream.next_adu() {
        match adu {
            Ok((h, pdu)) => {
                if let Some(w) = &mut em.stats.wire {
                    w.adus += 1;
                }
                let seen = Seen {
                    server: *server,
                    client: client_name,
                    h,
                    pdu,
                    now,
                    packet,
                };
                if to_server {
                    em.request(reg, pending, seen);
                } else {
                    em.response(reg, pending, seen);
                }
            }
            Err(e) => {
                let reason = match e.0 {
                    frame::FrameError::NotModbus(_) => BadReason::NotModbus,
                    _ => BadReason::BadMbapLength,
                };
                em.stats
                    .bad_line(packet, reason, format!("{client} ↔ {server}: {}", e.0));
                let dev = em.slot(reg, *server, 0).device;
                em.traffic(
                    now,
                    dev,
                    client_name,
                    0,
                    0,
                    0,
                    Outcome::Malformed(e.0.key()),
                );
            }
        }
    }
}

/// Reports requests that have waited longer than the response timeout.
pub(super) fn expire(conn: &mut Conn, em: &mut Emitter, reg: &mut Registry, now: Ts) {
    if conn.pending.is_empty() {
        return;
    }
    let limit = em.map.response_timeout;
    let mut late: Vec<u16> = conn
        .pending
        .iter()
        .filter(|(_, p)| now - p.ts >= limit)
        .map(|(&t, _)| t)
        .collect();
    late.sort_unstable();
    for t in late {
        if let Some(p) = conn.pending.remove(&t) {
            em.unanswered(reg, conn.server, &conn.client_name, &p, now);
        }
    }
}

/// A connection ends: what waited behind holes is cut, what was never answered reported.
pub(super) fn close(c: &mut Conn, em: &mut Emitter, reg: &mut Registry, now: Ts) {
    for to_server in [true, false] {
        let pushed = if to_server {
            c.to_server.finish()
        } else {
            c.to_client.finish()
        };
        em.count(&pushed);
        drain(c, em, reg, now, em.stats.lines, to_server);
    }
    let mut rest: Vec<_> = c.pending.drain().collect();
    rest.sort_by_key(|(t, _)| *t);
    for (_, p) in rest {
        em.unanswered(reg, c.server, &c.client_name, &p, now);
    }
}

impl Emitter {
    fn count(&mut self, p: &Pushed) {
        if let Some(w) = &mut self.stats.wire {
            w.retransmissions += u64::from(p.duplicate);
            w.out_of_order += u64::from(p.early);
            w.gaps += u64::from(p.gaps);
            w.unsynced_bytes += p.unsynced_bytes;
        }
    }

    /// The pipeline's device for a server and unit id: the configured one, or one named
    /// after the address (`10.0.0.5:502/unit1`).
    fn slot(&mut self, reg: &mut Registry, server: SocketAddr, unit: u8) -> &mut Slot {
        let map = &self.map;
        self.slots.entry((server, unit)).or_insert_with(|| {
            let wire = map.devices.get(&(server, unit)).cloned();
            let device = match &wire {
                Some(w) => reg.intern_device(&w.site, &w.name, &w.kind),
                None => reg.intern_device(&map.site, &format!("{server}/unit{unit}"), ""),
            };
            let points = wire.as_ref().map_or(0, |w| w.map.registers.len());
            Slot {
                // A full registry refuses new names; the first device then stands in.
                device: device.unwrap_or(0),
                wire,
                points: vec![None; points],
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn traffic(
        &mut self,
        ts: Ts,
        device: DeviceId,
        client: &Arc<str>,
        function: u8,
        address: u16,
        count: u16,
        outcome: Outcome,
    ) {
        self.queue.push_back(Event::Traffic(Box::new(Traffic {
            ts,
            device,
            client: client.clone(),
            function,
            address,
            count,
            outcome,
        })));
    }

    fn request(
        &mut self,
        reg: &mut Registry,
        pending: &mut FxHashMap<u16, Pending>,
        seen: Seen<'_>,
    ) {
        let Seen {
            server,
            client,
            h,
            pdu,
            now,
            packet,
        } = seen;
        if let Some(w) = &mut self.stats.wire {
            w.requests += 1;
        }
        let dev = self.slot(reg, server, h.unit).device;
        let req = match frame::parse_request(pdu) {
            Ok(r) => r,
            Err(e) => {
                self.stats.bad_line(
                    packet,
                    BadReason::BadPdu,
                    format!("request from {client} to {server}: {e}"),
                );
                let f = pdu.first().copied().unwrap_or(0);
                self.traffic(now, dev, client, f, 0, 0, Outcome::Malformed(e.key()));
                return;
            }
        };
        if !matches!(req, Request::Read { .. }) {
            let site = reg.device(dev).site.clone();
            let name = reg.device(dev).name.clone();
            self.queue.push_back(Event::Command(Box::new(Command {
                ts: now,
                site,
                device: name,
                client: client.to_string(),
                function: req.function(),
                address: u32::from(req.address()),
                values: req.written(),
                protocol: WireProtocol::Modbus,
                property: None,
                value: None,
            })));
        }
        let replaced = pending.insert(
            h.transaction,
            Pending {
                ts: now,
                unit: h.unit,
                pdu: pdu.to_vec(),
            },
        );
        if let Some(old) = replaced {
            // The transaction id came round again: the earlier request went unanswered.
            self.unanswered(reg, server, client, &old, now);
        }
    }

    fn response(
        &mut self,
        reg: &mut Registry,
        pending: &mut FxHashMap<u16, Pending>,
        seen: Seen<'_>,
    ) {
        let Seen {
            server,
            client,
            h,
            pdu,
            now,
            packet,
        } = seen;
        let dev = self.slot(reg, server, h.unit).device;
        let function = pdu.first().copied().unwrap_or(0) & 0x7F;
        let Some(p) = pending.remove(&h.transaction).filter(|p| p.unit == h.unit) else {
            if let Some(w) = &mut self.stats.wire {
                w.unsolicited += 1;
            }
            self.stats.bad_line(
                packet,
                BadReason::UnsolicitedResponse,
                format!(
                    "{server} unit {} answered transaction {} that {client} never asked",
                    h.unit, h.transaction
                ),
            );
            self.traffic(now, dev, client, function, 0, 0, Outcome::Unsolicited);
            return;
        };
        let Ok(req) = frame::parse_request(&p.pdu) else {
            return;
        };
        let (address, count) = (req.address(), req.count());
        let resp = match frame::parse_response(pdu) {
            Ok(r) => r,
            Err(e) => {
                self.stats.bad_line(
                    packet,
                    BadReason::BadPdu,
                    format!("response from {server} to {client}: {e}"),
                );
                self.traffic(
                    now,
                    dev,
                    client,
                    function,
                    address,
                    count,
                    Outcome::Malformed(e.key()),
                );
                return;
            }
        };
        if let Err(why) = frame::check_pair(&req, &resp) {
            self.stats.bad_line(
                packet,
                BadReason::ResponseMismatch,
                format!(
                    "{server} unit {} to {client}, transaction {}: {why}",
                    h.unit, h.transaction
                ),
            );
            self.traffic(
                now,
                dev,
                client,
                function,
                address,
                count,
                Outcome::Malformed("response_mismatch"),
            );
            return;
        }
        if let Some(w) = &mut self.stats.wire {
            w.responses += 1;
        }
        let outcome = match resp {
            Response::Exception { code, .. } => {
                if let Some(w) = &mut self.stats.wire {
                    w.exceptions += 1;
                }
                Outcome::Exception(code)
            }
            Response::Data { bytes, .. } => {
                let read = match req {
                    Request::Read {
                        function,
                        address,
                        count,
                    } => Some((function, address, count)),
                    Request::ReadWrite {
                        read_address,
                        read_count,
                        ..
                    } => Some((3, read_address, read_count)),
                    _ => None,
                };
                if let Some((f, a, c)) = read {
                    self.readings(reg, server, h.unit, now, f, a, c, bytes);
                }
                Outcome::Answered
            }
            _ => Outcome::Answered,
        };
        self.traffic(now, dev, client, req.function(), address, count, outcome);
    }

    fn unanswered(
        &mut self,
        reg: &mut Registry,
        server: SocketAddr,
        client: &Arc<str>,
        p: &Pending,
        now: Ts,
    ) {
        if let Some(w) = &mut self.stats.wire {
            w.unanswered += 1;
        }
        let dev = self.slot(reg, server, p.unit).device;
        if let Ok(req) = frame::parse_request(&p.pdu) {
            self.traffic(
                now,
                dev,
                client,
                req.function(),
                req.address(),
                req.count(),
                Outcome::Unanswered,
            );
        }
    }

    /// Readings from a read response, through the device's register map.
    #[allow(clippy::too_many_arguments)]
    fn readings(
        &mut self,
        reg: &mut Registry,
        server: SocketAddr,
        unit: u8,
        now: Ts,
        function: u8,
        start: u16,
        count: u16,
        bytes: &[u8],
    ) {
        let table = match function {
            1 => Table::Coil,
            2 => Table::Discrete,
            3 => Table::Holding,
            _ => Table::Input,
        };
        let mut words = std::mem::take(&mut self.words);
        words.clear();
        if function <= 2 {
            words.extend(frame::bits(bytes, count));
        } else {
            words.extend(frame::words(bytes));
        }
        self.slot(reg, server, unit);
        let Some(slot) = self.slots.get_mut(&(server, unit)) else {
            self.words = words;
            return;
        };
        let Some(wire) = slot.wire.clone() else {
            self.words = words;
            return;
        };
        let end = u32::from(start) + u32::from(count);
        for (i, r) in wire.map.registers.iter().enumerate() {
            if r.table != table
                || r.address < start
                || u32::from(r.address) + u32::from(r.word_count()) > end
            {
                continue;
            }
            let Ok(Value::Number(value)) =
                r.decode(&wire.map, &words[usize::from(r.address - start)..])
            else {
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            let point = match slot.points[i] {
                Some(p) => p,
                None => match reg.intern(&wire.site, &wire.name, &wire.kind, &r.metric) {
                    Ok(p) => {
                        slot.points[i] = Some(p);
                        p
                    }
                    Err(_) => continue,
                },
            };
            self.queue.push_back(Event::Sample {
                ts: now,
                point,
                value,
                quality: Quality::Good,
            });
        }
        self.words = words;
    }
}
