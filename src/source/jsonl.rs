//! Canonical JSONL captures: one reading or command object per line (docs/design.md).
//!
//! Strings are borrowed from the line buffer, the timestamp is parsed without
//! allocation, and the point is interned before the line buffer is reused, so a reading
//! costs no allocation. Unknown fields are ignored (forward compatibility).

use super::{BadReason, CaptureSource, FileStats, Lines};
use crate::model::event::Event;
use crate::model::points::{PointId, Registry};
use crate::model::{Command, Quality, Ts, WireProtocol};
use crate::time::{epoch_auto, TimeFormat};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::io::BufRead;

/// A JSONL capture.
pub struct JsonlSource {
    lines: Lines,
    stats: FileStats,
    last_ts: LastTs,
    names: Names,
}

impl JsonlSource {
    /// Reads `reader`, naming it `name` in messages.
    pub fn new(reader: Box<dyn BufRead + Send>, name: String, max_line: usize) -> Self {
        Self {
            lines: Lines::new(reader, max_line, 0),
            stats: FileStats::new(&name, "jsonl"),
            last_ts: LastTs::default(),
            names: Names::default(),
        }
    }
}

impl CaptureSource for JsonlSource {
    fn next_event(&mut self, reg: &mut Registry) -> Option<Event> {
        while let Some((line, text)) = self.lines.next_line(&mut self.stats) {
            match parse(text, reg, &mut self.last_ts, &mut self.names) {
                Ok(ev) => {
                    match ev {
                        Event::Sample { .. } => self.stats.readings += 1,
                        Event::Command(_) => self.stats.commands += 1,
                        Event::Traffic(_) => {}
                    }
                    return Some(ev);
                }
                Err((reason, detail)) => self.stats.bad_line(line, reason, detail),
            }
        }
        None
    }

    fn stats(&self) -> &FileStats {
        &self.stats
    }
}

/// A timestamp as written: text (borrowed when possible) or a number.
enum RawTs<'a> {
    Text(Cow<'a, str>),
    Number(f64),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawTs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timestamp string or number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Number(v as f64))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A string, borrowed from the line unless it holds escapes. serde borrows a bare
/// `Cow<str>` field with `#[serde(borrow)]`, but inside an `Option` it copies every
/// time: four allocations per reading.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A value: a number, or a boolean read as 0/1.
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a boolean")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Num, E> {
                Ok(Num(if v { 1.0 } else { 0.0 }))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    #[serde(rename = "type", borrow)]
    ty: Option<Text<'a>>,
    #[serde(borrow)]
    site: Option<Text<'a>>,
    #[serde(borrow)]
    device: Option<Text<'a>>,
    #[serde(borrow)]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    metric: Option<Text<'a>>,
    value: Option<Num>,
    #[serde(borrow)]
    quality: Option<Text<'a>>,
    #[serde(borrow)]
    client: Option<Text<'a>>,
    function: Option<u8>,
    address: Option<u32>,
    values: Option<Vec<u16>>,
    #[serde(borrow)]
    protocol: Option<Text<'a>>,
    property: Option<u32>,
}

type LineError = (BadReason, String);

fn missing(field: &str) -> LineError {
    (BadReason::MissingField, format!("missing field `{field}`"))
}

/// The last timestamp text parsed and its time: the readings of one moment are written
/// one after another with the same text, so most lines need no parsing of it.
#[derive(Default)]
struct LastTs {
    text: String,
    ts: Option<Ts>,
}

impl LastTs {
    fn parse(&mut self, text: &str) -> Result<Ts, LineError> {
        if let Some(ts) = self.ts.filter(|_| self.text == text) {
            return Ok(ts);
        }
        let ts = TimeFormat::Auto
            .parse(text)
            .map_err(|e| (BadReason::BadTimestamp, e.to_string()))?;
        self.text.clear();
        self.text.push_str(text);
        self.ts = Some(ts);
        Ok(ts)
    }
}

/// Parses one line into an event, interning readings.
pub fn parse_line(line: &[u8], reg: &mut Registry) -> Result<Event, LineError> {
    parse(line, reg, &mut LastTs::default(), &mut Names::default())
}

fn parse(
    line: &[u8],
    reg: &mut Registry,
    last_ts: &mut LastTs,
    names: &mut Names,
) -> Result<Event, LineError> {
    let text = std::str::from_utf8(line).map_err(|e| (BadReason::InvalidUtf8, e.to_string()))?;
    if let Some(c) = Canonical::read(text) {
        let ts = last_ts.parse(c.ts)?;
        if let Some(point) = names.get(reg, c.names) {
            return Ok(Event::Sample {
                ts,
                point,
                value: c.value,
                quality: Quality::Good,
            });
        }
        let ev = reading(ts, c.site, c.device, c.kind, c.metric, c.value, None, reg)?;
        if let Event::Sample { point, .. } = ev {
            names.insert(reg, c.names, point);
        }
        return Ok(ev);
    }
    parse_with_serde(text, reg, last_ts)
}

/// The point each canonical line's names were interned as, keyed by the line's text from
/// the site to the metric (one hash and one comparison, where the registry compares the
/// site, the device and the metric one by one). A cache of one registry's answers: it
/// is emptied when handed another registry, and when an attacker's lines (one point
/// named with many kinds) make it outgrow the registry's own bound; names longer than
/// [`Names::LONGEST`] are left to the registry, so it holds at most that many bytes a
/// point.
#[derive(Default)]
struct Names {
    registry: u64,
    points: rustc_hash::FxHashMap<Box<[u8]>, PointId>,
}

impl Names {
    /// The longest names kept (a real capture's are a few tens of bytes).
    const LONGEST: usize = 256;

    fn get(&mut self, reg: &Registry, names: &str) -> Option<PointId> {
        if self.registry != reg.id() {
            self.points.clear();
            self.registry = reg.id();
        }
        self.points.get(names.as_bytes()).copied()
    }

    fn insert(&mut self, reg: &Registry, names: &str, point: PointId) {
        if names.len() > Self::LONGEST {
            return;
        }
        if self.points.len() >= reg.max_points() {
            self.points.clear();
        }
        self.points.insert(names.as_bytes().into(), point);
    }
}

/// Any line, by serde: what is not a canonical reading.
fn parse_with_serde(
    text: &str,
    reg: &mut Registry,
    last_ts: &mut LastTs,
) -> Result<Event, LineError> {
    let rec: Record = serde_json::from_str(text).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Data => BadReason::WrongType,
            _ => BadReason::InvalidJson,
        };
        (reason, e.to_string())
    })?;
    let ts = match rec.ts.ok_or_else(|| missing("ts"))? {
        RawTs::Text(s) => last_ts.parse(&s)?,
        RawTs::Number(v) => epoch_auto(v).ok_or_else(|| {
            (
                BadReason::BadTimestamp,
                format!("epoch timestamp {v} out of range"),
            )
        })?,
    };
    let site = rec.site.ok_or_else(|| missing("site"))?;
    let device = rec.device.ok_or_else(|| missing("device"))?;
    match rec.ty.as_deref() {
        None | Some("reading") => {
            let kind = rec.kind.ok_or_else(|| missing("kind"))?;
            let metric = rec.metric.ok_or_else(|| missing("metric"))?;
            let value = rec.value.ok_or_else(|| missing("value"))?.0;
            reading(
                ts,
                &site,
                &device,
                &kind,
                &metric,
                value,
                rec.quality.as_deref(),
                reg,
            )
        }
        Some("command") => Ok(Event::Command(Box::new(Command {
            ts,
            site: site.0.into_owned(),
            device: device.0.into_owned(),
            client: rec.client.ok_or_else(|| missing("client"))?.0.into_owned(),
            function: rec.function.ok_or_else(|| missing("function"))?,
            address: rec.address.ok_or_else(|| missing("address"))?,
            values: rec.values.unwrap_or_default(),
            protocol: match rec.protocol.as_deref() {
                None | Some("modbus") => WireProtocol::Modbus,
                Some("bacnet") => WireProtocol::Bacnet,
                Some(other) => {
                    return Err((
                        BadReason::WrongType,
                        format!("unknown protocol {other:?} (expected modbus or bacnet)"),
                    ))
                }
            },
            property: rec.property,
            value: rec.value.map(|v| v.0).filter(|v| v.is_finite()),
        }))),
        Some(other) => Err((
            BadReason::UnknownRecordType,
            format!("unknown record type {other:?} (expected reading or command)"),
        )),
    }
}

/// A reading line exactly as wattchdog writes it (`{"ts":"…","site":"…","device":"…",
/// "kind":"…","metric":"…","value":N}`: these keys in this order, no whitespace, no
/// escapes), read without serde: nearly every line of a capture, at a fraction of the
/// cost. Anything else, valid or not, is left to serde, which also words the errors; a
/// line read here means exactly what serde would read it as (property test).
struct Canonical<'a> {
    ts: &'a str,
    /// The line from the site's first byte to the metric's last: the point's names.
    names: &'a str,
    site: &'a str,
    device: &'a str,
    kind: &'a str,
    metric: &'a str,
    value: f64,
}

impl<'a> Canonical<'a> {
    fn read(line: &'a str) -> Option<Self> {
        let mut rest = line.strip_prefix(r#"{"ts":""#)?;
        let ts = field(&mut rest, r#"","site":""#)?;
        let from = line.len() - rest.len();
        let site = field(&mut rest, r#"","device":""#)?;
        let device = field(&mut rest, r#"","kind":""#)?;
        let kind = field(&mut rest, r#"","metric":""#)?;
        let metric = field(&mut rest, r#"","value":"#)?;
        let names = &line[from..line.len() - rest.len() - r#"","value":"#.len()];
        let number = rest.strip_suffix('}')?;
        json_number(number)?;
        // serde refuses a number too large for an f64 (`1e999`); so does this path.
        let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite())?;
        Some(Canonical {
            ts,
            names,
            site,
            device,
            kind,
            metric,
            value,
        })
    }
}

/// The string text at the start of `rest`, which then moves past `next` (the text that
/// must follow it). Inlined, so each `next` is compared as the constant it is.
#[inline(always)]
fn field<'a>(rest: &mut &'a str, next: &str) -> Option<&'a str> {
    let end = plain_string_len(rest.as_bytes())?;
    let (text, after) = rest.split_at(end);
    *rest = after.strip_prefix(next)?;
    Some(text)
}

/// Where the JSON string text at the start of `b` ends (its closing quote), if nothing
/// before that needs serde: a backslash starts an escape, a control character is invalid.
/// Eight bytes at a time (a scan for the quote, then a second pass over the field, were
/// about a tenth of a replay's instructions): in a word, the lowest byte flagged as a quote, a backslash or
/// below 0x20 is one (a false flag only ever sits above a true one).
fn plain_string_len(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let special = |w: u64| {
        (zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH
    };
    let mut words = b.chunks_exact(8);
    for (i, word) in words.by_ref().enumerate() {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let flags = special(w);
        if flags != 0 {
            let at = i * 8 + (flags.trailing_zeros() / 8) as usize;
            return (b[at] == b'"').then_some(at);
        }
    }
    let tail = words.remainder();
    let at = tail
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (tail[at] == b'"').then_some(b.len() - tail.len() + at)
}

/// Whether `s` is a JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number(s: &str) -> Option<()> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(&mut i) {
        return None;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    (i == b.len()).then_some(())
}

/// Validates and interns one reading (shared by the JSONL and CSV readers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reading(
    ts: Ts,
    site: &str,
    device: &str,
    kind: &str,
    metric: &str,
    value: f64,
    quality: Option<&str>,
    reg: &mut Registry,
) -> Result<Event, LineError> {
    if !value.is_finite() {
        return Err((
            BadReason::NonFiniteValue,
            format!("value {value} is not finite"),
        ));
    }
    for (name, v) in [
        ("site", site),
        ("device", device),
        ("kind", kind),
        ("metric", metric),
    ] {
        if v.is_empty() {
            return Err((BadReason::MissingField, format!("empty `{name}`")));
        }
    }
    let quality = match quality {
        None => Quality::Good,
        Some(q) => Quality::parse(q).ok_or_else(|| {
            (
                BadReason::BadQuality,
                format!("quality {q:?} is not good, bad or stale"),
            )
        })?,
    };
    let point = reg
        .intern(site, device, kind, metric)
        .map_err(|e| (BadReason::TooManyPoints, e.to_string()))?;
    Ok(Event::Sample {
        ts,
        point,
        value,
        quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Event, LineError> {
        parse_line(s.as_bytes(), &mut Registry::new(100))
    }

    #[test]
    fn reading_and_command() {
        let ev = parse(r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"chiller-2","kind":"chiller","metric":"supply_temp_c","value":7.1}"#).unwrap();
        assert!(matches!(ev, Event::Sample { value, .. } if value == 7.1));
        let ev = parse(r#"{"ts":"2026-07-07T10:00:00.000Z","type":"command","site":"ams1","device":"chiller-2","client":"10.20.0.9","function":6,"address":1201,"values":[1300]}"#).unwrap();
        match ev {
            Event::Command(c) => {
                assert_eq!((c.function, c.address, c.values), (6, 1201, vec![1300]))
            }
            _ => panic!("not a command"),
        }
        // Escaped strings cannot be borrowed from the line; they read the same.
        let mut reg = Registry::new(100);
        let plain = parse_line(br#"{"ts":1783418400,"site":"a","device":"chiller-2","kind":"chiller","metric":"m","value":1}"#, &mut reg).unwrap();
        let escaped = parse_line(br#"{"ts":1783418400,"site":"\u0061","device":"chiller\u002d2","kind":"chill\u0065r","metric":"\u006d","value":1}"#, &mut reg).unwrap();
        match (plain, escaped) {
            (Event::Sample { point: a, .. }, Event::Sample { point: b, .. }) => assert_eq!(a, b),
            _ => panic!("not readings"),
        }
        let ev = parse(r#"{"ts":1783418400,"site":"a","device":"u","kind":"ups","metric":"on_battery","value":true,"quality":"stale"}"#).unwrap();
        assert!(matches!(ev, Event::Sample { value, quality: Quality::Stale, .. } if value == 1.0));
    }

    #[test]
    fn a_repeated_timestamp_reads_the_same_and_a_bad_one_is_still_refused() {
        let mut last = LastTs::default();
        let t = |s: &str, last: &mut LastTs| last.parse(s).map_err(|(r, _)| r);
        let a = t("2026-07-07T10:00:00.000Z", &mut last).unwrap();
        assert_eq!(t("2026-07-07T10:00:00.000Z", &mut last), Ok(a));
        let b = t("2026-07-07T10:00:01.000Z", &mut last).unwrap();
        assert_eq!(b - a, 1000);
        assert_eq!(
            t("07/07/2026 10:00", &mut last),
            Err(BadReason::BadTimestamp)
        );
        assert_eq!(t("2026-07-07T10:00:01.000Z", &mut last), Ok(b));
        assert_eq!(
            t("07/07/2026 10:00", &mut last),
            Err(BadReason::BadTimestamp)
        );
    }

    #[test]
    fn bad_lines_have_reasons() {
        let cases = [
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"d","kind":"ups","#,
                BadReason::InvalidJson,
            ),
            ("not json", BadReason::InvalidJson),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"d","kind":"ups","metric":"m","value":"7.1"}"#,
                BadReason::WrongType,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"d","kind":"ups","metric":"m"}"#,
                BadReason::MissingField,
            ),
            (
                r#"{"ts":"07/07/2026 10:00","site":"a","device":"d","kind":"ups","metric":"m","value":1}"#,
                BadReason::BadTimestamp,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00","site":"a","device":"d","kind":"ups","metric":"m","value":1}"#,
                BadReason::BadTimestamp,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"d","kind":"ups","metric":"m","value":1e999}"#,
                BadReason::InvalidJson,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","type":"alarm","site":"a","device":"d"}"#,
                BadReason::UnknownRecordType,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"a","device":"d","kind":"ups","metric":"m","value":1,"quality":"meh"}"#,
                BadReason::BadQuality,
            ),
            (
                r#"{"ts":"2026-07-07T10:00:00Z","site":"","device":"d","kind":"ups","metric":"m","value":1}"#,
                BadReason::MissingField,
            ),
        ];
        for (line, want) in cases {
            let got = parse(line).map(|_| ()).unwrap_err().0;
            assert_eq!(got, want, "{line}");
        }
        assert_eq!(
            parse_line(b"{\"ts\":\"\xff\"}", &mut Registry::new(1))
                .unwrap_err()
                .0,
            BadReason::InvalidUtf8
        );
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let ev = parse(
            r#"{"ts":"2026-07-07T10:00:00Z","site":"a\u0041","device":"d\"q","kind":"ups","metric":"load_pct","value":1}"#,
        );
        assert!(ev.is_ok());
    }

    /// The same line read by serde alone.
    fn by_serde(line: &str, reg: &mut Registry) -> Result<Event, LineError> {
        parse_with_serde(line, reg, &mut LastTs::default())
    }

    #[test]
    fn canonical_lines_are_read_without_serde_and_the_rest_with_it() {
        let line = r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"chiller-2","kind":"chiller","metric":"supply_temp_c","value":-7.25e-1}"#;
        let c = Canonical::read(line).expect("canonical");
        assert_eq!(
            (c.site, c.metric, c.value),
            ("ams1", "supply_temp_c", -0.725)
        );
        for other in [
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":7,"quality":"bad"}"#,
            r#"{"ts": "2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":7}"#,
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams\u0031","device":"c","kind":"chiller","metric":"m","value":7}"#,
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":07}"#,
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":1.}"#,
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":inf}"#,
            r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams1","device":"c","kind":"chiller","metric":"m","value":true}"#,
        ] {
            assert!(Canonical::read(other).is_none(), "{other}");
        }
        let quoted = r#"{"ts":"2026-07-07T10:00:00.000Z","site":"ams\u0031","device":"c","kind":"chiller","metric":"m","value":7}"#;
        let mut reg = Registry::new(10);
        assert!(
            parse_line(quoted.as_bytes(), &mut reg).is_ok(),
            "escapes: serde's"
        );
        assert_eq!(reg.device(reg.point(0).device).site, "ams1");
    }

    proptest! {
        /// The word-at-a-time scan finds what a byte-at-a-time one finds.
        #[test]
        fn a_string_ends_where_a_byte_by_byte_scan_says(
            bytes in proptest::collection::vec(
                prop_oneof![
                    8 => 0x20u8..0x7f,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                    // The edges of the bit tricks' ranges.
                    1 => prop_oneof![Just(0u8), Just(0x1f), Just(0x20), Just(0x21), Just(0x80), Just(0xff)],
                    1 => 0x7fu8..=0xff,
                ],
                0..40,
            ),
        ) {
            let naive = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .filter(|&at| bytes[at] == b'"');
            prop_assert_eq!(plain_string_len(&bytes), naive, "{:?}", bytes);
        }

        /// A line the fast path reads is the reading serde reads from it.
        #[test]
        fn the_fast_path_reads_what_serde_reads(
            fields in proptest::collection::vec("[ -~\u{e9}\u{7f}\u{1}]{0,6}", 4),
            number in r"-?[0-9]{0,3}(\.[0-9]{0,3})?([eE][+-]?[0-9]{0,3})?|[0-9.eE+-]{1,6}",
            tail in prop_oneof![Just(""), Just(" "), Just(",\"quality\":\"bad\"")],
        ) {
            let line = format!(
                r#"{{"ts":"2026-07-07T10:00:00.000Z","site":"{}","device":"{}","kind":"{}","metric":"{}","value":{number}{tail}}}"#,
                fields[0], fields[1], fields[2], fields[3]
            );
            let (mut a, mut b) = (Registry::new(10), Registry::new(10));
            if Canonical::read(&line).is_some() {
                let fast = parse_line(line.as_bytes(), &mut a).map_err(|e| e.0);
                let slow = by_serde(&line, &mut b).map_err(|e| e.0);
                prop_assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{}", line);
                if fast.is_ok() {
                    let named = |r: &Registry| {
                        let p = r.point(0);
                        let d = r.device(p.device);
                        (d.site.clone(), d.name.clone(), d.kind_name.clone(), p.metric.clone())
                    };
                    prop_assert_eq!(named(&a), named(&b));
                }
            }
        }

        /// Lines name the points the registry gives their names, refusals included,
        /// though most are answered by the source's cache of names: over small
        /// registries (the cache emptied, the registry full), one name written with
        /// several kinds, and the cache handed another registry halfway.
        #[test]
        fn the_cached_points_are_the_registrys(
            lines in proptest::collection::vec((0u8..2, 0u8..3, 0u8..2, 0u8..4), 1..200),
            max_points in 1usize..12,
            switch_at in 0usize..200,
        ) {
            let (mut last_ts, mut cache) = (LastTs::default(), Names::default());
            let mut regs = [Registry::new(max_points), Registry::new(max_points)];
            let mut direct = [Registry::new(max_points), Registry::new(max_points)];
            for (i, &(s, d, k, m)) in lines.iter().enumerate() {
                // The last metric's names are too long to be kept.
                let m = if m == 3 { "m".repeat(300) } else { format!("m{m}") };
                let (s, d, k) = (format!("s{s}"), format!("d{d}"), ["ups", "pdu"][k as usize]);
                let line = format!(
                    r#"{{"ts":"2026-07-07T10:00:00.000Z","site":"{s}","device":"{d}","kind":"{k}","metric":"{m}","value":1}}"#
                );
                let r = usize::from(i >= switch_at);
                let got = match super::parse(line.as_bytes(), &mut regs[r], &mut last_ts, &mut cache) {
                    Ok(Event::Sample { point, .. }) => Ok(point),
                    Ok(_) => panic!("not a reading"),
                    Err((reason, _)) => Err(reason),
                };
                let want = direct[r].intern(&s, &d, k, &m).map_err(|_| BadReason::TooManyPoints);
                prop_assert_eq!(got, want, "line {}", i);
            }
        }

        /// The line parser never panics on arbitrary bytes.
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&bytes, &mut Registry::new(10));
        }

        /// Nor on JSON-shaped noise.
        #[test]
        fn never_panics_on_json_like(s in r#"\{("[a-z]{1,6}":("[^"]{0,12}"|-?[0-9.e+]{1,8}|true|null|\[[0-9,]{0,8}\]),?){0,9}\}"#) {
            let _ = parse_line(s.as_bytes(), &mut Registry::new(10));
        }
    }
}
