//! The simulated facility as a packet capture of Modbus/TCP (`simulate -o x.pcap`):
//! what a tap next to the facility's Modbus gateway would record.
//!
//! Every simulated second the BMS polls each device's read plan over one long-lived
//! connection; the registers hold the plant's values, encoded by the device's built-in
//! profile, exactly as `--serve-modbus` serves them. The scenarios' commands are sent
//! by their own clients (the attacker, the scanner, the BMS) on connections of their own
//! and answered as the gateway would: writes echoed or refused, diagnostics and
//! identification refused, unit ids that no device has answered with "gateway target
//! failed to respond". Packets are Ethernet/IPv4/TCP with real sequence numbers.

use super::serve::{served_devices, ServedDevice};
use super::{Facility, Label, SimError, SimEvent, SimOptions, Simulator};
use crate::model::Ts;
use crate::protocol::image::DeviceImage;
use crate::protocol::plan::{plan, PlanLimits, ReadRequest};
use crate::protocol::profiles;
use crate::protocol::registers::Table;
use etherparse::PacketBuilder;
use rustc_hash::FxHashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Where the simulated gateway listens.
pub const GATEWAY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 20, 0, 2), 502);
/// Read plans use the gap the written config uses (see `serve::run_config`).
const MAX_GAP: u16 = 16;
/// A device silent this long (event time) is answered for by the gateway.
const SILENT_AFTER: Ts = 5_000;
/// Unit ids of devices the facility does not have start here.
const UNKNOWN_UNITS: u8 = 200;

/// A classic pcap writer (microsecond timestamps, Ethernet).
struct PcapWriter<'a> {
    out: &'a mut dyn Write,
}

impl<'a> PcapWriter<'a> {
    fn new(out: &'a mut dyn Write) -> io::Result<Self> {
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65_535, 1] {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(Self { out })
    }

    fn packet(&mut self, ts_us: i64, frame: &[u8]) -> io::Result<()> {
        let (sec, us) = (ts_us.div_euclid(1_000_000), ts_us.rem_euclid(1_000_000));
        let len = frame.len() as u32;
        for v in [sec as u32, us as u32, len, len] {
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.write_all(frame)
    }
}

/// One TCP connection from a client to the gateway, with its sequence numbers.
struct Conn {
    client: SocketAddrV4,
    seq_up: u32,
    seq_down: u32,
    transaction: u16,
}

/// The wire: connections by client address, and the packet writer.
struct Wire<'a> {
    pcap: PcapWriter<'a>,
    /// The frame being built (reused).
    frame: Vec<u8>,
    conns: FxHashMap<Ipv4Addr, Conn>,
    next_port: u16,
}

impl Wire<'_> {
    /// Builds one packet into `frame`.
    fn build(frame: &mut Vec<u8>, up: bool, c: &Conn, flags: u8, payload: &[u8]) {
        let (src, dst) = if up {
            (c.client, GATEWAY)
        } else {
            (GATEWAY, c.client)
        };
        let mac = |a: &SocketAddrV4| {
            let o = a.ip().octets();
            [2, 0, o[0], o[1], o[2], o[3]]
        };
        let (seq, ack) = if up {
            (c.seq_up, c.seq_down)
        } else {
            (c.seq_down, c.seq_up)
        };
        let b = PacketBuilder::ethernet2(mac(&src), mac(&dst))
            .ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), seq, 64_240);
        let b = match flags {
            SYN => b.syn(),
            SYN_ACK => b.syn().ack(ack),
            _ => b.psh().ack(ack),
        };
        frame.clear();
        // Writing to a Vec cannot fail.
        let _ = b.write(frame, payload);
    }

    fn send(
        &mut self,
        ts_us: i64,
        up: bool,
        client: Ipv4Addr,
        flags: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&client) else {
            return Ok(());
        };
        Self::build(&mut self.frame, up, c, flags, payload);
        let step = payload.len() as u32 + u32::from(flags != DATA);
        if up {
            c.seq_up = c.seq_up.wrapping_add(step);
        } else {
            c.seq_down = c.seq_down.wrapping_add(step);
        }
        self.pcap.packet(ts_us, &self.frame)
    }

    /// The client's connection, opened with a handshake on first use.
    fn connect(&mut self, ts_us: i64, client: Ipv4Addr) -> io::Result<()> {
        if self.conns.contains_key(&client) {
            return Ok(());
        }
        let port = self.next_port;
        self.next_port = self.next_port.checked_add(1).unwrap_or(40_000);
        let isn = u32::from(client).rotate_left(7) ^ u32::from(port) << 16;
        self.conns.insert(
            client,
            Conn {
                client: SocketAddrV4::new(client, port),
                seq_up: isn,
                seq_down: isn ^ 0x5A5A_5A5A,
                transaction: 0,
            },
        );
        self.send(ts_us, true, client, SYN, &[])?;
        self.send(ts_us, false, client, SYN_ACK, &[])
    }

    /// One request and its response (if any) 400 µs later.
    fn exchange(
        &mut self,
        ts_us: i64,
        client: Ipv4Addr,
        unit: u8,
        req: &[u8],
        resp: Option<&[u8]>,
    ) -> io::Result<()> {
        self.connect(ts_us, client)?;
        let Some(c) = self.conns.get_mut(&client) else {
            return Ok(());
        };
        c.transaction = c.transaction.wrapping_add(1);
        let t = c.transaction;
        let adu = |pdu: &[u8]| {
            let mut v = Vec::with_capacity(7 + pdu.len());
            v.extend(t.to_be_bytes());
            v.extend([0, 0]);
            v.extend((pdu.len() as u16 + 1).to_be_bytes());
            v.push(unit);
            v.extend(pdu);
            v
        };
        self.send(ts_us, true, client, DATA, &adu(req))?;
        if let Some(resp) = resp {
            self.send(ts_us + 400, false, client, DATA, &adu(resp))?;
        }
        Ok(())
    }
}

const DATA: u8 = 0;
const SYN: u8 = 1;
const SYN_ACK: u8 = 2;

fn words_pdu(function: u8, words: &[u16]) -> Vec<u8> {
    let mut v = vec![function];
    if function <= 2 {
        let mut bytes = vec![0u8; words.len().div_ceil(8)];
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        v.push(bytes.len() as u8);
        v.extend(bytes);
    } else {
        v.push((words.len() * 2) as u8);
        for w in words {
            v.extend(w.to_be_bytes());
        }
    }
    v
}

fn read_pdu(r: &ReadRequest) -> Vec<u8> {
    let mut v = vec![r.function()];
    v.extend(r.start.to_be_bytes());
    v.extend(r.count.to_be_bytes());
    v
}

/// Runs the simulation and writes it as a pcap; returns the labels.
pub fn simulate_pcap(
    f: &Facility,
    opts: &SimOptions,
    out: &mut dyn Write,
) -> Result<Vec<Label>, SimError> {
    let mut sim = Simulator::new(f.clone(), opts)?;
    let served = served_devices(&sim)?;
    let mut images = Vec::with_capacity(served.len());
    for d in &served {
        let map = profiles::builtin(d.profile)
            .ok_or_else(|| {
                SimError::Io(io::Error::other(format!(
                    "no built-in profile {}",
                    d.profile
                )))
            })?
            .map_err(|e| SimError::Io(io::Error::other(e.to_string())))?;
        images.push(DeviceImage::new(map));
    }
    let limits = PlanLimits {
        max_gap: MAX_GAP,
        ..PlanLimits::default()
    };
    let plans: Vec<Vec<ReadRequest>> = images.iter().map(|i| plan(i.map(), &limits)).collect();
    let index: FxHashMap<&str, usize> = served
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    let bms: Ipv4Addr = f.bms_client.parse().unwrap_or(Ipv4Addr::new(10, 20, 0, 5));
    let mut wire = Wire {
        pcap: PcapWriter::new(out)?,
        frame: Vec::with_capacity(512),
        conns: FxHashMap::default(),
        next_port: 40_000,
    };
    let mut commands: Vec<(String, String, u8, u32, u16)> = Vec::new();
    let mut reported: Vec<Ts> = vec![Ts::MIN; served.len()];
    while !sim.done() {
        let mut now: Ts = 0;
        sim.step(&mut |ts, ev| {
            now = ts;
            match ev {
                SimEvent::Reading {
                    device,
                    metric,
                    value,
                    ..
                } => {
                    if let Some(&i) = index.get(device) {
                        images[i].set(metric, value);
                        reported[i] = ts;
                    }
                }
                SimEvent::Command {
                    device,
                    client,
                    function,
                    address,
                    value,
                } => commands.push((
                    device.to_owned(),
                    client.to_owned(),
                    function,
                    address,
                    value,
                )),
            }
            Ok(())
        })?;
        let mut us = now * 1000;
        for (device, client, function, address, value) in commands.drain(..) {
            let client: Ipv4Addr = client.parse().unwrap_or(bms);
            let (unit, resp) = answer(
                &served,
                &mut images,
                &index,
                &device,
                function,
                address,
                value,
            );
            let mut req = vec![function];
            if function == 8 {
                req.extend([0, 0, 0x12, 0x34]);
            } else if function == 43 {
                req.extend([14, 1, 0]);
            } else if function != 17 {
                req.extend((address as u16).to_be_bytes());
                req.extend(value.to_be_bytes());
            }
            wire.exchange(us, client, unit, &req, resp.as_deref())?;
            us += 1_000;
        }
        for (i, d) in served.iter().enumerate() {
            // A device the plant stopped reporting (a blackout) no longer answers: the
            // gateway says so.
            let silent = now - reported[i] > SILENT_AFTER;
            for r in &plans[i] {
                let resp = match images[i].read(r.table, r.start, r.count) {
                    _ if silent => vec![r.function() | 0x80, 0x0B],
                    Ok(words) => words_pdu(r.function(), &words),
                    Err(_) => vec![r.function() | 0x80, 2],
                };
                wire.exchange(us, bms, d.unit, &read_pdu(r), Some(&resp))?;
                us += 1_000;
            }
        }
    }
    wire.pcap.out.flush()?;
    Ok(sim.labels())
}

/// The gateway's unit id for a device name, and its response to a command.
fn answer(
    served: &[ServedDevice],
    images: &mut [DeviceImage],
    index: &FxHashMap<&str, usize>,
    device: &str,
    function: u8,
    address: u32,
    value: u16,
) -> (u8, Option<Vec<u8>>) {
    let Some(&i) = index.get(device) else {
        // A unit id nobody has: the gateway answers for the missing device.
        let n = device
            .strip_prefix("unit-")
            .and_then(|n| n.parse::<u8>().ok())
            .unwrap_or(0);
        return (
            UNKNOWN_UNITS.saturating_add(n).min(247),
            Some(vec![function | 0x80, 0x0B]),
        );
    };
    let unit = served[i].unit;
    let (table, words) = match function {
        5 => (Table::Coil, vec![u16::from(value == 0xFF00)]),
        6 => (Table::Holding, vec![value]),
        _ => return (unit, Some(vec![function | 0x80, 1])),
    };
    let resp = match images[i].write(table, address as u16, &words) {
        Ok(_) => {
            let mut v = vec![function];
            v.extend((address as u16).to_be_bytes());
            v.extend(value.to_be_bytes());
            v
        }
        Err(_) => vec![function | 0x80, 2],
    };
    (unit, Some(resp))
}

/// A `wattchdog.toml` that maps the gateway's unit ids to the facility's devices, for
/// replaying the capture.
pub fn replay_config(sim_devices: &[ServedDevice], site: &str) -> String {
    let mut s = format!(
        "# Decodes `wattchdog simulate -o x.pcap`: the devices behind the simulated gateway.\n\
         [modbus]\nsite = \"{site}\"\n"
    );
    for d in sim_devices {
        s += &format!(
            "\n[[modbus.devices]]\nname = \"{}\"\naddress = \"{GATEWAY}\"\nunit = {}\nprofile = \"{}\"\n",
            d.name, d.unit, d.profile
        );
    }
    s
}

/// The devices a facility's capture will have, for [`replay_config`].
pub fn devices(f: &Facility, opts: &SimOptions) -> Result<Vec<ServedDevice>, SimError> {
    served_devices(&Simulator::new(f.clone(), opts)?)
}
