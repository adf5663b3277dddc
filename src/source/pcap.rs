//! Packet captures (pcap and pcapng, as tcpdump, Wireshark or a tap write them) of
//! Modbus/TCP, turned into the events the live collector would have produced, plus what
//! only the wire shows.
//!
//! Packets → link layer (Ethernet with VLAN tags, Linux cooked v1/v2, BSD loopback, raw
//! IP) → IPv4/IPv6 → TCP, put back in order per direction ([`super::tcp`]) → MBAP + PDU
//! ([`crate::protocol::frame`]) → requests paired with responses by transaction id and
//! unit id. A paired read of a device named in `[[modbus.devices]]` (server address and
//! unit id) becomes readings through that device's register map; every non-read
//! request becomes a [`Command`]; every exchange, and every frame that breaks the
//! protocol, becomes [`Traffic`] for the protocol detector.
//!
//! Bad input is counted per reason with its packet number and never stops the replay.

use super::tcp::{Pushed, Stream};
use super::{BadReason, CaptureSource, FileStats};
use crate::model::event::{Event, Outcome, Traffic};
use crate::model::points::{DeviceId, PointId, Registry};
use crate::model::{Command, Quality, Ts};
use crate::protocol::frame::{self, Mbap, Request, Response};
use crate::protocol::registers::{DeviceMaps, RegisterMap, Table, Value};
use crate::source::modbus::DevicePlan;
use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{Block, Linktype, PcapBlockOwned, PcapError};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// `[pcap]` in `wattchdog.toml`: how packet captures are read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcapConfig {
    /// TCP ports that carry Modbus besides 502 and the ports in `[[modbus.devices]]`.
    pub ports: Vec<u16>,
    /// A request still unanswered this long after it was sent (capture time) counts as
    /// unanswered. Default `"5s"`.
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub response_timeout: i64,
}

impl Default for PcapConfig {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            response_timeout: 5_000,
        }
    }
}

/// A device on the wire: where its register map says what its registers mean.
#[derive(Debug)]
struct WireDevice {
    site: String,
    name: String,
    kind: String,
    map: Arc<RegisterMap>,
}

/// What a capture is read with: Modbus ports and the devices behind server addresses.
#[derive(Debug, Default)]
pub struct WireMap {
    ports: FxHashSet<u16>,
    devices: FxHashMap<(SocketAddr, u8), Arc<WireDevice>>,
    site: String,
    response_timeout: i64,
    unmatched: Vec<String>,
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

/// Counters of the wire, per capture file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WireStats {
    /// Packets read.
    pub packets: u64,
    /// TCP segments on a Modbus port.
    pub modbus_segments: u64,
    /// Packets that are not TCP on a Modbus port (ignored).
    pub other_packets: u64,
    /// Segments already seen (retransmissions).
    pub retransmissions: u64,
    /// Segments that arrived before a hole.
    pub out_of_order: u64,
    /// Holes given up (lost or cut segments).
    pub gaps: u64,
    /// Bytes skipped while a stream was out of step.
    pub unsynced_bytes: u64,
    /// TCP connections.
    pub connections: u64,
    /// Modbus ADUs.
    pub adus: u64,
    /// Requests.
    pub requests: u64,
    /// Responses paired with their request.
    pub responses: u64,
    /// Of those, exceptions.
    pub exceptions: u64,
    /// Requests never answered.
    pub unanswered: u64,
    /// Responses to no request.
    pub unsolicited: u64,
}

/// One ADU as cut from a stream, with where and when it was seen.
struct Seen<'a> {
    server: SocketAddr,
    client: &'a Arc<str>,
    h: Mbap,
    pdu: &'a [u8],
    now: Ts,
    packet: u64,
}

/// A request waiting for its response.
struct Pending {
    ts: Ts,
    unit: u8,
    pdu: Vec<u8>,
}

/// One TCP connection between a Modbus client and server.
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    client_name: Arc<str>,
    to_server: Stream,
    to_client: Stream,
    pending: FxHashMap<u16, Pending>,
    fin: [bool; 2],
}

/// A (server, unit) as the pipeline knows it.
struct Slot {
    device: DeviceId,
    wire: Option<Arc<WireDevice>>,
    /// Point of each register of the map, interned on first use.
    points: Vec<Option<PointId>>,
}

/// Everything but the connections, so a connection's stream can be read while events
/// are emitted.
struct Emitter {
    map: Arc<WireMap>,
    stats: FileStats,
    queue: VecDeque<Event>,
    slots: FxHashMap<(SocketAddr, u8), Slot>,
    words: Vec<u16>,
}

/// A pcap or pcapng capture as a source of events.
pub struct PcapSource {
    reader: Option<Box<dyn PcapReaderIterator + Send>>,
    /// Link type and time base of each pcapng interface (or the pcap file's one).
    links: Vec<Link>,
    conns: FxHashMap<(SocketAddr, SocketAddr), Conn>,
    emit: Emitter,
    now: Ts,
    finished: bool,
}

#[derive(Clone, Copy)]
struct Link {
    linktype: Linktype,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp (pcapng `if_tsoffset`).
    offset: i64,
}

impl PcapSource {
    /// Opens a capture; a file that is neither pcap nor pcapng is an error naming it.
    pub fn new(
        reader: Box<dyn Read + Send>,
        name: String,
        map: Arc<WireMap>,
    ) -> Result<Self, super::SourceError> {
        for d in map.unmatched() {
            tracing::warn!(file = %name, device = %d, "pcap: a device given by host name cannot be matched to packets; use its IP address");
        }
        let mut stats = FileStats::new(&name, "pcap");
        stats.wire = Some(WireStats::default());
        let reader = match pcap_parser::create_reader(1 << 20, reader) {
            Ok(r) => Some(r),
            Err(PcapError::Eof) => None,
            Err(e) => {
                return Err(super::SourceError::Format {
                    path: name,
                    message: format!("not a pcap or pcapng capture ({e})"),
                })
            }
        };
        Ok(Self {
            reader,
            links: Vec::new(),
            conns: FxHashMap::default(),
            emit: Emitter {
                map,
                stats,
                queue: VecDeque::new(),
                slots: FxHashMap::default(),
                words: Vec::new(),
            },
            now: Ts::MIN,
            finished: false,
        })
    }

    /// Reads blocks until one yields events or the file ends.
    fn read_more(&mut self, reg: &mut Registry) {
        while self.emit.queue.is_empty() {
            let Some(reader) = self.reader.as_mut() else {
                self.finish(reg);
                return;
            };
            match reader.next() {
                Ok((offset, block)) => {
                    let packet = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            self.links = vec![Link {
                                linktype: h.network,
                                resolution: if h.is_nanosecond_precision() {
                                    1_000_000_000
                                } else {
                                    1_000_000
                                },
                                offset: 0,
                            }];
                            None
                        }
                        PcapBlockOwned::Legacy(b) => self.links.first().map(|l| {
                            let ts = u64::from(b.ts_sec) * l.resolution + u64::from(b.ts_usec);
                            (*l, ts, b.caplen < b.origlen, b.data)
                        }),
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            self.links.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            self.links.push(Link {
                                linktype: idb.linktype,
                                resolution: idb.ts_resolution().unwrap_or(1_000_000),
                                offset: idb.ts_offset(),
                            });
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            let link = self.links.get(epb.if_id as usize).copied();
                            if link.is_none() {
                                self.emit.stats.lines += 1;
                                let n = self.emit.stats.lines;
                                self.emit.stats.bad_line(
                                    n,
                                    BadReason::BadPacket,
                                    format!("interface {} was never described", epb.if_id),
                                );
                            }
                            link.map(|l| {
                                let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                (l, ts, epb.caplen < epb.origlen, epb.data)
                            })
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                            // No timestamp: the previous packet's time.
                            self.links.first().map(|l| (*l, u64::MAX, false, spb.data))
                        }
                        PcapBlockOwned::NG(_) => None,
                    };
                    if let Some((link, raw_ts, cut, data)) = packet {
                        let ts = if raw_ts == u64::MAX {
                            Some(self.now.max(0))
                        } else {
                            to_ms(raw_ts, link)
                        };
                        if let Some(ts) = ts {
                            self.now = self.now.max(ts);
                            let now = self.now;
                            packet_in(
                                &mut self.conns,
                                &mut self.emit,
                                reg,
                                link.linktype,
                                now,
                                cut,
                                data,
                            );
                        } else {
                            self.emit.stats.lines += 1;
                            let n = self.emit.stats.lines;
                            self.emit.stats.bad_line(
                                n,
                                BadReason::BadTimestamp,
                                "packet time beyond the year 9999",
                            );
                        }
                    }
                    reader.consume(offset);
                }
                Err(PcapError::Eof) => self.reader = None,
                Err(PcapError::Incomplete(_)) => {
                    if reader.reader_exhausted() {
                        self.fail("the capture ends inside a packet (truncated file)");
                    } else if let Err(e) = reader.refill() {
                        let msg = format!("read error: {e}");
                        self.fail(&msg);
                    }
                }
                Err(PcapError::BufferTooSmall) => {
                    let bigger = reader.data().len().max(1 << 20) * 2;
                    if bigger > 1 << 28 || !reader.grow(bigger) {
                        self.fail("a block larger than 256 MiB");
                    }
                }
                Err(e) => {
                    let msg = format!("{e}");
                    self.fail(&msg);
                }
            }
        }
    }

    /// Ends the file at an error; what was read stays.
    fn fail(&mut self, msg: &str) {
        tracing::warn!(file = %self.emit.stats.file, packet = self.emit.stats.lines, error = msg, "pcap: capture ends early");
        self.emit.stats.error = Some(format!(
            "{}: after packet {}: {msg}",
            self.emit.stats.file, self.emit.stats.lines
        ));
        self.reader = None;
    }

    /// End of capture: skip holes, cut what is left, and report requests never answered.
    fn finish(&mut self, reg: &mut Registry) {
        if self.finished {
            return;
        }
        self.finished = true;
        let mut conns: Vec<_> = self.conns.drain().map(|(_, c)| c).collect();
        conns.sort_by_key(|c| (c.client, c.server));
        for mut c in conns {
            close(&mut c, &mut self.emit, reg, self.now);
        }
    }
}

/// A packet's time in epoch milliseconds, if it is a time wattchdog can handle.
fn to_ms(raw: u64, link: Link) -> Option<Ts> {
    let ms = u128::from(raw) * 1000 / u128::from(link.resolution.max(1));
    let ts = i64::try_from(ms)
        .ok()?
        .checked_add(link.offset.checked_mul(1000)?)?;
    crate::time::epoch_to_ms(ts as f64).filter(|t| *t >= 0)
}

impl CaptureSource for PcapSource {
    fn next_event(&mut self, reg: &mut Registry) -> Option<Event> {
        if self.emit.queue.is_empty() {
            self.read_more(reg);
        }
        let ev = self.emit.queue.pop_front()?;
        match &ev {
            Event::Sample { .. } => self.emit.stats.readings += 1,
            Event::Command(_) => self.emit.stats.commands += 1,
            Event::Traffic(_) => {}
        }
        Some(ev)
    }

    fn stats(&self) -> &FileStats {
        &self.emit.stats
    }
}

/// The IP and TCP layers of a packet, loosely (a snaplen-cut packet still shows its
/// headers).
fn slice(linktype: Linktype, data: &[u8]) -> Option<LaxSlicedPacket<'_>> {
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

#[allow(clippy::too_many_arguments)]
fn packet_in(
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
fn drain(
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
fn expire(conn: &mut Conn, em: &mut Emitter, reg: &mut Registry, now: Ts) {
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
fn close(c: &mut Conn, em: &mut Emitter, reg: &mut Registry, now: Ts) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::CaptureSource;
    use etherparse::PacketBuilder;

    const BMS: [u8; 4] = [10, 0, 0, 9];
    const DEV: [u8; 4] = [10, 0, 0, 5];

    /// How packets are framed below IP.
    #[derive(Clone, Copy, PartialEq)]
    enum Link {
        Ethernet,
        Vlan,
        Sll2,
        Ipv6,
    }

    /// A TCP segment from the BMS (`up`) or the device, as link-layer bytes.
    fn segment(link: Link, up: bool, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
        let (sp, dp) = if up { (40000, 502) } else { (502, 40000) };
        let mut ip = Vec::new();
        let ether_type: u16 = if link == Link::Ipv6 {
            let (s, d) = ([0xfd; 16], {
                let mut d = [0xfd; 16];
                d[15] = 5;
                d
            });
            let (s, d) = if up { (s, d) } else { (d, s) };
            let b = PacketBuilder::ipv6(s, d, 64).tcp(sp, dp, seq, 1000);
            let b = if syn { b.syn() } else { b.psh().ack(1) };
            b.write(&mut ip, payload).unwrap();
            0x86DD
        } else {
            let (s, d) = if up { (BMS, DEV) } else { (DEV, BMS) };
            let b = PacketBuilder::ipv4(s, d, 64).tcp(sp, dp, seq, 1000);
            let b = if syn { b.syn() } else { b.psh().ack(1) };
            b.write(&mut ip, payload).unwrap();
            0x0800
        };
        let mut out = Vec::new();
        match link {
            Link::Sll2 => {
                out.extend(ether_type.to_be_bytes());
                out.extend([0, 0, 0, 0, 0, 1, 0, 1, 0, 6]);
                out.extend([0; 8]);
            }
            _ => {
                out.extend([2; 6]);
                out.extend([1; 6]);
                if link == Link::Vlan {
                    out.extend(0x8100u16.to_be_bytes());
                    out.extend(42u16.to_be_bytes());
                }
                out.extend(ether_type.to_be_bytes());
            }
        }
        out.extend(ip);
        out
    }

    /// A classic pcap file (microseconds) of `(ms, packet, original length)`.
    fn pcap(linktype: u32, packets: &[(u64, Vec<u8>, usize)]) -> Vec<u8> {
        let mut f = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, linktype] {
            f.extend(v.to_le_bytes());
        }
        for (ms, data, orig) in packets {
            for v in [
                *ms / 1000,
                (*ms % 1000) * 1000,
                data.len() as u64,
                *orig as u64,
            ] {
                f.extend((v as u32).to_le_bytes());
            }
            f.extend(data);
        }
        f
    }

    /// The same packets as a pcapng file (one interface, microseconds).
    fn pcapng(linktype: u16, packets: &[(u64, Vec<u8>, usize)]) -> Vec<u8> {
        let mut f = Vec::new();
        let block = |f: &mut Vec<u8>, kind: u32, body: &[u8]| {
            let len = (12 + body.len().div_ceil(4) * 4) as u32;
            f.extend(kind.to_le_bytes());
            f.extend(len.to_le_bytes());
            f.extend(body);
            f.extend(vec![0; body.len().div_ceil(4) * 4 - body.len()]);
            f.extend(len.to_le_bytes());
        };
        let mut shb = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
        shb.extend([1, 0, 0, 0]);
        shb.extend((-1i64).to_le_bytes());
        block(&mut f, 0x0A0D_0D0A, &shb);
        let mut idb = u32::from(linktype).to_le_bytes().to_vec();
        idb.extend(65535u32.to_le_bytes());
        block(&mut f, 1, &idb);
        for (ms, data, orig) in packets {
            let us = ms * 1000;
            let mut epb = Vec::new();
            for v in [
                0u32,
                (us >> 32) as u32,
                us as u32,
                data.len() as u32,
                *orig as u32,
            ] {
                epb.extend(v.to_le_bytes());
            }
            epb.extend(data);
            block(&mut f, 6, &epb);
        }
        f
    }

    fn adu(t: u16, pdu: &[u8]) -> Vec<u8> {
        let mut v = t.to_be_bytes().to_vec();
        v.extend([0, 0]);
        v.extend((pdu.len() as u16 + 1).to_be_bytes());
        v.push(1);
        v.extend(pdu);
        v
    }

    /// Handshake, a read of supply and return water (7.00 °C, 12.50 °C) and a setpoint
    /// write, with the TCP sequence numbers a real stack would use.
    fn session(link: Link) -> Vec<(u64, Vec<u8>, usize)> {
        let read = adu(1, &[3, 0x03, 0xE8, 0, 2]);
        let data = adu(1, &[3, 4, 0x02, 0xBC, 0x04, 0xE2]);
        let write = adu(2, &[6, 0x04, 0xB1, 0x05, 0x14]);
        let pkts = [
            segment(link, true, 99, true, &[]),
            segment(link, false, 499, true, &[]),
            segment(link, true, 100, false, &read),
            segment(link, false, 500, false, &data),
            segment(link, true, 112, false, &write),
            segment(link, false, 513, false, &write),
        ];
        pkts.into_iter()
            .enumerate()
            .map(|(i, p)| (1_783_382_400_000 + i as u64 * 10, p.clone(), p.len()))
            .collect()
    }

    fn config() -> crate::Config {
        crate::Config::from_toml_str(
            "[modbus]\nsite = \"lab\"\n[[modbus.devices]]\nname = \"chiller-1\"\naddress = \"10.0.0.5:502\"\nunit = 1\nprofile = \"chiller-generic\"\n\
             [[modbus.devices]]\nname = \"chiller-6\"\naddress = \"[fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fd05]:502\"\nunit = 1\nprofile = \"chiller-generic\"\n",
            "t",
        )
        .unwrap()
    }

    type Samples = Vec<(String, String, f64)>;

    /// Reads a capture: samples as (device, metric, value), commands, exchanges, stats.
    fn read(bytes: Vec<u8>) -> (Samples, Vec<Command>, Vec<Traffic>, FileStats) {
        let cfg = config();
        let mut src = PcapSource::new(
            Box::new(std::io::Cursor::new(bytes)),
            "t.pcap".into(),
            cfg.wire.clone(),
        )
        .unwrap();
        let mut reg = Registry::new(100);
        let (mut s, mut c, mut t) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(ev) = src.next_event(&mut reg) {
            match ev {
                Event::Sample { point, value, .. } => {
                    let p = reg.point(point);
                    s.push((reg.device(p.device).name.clone(), p.metric.clone(), value));
                }
                Event::Command(x) => c.push(*x),
                Event::Traffic(x) => t.push(*x),
            }
        }
        (s, c, t, src.stats().clone())
    }

    fn expect_session(bytes: Vec<u8>, device: &str, client: &str) {
        let (s, c, t, stats) = read(bytes);
        assert_eq!(stats.bad_total(), 0, "{:?}", stats.first_bad);
        assert_eq!(
            s,
            [
                (device.to_owned(), "supply_temp_c".to_owned(), 7.0),
                (device.to_owned(), "return_temp_c".to_owned(), 12.5)
            ]
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].client.as_str(), c[0].function, c[0].address),
            (client, 6, 1201)
        );
        assert_eq!(c[0].values, [1300]);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| t.outcome == Outcome::Answered));
    }

    #[test]
    fn every_link_layer_and_both_file_formats_give_the_same_events() {
        let v4 = "10.0.0.9";
        expect_session(pcap(1, &session(Link::Ethernet)), "chiller-1", v4);
        expect_session(pcap(1, &session(Link::Vlan)), "chiller-1", v4);
        expect_session(pcap(276, &session(Link::Sll2)), "chiller-1", v4);
        let v6 = "fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd";
        expect_session(pcap(1, &session(Link::Ipv6)), "chiller-6", v6);
        expect_session(pcapng(1, &session(Link::Ethernet)), "chiller-1", v4);
    }

    #[test]
    fn split_reordered_and_retransmitted_segments_are_put_back() {
        let mut pkts = session(Link::Ethernet);
        // The response split in two, the halves swapped, the first half sent twice.
        let data = adu(1, &[3, 4, 0x02, 0xBC, 0x04, 0xE2]);
        let (a, b) = data.split_at(5);
        let first = segment(Link::Ethernet, false, 500, false, a);
        let second = segment(Link::Ethernet, false, 505, false, b);
        let ts = pkts[3].0;
        pkts.splice(
            3..4,
            [
                (ts, second.clone(), second.len()),
                (ts, first.clone(), first.len()),
                (ts, first.clone(), first.len()),
            ],
        );
        let (s, _, _, stats) = read(pcap(1, &pkts));
        assert_eq!(s.len(), 2);
        let w = stats.wire.unwrap();
        assert_eq!((w.out_of_order, w.retransmissions), (1, 1));
    }

    #[test]
    fn bad_input_is_counted_by_reason_and_the_rest_still_decodes() {
        let mut pkts = session(Link::Ethernet);
        // The read response is cut by the snaplen: that exchange is lost, the write not.
        let full = pkts[3].1.clone();
        pkts[3] = (pkts[3].0, full[..full.len() - 6].to_vec(), full.len());
        // A response no one asked for, and HTTP on port 502 in another connection.
        let forged = segment(Link::Ethernet, false, 525, false, &adu(77, &[3, 2, 0, 1]));
        pkts.push((pkts[5].0 + 1, forged.clone(), forged.len()));
        for (syn, seq, payload) in [
            (true, 4999, &b""[..]),
            (false, 5000, b"GET / HTTP/1.1\r\n\r\n"),
        ] {
            let mut p = segment(Link::Ethernet, true, seq, syn, payload);
            p[34..36].copy_from_slice(&40001u16.to_be_bytes());
            pkts.push((pkts[5].0 + 2, p.clone(), p.len()));
        }
        let (s, c, t, stats) = read(pcap(1, &pkts));
        assert!(s.is_empty(), "{s:?}");
        assert_eq!(c.len(), 1, "the write still decodes");
        for reason in [
            BadReason::TruncatedPacket,
            BadReason::UnsolicitedResponse,
            BadReason::NotModbus,
        ] {
            assert_eq!(
                stats.bad.get(&reason),
                Some(&1),
                "{reason:?}: {:?}",
                stats.bad
            );
        }
        assert!(t.iter().any(|t| t.outcome == Outcome::Unsolicited));
        assert!(
            t.iter().any(|t| t.outcome == Outcome::Unanswered),
            "the cut read went unanswered"
        );
        assert!(
            stats.first_bad.iter().all(|b| b.line >= 4),
            "{:?}",
            stats.first_bad
        );
    }

    #[test]
    fn a_truncated_file_keeps_what_came_before_and_says_where_it_ended() {
        let mut bytes = pcap(1, &session(Link::Ethernet));
        bytes.truncate(bytes.len() - 10);
        let (s, c, _, stats) = read(bytes);
        assert_eq!(s.len(), 2);
        assert_eq!(c.len(), 1, "the write request was whole; its echo was cut");
        assert!(stats.error.unwrap().contains("after packet 5"));
    }

    #[test]
    fn not_a_capture_is_an_error_naming_the_file() {
        let err = PcapSource::new(
            Box::new(&b"{\"ts\":1}\n"[..]),
            "x.pcap".into(),
            Arc::default(),
        );
        assert!(err.err().unwrap().to_string().contains("x.pcap"));
    }

    proptest::proptest! {
        /// Any bytes after a valid header, and any bytes at all: no panic, and counters
        /// that add up.
        #[test]
        fn arbitrary_captures_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), raw: bool) {
            let mut bytes = if raw { Vec::new() } else { pcap(1, &session(Link::Ethernet)) };
            bytes.extend(tail);
            if let Ok(mut src) = PcapSource::new(Box::new(std::io::Cursor::new(bytes)), "p".into(), config().wire.clone()) {
                let mut reg = Registry::new(1000);
                while src.next_event(&mut reg).is_some() {}
                let w = src.stats().wire.clone().unwrap();
                proptest::prop_assert!(w.responses + w.unsolicited <= w.adus);
            }
        }
    }
}
