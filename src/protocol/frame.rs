//! Modbus/TCP frames off the wire: the MBAP header and the PDU of every public function
//! code, in both directions, checked against the specification's limits. Bytes come from
//! packet captures, so everything here is untrusted: every length is checked before it is
//! used, and nothing panics (a fuzz target and a property test hold it to that).
//!
//! Requests and responses share function codes but not layouts, so each direction has
//! its own parser; [`check_pair`] then says whether a response fits the request it
//! answers (a read of 2 registers answered with 40 bytes is a forged or broken frame).

use thiserror::Error;

/// MBAP header length (transaction id, protocol id, length, unit id).
pub const MBAP_LEN: usize = 7;
/// Largest PDU the specification allows (an ADU is at most 260 bytes).
pub const MAX_PDU: usize = 253;

/// The MBAP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mbap {
    /// Transaction id, echoed by the server.
    pub transaction: u16,
    /// Protocol id (0 for Modbus).
    pub protocol: u16,
    /// Bytes that follow the length field (unit id + PDU).
    pub length: u16,
    /// Unit id.
    pub unit: u8,
}

/// Why bytes are not a Modbus frame; the snake_case name is the report key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Protocol id is not 0: not Modbus (or out of step with the stream).
    #[error("protocol id {0} is not Modbus (0)")]
    NotModbus(u16),
    /// The MBAP length cannot hold a function code, or exceeds the 254-byte maximum.
    #[error("MBAP length {0} is outside 2..=254")]
    BadLength(u16),
    /// The PDU is shorter or longer than its function's layout says.
    #[error("function {function}: {detail}")]
    Layout {
        /// Function code.
        function: u8,
        /// What does not fit.
        detail: &'static str,
    },
}

impl FrameError {
    /// The report key.
    pub fn key(&self) -> &'static str {
        match self {
            Self::NotModbus(_) => "not_modbus",
            Self::BadLength(_) => "bad_mbap_length",
            Self::Layout { .. } => "bad_pdu_layout",
        }
    }
}

/// Reads an MBAP header from the start of `bytes`: `Ok(None)` if fewer than 7 bytes are
/// there yet, an error if the header cannot start a Modbus frame.
pub fn mbap(bytes: &[u8]) -> Result<Option<Mbap>, FrameError> {
    let Some(h) = bytes.get(..MBAP_LEN) else {
        return Ok(None);
    };
    let m = Mbap {
        transaction: u16::from_be_bytes([h[0], h[1]]),
        protocol: u16::from_be_bytes([h[2], h[3]]),
        length: u16::from_be_bytes([h[4], h[5]]),
        unit: h[6],
    };
    if m.protocol != 0 {
        return Err(FrameError::NotModbus(m.protocol));
    }
    if !(2..=(MAX_PDU as u16 + 1)).contains(&m.length) {
        return Err(FrameError::BadLength(m.length));
    }
    Ok(Some(m))
}

impl Mbap {
    /// Length of the whole ADU (header + PDU).
    pub fn adu_len(&self) -> usize {
        6 + usize::from(self.length)
    }
}

/// A request PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// 1 read coils, 2 read discrete inputs, 3 read holding, 4 read input registers.
    Read {
        /// 1..=4.
        function: u8,
        /// First address.
        address: u16,
        /// Bits (1..=2000) or registers (1..=125).
        count: u16,
    },
    /// 5 write single coil (value 0xFF00 or 0x0000).
    WriteCoil {
        /// Address.
        address: u16,
        /// On or off.
        on: bool,
    },
    /// 6 write single register.
    WriteRegister {
        /// Address.
        address: u16,
        /// Value.
        value: u16,
    },
    /// 15 write multiple coils.
    WriteCoils {
        /// First address.
        address: u16,
        /// Coils (1..=1968).
        count: u16,
        /// Packed bits, LSB first.
        bits: &'a [u8],
    },
    /// 16 write multiple registers.
    WriteRegisters {
        /// First address.
        address: u16,
        /// Big-endian words (1..=123).
        words: &'a [u8],
    },
    /// 22 mask write register.
    MaskWrite {
        /// Address.
        address: u16,
        /// AND mask.
        and: u16,
        /// OR mask.
        or: u16,
    },
    /// 23 read/write multiple registers.
    ReadWrite {
        /// First address read.
        read_address: u16,
        /// Registers read (1..=125).
        read_count: u16,
        /// First address written.
        write_address: u16,
        /// Big-endian words written (1..=121).
        words: &'a [u8],
    },
    /// 24 read FIFO queue.
    ReadFifo {
        /// FIFO pointer address.
        address: u16,
    },
    /// 8 diagnostics.
    Diagnostics {
        /// Sub-function.
        sub: u16,
    },
    /// 43 encapsulated interface transport (14 = read device identification).
    Encapsulated {
        /// MEI type.
        mei: u8,
    },
    /// 7, 11, 12, 17 (no data) and 20, 21 (file records); and any other code (user
    /// defined 65–72 and 100–110, or not Modbus at all), carried as it came.
    Other {
        /// Function code.
        function: u8,
        /// The bytes after the function code.
        data: &'a [u8],
    },
}

/// A response PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    /// Data of a read (1–4, 23): the bytes after the byte count.
    Data {
        /// Function code.
        function: u8,
        /// Register words (big-endian) or packed bits.
        bytes: &'a [u8],
    },
    /// Echo of a write: 5 and 6 echo address and value, 15 and 16 address and count,
    /// 22 address and masks (`extra`).
    WriteEcho {
        /// Function code.
        function: u8,
        /// Address.
        address: u16,
        /// Value (5, 6) or count (15, 16) or AND mask (22).
        value: u16,
        /// OR mask (22 only).
        extra: u16,
    },
    /// An exception: the request's function with the high bit set, and a code.
    Exception {
        /// The request's function code (high bit cleared).
        function: u8,
        /// Exception code (1 illegal function, 2 illegal address, 3 illegal value, …).
        code: u8,
    },
    /// Anything else (diagnostics echoes, identification objects, FIFO contents, …).
    Other {
        /// Function code.
        function: u8,
        /// The bytes after the function code.
        data: &'a [u8],
    },
}

fn be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn layout(function: u8, detail: &'static str) -> FrameError {
    FrameError::Layout { function, detail }
}

/// Parses a request PDU (function code first).
pub fn parse_request(pdu: &[u8]) -> Result<Request<'_>, FrameError> {
    let Some((&function, data)) = pdu.split_first() else {
        return Err(layout(0, "empty PDU"));
    };
    let exact = |n: usize| {
        if data.len() == n {
            Ok(())
        } else {
            Err(layout(function, "wrong request length"))
        }
    };
    Ok(match function {
        1..=4 => {
            exact(4)?;
            let (address, count) = (be(data, 0), be(data, 2));
            let max = if function <= 2 { 2000 } else { 125 };
            if count == 0 || count > max {
                return Err(layout(function, "read quantity out of range"));
            }
            Request::Read {
                function,
                address,
                count,
            }
        }
        5 => {
            exact(4)?;
            let on = match be(data, 2) {
                0xFF00 => true,
                0x0000 => false,
                _ => return Err(layout(5, "coil value is neither 0xFF00 nor 0x0000")),
            };
            Request::WriteCoil {
                address: be(data, 0),
                on,
            }
        }
        6 => {
            exact(4)?;
            Request::WriteRegister {
                address: be(data, 0),
                value: be(data, 2),
            }
        }
        15 => {
            let (address, count, bits) = multiple(function, data, 1968)?;
            if bits.len() != usize::from(count).div_ceil(8) {
                return Err(layout(15, "byte count does not match the coil count"));
            }
            Request::WriteCoils {
                address,
                count,
                bits,
            }
        }
        16 => {
            let (address, count, words) = multiple(function, data, 123)?;
            if words.len() != usize::from(count) * 2 {
                return Err(layout(16, "byte count does not match the register count"));
            }
            Request::WriteRegisters { address, words }
        }
        22 => {
            exact(6)?;
            Request::MaskWrite {
                address: be(data, 0),
                and: be(data, 2),
                or: be(data, 4),
            }
        }
        23 => {
            if data.len() < 9 {
                return Err(layout(23, "too short"));
            }
            let (read_count, write_count) = (be(data, 2), be(data, 6));
            let words = &data[9..];
            if !(1..=125).contains(&read_count)
                || !(1..=121).contains(&write_count)
                || usize::from(data[8]) != usize::from(write_count) * 2
                || words.len() != usize::from(data[8])
            {
                return Err(layout(23, "quantities and byte count do not agree"));
            }
            Request::ReadWrite {
                read_address: be(data, 0),
                read_count,
                write_address: be(data, 4),
                words,
            }
        }
        24 => {
            exact(2)?;
            Request::ReadFifo {
                address: be(data, 0),
            }
        }
        8 => {
            if data.len() < 2 {
                return Err(layout(8, "no sub-function"));
            }
            Request::Diagnostics { sub: be(data, 0) }
        }
        43 => {
            let Some(&mei) = data.first() else {
                return Err(layout(43, "no MEI type"));
            };
            Request::Encapsulated { mei }
        }
        7 | 11 | 12 | 17 => {
            exact(0)?;
            Request::Other { function, data }
        }
        0 | 128..=255 => return Err(layout(function, "not a request function code")),
        _ => Request::Other { function, data },
    })
}

/// Address, quantity and the payload of 15/16 requests, with the byte count checked.
fn multiple(function: u8, data: &[u8], max: u16) -> Result<(u16, u16, &[u8]), FrameError> {
    if data.len() < 5 {
        return Err(layout(function, "too short"));
    }
    let count = be(data, 2);
    let payload = &data[5..];
    if count == 0 || count > max || usize::from(data[4]) != payload.len() {
        return Err(layout(function, "quantity or byte count out of range"));
    }
    Ok((be(data, 0), count, payload))
}

/// Parses a response PDU (function code first).
pub fn parse_response(pdu: &[u8]) -> Result<Response<'_>, FrameError> {
    let Some((&function, data)) = pdu.split_first() else {
        return Err(layout(0, "empty PDU"));
    };
    if function & 0x80 != 0 {
        if data.len() != 1 {
            return Err(layout(function, "exception response is not one byte"));
        }
        return Ok(Response::Exception {
            function: function & 0x7F,
            code: data[0],
        });
    }
    Ok(match function {
        1..=4 | 23 => {
            let Some((&n, bytes)) = data.split_first() else {
                return Err(layout(function, "no byte count"));
            };
            if usize::from(n) != bytes.len() || (function >= 3 && n % 2 != 0) {
                return Err(layout(function, "byte count does not match the data"));
            }
            Response::Data { function, bytes }
        }
        5 | 6 | 15 | 16 => {
            if data.len() != 4 {
                return Err(layout(function, "wrong echo length"));
            }
            Response::WriteEcho {
                function,
                address: be(data, 0),
                value: be(data, 2),
                extra: 0,
            }
        }
        22 => {
            if data.len() != 6 {
                return Err(layout(22, "wrong echo length"));
            }
            Response::WriteEcho {
                function,
                address: be(data, 0),
                value: be(data, 2),
                extra: be(data, 4),
            }
        }
        0 => return Err(layout(0, "function code 0")),
        _ => Response::Other { function, data },
    })
}

impl Request<'_> {
    /// Function code.
    pub fn function(&self) -> u8 {
        match self {
            Self::Read { function, .. } | Self::Other { function, .. } => *function,
            Self::WriteCoil { .. } => 5,
            Self::WriteRegister { .. } => 6,
            Self::WriteCoils { .. } => 15,
            Self::WriteRegisters { .. } => 16,
            Self::MaskWrite { .. } => 22,
            Self::ReadWrite { .. } => 23,
            Self::ReadFifo { .. } => 24,
            Self::Diagnostics { .. } => 8,
            Self::Encapsulated { .. } => 43,
        }
    }

    /// The first address the request touches (0 where it has none).
    pub fn address(&self) -> u16 {
        match self {
            Self::Read { address, .. }
            | Self::WriteCoil { address, .. }
            | Self::WriteRegister { address, .. }
            | Self::WriteCoils { address, .. }
            | Self::WriteRegisters { address, .. }
            | Self::MaskWrite { address, .. }
            | Self::ReadFifo { address } => *address,
            Self::ReadWrite { write_address, .. } => *write_address,
            Self::Diagnostics { sub, .. } => *sub,
            Self::Encapsulated { mei } => u16::from(*mei),
            Self::Other { .. } => 0,
        }
    }

    /// Registers or bits read or written.
    pub fn count(&self) -> u16 {
        match self {
            Self::Read { count, .. } | Self::WriteCoils { count, .. } => *count,
            Self::WriteRegisters { words, .. } | Self::ReadWrite { words, .. } => {
                (words.len() / 2) as u16
            }
            Self::WriteCoil { .. } | Self::WriteRegister { .. } | Self::MaskWrite { .. } => 1,
            _ => 0,
        }
    }

    /// Values written, as the design's `Command.values`: register words, or 0/1 per coil.
    /// Empty for requests that write nothing.
    pub fn written(&self) -> Vec<u16> {
        match self {
            Self::WriteCoil { on, .. } => vec![u16::from(*on)],
            Self::WriteRegister { value, .. } => vec![*value],
            Self::WriteCoils { count, bits, .. } => (0..usize::from(*count))
                .map(|i| u16::from(bits[i / 8] >> (i % 8) & 1))
                .collect(),
            Self::WriteRegisters { words, .. } | Self::ReadWrite { words, .. } => words
                .chunks_exact(2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
                .collect(),
            Self::MaskWrite { and, or, .. } => vec![*and, *or],
            _ => Vec::new(),
        }
    }
}

/// Whether a function code writes (changes the device's state).
pub fn is_write(function: u8) -> bool {
    matches!(function, 5 | 6 | 15 | 16 | 21 | 22 | 23)
}

/// Says whether `resp` can answer `req`: same function (or its exception), and a size
/// or echo that fits the request.
pub fn check_pair(req: &Request<'_>, resp: &Response<'_>) -> Result<(), &'static str> {
    let f = req.function();
    match resp {
        Response::Exception { function, .. } if *function == f => Ok(()),
        Response::Exception { .. } => Err("exception for another function"),
        Response::Data { function, bytes } if *function == f => {
            let want = match req {
                Request::Read {
                    function, count, ..
                } if *function <= 2 => usize::from(*count).div_ceil(8),
                Request::Read { count, .. } => usize::from(*count) * 2,
                Request::ReadWrite { read_count, .. } => usize::from(*read_count) * 2,
                _ => return Err("data response to a request that reads nothing"),
            };
            if bytes.len() == want {
                Ok(())
            } else {
                Err("response size does not match the request")
            }
        }
        Response::WriteEcho {
            function,
            address,
            value,
            extra,
        } if *function == f => {
            let fits = match req {
                Request::WriteCoil { address: a, on } => {
                    a == address && *value == if *on { 0xFF00 } else { 0 }
                }
                Request::WriteRegister {
                    address: a,
                    value: v,
                } => a == address && v == value,
                Request::WriteCoils {
                    address: a, count, ..
                } => a == address && count == value,
                Request::WriteRegisters { address: a, words } => {
                    a == address && usize::from(*value) == words.len() / 2
                }
                Request::MaskWrite {
                    address: a,
                    and,
                    or,
                } => a == address && and == value && or == extra,
                _ => false,
            };
            if fits {
                Ok(())
            } else {
                Err("write echo differs from the request")
            }
        }
        Response::Other { function, .. } if *function == f => Ok(()),
        _ => Err("response function differs from the request"),
    }
}

/// Register words of a data response (big-endian pairs).
pub fn words(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
}

/// Bits of a data response as 0/1 words, `count` of them.
pub fn bits(bytes: &[u8], count: u16) -> impl Iterator<Item = u16> + '_ {
    (0..usize::from(count))
        .map(move |i| u16::from(bytes.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mbap_needs_seven_bytes_and_protocol_zero() {
        assert_eq!(mbap(&[0, 1, 0, 0, 0, 6]), Ok(None));
        let h = mbap(&[0, 1, 0, 0, 0, 6, 9]).unwrap().unwrap();
        assert_eq!(
            (h.transaction, h.length, h.unit, h.adu_len()),
            (1, 6, 9, 12)
        );
        assert_eq!(mbap(&[0, 1, 0, 1, 0, 6, 9]), Err(FrameError::NotModbus(1)));
        assert_eq!(
            mbap(&[0, 1, 0, 0, 1, 0, 9]),
            Err(FrameError::BadLength(256))
        );
        assert_eq!(mbap(&[0, 1, 0, 0, 0, 1, 9]), Err(FrameError::BadLength(1)));
    }

    #[test]
    fn reads_and_their_responses() {
        let req = parse_request(&[3, 0x03, 0xE8, 0, 2]).unwrap();
        assert_eq!(
            req,
            Request::Read {
                function: 3,
                address: 1000,
                count: 2
            }
        );
        let ok = parse_response(&[3, 4, 0x02, 0xBC, 0xFF, 0x38]).unwrap();
        assert_eq!(check_pair(&req, &ok), Ok(()));
        let Response::Data { bytes, .. } = ok else {
            panic!()
        };
        assert_eq!(words(bytes).collect::<Vec<_>>(), [700, 0xFF38]);
        let long = parse_response(&[3, 6, 0, 1, 0, 2, 0, 3]).unwrap();
        assert!(check_pair(&req, &long).is_err(), "more data than asked for");
        assert!(
            parse_request(&[3, 0, 0, 0, 126]).is_err(),
            "over 125 registers"
        );
        assert!(
            parse_request(&[1, 0, 0, 0x07, 0xD1]).is_err(),
            "over 2000 bits"
        );
        let coils = parse_request(&[1, 0, 0, 0, 10]).unwrap();
        let r = parse_response(&[1, 2, 0b0000_0101, 0b10]).unwrap();
        assert_eq!(check_pair(&coils, &r), Ok(()));
        let Response::Data { bytes, .. } = r else {
            panic!()
        };
        assert_eq!(
            bits(bytes, 10).collect::<Vec<_>>(),
            [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn writes_carry_their_values_and_must_be_echoed() {
        let w = parse_request(&[6, 0x04, 0xB1, 0x05, 0x14]).unwrap();
        assert_eq!(
            (w.function(), w.address(), w.written()),
            (6, 1201, vec![1300])
        );
        assert_eq!(
            check_pair(&w, &parse_response(&[6, 0x04, 0xB1, 0x05, 0x14]).unwrap()),
            Ok(())
        );
        assert!(check_pair(&w, &parse_response(&[6, 0x04, 0xB1, 0, 1]).unwrap()).is_err());
        let c = parse_request(&[5, 0, 7, 0xFF, 0]).unwrap();
        assert_eq!(c.written(), [1]);
        assert!(parse_request(&[5, 0, 7, 0x12, 0x34]).is_err());
        let m = parse_request(&[16, 0, 10, 0, 2, 4, 0, 1, 0, 2]).unwrap();
        assert_eq!((m.count(), m.written()), (2, vec![1, 2]));
        assert!(
            parse_request(&[16, 0, 10, 0, 2, 4, 0, 1]).is_err(),
            "byte count lies"
        );
        let mc = parse_request(&[15, 0, 0, 0, 3, 1, 0b101]).unwrap();
        assert_eq!(mc.written(), [1, 0, 1]);
        let rw = parse_request(&[23, 0, 1, 0, 2, 0, 9, 0, 1, 2, 0xAB, 0xCD]).unwrap();
        assert_eq!(
            (rw.function(), rw.address(), rw.written()),
            (23, 9, vec![0xABCD])
        );
        assert!(is_write(23) && is_write(5) && !is_write(3) && !is_write(43));
    }

    #[test]
    fn exceptions_and_diagnostics() {
        let e = parse_response(&[0x83, 2]).unwrap();
        assert_eq!(
            e,
            Response::Exception {
                function: 3,
                code: 2
            }
        );
        let req = parse_request(&[3, 0, 0, 0, 1]).unwrap();
        assert_eq!(check_pair(&req, &e), Ok(()));
        assert!(check_pair(&parse_request(&[4, 0, 0, 0, 1]).unwrap(), &e).is_err());
        assert_eq!(
            parse_request(&[8, 0, 0, 0xA5, 0x37]).unwrap(),
            Request::Diagnostics { sub: 0 }
        );
        assert_eq!(
            parse_request(&[43, 14, 1, 0]).unwrap(),
            Request::Encapsulated { mei: 14 }
        );
        assert_eq!(parse_request(&[17]).unwrap().function(), 17);
        assert!(parse_request(&[17, 1]).is_err());
        assert_eq!(
            parse_request(&[90, 1, 2]).unwrap().function(),
            90,
            "vendor codes pass"
        );
        assert!(
            parse_request(&[0x83, 0]).is_err(),
            "exception codes are not requests"
        );
        assert!(parse_response(&[0x83]).is_err());
    }

    proptest! {
        /// Any bytes: the parsers return, and whatever they accept stays inside its input.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = mbap(&bytes);
            if let Ok(r) = parse_request(&bytes) {
                prop_assert!(r.written().len() <= 1968);
                let _ = (r.address(), r.count());
                if let Ok(p) = parse_response(&bytes) {
                    let _ = check_pair(&r, &p);
                }
            }
            if let Ok(Response::Data { bytes: b, .. }) = parse_response(&bytes) {
                prop_assert!(b.len() < bytes.len());
            }
        }

        /// A well-formed read request round-trips.
        #[test]
        fn read_requests_round_trip(function in 1u8..=4, address: u16, count in 1u16..=125) {
            let [a0, a1] = address.to_be_bytes();
            let [c0, c1] = count.to_be_bytes();
            let bytes = [function, a0, a1, c0, c1];
            let r = parse_request(&bytes).unwrap();
            prop_assert_eq!(r, Request::Read { function, address, count });
        }
    }
}
