//! Packet captures (pcap and pcapng, as tcpdump, Wireshark or a tap write them) of
//! Modbus/TCP, turned into the events the live collector would have produced, plus what
//! only the wire shows.
//!
//! Packets → link layer (Ethernet with VLAN tags, Linux cooked v1/v2, BSD loopback, raw
//! IP) → IPv4/IPv6 → TCP, put back in order per direction ([`reassembly`]) → MBAP + PDU
//! ([`crate::protocol::frame`]) → requests paired with responses by transaction id and
//! unit id. A paired read of a device named in `[[modbus.devices]]` (server address and
//! unit id) becomes readings through that device's register map; every non-read
//! request becomes a [`Command`]; every exchange, and every frame that breaks the
//! protocol, becomes [`Traffic`] for the protocol detector.
//!
//! Bad input is counted per reason with its packet number and never stops the replay.

mod bacnet;
mod exchange;
mod link;
pub mod reassembly;
mod wire_map;

pub use wire_map::WireMap;

use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::Ts;
use crate::source::{BadReason, CaptureSource, FileStats};
use exchange::{close, packet_in, Conn, Emitter};
use link::{to_ms, Link};
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{Block, PcapBlockOwned, PcapError};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// `[pcap]` in `wattchdog.toml`: how packet captures are read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PcapConfig {
    /// TCP ports that carry Modbus besides 502 and the ports in `[[modbus.devices]]`.
    pub ports: Vec<u16>,
    /// UDP ports that carry BACnet/IP besides 47808 and the ports in
    /// `[[bacnet.devices]]`.
    pub bacnet_ports: Vec<u16>,
    /// A request still unanswered this long after it was sent (capture time) counts as
    /// unanswered. Default `"5s"`.
    #[serde(deserialize_with = "crate::time::serde_duration::deserialize")]
    pub response_timeout: i64,
}

impl Default for PcapConfig {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            bacnet_ports: Vec::new(),
            response_timeout: 5_000,
        }
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
    /// UDP datagrams on a BACnet/IP port.
    pub bacnet_datagrams: u64,
    /// BACnet requests other than reads and subscriptions (writes, device control).
    pub bacnet_commands: u64,
}

/// A pcap or pcapng capture as a source of events.
pub struct PcapSource {
    reader: Option<Box<dyn PcapReaderIterator + Send>>,
    /// The reader's buffer size: grown, as blocks need, up to `MAX_BLOCK`.
    capacity: usize,
    /// The last read error, which pcap-parser reduces to "Read error".
    read_error: ReadError,
    /// Link type and time base of each pcapng interface (or the pcap file's one).
    links: Vec<Link>,
    conns: FxHashMap<(SocketAddr, SocketAddr), Conn>,
    emit: Emitter,
    now: Ts,
    finished: bool,
}

/// The largest block read (a Modbus/TCP packet is far smaller; pcapng blocks with options
/// a little larger): a forged length past it ends the file, not the process's memory.
const MAX_BLOCK: usize = 1 << 28;

/// The error [`Remembering`] kept.
fn last_error(cell: &ReadError) -> Option<String> {
    cell.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Where [`Remembering`] keeps the last read error.
type ReadError = Arc<Mutex<Option<String>>>;

/// A reader that ends at its first error (e.g. a truncated gzip stream) and keeps it for
/// the report: pcap-parser drops a buffer it could not fill whole, so an error passed on
/// would lose the packets read before it, and it reduces every error to "Read error".
struct Remembering {
    inner: Box<dyn Read + Send>,
    last: ReadError,
}

impl Read for Remembering {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some() {
            return Ok(0);
        }
        self.inner.read(buf).or_else(|e| {
            *last = Some(e.to_string());
            Ok(0)
        })
    }
}

impl PcapSource {
    /// Opens a capture; a file that is neither pcap nor pcapng (an empty one included) is
    /// an error naming it.
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
        let read_error = ReadError::default();
        let reader = Remembering {
            inner: reader,
            last: read_error.clone(),
        };
        let capacity = 1 << 20;
        let reader = pcap_parser::create_reader(capacity, reader).map_err(|e| {
            let why = match (e, last_error(&read_error)) {
                (_, Some(error)) => format!("read error: {error}"),
                (PcapError::Eof, None) => {
                    "empty: a capture starts with a pcap or pcapng header".into()
                }
                (e, None) => format!("not a pcap or pcapng capture ({e})"),
            };
            super::SourceError::Format {
                path: name.clone(),
                message: why,
            }
        })?;
        Ok(Self {
            reader: Some(reader),
            capacity,
            read_error,
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
                Err(PcapError::Eof) => match last_error(&self.read_error) {
                    Some(error) => self.fail(&format!("read error: {error}")),
                    None => self.reader = None,
                },
                Err(PcapError::UnexpectedEof) => self.truncated(),
                Err(PcapError::Incomplete(_)) => {
                    if reader.reader_exhausted() {
                        self.truncated();
                    } else if reader.refill().is_err() {
                        self.fail("read error");
                    }
                }
                Err(PcapError::BufferTooSmall) => {
                    // Doubled only as the data arrives: a forged length in a short file
                    // meets its end, not a buffer of that length.
                    if self.capacity >= MAX_BLOCK {
                        self.fail("a block longer than 256 MiB");
                    } else {
                        self.capacity *= 2;
                        reader.grow(self.capacity);
                        if reader.refill().is_err() {
                            self.fail("read error");
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("{e}");
                    self.fail(&msg);
                }
            }
        }
    }

    /// The file ended inside a block: cut short, or a read failed there.
    fn truncated(&mut self) {
        let msg = match last_error(&self.read_error) {
            Some(error) => format!("read error: {error}"),
            None => "the capture ends inside a packet (truncated file)".into(),
        };
        self.fail(&msg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{Outcome, Traffic};
    use crate::model::Command;
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
    fn a_packet_longer_than_the_buffer_is_read_and_so_is_what_follows() {
        let mut pkts = session(Link::Ethernet);
        let jumbo = vec![0u8; 3 << 20]; // not IP: counted, skipped
        pkts.insert(0, (pkts[0].0, jumbo, 3 << 20));
        let (s, c, _, stats) = read(pcap(1, &pkts));
        assert_eq!((s.len(), c.len()), (2, 1));
        assert_eq!(stats.error, None);
    }

    #[test]
    fn a_forged_length_past_the_end_is_a_truncated_file() {
        let mut bytes = pcap(1, &session(Link::Ethernet));
        for v in [1_783_382_400u32, 0, 100 << 20, 100 << 20] {
            bytes.extend(v.to_le_bytes());
        }
        bytes.extend([0; 64]);
        let (s, _, _, stats) = read(bytes);
        assert_eq!(s.len(), 2);
        let error = stats.error.unwrap();
        assert!(
            error.contains("after packet 6: the capture ends inside a packet"),
            "{error}"
        );
    }

    /// Bytes, then an error, as a truncated gzip stream reads.
    struct FailsAfter(std::io::Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "incomplete deflate stream",
                )),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_read_error_keeps_what_came_before_and_is_named() {
        let mut bytes = pcap(1, &session(Link::Ethernet));
        bytes.truncate(bytes.len() - 10);
        let mut src = PcapSource::new(
            Box::new(FailsAfter(std::io::Cursor::new(bytes))),
            "t.pcap.gz".into(),
            config().wire.clone(),
        )
        .unwrap();
        let mut reg = Registry::new(100);
        let mut samples = 0;
        while let Some(ev) = src.next_event(&mut reg) {
            samples += usize::from(matches!(ev, Event::Sample { .. }));
        }
        assert_eq!(samples, 2);
        let error = src.stats().error.clone().unwrap();
        assert!(
            error.contains("after packet 5: read error: incomplete deflate stream"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_file_is_not_a_capture() {
        let err = PcapSource::new(Box::new(&b""[..]), "e.pcap".into(), Arc::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("e.pcap") && err.contains("empty"), "{err}");
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
