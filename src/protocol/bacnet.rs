//! BACnet/IP (ASHRAE 135, Annex J) as far as wattchdog speaks it: the BVLC and NPDU
//! headers, the APDU envelopes, the tag encoding (clause 20.2) and the services a
//! read-only collector and a simulated device need — Who-Is/I-Am, ReadProperty,
//! ReadPropertyMultiple, SubscribeCOV and COV notifications — plus WriteProperty and
//! WritePropertyMultiple decoded so that a write seen on the wire can be judged.
//!
//! Pure, no I/O. Every decoder takes bytes an attacker may have written: lengths are
//! checked against what is there, nesting and value counts are bounded, and nothing
//! panics (fuzzed by `fuzz/fuzz_targets/bacnet_datagram.rs`, property-tested below).
//!
//! `bacnet-rs` 0.3.2 was evaluated first: its codec types are public, but its decoders
//! recognise constructed values by position (an RPM result's opening tag by its length
//! octet, a value list by "the next tag is application-class"), it has no bounds on
//! list sizes, and its client is synchronous; the subset needed here is small enough to
//! own and fuzz.

use std::fmt;

/// The standard UDP port (0xBAC0).
pub const PORT: u16 = 47808;
/// Values one property may carry (an object list of a big controller is a few
/// thousand; more is refused rather than allocated).
pub const MAX_VALUES: usize = 4096;
/// Nesting of constructed values skipped or read.
const MAX_DEPTH: usize = 8;
/// Largest APDU a device may accept without segmentation (B/IP: 1476).
pub const MAX_APDU: usize = 1476;

/// Object types used in maps (clause 21, `BACnetObjectType`).
pub mod object_type {
    #![allow(missing_docs)]
    pub const ANALOG_INPUT: u16 = 0;
    pub const ANALOG_OUTPUT: u16 = 1;
    pub const ANALOG_VALUE: u16 = 2;
    pub const BINARY_INPUT: u16 = 3;
    pub const BINARY_OUTPUT: u16 = 4;
    pub const BINARY_VALUE: u16 = 5;
    pub const DEVICE: u16 = 8;
    pub const MULTI_STATE_INPUT: u16 = 13;
    pub const MULTI_STATE_OUTPUT: u16 = 14;
    pub const MULTI_STATE_VALUE: u16 = 19;

    /// Names as written in maps (and by bacpypes3), with their numbers.
    pub const NAMES: [(&str, u16); 10] = [
        ("analog-input", ANALOG_INPUT),
        ("analog-output", ANALOG_OUTPUT),
        ("analog-value", ANALOG_VALUE),
        ("binary-input", BINARY_INPUT),
        ("binary-output", BINARY_OUTPUT),
        ("binary-value", BINARY_VALUE),
        ("device", DEVICE),
        ("multi-state-input", MULTI_STATE_INPUT),
        ("multi-state-output", MULTI_STATE_OUTPUT),
        ("multi-state-value", MULTI_STATE_VALUE),
    ];
}

/// Property identifiers used (clause 21, `BACnetPropertyIdentifier`).
pub mod property {
    #![allow(missing_docs)]
    pub const COV_INCREMENT: u32 = 22;
    pub const MAX_APDU_LENGTH_ACCEPTED: u32 = 62;
    pub const OBJECT_IDENTIFIER: u32 = 75;
    pub const OBJECT_LIST: u32 = 76;
    pub const OBJECT_NAME: u32 = 77;
    pub const OBJECT_TYPE: u32 = 79;
    pub const OUT_OF_SERVICE: u32 = 81;
    pub const PRESENT_VALUE: u32 = 85;
    pub const RELIABILITY: u32 = 103;
    pub const SEGMENTATION_SUPPORTED: u32 = 107;
    pub const STATUS_FLAGS: u32 = 111;
    pub const SYSTEM_STATUS: u32 = 112;
    pub const UNITS: u32 = 117;
    pub const VENDOR_IDENTIFIER: u32 = 120;
    pub const VENDOR_NAME: u32 = 121;
}

/// Confirmed service choices (clause 21, `BACnetConfirmedServiceChoice`).
pub mod confirmed {
    #![allow(missing_docs)]
    pub const COV_NOTIFICATION: u8 = 1;
    pub const SUBSCRIBE_COV: u8 = 5;
    pub const READ_PROPERTY: u8 = 12;
    pub const READ_PROPERTY_MULTIPLE: u8 = 14;
    pub const WRITE_PROPERTY: u8 = 15;
    pub const WRITE_PROPERTY_MULTIPLE: u8 = 16;
}

/// Unconfirmed service choices.
pub mod unconfirmed {
    #![allow(missing_docs)]
    pub const I_AM: u8 = 0;
    pub const COV_NOTIFICATION: u8 = 2;
    pub const WHO_IS: u8 = 8;
}

/// Error classes and codes answered by the simulated device.
pub mod error {
    #![allow(missing_docs)]
    pub const CLASS_OBJECT: u32 = 1;
    pub const CLASS_PROPERTY: u32 = 2;
    pub const CLASS_SERVICES: u32 = 5;
    pub const UNKNOWN_OBJECT: u32 = 31;
    pub const UNKNOWN_PROPERTY: u32 = 32;
    pub const WRITE_ACCESS_DENIED: u32 = 40;
    pub const SERVICE_REQUEST_DENIED: u32 = 29;
    /// Reject reason `unrecognized-service`.
    pub const REJECT_UNRECOGNIZED_SERVICE: u8 = 9;
    /// Reject reason `invalid-tag`.
    pub const REJECT_INVALID_TAG: u8 = 4;
    /// Abort reason `segmentation-not-supported`.
    pub const ABORT_SEGMENTATION_NOT_SUPPORTED: u8 = 4;
}

/// Why bytes are not the BACnet they claim to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header or length announces.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Not a BACnet/IP datagram (BVLC type, NPDU version, length field).
    #[error("not BACnet/IP: {0}")]
    NotBacnet(&'static str),
    /// A tag other than the one the grammar requires.
    #[error("unexpected tag at byte {0}")]
    Tag(usize),
    /// A value that does not fit (an unsigned of 9 octets, a real of 3).
    #[error("bad value at byte {0}")]
    Value(usize),
    /// More values or nesting than accepted.
    #[error("too large at byte {0}")]
    TooLarge(usize),
}

type Result<T> = std::result::Result<T, DecodeError>;

/// A BACnet object identifier: type and instance (22 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    /// Object type number.
    pub kind: u16,
    /// Instance number, `0..=4194303`.
    pub instance: u32,
}

impl ObjectId {
    /// The largest instance (also "any device" in a Who-Is).
    pub const MAX_INSTANCE: u32 = 0x3F_FFFF;

    /// A device object.
    pub fn device(instance: u32) -> Self {
        Self {
            kind: object_type::DEVICE,
            instance,
        }
    }

    /// Its 32-bit encoding.
    pub fn to_u32(self) -> u32 {
        (u32::from(self.kind) << 22) | (self.instance & Self::MAX_INSTANCE)
    }

    /// From its 32-bit encoding (type × 2²² + instance).
    pub fn from_u32(v: u32) -> Self {
        Self {
            kind: (v >> 22) as u16,
            instance: v & Self::MAX_INSTANCE,
        }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match object_type::NAMES.iter().find(|(_, k)| *k == self.kind) {
            Some((name, _)) => write!(f, "{name}:{}", self.instance),
            None => write!(f, "{}:{}", self.kind, self.instance),
        }
    }
}

impl std::str::FromStr for ObjectId {
    type Err = String;

    /// `analog-input:1` (or `analog-input,1` as bacpypes3 writes it, or `0:1`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not type:instance (e.g. analog-input:1)");
        let (kind, instance) = s.split_once([':', ',']).ok_or_else(bad)?;
        let kind = match object_type::NAMES.iter().find(|(n, _)| *n == kind.trim()) {
            Some((_, k)) => *k,
            None => kind
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|k| *k < 1024)
                .ok_or_else(bad)?,
        };
        let instance = instance
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|i| *i <= Self::MAX_INSTANCE)
            .ok_or_else(bad)?;
        Ok(Self { kind, instance })
    }
}

/// An application-tagged value (clause 20.2.1.4).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Null (a relinquished priority).
    Null,
    /// Boolean.
    Bool(bool),
    /// Unsigned integer.
    Unsigned(u64),
    /// Signed integer.
    Signed(i64),
    /// IEEE-754 single.
    Real(f32),
    /// IEEE-754 double.
    Double(f64),
    /// Octet string.
    Octets(Vec<u8>),
    /// Character string (UTF-8 as sent; other character sets are kept as bytes read).
    Text(String),
    /// Bit string: bits, first bit first.
    Bits(Vec<bool>),
    /// Enumerated.
    Enumerated(u32),
    /// Date (year − 1900, month, day, weekday).
    Date([u8; 4]),
    /// Time (hour, minute, second, hundredths).
    Time([u8; 4]),
    /// Object identifier.
    Object(ObjectId),
}

impl Value {
    /// The value as a number, when it is one (an enumeration — a binary object's
    /// `active` — is its number).
    pub fn number(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(f64::from(u8::from(b))),
            Value::Unsigned(u) => Some(u as f64),
            Value::Signed(i) => Some(i as f64),
            Value::Real(r) => Some(f64::from(r)),
            Value::Double(d) => Some(d),
            Value::Enumerated(e) => Some(f64::from(e)),
            _ => None,
        }
    }
}

/// `BACnetStatusFlags`: what makes a present value untrustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusFlags {
    /// In alarm (the value may still be right).
    pub in_alarm: bool,
    /// The device says the value is unreliable.
    pub fault: bool,
    /// Overridden locally (a hand switch).
    pub overridden: bool,
    /// Out of service: the present value is decoupled from the sensor.
    pub out_of_service: bool,
}

impl StatusFlags {
    /// From a bit string.
    pub fn of(bits: &[bool]) -> Self {
        let b = |i: usize| bits.get(i).copied().unwrap_or(false);
        Self {
            in_alarm: b(0),
            fault: b(1),
            overridden: b(2),
            out_of_service: b(3),
        }
    }

    /// As a bit string value.
    pub fn value(self) -> Value {
        Value::Bits(vec![
            self.in_alarm,
            self.fault,
            self.overridden,
            self.out_of_service,
        ])
    }
}

// ---------------------------------------------------------------------------------------
// Tags

/// Class of a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Application,
    Context,
}

/// What follows a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Primitive data of this many octets (an application boolean: its value).
    Data(u32),
    Opening,
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    number: u8,
    class: Class,
    shape: Shape,
}

/// A cursor over bytes that checks every length.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos.min(self.buf.len())..];
        self.pos = self.buf.len();
        s
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn tag(&mut self) -> Result<Tag> {
        let first = self.byte()?;
        let mut number = first >> 4;
        if number == 15 {
            number = self.byte()?;
        }
        let class = if first & 0x08 != 0 {
            Class::Context
        } else {
            Class::Application
        };
        let lvt = first & 0x07;
        let shape = match (class, lvt) {
            (Class::Context, 6) => Shape::Opening,
            (Class::Context, 7) => Shape::Closing,
            (_, 5) => Shape::Data(match self.byte()? {
                254 => u32::from(self.u16()?),
                255 => u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()),
                n => u32::from(n),
            }),
            (_, n) => Shape::Data(u32::from(n)),
        };
        Ok(Tag {
            number,
            class,
            shape,
        })
    }

    fn peek_tag(&self) -> Option<Tag> {
        self.clone().tag().ok()
    }

    /// Whether the next tag is context tag `n`, primitive or opening (a closing tag
    /// ends something else).
    fn at_context(&self, n: u8) -> bool {
        matches!(self.peek_tag(), Some(t) if t.class == Class::Context && t.number == n && t.shape != Shape::Closing)
    }

    fn at_closing(&self, n: u8) -> bool {
        self.peek_tag()
            == Some(Tag {
                number: n,
                class: Class::Context,
                shape: Shape::Closing,
            })
    }

    fn data(&mut self, len: u32) -> Result<&'a [u8]> {
        self.take(len as usize)
    }

    fn expect(&mut self, number: u8, class: Class, shape: Shape) -> Result<()> {
        let at = self.pos;
        let t = self.tag()?;
        if t.number == number && t.class == class && t.shape == shape {
            Ok(())
        } else {
            Err(DecodeError::Tag(at))
        }
    }

    fn open(&mut self, n: u8) -> Result<()> {
        self.expect(n, Class::Context, Shape::Opening)
    }

    fn close(&mut self, n: u8) -> Result<()> {
        self.expect(n, Class::Context, Shape::Closing)
    }

    /// Context tag `n` with primitive data.
    fn context(&mut self, n: u8) -> Result<&'a [u8]> {
        let at = self.pos;
        match self.tag()? {
            Tag {
                number,
                class: Class::Context,
                shape: Shape::Data(len),
            } if number == n => self.data(len),
            _ => Err(DecodeError::Tag(at)),
        }
    }

    fn context_unsigned(&mut self, n: u8) -> Result<u64> {
        let at = self.pos;
        unsigned(self.context(n)?, at)
    }

    fn context_u32(&mut self, n: u8) -> Result<u32> {
        let at = self.pos;
        u32::try_from(self.context_unsigned(n)?).map_err(|_| DecodeError::Value(at))
    }

    fn context_object(&mut self, n: u8) -> Result<ObjectId> {
        let at = self.pos;
        let b: [u8; 4] = self
            .context(n)?
            .try_into()
            .map_err(|_| DecodeError::Value(at))?;
        Ok(ObjectId::from_u32(u32::from_be_bytes(b)))
    }

    /// Optional context unsigned `n`.
    fn opt_u32(&mut self, n: u8) -> Result<Option<u32>> {
        if self.at_context(n) {
            self.context_u32(n).map(Some)
        } else {
            Ok(None)
        }
    }

    /// One application-tagged value.
    fn value(&mut self) -> Result<Value> {
        let at = self.pos;
        let t = self.tag()?;
        let Tag {
            number,
            class: Class::Application,
            shape: Shape::Data(len),
        } = t
        else {
            return Err(DecodeError::Tag(at));
        };
        if number == 1 {
            return match len {
                0 | 1 => Ok(Value::Bool(len == 1)),
                _ => Err(DecodeError::Value(at)),
            };
        }
        let d = self.data(len)?;
        let four =
            |d: &[u8]| -> Result<[u8; 4]> { d.try_into().map_err(|_| DecodeError::Value(at)) };
        Ok(match number {
            0 if d.is_empty() => Value::Null,
            2 => Value::Unsigned(unsigned(d, at)?),
            3 => Value::Signed(signed(d, at)?),
            4 => Value::Real(f32::from_be_bytes(four(d)?)),
            5 => Value::Double(f64::from_be_bytes(
                d.try_into().map_err(|_| DecodeError::Value(at))?,
            )),
            6 => Value::Octets(d.to_vec()),
            7 => match d.split_first() {
                Some((0, s)) => Value::Text(String::from_utf8_lossy(s).into_owned()),
                Some((_, s)) => Value::Octets(s.to_vec()),
                None => return Err(DecodeError::Value(at)),
            },
            8 => {
                let (&unused, bytes) = d.split_first().ok_or(DecodeError::Value(at))?;
                if unused > 7 || (bytes.is_empty() && unused > 0) {
                    return Err(DecodeError::Value(at));
                }
                let n = (bytes.len() * 8).saturating_sub(usize::from(unused));
                if n > MAX_VALUES {
                    return Err(DecodeError::TooLarge(at));
                }
                Value::Bits(
                    (0..n)
                        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
                        .collect(),
                )
            }
            9 => Value::Enumerated(
                u32::try_from(unsigned(d, at)?).map_err(|_| DecodeError::Value(at))?,
            ),
            10 => Value::Date(four(d)?),
            11 => Value::Time(four(d)?),
            12 => Value::Object(ObjectId::from_u32(u32::from_be_bytes(four(d)?))),
            _ => return Err(DecodeError::Value(at)),
        })
    }

    /// Values up to closing tag `n` (consumed). A constructed value inside (a
    /// priority array of a vendor's own type) is skipped, not understood.
    fn values_until(&mut self, n: u8) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let at = self.pos;
            let t = self.clone().tag()?;
            match (t.class, t.shape) {
                (Class::Context, Shape::Closing) if t.number == n => {
                    self.tag()?;
                    return Ok(out);
                }
                (Class::Application, _) => {
                    if out.len() >= MAX_VALUES {
                        return Err(DecodeError::TooLarge(at));
                    }
                    out.push(self.value()?);
                }
                (Class::Context, Shape::Opening) => self.skip_constructed(0)?,
                (Class::Context, Shape::Data(len)) => {
                    self.tag()?;
                    self.data(len)?;
                }
                (Class::Context, Shape::Closing) => return Err(DecodeError::Tag(at)),
            }
        }
    }

    /// Skips an opening tag, what it holds and its closing tag.
    fn skip_constructed(&mut self, depth: usize) -> Result<()> {
        let at = self.pos;
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooLarge(at));
        }
        let open = self.tag()?;
        loop {
            let t = self.clone().tag()?;
            match t.shape {
                Shape::Closing if t.number == open.number => {
                    self.tag()?;
                    return Ok(());
                }
                Shape::Closing => return Err(DecodeError::Tag(self.pos)),
                Shape::Opening => self.skip_constructed(depth + 1)?,
                Shape::Data(len) => {
                    self.tag()?;
                    if !(t.class == Class::Application && t.number == 1) {
                        self.data(len)?;
                    }
                }
            }
        }
    }

    fn app_enumerated(&mut self) -> Result<u32> {
        let at = self.pos;
        match self.value()? {
            Value::Enumerated(e) => Ok(e),
            _ => Err(DecodeError::Tag(at)),
        }
    }

    fn app_unsigned(&mut self) -> Result<u64> {
        let at = self.pos;
        match self.value()? {
            Value::Unsigned(u) => Ok(u),
            _ => Err(DecodeError::Tag(at)),
        }
    }
}

fn unsigned(d: &[u8], at: usize) -> Result<u64> {
    if d.is_empty() || d.len() > 8 {
        return Err(DecodeError::Value(at));
    }
    Ok(d.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
}

fn signed(d: &[u8], at: usize) -> Result<i64> {
    if d.is_empty() || d.len() > 8 {
        return Err(DecodeError::Value(at));
    }
    let neg = d[0] & 0x80 != 0;
    let start = if neg { -1i64 } else { 0 };
    Ok(d.iter().fold(start, |a, b| (a << 8) | i64::from(*b)))
}

/// Bytes being encoded.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn tag(&mut self, number: u8, context: bool, len: usize) {
        let class = if context { 0x08 } else { 0 };
        let lvt = if len <= 4 { len as u8 } else { 5 };
        if number <= 14 {
            self.0.push((number << 4) | class | lvt);
        } else {
            self.0.push(0xF0 | class | lvt);
            self.0.push(number);
        }
        if len > 4 {
            if len < 254 {
                self.0.push(len as u8);
            } else if len <= 0xFFFF {
                self.0.push(254);
                self.0.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                self.0.push(255);
                self.0.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
    }

    fn open(&mut self, n: u8) {
        self.tag(n, true, 0);
        let i = self.0.len() - if n <= 14 { 1 } else { 2 };
        self.0[i] |= 6;
    }

    fn close(&mut self, n: u8) {
        self.tag(n, true, 0);
        let i = self.0.len() - if n <= 14 { 1 } else { 2 };
        self.0[i] |= 7;
    }

    fn primitive(&mut self, number: u8, context: bool, d: &[u8]) {
        self.tag(number, context, d.len());
        self.0.extend_from_slice(d);
    }

    fn context_unsigned(&mut self, n: u8, v: u64) {
        self.primitive(n, true, &unsigned_bytes(v));
    }

    fn context_object(&mut self, n: u8, o: ObjectId) {
        self.primitive(n, true, &o.to_u32().to_be_bytes());
    }

    /// One application-tagged value.
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.tag(0, false, 0),
            Value::Bool(b) => self.tag(1, false, usize::from(*b)),
            Value::Unsigned(u) => self.primitive(2, false, &unsigned_bytes(*u)),
            Value::Signed(i) => {
                let b = i.to_be_bytes();
                let mut start = 0;
                while start < 7
                    && ((b[start] == 0 && b[start + 1] & 0x80 == 0)
                        || (b[start] == 0xFF && b[start + 1] & 0x80 != 0))
                {
                    start += 1;
                }
                self.primitive(3, false, &b[start..]);
            }
            Value::Real(r) => self.primitive(4, false, &r.to_be_bytes()),
            Value::Double(d) => self.primitive(5, false, &d.to_be_bytes()),
            Value::Octets(o) => self.primitive(6, false, o),
            Value::Text(s) => {
                let mut d = vec![0u8];
                d.extend_from_slice(s.as_bytes());
                self.primitive(7, false, &d);
            }
            Value::Bits(bits) => {
                let n = bits.len().div_ceil(8);
                let mut d = vec![0u8; n + 1];
                d[0] = (n * 8 - bits.len()) as u8;
                for (i, b) in bits.iter().enumerate() {
                    if *b {
                        d[1 + i / 8] |= 0x80 >> (i % 8);
                    }
                }
                self.primitive(8, false, &d);
            }
            Value::Enumerated(e) => self.primitive(9, false, &unsigned_bytes(u64::from(*e))),
            Value::Date(d) => self.primitive(10, false, d),
            Value::Time(t) => self.primitive(11, false, t),
            Value::Object(o) => self.primitive(12, false, &o.to_u32().to_be_bytes()),
        }
    }
}

fn unsigned_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let start = b.iter().position(|x| *x != 0).unwrap_or(7);
    b[start..].to_vec()
}

// ---------------------------------------------------------------------------------------
// Datagrams

/// BVLC functions (Annex J.2).
pub mod bvlc {
    #![allow(missing_docs)]
    pub const RESULT: u8 = 0x00;
    pub const FORWARDED_NPDU: u8 = 0x04;
    pub const REGISTER_FOREIGN_DEVICE: u8 = 0x05;
    pub const DISTRIBUTE_BROADCAST: u8 = 0x09;
    pub const ORIGINAL_UNICAST: u8 = 0x0A;
    pub const ORIGINAL_BROADCAST: u8 = 0x0B;
}

/// An application-layer PDU (clause 20.1).
#[derive(Debug, Clone, PartialEq)]
pub enum Apdu<'a> {
    /// A confirmed request.
    Confirmed {
        /// Invoke id (pairs the answer).
        invoke_id: u8,
        /// Service choice.
        service: u8,
        /// Whether this is a segment of a longer request (not reassembled).
        segmented: bool,
        /// The largest answer the requester accepts (octets).
        max_apdu: usize,
        /// Service parameters.
        body: &'a [u8],
    },
    /// An unconfirmed request.
    Unconfirmed {
        /// Service choice.
        service: u8,
        /// Service parameters.
        body: &'a [u8],
    },
    /// A simple acknowledgement.
    SimpleAck {
        /// Invoke id.
        invoke_id: u8,
        /// Service choice.
        service: u8,
    },
    /// A complex acknowledgement.
    ComplexAck {
        /// Invoke id.
        invoke_id: u8,
        /// Service choice.
        service: u8,
        /// A segment of a longer answer (not reassembled).
        segmented: bool,
        /// Service results.
        body: &'a [u8],
    },
    /// An error answer.
    Error {
        /// Invoke id.
        invoke_id: u8,
        /// Service choice.
        service: u8,
        /// Error class.
        class: u32,
        /// Error code.
        code: u32,
    },
    /// Reject (the request was malformed or not understood).
    Reject {
        /// Invoke id.
        invoke_id: u8,
        /// Reason.
        reason: u8,
    },
    /// Abort (or a segment acknowledgement, which a reader without segmentation
    /// treats the same).
    Abort {
        /// Invoke id.
        invoke_id: u8,
        /// Reason.
        reason: u8,
    },
}

impl<'a> Apdu<'a> {
    /// The parameters of a COV notification, confirmed or not.
    pub fn cov_notification(&self) -> Option<&'a [u8]> {
        match *self {
            Apdu::Unconfirmed {
                service: unconfirmed::COV_NOTIFICATION,
                body,
            }
            | Apdu::Confirmed {
                service: confirmed::COV_NOTIFICATION,
                body,
                ..
            } => Some(body),
            _ => None,
        }
    }
}

/// One decoded BACnet/IP datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram<'a> {
    /// BVLC function.
    pub function: u8,
    /// The original sender (IPv4 address, UDP port) of a Forwarded-NPDU (a BBMD
    /// relayed it).
    pub forwarded_from: Option<([u8; 4], u16)>,
    /// The NPDU's source network and address, when routed.
    pub source: Option<(u16, Vec<u8>)>,
    /// The application PDU; `None` for network-layer messages and BVLC results.
    pub apdu: Option<Apdu<'a>>,
}

fn max_apdu_of(code: u8) -> usize {
    match code & 0x0F {
        0 => 50,
        1 => 128,
        2 => 206,
        3 => 480,
        4 => 1024,
        _ => 1476,
    }
}

/// Decodes a BACnet/IP datagram (a UDP payload).
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>> {
    let mut r = Reader::new(bytes);
    if r.byte()? != 0x81 {
        return Err(DecodeError::NotBacnet("BVLC type is not 0x81"));
    }
    let function = r.byte()?;
    let len = usize::from(r.u16()?);
    if len != bytes.len() {
        return Err(DecodeError::NotBacnet("BVLC length is not the datagram's"));
    }
    let mut d = Datagram {
        function,
        forwarded_from: None,
        source: None,
        apdu: None,
    };
    match function {
        bvlc::ORIGINAL_UNICAST | bvlc::ORIGINAL_BROADCAST | bvlc::DISTRIBUTE_BROADCAST => {}
        bvlc::FORWARDED_NPDU => {
            let a = r.take(6)?;
            d.forwarded_from = Some(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[4], a[5]])));
        }
        // BVLC-Result and the BBMD table services carry no NPDU.
        _ => return Ok(d),
    }
    if r.byte()? != 0x01 {
        return Err(DecodeError::NotBacnet("NPDU version is not 1"));
    }
    let control = r.byte()?;
    if control & 0x20 != 0 {
        r.u16()?;
        let n = r.byte()?;
        r.take(usize::from(n))?;
    }
    if control & 0x08 != 0 {
        let net = r.u16()?;
        let n = r.byte()?;
        d.source = Some((net, r.take(usize::from(n))?.to_vec()));
    }
    if control & 0x20 != 0 {
        r.byte()?; // hop count
    }
    if control & 0x80 != 0 {
        return Ok(d); // a network-layer message
    }
    d.apdu = Some(apdu(&mut r)?);
    Ok(d)
}

fn apdu<'a>(r: &mut Reader<'a>) -> Result<Apdu<'a>> {
    let first = r.byte()?;
    let segmented = first & 0x08 != 0;
    Ok(match first >> 4 {
        0 => {
            let max = r.byte()?;
            let invoke_id = r.byte()?;
            if segmented {
                r.take(2)?;
            }
            Apdu::Confirmed {
                invoke_id,
                max_apdu: max_apdu_of(max),
                segmented,
                service: r.byte()?,
                body: r.rest(),
            }
        }
        1 => Apdu::Unconfirmed {
            service: r.byte()?,
            body: r.rest(),
        },
        2 => Apdu::SimpleAck {
            invoke_id: r.byte()?,
            service: r.byte()?,
        },
        3 => {
            let invoke_id = r.byte()?;
            if segmented {
                r.take(2)?;
            }
            Apdu::ComplexAck {
                invoke_id,
                segmented,
                service: r.byte()?,
                body: r.rest(),
            }
        }
        4 => {
            let invoke_id = r.byte()?;
            r.take(2)?;
            Apdu::Abort {
                invoke_id,
                reason: error::ABORT_SEGMENTATION_NOT_SUPPORTED,
            }
        }
        5 => {
            let invoke_id = r.byte()?;
            let service = r.byte()?;
            // Most errors are a bare class and code; some services wrap them in [0].
            let wrapped = r.at_context(0);
            if wrapped {
                r.open(0)?;
            }
            let class = r.app_enumerated()?;
            let code = r.app_enumerated()?;
            Apdu::Error {
                invoke_id,
                service,
                class,
                code,
            }
        }
        6 => Apdu::Reject {
            invoke_id: r.byte()?,
            reason: r.byte()?,
        },
        7 => Apdu::Abort {
            invoke_id: r.byte()?,
            reason: r.byte()?,
        },
        _ => return Err(DecodeError::NotBacnet("unknown APDU type")),
    })
}

/// A datagram to `apdu`, unicast (or broadcast) over B/IP.
pub fn encode(apdu: &Apdu<'_>, broadcast: bool) -> Vec<u8> {
    let function = if broadcast {
        bvlc::ORIGINAL_BROADCAST
    } else {
        bvlc::ORIGINAL_UNICAST
    };
    let expecting_reply = matches!(apdu, Apdu::Confirmed { .. });
    let mut b = vec![
        0x81,
        function,
        0,
        0,
        0x01,
        if expecting_reply { 0x04 } else { 0 },
    ];
    match *apdu {
        Apdu::Confirmed {
            invoke_id,
            service,
            max_apdu,
            body,
            ..
        } => {
            let code = [50, 128, 206, 480, 1024, 1476]
                .iter()
                .rposition(|m| *m <= max_apdu)
                .unwrap_or(0) as u8;
            b.extend_from_slice(&[0x00, code, invoke_id, service]);
            b.extend_from_slice(body);
        }
        Apdu::Unconfirmed { service, body } => {
            b.extend_from_slice(&[0x10, service]);
            b.extend_from_slice(body);
        }
        Apdu::SimpleAck { invoke_id, service } => b.extend_from_slice(&[0x20, invoke_id, service]),
        Apdu::ComplexAck {
            invoke_id,
            service,
            body,
            ..
        } => {
            b.extend_from_slice(&[0x30, invoke_id, service]);
            b.extend_from_slice(body);
        }
        Apdu::Error {
            invoke_id,
            service,
            class,
            code,
        } => {
            b.extend_from_slice(&[0x50, invoke_id, service]);
            let mut w = Writer(b);
            w.value(&Value::Enumerated(class));
            w.value(&Value::Enumerated(code));
            b = w.0;
        }
        Apdu::Reject { invoke_id, reason } => b.extend_from_slice(&[0x60, invoke_id, reason]),
        Apdu::Abort { invoke_id, reason } => b.extend_from_slice(&[0x70, invoke_id, reason]),
    }
    let len = b.len() as u16;
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

// ---------------------------------------------------------------------------------------
// Services

/// Who-Is: every device, or those with an instance in `range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhoIs {
    /// Low and high instance limits.
    pub range: Option<(u32, u32)>,
}

impl WhoIs {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        if let Some((lo, hi)) = self.range {
            w.context_unsigned(0, u64::from(lo));
            w.context_unsigned(1, u64::from(hi));
        }
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        if r.done() {
            return Ok(Self { range: None });
        }
        let lo = r.context_u32(0)?;
        let hi = r.context_u32(1)?;
        Ok(Self {
            range: Some((lo, hi)),
        })
    }

    /// Whether device `instance` should answer.
    pub fn includes(&self, instance: u32) -> bool {
        self.range
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&instance))
    }
}

/// I-Am.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IAm {
    /// The device object.
    pub device: ObjectId,
    /// Largest APDU it accepts.
    pub max_apdu: u32,
    /// Segmentation supported (0 both … 3 none).
    pub segmentation: u32,
    /// Vendor identifier.
    pub vendor: u32,
}

impl IAm {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.value(&Value::Object(self.device));
        w.value(&Value::Unsigned(u64::from(self.max_apdu)));
        w.value(&Value::Enumerated(self.segmentation));
        w.value(&Value::Unsigned(u64::from(self.vendor)));
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let at = r.pos;
        let Value::Object(device) = r.value()? else {
            return Err(DecodeError::Tag(at));
        };
        let at = r.pos;
        let max_apdu = u32::try_from(r.app_unsigned()?).map_err(|_| DecodeError::Value(at))?;
        let segmentation = r.app_enumerated()?;
        let at = r.pos;
        let vendor = u32::try_from(r.app_unsigned()?).map_err(|_| DecodeError::Value(at))?;
        Ok(Self {
            device,
            max_apdu,
            segmentation,
            vendor,
        })
    }
}

/// A property of an object, as named in ReadProperty and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PropertyRef {
    /// Property identifier.
    pub property: u32,
    /// Array index, when one element is meant.
    pub index: Option<u32>,
}

impl PropertyRef {
    /// The whole property.
    pub fn of(property: u32) -> Self {
        Self {
            property,
            index: None,
        }
    }
}

/// ReadProperty-Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadProperty {
    /// The object.
    pub object: ObjectId,
    /// The property.
    pub property: PropertyRef,
}

impl ReadProperty {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.context_object(0, self.object);
        w.context_unsigned(1, u64::from(self.property.property));
        if let Some(i) = self.property.index {
            w.context_unsigned(2, u64::from(i));
        }
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let object = r.context_object(0)?;
        let property = r.context_u32(1)?;
        let index = r.opt_u32(2)?;
        Ok(Self {
            object,
            property: PropertyRef { property, index },
        })
    }

    /// The ReadProperty-ACK carrying `values`.
    pub fn ack(&self, values: &[Value]) -> Vec<u8> {
        let mut w = Writer(self.encode());
        w.open(3);
        for v in values {
            w.value(v);
        }
        w.close(3);
        w.0
    }

    /// A ReadProperty-ACK's object, property and values.
    pub fn decode_ack(body: &[u8]) -> Result<(Self, Vec<Value>)> {
        let mut r = Reader::new(body);
        let object = r.context_object(0)?;
        let property = r.context_u32(1)?;
        let index = r.opt_u32(2)?;
        r.open(3)?;
        let values = r.values_until(3)?;
        Ok((
            Self {
                object,
                property: PropertyRef { property, index },
            },
            values,
        ))
    }
}

/// ReadPropertyMultiple-Request: properties of several objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPropertyMultiple(pub Vec<(ObjectId, Vec<PropertyRef>)>);

impl ReadPropertyMultiple {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for (object, props) in &self.0 {
            w.context_object(0, *object);
            w.open(1);
            for p in props {
                w.context_unsigned(0, u64::from(p.property));
                if let Some(i) = p.index {
                    w.context_unsigned(1, u64::from(i));
                }
            }
            w.close(1);
        }
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let mut out = Vec::new();
        let mut n = 0usize;
        while !r.done() {
            let object = r.context_object(0)?;
            r.open(1)?;
            let mut props = Vec::new();
            while !r.at_closing(1) {
                n += 1;
                if n > MAX_VALUES {
                    return Err(DecodeError::TooLarge(r.pos));
                }
                let property = r.context_u32(0)?;
                let index = r.opt_u32(1)?;
                props.push(PropertyRef { property, index });
            }
            r.close(1)?;
            out.push((object, props));
        }
        Ok(Self(out))
    }
}

/// One property's result in a ReadPropertyMultiple-ACK: its values, or the error
/// (class, code) the device gave for it.
pub type PropertyResult = (PropertyRef, std::result::Result<Vec<Value>, (u32, u32)>);

/// ReadPropertyMultiple-ACK.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPropertyMultipleAck(pub Vec<(ObjectId, Vec<PropertyResult>)>);

impl ReadPropertyMultipleAck {
    /// Service results.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        for (object, results) in &self.0 {
            w.context_object(0, *object);
            w.open(1);
            for (p, result) in results {
                w.context_unsigned(2, u64::from(p.property));
                if let Some(i) = p.index {
                    w.context_unsigned(3, u64::from(i));
                }
                match result {
                    Ok(values) => {
                        w.open(4);
                        for v in values {
                            w.value(v);
                        }
                        w.close(4);
                    }
                    Err((class, code)) => {
                        w.open(5);
                        w.value(&Value::Enumerated(*class));
                        w.value(&Value::Enumerated(*code));
                        w.close(5);
                    }
                }
            }
            w.close(1);
        }
        w.0
    }

    /// From service results.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let mut out = Vec::new();
        let mut n = 0usize;
        while !r.done() {
            let object = r.context_object(0)?;
            r.open(1)?;
            let mut results = Vec::new();
            while !r.at_closing(1) {
                n += 1;
                if n > MAX_VALUES {
                    return Err(DecodeError::TooLarge(r.pos));
                }
                let property = r.context_u32(2)?;
                let index = r.opt_u32(3)?;
                let p = PropertyRef { property, index };
                if r.at_context(4) {
                    r.open(4)?;
                    results.push((p, Ok(r.values_until(4)?)));
                } else {
                    r.open(5)?;
                    let class = r.app_enumerated()?;
                    let code = r.app_enumerated()?;
                    r.close(5)?;
                    results.push((p, Err((class, code))));
                }
            }
            r.close(1)?;
            out.push((object, results));
        }
        Ok(Self(out))
    }
}

/// SubscribeCOV-Request (both `confirmed` and `lifetime` absent: a cancellation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeCov {
    /// The subscriber's process identifier (echoed in notifications).
    pub process: u32,
    /// The object watched.
    pub object: ObjectId,
    /// Confirmed notifications wanted.
    pub confirmed: Option<bool>,
    /// Seconds the subscription lasts (0: indefinitely).
    pub lifetime: Option<u32>,
}

impl SubscribeCov {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.context_unsigned(0, u64::from(self.process));
        w.context_object(1, self.object);
        if let Some(c) = self.confirmed {
            w.primitive(2, true, &[u8::from(c)]);
        }
        if let Some(l) = self.lifetime {
            w.context_unsigned(3, u64::from(l));
        }
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let process = r.context_u32(0)?;
        let object = r.context_object(1)?;
        let confirmed = if r.at_context(2) {
            let at = r.pos;
            match r.context(2)? {
                [b] => Some(*b != 0),
                _ => return Err(DecodeError::Value(at)),
            }
        } else {
            None
        };
        let lifetime = r.opt_u32(3)?;
        Ok(Self {
            process,
            object,
            confirmed,
            lifetime,
        })
    }
}

/// A `BACnetPropertyValue`: what a COV notification or a write carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyValue {
    /// Property (and index).
    pub property: PropertyRef,
    /// Its values.
    pub values: Vec<Value>,
    /// Command priority of a write (1–16).
    pub priority: Option<u32>,
}

fn write_property_value(w: &mut Writer, pv: &PropertyValue) {
    w.context_unsigned(0, u64::from(pv.property.property));
    if let Some(i) = pv.property.index {
        w.context_unsigned(1, u64::from(i));
    }
    w.open(2);
    for v in &pv.values {
        w.value(v);
    }
    w.close(2);
    if let Some(p) = pv.priority {
        w.context_unsigned(3, u64::from(p));
    }
}

fn read_property_value(r: &mut Reader<'_>) -> Result<PropertyValue> {
    let property = r.context_u32(0)?;
    let index = r.opt_u32(1)?;
    r.open(2)?;
    let values = r.values_until(2)?;
    let priority = r.opt_u32(3)?;
    Ok(PropertyValue {
        property: PropertyRef { property, index },
        values,
        priority,
    })
}

/// COV notification (confirmed or unconfirmed: the same parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct CovNotification {
    /// The subscriber's process identifier.
    pub process: u32,
    /// The notifying device.
    pub device: ObjectId,
    /// The object whose values changed.
    pub object: ObjectId,
    /// Seconds left of the subscription.
    pub time_remaining: u32,
    /// Present value, status flags, …
    pub values: Vec<PropertyValue>,
}

impl CovNotification {
    /// Parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.context_unsigned(0, u64::from(self.process));
        w.context_object(1, self.device);
        w.context_object(2, self.object);
        w.context_unsigned(3, u64::from(self.time_remaining));
        w.open(4);
        for pv in &self.values {
            write_property_value(&mut w, pv);
        }
        w.close(4);
        w.0
    }

    /// From parameters.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body);
        let process = r.context_u32(0)?;
        let device = r.context_object(1)?;
        let object = r.context_object(2)?;
        let time_remaining = r.context_u32(3)?;
        r.open(4)?;
        let mut values = Vec::new();
        while !r.at_closing(4) {
            if values.len() >= MAX_VALUES {
                return Err(DecodeError::TooLarge(r.pos));
            }
            values.push(read_property_value(&mut r)?);
        }
        r.close(4)?;
        Ok(Self {
            process,
            device,
            object,
            time_remaining,
            values,
        })
    }
}

/// A write request (WriteProperty, or one object of a WritePropertyMultiple).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The object written.
    pub object: ObjectId,
    /// What is written to it.
    pub value: PropertyValue,
}

/// WriteProperty-Request parameters.
pub fn encode_write_property(w: &Write) -> Vec<u8> {
    let mut out = Writer::default();
    out.context_object(0, w.object);
    out.context_unsigned(1, u64::from(w.value.property.property));
    if let Some(i) = w.value.property.index {
        out.context_unsigned(2, u64::from(i));
    }
    out.open(3);
    for v in &w.value.values {
        out.value(v);
    }
    out.close(3);
    if let Some(p) = w.value.priority {
        out.context_unsigned(4, u64::from(p));
    }
    out.0
}

/// The writes of a WriteProperty (`service` 15) or WritePropertyMultiple (16) request.
pub fn decode_writes(service: u8, body: &[u8]) -> Result<Vec<Write>> {
    let mut r = Reader::new(body);
    match service {
        confirmed::WRITE_PROPERTY => {
            let object = r.context_object(0)?;
            let property = r.context_u32(1)?;
            let index = r.opt_u32(2)?;
            r.open(3)?;
            let values = r.values_until(3)?;
            let priority = r.opt_u32(4)?;
            Ok(vec![Write {
                object,
                value: PropertyValue {
                    property: PropertyRef { property, index },
                    values,
                    priority,
                },
            }])
        }
        confirmed::WRITE_PROPERTY_MULTIPLE => {
            let mut out = Vec::new();
            while !r.done() {
                let object = r.context_object(0)?;
                r.open(1)?;
                while !r.at_closing(1) {
                    if out.len() >= MAX_VALUES {
                        return Err(DecodeError::TooLarge(r.pos));
                    }
                    let value = read_property_value(&mut r)?;
                    out.push(Write { object, value });
                }
                r.close(1)?;
            }
            Ok(out)
        }
        _ => Err(DecodeError::NotBacnet("not a write service")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ai(i: u32) -> ObjectId {
        ObjectId {
            kind: object_type::ANALOG_INPUT,
            instance: i,
        }
    }

    /// A ReadPropertyMultiple-ACK as a bacpypes3 0.0.110 device
    /// (`tests/interop/bacnet_device.py`) sent it for analog-input 1's present value
    /// (7.25), status flags (all clear) and reliability (no-fault-detected), the bytes
    /// as received on loopback.
    #[test]
    fn decodes_a_peer_rpm_ack() {
        let d = [
            0x81, 0x0a, 0x00, 0x26, 0x01, 0x00, 0x30, 0x05, 0x0e, 0x0c, 0x00, 0x00, 0x00, 0x01,
            0x1e, 0x29, 0x55, 0x4e, 0x44, 0x40, 0xe8, 0x00, 0x00, 0x4f, 0x29, 0x6f, 0x4e, 0x82,
            0x04, 0x00, 0x4f, 0x29, 0x67, 0x4e, 0x91, 0x00, 0x4f, 0x1f,
        ];
        let g = decode(&d).unwrap();
        let Some(Apdu::ComplexAck {
            invoke_id: 5,
            service: confirmed::READ_PROPERTY_MULTIPLE,
            body,
            ..
        }) = g.apdu
        else {
            panic!("{g:?}")
        };
        let ack = ReadPropertyMultipleAck::decode(body).unwrap();
        assert_eq!(ack.0.len(), 1);
        let (object, results) = &ack.0[0];
        assert_eq!(*object, ai(1));
        assert_eq!(results[0].1, Ok(vec![Value::Real(7.25)]));
        assert_eq!(
            StatusFlags::of(match &results[1].1 {
                Ok(v) => match &v[0] {
                    Value::Bits(b) => b,
                    _ => panic!(),
                },
                _ => panic!(),
            }),
            StatusFlags::default()
        );
        assert_eq!(results[2].1, Ok(vec![Value::Enumerated(0)]));
    }

    /// The fuzz target's seeds are what they say they are.
    #[test]
    fn fuzz_seeds_decode() {
        let seed = |name: &str| {
            std::fs::read(format!(
                "{}/fuzz/seeds/bacnet_datagram/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let body_of = |b: &[u8]| match decode(b).unwrap().apdu {
            Some(Apdu::Confirmed { service, body, .. })
            | Some(Apdu::ComplexAck { service, body, .. })
            | Some(Apdu::Unconfirmed { service, body }) => (service, body.to_vec()),
            other => panic!("{other:?}"),
        };
        let (s, b) = body_of(&seed("who-is"));
        assert_eq!(
            (s, WhoIs::decode(&b).unwrap().range),
            (8, Some((0, 4_194_303)))
        );
        let (s, b) = body_of(&seed("rpm"));
        assert_eq!(
            (s, ReadPropertyMultiple::decode(&b).unwrap().0[0].1.len()),
            (14, 3)
        );
        let (s, b) = body_of(&seed("rpm-ack"));
        let ack = ReadPropertyMultipleAck::decode(&b).unwrap();
        assert_eq!((s, &ack.0[0].1[0].1), (14, &Ok(vec![Value::Real(7.25)])));
        let (s, b) = body_of(&seed("subscribe-cov"));
        assert_eq!(
            (s, SubscribeCov::decode(&b).unwrap().lifetime),
            (5, Some(300))
        );
        let (s, b) = body_of(&seed("write-property"));
        let w = decode_writes(s, &b).unwrap();
        assert_eq!(
            (w[0].value.values[0].clone(), w[0].value.priority),
            (Value::Real(13.0), Some(8))
        );
        let i_am = seed("forwarded-i-am");
        assert!(decode(&i_am).unwrap().forwarded_from.is_some());
        let (s, b) = body_of(&i_am);
        assert_eq!((s, IAm::decode(&b).unwrap().device.instance), (0, 7));
    }

    #[test]
    fn services_round_trip() {
        let rpm = ReadPropertyMultiple(vec![
            (
                ai(1),
                vec![
                    PropertyRef {
                        property: property::OBJECT_LIST,
                        index: Some(0),
                    },
                    // Last without an index: the closing tag [1] must not be read as one.
                    PropertyRef::of(property::PRESENT_VALUE),
                ],
            ),
            (ObjectId::device(4_194_302), vec![]),
        ]);
        assert_eq!(ReadPropertyMultiple::decode(&rpm.encode()).unwrap(), rpm);
        let ack = ReadPropertyMultipleAck(vec![(
            ai(3),
            vec![
                (PropertyRef::of(85), Ok(vec![Value::Real(-1.5)])),
                (PropertyRef::of(103), Err((2, 32))),
            ],
        )]);
        assert_eq!(ReadPropertyMultipleAck::decode(&ack.encode()).unwrap(), ack);
        let sub = SubscribeCov {
            process: 77,
            object: ai(9),
            confirmed: Some(false),
            lifetime: Some(300),
        };
        assert_eq!(SubscribeCov::decode(&sub.encode()).unwrap(), sub);
        let cov = CovNotification {
            process: 77,
            device: ObjectId::device(12),
            object: ai(9),
            time_remaining: 120,
            values: vec![PropertyValue {
                property: PropertyRef::of(85),
                values: vec![Value::Real(21.5)],
                priority: None,
            }],
        };
        assert_eq!(CovNotification::decode(&cov.encode()).unwrap(), cov);
        let iam = IAm {
            device: ObjectId::device(1201),
            max_apdu: 1476,
            segmentation: 3,
            vendor: 999,
        };
        assert_eq!(IAm::decode(&iam.encode()).unwrap(), iam);
        let who = WhoIs {
            range: Some((0, ObjectId::MAX_INSTANCE)),
        };
        assert_eq!(WhoIs::decode(&who.encode()).unwrap(), who);
        let w = Write {
            object: ObjectId {
                kind: object_type::ANALOG_VALUE,
                instance: 1,
            },
            value: PropertyValue {
                property: PropertyRef::of(85),
                values: vec![Value::Real(13.0)],
                priority: Some(8),
            },
        };
        let body = encode_write_property(&w);
        assert_eq!(
            decode_writes(confirmed::WRITE_PROPERTY, &body).unwrap(),
            vec![w]
        );
    }

    #[test]
    fn envelopes_round_trip() {
        let body = ReadProperty {
            object: ai(1),
            property: PropertyRef::of(85),
        }
        .encode();
        for apdu in [
            Apdu::Confirmed {
                invoke_id: 200,
                service: confirmed::READ_PROPERTY,
                segmented: false,
                max_apdu: 1476,
                body: &body,
            },
            Apdu::Unconfirmed {
                service: unconfirmed::WHO_IS,
                body: &[],
            },
            Apdu::SimpleAck {
                invoke_id: 1,
                service: confirmed::SUBSCRIBE_COV,
            },
            Apdu::ComplexAck {
                invoke_id: 2,
                service: 12,
                segmented: false,
                body: &body,
            },
            Apdu::Error {
                invoke_id: 3,
                service: 15,
                class: error::CLASS_PROPERTY,
                code: error::WRITE_ACCESS_DENIED,
            },
            Apdu::Reject {
                invoke_id: 4,
                reason: 9,
            },
            Apdu::Abort {
                invoke_id: 5,
                reason: 4,
            },
        ] {
            let d = encode(&apdu, false);
            assert_eq!(decode(&d).unwrap().apdu, Some(apdu));
        }
    }

    #[test]
    fn forwarded_and_routed_datagrams_name_their_origin() {
        // Forwarded-NPDU from 10.0.0.5:47808, NPDU with SNET 5 / SADR 0x21, I-Am.
        let iam = IAm {
            device: ObjectId::device(7),
            max_apdu: 480,
            segmentation: 3,
            vendor: 5,
        }
        .encode();
        let mut d = vec![
            0x81, 0x04, 0, 0, 10, 0, 0, 5, 0xBA, 0xC0, 0x01, 0x08, 0, 5, 1, 0x21,
        ];
        d.extend_from_slice(&[0x10, unconfirmed::I_AM]);
        d.extend_from_slice(&iam);
        let n = d.len() as u16;
        d[2..4].copy_from_slice(&n.to_be_bytes());
        let g = decode(&d).unwrap();
        assert_eq!(g.forwarded_from, Some(([10, 0, 0, 5], 47808)));
        assert_eq!(g.source, Some((5, vec![0x21])));
        let Some(Apdu::Unconfirmed { body, .. }) = g.apdu else {
            panic!()
        };
        assert_eq!(IAm::decode(body).unwrap().device.instance, 7);
    }

    #[test]
    fn lying_lengths_and_deep_nesting_are_errors() {
        // BVLC length beyond the datagram.
        assert!(decode(&[0x81, 0x0a, 0x00, 0x40, 0x01, 0x00]).is_err());
        // A real whose tag says 255 octets.
        let mut r = Reader::new(&[0x45, 0xFF, 0, 0]);
        assert!(r.value().is_err());
        // Nine nested opening tags inside a value list.
        let mut b = vec![0x3E];
        b.extend(std::iter::repeat_n(0x0E, 9));
        b.extend(std::iter::repeat_n(0x0F, 9));
        b.push(0x3F);
        let mut r = Reader::new(&b);
        r.open(3).unwrap();
        assert!(matches!(r.values_until(3), Err(DecodeError::TooLarge(_))));
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::Unsigned),
            any::<i64>().prop_map(Value::Signed),
            any::<f32>()
                .prop_filter("NaN ≠ NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            any::<f64>()
                .prop_filter("NaN ≠ NaN", |f| !f.is_nan())
                .prop_map(Value::Double),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Octets),
            "[a-zA-Z0-9 °]{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<bool>(), 0..40).prop_map(Value::Bits),
            any::<u32>().prop_map(Value::Enumerated),
            (0u16..1024, 0..=ObjectId::MAX_INSTANCE)
                .prop_map(|(kind, instance)| Value::Object(ObjectId { kind, instance })),
        ]
    }

    proptest! {
        #[test]
        fn every_value_round_trips(v in value()) {
            let mut w = Writer::default();
            w.value(&v);
            let mut r = Reader::new(&w.0);
            prop_assert_eq!(r.value().unwrap(), v);
            prop_assert!(r.done());
        }

        #[test]
        fn notifications_round_trip(
            process in any::<u32>(),
            values in proptest::collection::vec(proptest::collection::vec(value(), 0..4), 0..5),
            prop in 0u32..4_194_303,
            index in proptest::option::of(any::<u32>()),
        ) {
            let cov = CovNotification {
                process,
                device: ObjectId::device(1),
                object: ObjectId { kind: 2, instance: 3 },
                time_remaining: 60,
                values: values.into_iter().map(|values| PropertyValue {
                    property: PropertyRef { property: prop, index },
                    values,
                    priority: None,
                }).collect(),
            };
            prop_assert_eq!(CovNotification::decode(&cov.encode()).unwrap(), cov);
        }

        #[test]
        fn read_requests_round_trip(
            objects in proptest::collection::vec(
                (0u16..1024, 0..=ObjectId::MAX_INSTANCE, proptest::collection::vec(
                    (any::<u32>(), proptest::option::of(any::<u32>())), 0..5)),
                1..6),
        ) {
            let rpm = ReadPropertyMultiple(objects.into_iter().map(|(kind, instance, props)| (
                ObjectId { kind, instance },
                props.into_iter().map(|(property, index)| PropertyRef { property, index }).collect(),
            )).collect());
            prop_assert_eq!(ReadPropertyMultiple::decode(&rpm.encode()).unwrap(), rpm);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = vec![0x81, 0x0a, 0, 0, 0x01, 0x00];
            d.extend_from_slice(&bytes);
            let n = d.len() as u16;
            d[2..4].copy_from_slice(&n.to_be_bytes());
            if let Ok(Datagram {
                apdu:
                    Some(
                        Apdu::ComplexAck { body, .. }
                        | Apdu::Confirmed { body, .. }
                        | Apdu::Unconfirmed { body, .. },
                    ),
                ..
            }) = decode(&d)
            {
                {
                    let _ = ReadPropertyMultipleAck::decode(body);
                    let _ = ReadPropertyMultiple::decode(body);
                    let _ = CovNotification::decode(body);
                    let _ = SubscribeCov::decode(body);
                    let _ = decode_writes(15, body);
                    let _ = decode_writes(16, body);
                    let _ = IAm::decode(body);
                    let _ = ReadProperty::decode_ack(body);
                }
            }
            let _ = decode(&bytes);
        }
    }
}
