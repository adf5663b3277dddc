//! Modbus register maps (`protocols/modbus/<profile>.toml`) and the one codec used both
//! ways: the poller decodes registers into values, a simulated device encodes values
//! into registers.
//!
//! A register entry names its table (holding, input, coil, discrete), address, data type
//! (u16, i16, u32, i32, u64, f32, f64, bool, a bit of a register, string), word order
//! (which 16-bit word comes first) and byte order (within each word), scale and offset
//! (`value = raw × scale + offset`), unit, metric, physical min/max, "not available"
//! sentinels, and whether it is a writable setpoint.

use crate::tomlfile::{self, check, TomlError};
use serde::Deserialize;
use thiserror::Error;

/// Register maps of configured devices by (site, device name).
pub type DeviceMaps = std::collections::BTreeMap<(String, String), std::sync::Arc<RegisterMap>>;

/// Which Modbus table a register lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Holding registers (function 3).
    Holding,
    /// Input registers (function 4).
    Input,
    /// Coils (function 1).
    Coil,
    /// Discrete inputs (function 2).
    Discrete,
}

/// How the raw bits are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit (two words).
    U32,
    /// Signed 32-bit (two words).
    I32,
    /// Unsigned 64-bit (four words).
    U64,
    /// IEEE-754 single (two words).
    F32,
    /// IEEE-754 double (four words).
    F64,
    /// A coil or discrete input.
    Bool,
    /// One bit (`bit = 0..15`) of a 16-bit register.
    Bit,
    /// ASCII text over `words` registers, two characters each.
    String,
}

impl DataType {
    /// Registers the type spans (strings: as declared).
    fn words(self) -> Option<u16> {
        match self {
            Self::U16 | Self::I16 | Self::Bool | Self::Bit => Some(1),
            Self::U32 | Self::I32 | Self::F32 => Some(2),
            Self::U64 | Self::F64 => Some(4),
            Self::String => None,
        }
    }
}

/// Order of bytes or of words: most significant first (`big`) or last (`little`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Most significant first (Modbus's own convention).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// One register entry of a map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Metric it reports (see the vocabulary).
    pub metric: crate::model::Name,
    /// Table.
    pub table: Table,
    /// Zero-based address of the first register.
    pub address: u16,
    /// Data type.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Registers it spans, when the type does not say (strings), or as a check.
    pub words: Option<u16>,
    /// Bit index for `bit`.
    pub bit: Option<u8>,
    /// Word order (default: the map's).
    pub word_order: Option<Order>,
    /// Byte order within a word (default: the map's).
    pub byte_order: Option<Order>,
    /// `value = raw × scale + offset`.
    #[serde(default = "one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Unit.
    #[serde(default)]
    pub unit: String,
    /// Lowest physically possible value.
    pub min: Option<f64>,
    /// Highest physically possible value.
    pub max: Option<f64>,
    /// Raw values meaning "not available" (e.g. 65535, -32768).
    #[serde(default)]
    pub not_available: Vec<i64>,
    /// Whether clients may write it (a setpoint).
    #[serde(default)]
    pub writable: bool,
    /// Whether the poller reads it as telemetry (default true; false for command points
    /// and text).
    #[serde(default = "yes")]
    pub poll: bool,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// A device profile's register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// Profile name.
    pub profile: String,
    /// Device kind the profile describes.
    pub kind: crate::model::Name,
    /// The document the map follows (vendor manual, section), or "modelled on …".
    pub source: String,
    /// Default word order.
    #[serde(default)]
    pub word_order: Order,
    /// Default byte order.
    #[serde(default)]
    pub byte_order: Order,
    /// Entries.
    pub registers: Vec<Register>,
}

/// Why registers could not be decoded or a value encoded.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer words than the type needs.
    #[error("{metric}: needs {need} registers, got {got}")]
    Short {
        /// Metric.
        metric: crate::model::Name,
        /// Registers needed.
        need: usize,
        /// Registers given.
        got: usize,
    },
    /// The raw value is one of the "not available" sentinels.
    #[error("{metric}: not available (raw {raw})")]
    NotAvailable {
        /// Metric.
        metric: crate::model::Name,
        /// The sentinel.
        raw: i64,
    },
    /// A value the type cannot hold.
    #[error("{metric}: {value} does not fit a {data_type:?} register")]
    OutOfRange {
        /// Metric.
        metric: crate::model::Name,
        /// The value.
        value: f64,
        /// The type.
        data_type: DataType,
    },
}

/// A decoded register value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number (scaled and offset).
    Number(f64),
    /// Text.
    Text(String),
}

impl Register {
    /// Registers this entry spans.
    pub fn word_count(&self) -> u16 {
        self.data_type.words().or(self.words).unwrap_or(1)
    }

    fn orders(&self, map: &RegisterMap) -> (Order, Order) {
        (
            self.word_order.unwrap_or(map.word_order),
            self.byte_order.unwrap_or(map.byte_order),
        )
    }

    /// Raw words → the big-endian bytes of the value, whatever the device's orders.
    fn to_bytes(words: &[u16], word_order: Order, byte_order: Order) -> Vec<u8> {
        let mut ordered: Vec<u16> = words.to_vec();
        if word_order == Order::Little {
            ordered.reverse();
        }
        ordered
            .iter()
            .flat_map(|w| match byte_order {
                Order::Big => w.to_be_bytes(),
                Order::Little => w.to_le_bytes(),
            })
            .collect()
    }

    fn from_bytes(bytes: &[u8], word_order: Order, byte_order: Order) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                match byte_order {
                    Order::Big => u16::from_be_bytes(pair),
                    Order::Little => u16::from_le_bytes(pair),
                }
            })
            .collect();
        if word_order == Order::Little {
            words.reverse();
        }
        words
    }

    /// Decodes this entry from its registers (for coils and discrete inputs, one word
    /// per bit, 0 or 1).
    pub fn decode(&self, map: &RegisterMap, words: &[u16]) -> Result<Value, CodecError> {
        let need = usize::from(self.word_count());
        if words.len() < need {
            return Err(CodecError::Short {
                metric: self.metric.clone(),
                need,
                got: words.len(),
            });
        }
        let (wo, bo) = self.orders(map);
        let b = Self::to_bytes(&words[..need], wo, bo);
        let arr = |n: usize| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[8 - n..].copy_from_slice(&b[..n]);
            a
        };
        let (raw_int, raw): (Option<i64>, f64) = match self.data_type {
            DataType::U16 => {
                let v = u16::from_be_bytes([b[0], b[1]]);
                (Some(i64::from(v)), f64::from(v))
            }
            DataType::I16 => {
                let v = i16::from_be_bytes([b[0], b[1]]);
                (Some(i64::from(v)), f64::from(v))
            }
            DataType::U32 => {
                let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                (Some(i64::from(v)), f64::from(v))
            }
            DataType::I32 => {
                let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                (Some(i64::from(v)), f64::from(v))
            }
            DataType::U64 => {
                let v = u64::from_be_bytes(arr(8));
                (i64::try_from(v).ok(), v as f64)
            }
            DataType::F32 => (
                None,
                f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ),
            DataType::F64 => (None, f64::from_be_bytes(arr(8))),
            DataType::Bool => {
                let v = i64::from(words[0] != 0);
                (Some(v), v as f64)
            }
            DataType::Bit => {
                let v = i64::from((words[0] >> self.bit.unwrap_or(0).min(15)) & 1);
                (Some(v), v as f64)
            }
            DataType::String => {
                let text: String = b
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| if c.is_ascii() { c as char } else { '?' })
                    .collect();
                return Ok(Value::Text(text.trim_end().to_owned()));
            }
        };
        if let Some(r) = raw_int.filter(|r| self.not_available.contains(r)) {
            return Err(CodecError::NotAvailable {
                metric: self.metric.clone(),
                raw: r,
            });
        }
        Ok(Value::Number(raw * self.scale + self.offset))
    }

    /// Encodes a value into this entry's registers (the inverse of [`Register::decode`];
    /// integer types round to the nearest raw value).
    pub fn encode(&self, map: &RegisterMap, value: &Value) -> Result<Vec<u16>, CodecError> {
        let (wo, bo) = self.orders(map);
        let out_of_range = |v: f64| CodecError::OutOfRange {
            metric: self.metric.clone(),
            value: v,
            data_type: self.data_type,
        };
        let v = match value {
            Value::Text(t) => {
                let n = usize::from(self.word_count()) * 2;
                let mut bytes: Vec<u8> = t.bytes().take(n).collect();
                bytes.resize(n, 0);
                return Ok(Self::from_bytes(&bytes, wo, bo));
            }
            Value::Number(v) => *v,
        };
        let raw = (v - self.offset) / self.scale;
        let int = |lo: f64, hi: f64| -> Result<i128, CodecError> {
            let r = raw.round();
            if r.is_finite() && r >= lo && r <= hi {
                Ok(r as i128)
            } else {
                Err(out_of_range(v))
            }
        };
        let bytes: Vec<u8> = match self.data_type {
            DataType::U16 => (int(0.0, 65535.0)? as u16).to_be_bytes().to_vec(),
            DataType::I16 => (int(-32768.0, 32767.0)? as i16).to_be_bytes().to_vec(),
            DataType::U32 => (int(0.0, 4_294_967_295.0)? as u32).to_be_bytes().to_vec(),
            DataType::I32 => (int(-2_147_483_648.0, 2_147_483_647.0)? as i32)
                .to_be_bytes()
                .to_vec(),
            DataType::U64 => (int(0.0, 18_446_744_073_709_551_615.0)? as u64)
                .to_be_bytes()
                .to_vec(),
            DataType::F32 => (raw as f32).to_be_bytes().to_vec(),
            DataType::F64 => raw.to_be_bytes().to_vec(),
            DataType::Bool => return Ok(vec![u16::from(int(0.0, 1.0)? == 1)]),
            DataType::Bit => {
                let on = int(0.0, 1.0)? == 1;
                return Ok(vec![u16::from(on) << self.bit.unwrap_or(0).min(15)]);
            }
            DataType::String => return Err(out_of_range(v)),
        };
        Ok(Self::from_bytes(&bytes, wo, bo))
    }
}

impl RegisterMap {
    /// Parses and validates a map.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, TomlError> {
        let m: Self = tomlfile::parse(text, origin)?;
        m.validate(origin)?;
        Ok(m)
    }

    fn validate(&self, origin: &str) -> Result<(), TomlError> {
        check(
            origin,
            "profile",
            !self.profile.is_empty(),
            "must not be empty",
        )?;
        check(
            origin,
            "source",
            !self.source.is_empty(),
            "must cite the document the map follows",
        )?;
        check(
            origin,
            "registers",
            !self.registers.is_empty(),
            "must list at least one register",
        )?;
        for (i, r) in self.registers.iter().enumerate() {
            let key = |k: &str| format!("registers[{i}] ({}).{k}", r.metric);
            check(
                origin,
                &key("metric"),
                !r.metric.is_empty(),
                "must not be empty",
            )?;
            let bits = matches!(r.table, Table::Coil | Table::Discrete);
            check(
                origin,
                &key("type"),
                bits == (r.data_type == DataType::Bool),
                "must be bool for coils and discrete inputs, and only there",
            )?;
            match (r.data_type.words(), r.words) {
                (Some(n), Some(w)) => check(
                    origin,
                    &key("words"),
                    n == w,
                    &format!("is {w} but a {:?} spans {n} registers", r.data_type),
                )?,
                (None, w) => check(
                    origin,
                    &key("words"),
                    w.is_some_and(|w| w >= 1),
                    "must be given for strings",
                )?,
                _ => {}
            }
            check(
                origin,
                &key("bit"),
                (r.data_type == DataType::Bit) == r.bit.is_some() && r.bit.is_none_or(|b| b < 16),
                "must be 0..15 for bit fields, and only there",
            )?;
            check(
                origin,
                &key("address"),
                u32::from(r.address) + u32::from(r.word_count()) <= 65_536,
                "runs past register 65535",
            )?;
            check(
                origin,
                &key("scale"),
                r.scale.is_finite() && r.scale != 0.0,
                "must be a non-zero number",
            )?;
            if let (Some(lo), Some(hi)) = (r.min, r.max) {
                check(origin, &key("min"), lo < hi, "must be below max")?;
            }
            check(
                origin,
                &key("poll"),
                !(r.poll && r.data_type == DataType::String),
                "must be false for strings (text is not telemetry)",
            )?;
            check(
                origin,
                &key("writable"),
                !r.writable || r.table != Table::Input && r.table != Table::Discrete,
                "input registers and discrete inputs cannot be written",
            )?;
        }
        // Overlaps: two entries sharing a register, unless both are distinct bits of it.
        for (i, a) in self.registers.iter().enumerate() {
            for b in &self.registers[i + 1..] {
                let overlap = a.table == b.table
                    && a.address < b.address + b.word_count()
                    && b.address < a.address + a.word_count();
                let bitfield =
                    a.data_type == DataType::Bit && b.data_type == DataType::Bit && a.bit != b.bit;
                check(
                    origin,
                    &format!("registers ({} and {})", a.metric, b.metric),
                    !overlap || bitfield,
                    &format!(
                        "overlap at {:?} register {}",
                        a.table,
                        a.address.max(b.address)
                    ),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(word: Order, byte: Order) -> RegisterMap {
        RegisterMap {
            profile: "t".into(),
            kind: "ups".into(),
            source: "test".into(),
            word_order: word,
            byte_order: byte,
            registers: Vec::new(),
        }
    }

    fn reg(t: DataType, scale: f64, offset: f64) -> Register {
        Register {
            metric: "m".into(),
            table: if t == DataType::Bool {
                Table::Coil
            } else {
                Table::Holding
            },
            address: 0,
            data_type: t,
            words: (t == DataType::String).then_some(4),
            bit: (t == DataType::Bit).then_some(5),
            word_order: None,
            byte_order: None,
            scale,
            offset,
            unit: String::new(),
            min: None,
            max: None,
            not_available: Vec::new(),
            writable: false,
            poll: true,
        }
    }

    const ORDERS: [(Order, Order); 4] = [
        (Order::Big, Order::Big),
        (Order::Big, Order::Little),
        (Order::Little, Order::Big),
        (Order::Little, Order::Little),
    ];

    #[test]
    fn known_layouts_decode() {
        // 123.456 as f32 is 0x42F6E979; word swap ("CDAB") is common on power meters.
        let m = map(Order::Little, Order::Big);
        let v = reg(DataType::F32, 1.0, 0.0)
            .decode(&m, &[0xE979, 0x42F6])
            .unwrap();
        assert!(matches!(v, Value::Number(x) if (x - 123.456).abs() < 1e-4));
        let m = map(Order::Big, Order::Big);
        let v = reg(DataType::I16, 0.1, 0.0).decode(&m, &[0xFF9C]).unwrap();
        assert_eq!(v, Value::Number(-10.0));
        let mut na = reg(DataType::U16, 1.0, 0.0);
        na.not_available = vec![65535];
        assert!(matches!(
            na.decode(&m, &[0xFFFF]),
            Err(CodecError::NotAvailable { .. })
        ));
        assert!(matches!(
            reg(DataType::U32, 1.0, 0.0).decode(&m, &[1]),
            Err(CodecError::Short { .. })
        ));
        let s = reg(DataType::String, 1.0, 0.0);
        assert_eq!(
            s.decode(&m, &[0x4142, 0x4344, 0x0000, 0x0000]).unwrap(),
            Value::Text("ABCD".into())
        );
    }

    proptest! {
        /// encode → decode gives back every representable value, for every type and order.
        #[test]
        fn integers_round_trip(raw in any::<i64>(), t in 0usize..5, o in 0usize..4, scale in prop::sample::select(vec![1.0, 0.1, 0.01, 10.0])) {
            let (types, ranges): ([DataType; 5], [(i64, i64); 5]) = (
                [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64],
                [(0, 65535), (-32768, 32767), (0, 4_294_967_295), (-2_147_483_648, 2_147_483_647), (0, 1 << 52)],
            );
            let (lo, hi) = ranges[t];
            let raw = lo + (raw.rem_euclid(hi - lo + 1));
            let m = map(ORDERS[o].0, ORDERS[o].1);
            let r = reg(types[t], scale, 3.0);
            let value = raw as f64 * scale + 3.0;
            let words = r.encode(&m, &Value::Number(value)).unwrap();
            prop_assert_eq!(words.len(), usize::from(r.word_count()));
            let Value::Number(back) = r.decode(&m, &words).unwrap() else { panic!("not a number") };
            prop_assert!((back - value).abs() <= 1e-9 * value.abs().max(1.0), "{} != {}", back, value);
        }

        #[test]
        fn floats_round_trip(x in any::<f64>().prop_filter("finite", |x| x.is_finite()), o in 0usize..4) {
            let m = map(ORDERS[o].0, ORDERS[o].1);
            let r = reg(DataType::F64, 1.0, 0.0);
            prop_assert_eq!(r.decode(&m, &r.encode(&m, &Value::Number(x)).unwrap()).unwrap(), Value::Number(x));
            let r = reg(DataType::F32, 1.0, 0.0);
            let y = f64::from(x as f32);
            if y.is_finite() {
                prop_assert_eq!(r.decode(&m, &r.encode(&m, &Value::Number(y)).unwrap()).unwrap(), Value::Number(y));
            }
        }

        /// The loader of people-written (and attacker-supplied) map files: junk, and a
        /// real profile with one byte changed, give an error or a map, never a panic.
        #[test]
        fn loading_never_panics(junk in ".{0,200}", at in 0usize..4000, byte in any::<u8>()) {
            let _ = RegisterMap::from_toml_str(&junk, "junk.toml");
            let mut text = include_str!("../../protocols/modbus/chiller-generic.toml").as_bytes().to_vec();
            let at = at % text.len();
            text[at] = byte;
            if let Ok(t) = String::from_utf8(text) {
                let _ = RegisterMap::from_toml_str(&t, "chiller.toml");
            }
        }

        #[test]
        fn bits_and_text_round_trip(on in any::<bool>(), text in "[A-Za-z0-9 -]{0,8}", o in 0usize..4) {
            let m = map(ORDERS[o].0, ORDERS[o].1);
            for t in [DataType::Bool, DataType::Bit] {
                let r = reg(t, 1.0, 0.0);
                let v = Value::Number(f64::from(u8::from(on)));
                prop_assert_eq!(r.decode(&m, &r.encode(&m, &v).unwrap()).unwrap(), v);
            }
            let r = reg(DataType::String, 1.0, 0.0);
            let back = r.decode(&m, &r.encode(&m, &Value::Text(text.clone())).unwrap()).unwrap();
            prop_assert_eq!(back, Value::Text(text.trim_end().to_owned()));
        }

        /// Decoding never panics, whatever the words.
        #[test]
        fn decode_never_panics(words in proptest::collection::vec(any::<u16>(), 0..6), t in 0usize..10, o in 0usize..4) {
            let types = [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64,
                         DataType::F32, DataType::F64, DataType::Bool, DataType::Bit, DataType::String];
            let _ = reg(types[t], 1.0, 0.0).decode(&map(ORDERS[o].0, ORDERS[o].1), &words);
        }
    }

    #[test]
    fn the_shipped_sdm630_map_reads_meter_words() {
        let text = include_str!("../../protocols/modbus/grid-meter-eastron-sdm630.toml");
        let m = RegisterMap::from_toml_str(text, "sdm630").unwrap();
        let get = |metric: &str| m.registers.iter().find(|r| &*r.metric == metric).unwrap();
        // 50.0 Hz is 0x42480000; 1,000,000 W is 0x49742400 (IEEE-754, high word first).
        assert_eq!(
            get("frequency_hz").decode(&m, &[0x4248, 0x0000]).unwrap(),
            Value::Number(50.0)
        );
        let Value::Number(kw) = get("active_power_kw")
            .decode(&m, &[0x4974, 0x2400])
            .unwrap()
        else {
            panic!()
        };
        assert!((kw - 1000.0).abs() < 1e-9, "{kw}");
        assert_eq!(get("frequency_hz").address, 30071 - 30001);
    }

    #[test]
    fn maps_are_validated_naming_the_entry() {
        let head = "profile = \"p\"\nkind = \"ups\"\nsource = \"doc\"\n";
        let e = |body: &str| {
            RegisterMap::from_toml_str(&format!("{head}{body}"), "m.toml")
                .unwrap_err()
                .to_string()
        };
        let entry = |t: &str, addr: u16, extra: &str| {
            format!("[[registers]]\nmetric = \"x{addr}\"\ntable = \"holding\"\naddress = {addr}\ntype = \"{t}\"\n{extra}")
        };
        assert!(e(&entry("f32", 0, "words = 1\n")).contains("spans 2 registers"));
        assert!(e(&entry("float", 0, "")).contains("float"));
        assert!(e(&(entry("u32", 10, "") + &entry("u16", 11, ""))).contains("overlap"));
        assert!(e(&entry("u32", 65535, "")).contains("past register 65535"));
        assert!(e(&entry("bit", 0, "")).contains("bit"));
        assert!(e(
            "[[registers]]\nmetric = \"c\"\ntable = \"coil\"\naddress = 0\ntype = \"u16\"\n"
        )
        .contains("must be bool"));
        let ok = RegisterMap::from_toml_str(
            &format!(
                "{head}{}{}",
                entry("bit", 0, "bit = 1\n"),
                entry("bit", 0, "bit = 2\n").replace("x0", "y0")
            ),
            "m.toml",
        );
        assert!(ok.is_ok(), "two bits of one register are fine: {ok:?}");
    }
}
