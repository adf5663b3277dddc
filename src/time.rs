//! Event-time parsing and formatting.
//!
//! Captures carry millions of RFC 3339 timestamps, so the common shape
//! (`YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`) is parsed by hand without allocating; other
//! shapes (a strftime pattern for CSV exports, epoch seconds or milliseconds) go through
//! chrono. Durations in the config are written `500ms`, `30s`, `10m`, `2h` or `1d`.

use chrono::{DateTime, SecondsFormat, Utc};
use thiserror::Error;

/// Event time: milliseconds since 1970-01-01T00:00:00Z.
pub type Ts = i64;

/// Why a timestamp could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeError {
    /// Not a timestamp shape we know.
    #[error("unknown timestamp format {0:?} (expected RFC 3339 with an offset, e.g. 2026-07-07T10:00:00.000Z, or epoch seconds/milliseconds)")]
    Unknown(String),
    /// RFC 3339 without `Z` or an offset: the time zone would be a guess.
    #[error("timestamp {0:?} has no UTC offset (add Z or ±HH:MM)")]
    NoOffset(String),
    /// Fields out of range (month 13, second 61, …).
    #[error("timestamp {0:?} is out of range")]
    OutOfRange(String),
    /// Does not match the configured strftime pattern.
    #[error("timestamp {value:?} does not match format {format:?}")]
    Pattern {
        /// The text.
        value: String,
        /// The pattern.
        format: String,
    },
}

/// How a text column encodes time (CSV wide mappings choose one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// RFC 3339 with offset, or a plain number read as epoch seconds (< 1e11) or milliseconds.
    Auto,
    /// Like `Auto`, but a timestamp without offset is taken as UTC (wide CSV exports).
    AutoAssumeUtc,
    /// Seconds since the epoch (may have a fraction).
    EpochSeconds,
    /// Milliseconds since the epoch.
    EpochMillis,
    /// A chrono strftime pattern for a naive local time, shifted by `offset_ms` to UTC.
    Pattern {
        /// The strftime pattern, e.g. `%Y-%m-%d %H:%M:%S`.
        format: String,
        /// Offset of the local time from UTC in milliseconds (local = UTC + offset).
        offset_ms: i64,
    },
}

impl TimeFormat {
    /// Parses one timestamp in this format.
    pub fn parse(&self, s: &str) -> Result<Ts, TimeError> {
        let s = s.trim();
        match self {
            Self::Auto => parse_auto(s, false),
            Self::AutoAssumeUtc => parse_auto(s, true),
            Self::EpochSeconds => parse_epoch(s, 1000.0),
            Self::EpochMillis => parse_epoch(s, 1.0),
            Self::Pattern { format, offset_ms } => {
                parse_pattern(s, format, *offset_ms).ok_or_else(|| TimeError::Pattern {
                    value: truncate(s),
                    format: format.clone(),
                })
            }
        }
    }

    /// Checks that a pattern is valid strftime and yields a whole date: a reference
    /// time written with it must read back. Patterns that stop at the hour or the day
    /// (`%d/%m/%y %H`, `%Y-%m-%d`) pass; `%H:%M` (no date) and `%Q` (no such field) do not.
    pub fn check_pattern(format: &str) -> Result<(), String> {
        use chrono::format::{Item, StrftimeItems};
        use std::fmt::Write;
        if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
            return Err(format!("time_format {format:?} is not a strftime pattern"));
        }
        // Times whose fields have one and two digits, and epoch seconds of several
        // lengths: a pattern whose fields run into each other (`%s%e`) reads some of
        // them wrongly. Each must read back, to within the day it was written in. In
        // UTC, so that `%z` writes an offset rather than failing.
        for secs in [1_614_834_367, 1_798_761_599, 943_265_472, 777_600] {
            let reference = DateTime::<Utc>::from_timestamp(secs, 0).ok_or("reference time")?;
            let mut sample = String::new();
            write!(sample, "{}", reference.format(format))
                .map_err(|_| format!("time_format {format:?} cannot be written"))?;
            let written = secs * 1000;
            let read = parse_pattern(&sample, format, 0).ok_or_else(|| {
                format!("time_format {format:?} does not give a date (it needs the year, month and day, or %s), or its fields run into each other ({sample:?} cannot be read back)")
            })?;
            if !(read <= written && written - read < 86_400_000) {
                return Err(format!(
                    "time_format {format:?} does not read back what it writes ({sample:?}): its fields run into each other"
                ));
            }
        }
        Ok(())
    }
}

/// Reads a naive local time by a strftime pattern. Fields the pattern leaves out below
/// the day are zero (hourly exports write `%d/%m/%y %H`); an offset in the text (`%z`)
/// wins over the configured one.
fn parse_pattern(s: &str, format: &str, offset_ms: i64) -> Option<Ts> {
    use chrono::format::{parse, Parsed, StrftimeItems};
    let mut p = Parsed::new();
    parse(&mut p, s, StrftimeItems::new(format)).ok()?;
    if p.timestamp().is_none() {
        if p.hour_div_12().is_none() && p.hour_mod_12().is_none() {
            p.set_hour(0).ok()?;
        }
        if p.minute().is_none() {
            p.set_minute(0).ok()?;
        }
        if p.second().is_none() {
            p.set_second(0).ok()?;
        }
    }
    let offset_ms = p.offset().map_or(offset_ms, |o| i64::from(o) * 1000);
    let t = p.to_naive_datetime_with_offset(0).ok()?;
    Some(t.and_utc().timestamp_millis() - offset_ms)
}

fn parse_epoch(s: &str, to_ms: f64) -> Result<Ts, TimeError> {
    let v: f64 = s.parse().map_err(|_| TimeError::Unknown(truncate(s)))?;
    epoch_to_ms(v * to_ms).ok_or_else(|| TimeError::OutOfRange(truncate(s)))
}

/// Converts epoch milliseconds given as a float, rejecting non-finite or absurd values
/// (beyond year ±9999).
pub fn epoch_to_ms(ms: f64) -> Option<Ts> {
    const LIMIT: f64 = 253_402_300_800_000.0;
    (ms.is_finite() && ms.abs() < LIMIT).then(|| ms.round() as Ts)
}

/// A number is epoch milliseconds when it is this large, else epoch seconds (1e11 s is
/// the year 5138; 1e11 ms is 1973).
pub const EPOCH_MS_THRESHOLD: f64 = 1e11;

/// Reads a numeric timestamp: epoch seconds or milliseconds, told apart by magnitude.
pub fn epoch_auto(v: f64) -> Option<Ts> {
    if v.abs() >= EPOCH_MS_THRESHOLD {
        epoch_to_ms(v)
    } else {
        epoch_to_ms(v * 1000.0)
    }
}

fn parse_auto(s: &str, assume_utc: bool) -> Result<Ts, TimeError> {
    if let Some(ts) = parse_rfc3339(s.as_bytes(), assume_utc) {
        return ts.map_err(|e| e.with_text(s));
    }
    if let Ok(v) = s.parse::<f64>() {
        return epoch_auto(v).ok_or_else(|| TimeError::OutOfRange(truncate(s)));
    }
    Err(TimeError::Unknown(truncate(s)))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Internal error kinds of the fast parser; the caller attaches the text.
#[derive(Debug)]
enum Rfc3339Error {
    NoOffset,
    OutOfRange,
}

impl Rfc3339Error {
    fn with_text(self, s: &str) -> TimeError {
        match self {
            Self::NoOffset => TimeError::NoOffset(truncate(s)),
            Self::OutOfRange => TimeError::OutOfRange(truncate(s)),
        }
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.f+](Z|±HH:MM)`. Returns `None` when the text does not
/// have that shape at all, `Some(Err)` when it has the shape but is invalid.
fn parse_rfc3339(b: &[u8], assume_utc: bool) -> Option<Result<Ts, Rfc3339Error>> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some((&b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Milliseconds, rounded half up from the next digit; further digits are ignored.
        let mut scale = 100;
        for &c in frac.iter().take(n.min(3)) {
            millis += i64::from(c - b'0') * scale;
            scale /= 10;
        }
        if n > 3 && frac[3] >= b'5' {
            millis += 1;
        }
        rest = &frac[n..];
    }
    let offset_min = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return Some(Err(Rfc3339Error::OutOfRange));
            }
            let off = h * 60 + m;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        [] if assume_utc => 0,
        [] => return Some(Err(Rfc3339Error::NoOffset)),
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Some(Err(Rfc3339Error::OutOfRange));
    }
    // A leap second is folded into the next second, as chrono does for Unix time.
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(Ok(secs * 1000 + millis))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats event time as RFC 3339 UTC with milliseconds, the canonical capture form.
pub fn format_ts(ts: Ts) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ts) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ts.to_string(),
    }
}

/// Event time for live sources: the wall clock, optionally running `speed` times faster
/// from `epoch` (a simulated facility served faster than real time and the collector
/// polling it agree on the time of every reading by sharing epoch and speed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// Event time and wall time coincide here.
    pub epoch: Ts,
    /// Event-time milliseconds per wall millisecond (1 = real time).
    pub speed: f64,
}

impl Clock {
    /// Real time.
    pub fn wall() -> Self {
        Self {
            epoch: 0,
            speed: 1.0,
        }
    }

    /// Event time now.
    pub fn now(&self) -> Ts {
        self.at(Utc::now().timestamp_millis())
    }

    /// Event time at wall time `wall_ms`.
    pub fn at(&self, wall_ms: Ts) -> Ts {
        if self.speed == 1.0 {
            return wall_ms;
        }
        self.epoch + ((wall_ms - self.epoch) as f64 * self.speed).round() as Ts
    }

    /// Wall duration of an event-time span.
    pub fn wall_duration(&self, event_ms: i64) -> std::time::Duration {
        std::time::Duration::from_secs_f64((event_ms.max(0) as f64 / 1000.0) / self.speed)
    }
}

/// The wall clock now, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Formats a duration in milliseconds for people: `850ms`, `42s`, `3m20s`, `1h02m`, `2d03h`.
pub fn format_duration(ms: i64) -> String {
    let neg = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let body = if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    };
    format!("{neg}{body}")
}

/// Parses a config duration: a number with a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s, m, h or d"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let scale = match unit.trim() {
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        "d" => 86_400e3,
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    let ms = v * scale;
    if !ms.is_finite() || ms > 1e15 {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(ms.round() as i64)
}

/// Serde helpers: timestamps as RFC 3339 strings (numbers accepted as epoch s/ms).
pub mod serde_ts {
    use super::*;
    use serde::{de, Deserializer, Serializer};

    /// Writes RFC 3339 UTC with milliseconds.
    pub fn serialize<S: Serializer>(ts: &Ts, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ts(*ts))
    }

    /// Reads RFC 3339 with offset, or a number as epoch seconds/milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ts, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 timestamp or epoch seconds/milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                TimeFormat::Auto.parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts, E> {
                epoch_auto(v).ok_or_else(|| E::custom("epoch timestamp out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }

    /// As [`deserialize`], for optional fields (`#[serde(default)]`).
    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ts>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// Serde helper for config durations written as strings (`"30s"`).
pub mod serde_duration {
    use serde::{Deserialize, Deserializer};

    /// Reads `"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"1d"` into milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// As [`deserialize`], for a list (`["1m", "15m"]`).
    pub fn deserialize_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| super::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }

    /// As [`deserialize`], for optional fields (`#[serde(default)]`).
    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_canonical_and_offsets() {
        let a = TimeFormat::Auto.parse("2026-07-07T10:00:00.000Z").unwrap();
        assert_eq!(format_ts(a), "2026-07-07T10:00:00.000Z");
        let b = TimeFormat::Auto.parse("2026-07-07T12:00:00+02:00").unwrap();
        assert_eq!(a, b);
        let c = TimeFormat::Auto
            .parse("2026-07-07 09:30:00.5-00:30")
            .unwrap();
        assert_eq!(c, a + 500);
    }

    #[test]
    fn rejects_unknown_and_naive() {
        assert!(matches!(
            TimeFormat::Auto.parse("yesterday"),
            Err(TimeError::Unknown(_))
        ));
        assert!(matches!(
            TimeFormat::Auto.parse("2026-07-07T10:00:00"),
            Err(TimeError::NoOffset(_))
        ));
        assert!(matches!(
            TimeFormat::Auto.parse("2026-02-30T10:00:00Z"),
            Err(TimeError::OutOfRange(_))
        ));
    }

    #[test]
    fn naive_as_utc_when_asked() {
        let t = TimeFormat::AutoAssumeUtc
            .parse("2020-03-09 10:14:33")
            .unwrap();
        assert_eq!(format_ts(t), "2020-03-09T10:14:33.000Z");
    }

    #[test]
    fn epoch_magnitudes() {
        let s = TimeFormat::Auto.parse("1783418400").unwrap();
        let ms = TimeFormat::Auto.parse("1783418400000").unwrap();
        assert_eq!(s, ms);
        assert_eq!(
            TimeFormat::EpochSeconds.parse("1.5").unwrap(),
            TimeFormat::EpochMillis.parse("1500").unwrap()
        );
        assert!(TimeFormat::Auto.parse("1e300").is_err());
    }

    #[test]
    fn pattern_with_offset() {
        let f = TimeFormat::Pattern {
            format: "%Y-%m-%d %H:%M:%S".into(),
            offset_ms: 3 * 3600 * 1000,
        };
        let t = f.parse("2020-03-09 13:14:33").unwrap();
        assert_eq!(format_ts(t), "2020-03-09T10:14:33.000Z");
        assert!(f.parse("09/03/2020").is_err());
    }

    #[test]
    fn patterns_that_stop_at_the_hour_or_the_day_read_as_its_start() {
        let at = |format: &str, text: &str| {
            TimeFormat::Pattern {
                format: format.into(),
                offset_ms: 0,
            }
            .parse(text)
            .map(format_ts)
        };
        for (format, text, utc) in [
            ("%d/%m/%y %H", "13/07/14 07", "2014-07-13T07:00:00.000Z"),
            ("%Y-%m-%d", "2014-07-13", "2014-07-13T00:00:00.000Z"),
            (
                "%Y-%m-%d %H:%M",
                "2014-07-13 07:30",
                "2014-07-13T07:30:00.000Z",
            ),
            // An offset in the text wins over the configured one.
            (
                "%Y-%m-%d %H:%M%z",
                "2014-07-13 07:30+0200",
                "2014-07-13T05:30:00.000Z",
            ),
        ] {
            assert_eq!(at(format, text).as_deref(), Ok(utc), "{format}");
        }
        assert!(at("%d/%m/%y %H", "13/07/14").is_err());
        assert!(at("%d/%m/%y %H", "32/07/14 07").is_err());
    }

    #[test]
    fn a_pattern_is_checked_for_a_whole_date() {
        for ok in [
            "%d/%m/%y %H",
            "%Y-%m-%d",
            "%Y-%m-%dT%H:%M:%S%.f",
            "%s",
            "%Y-%j %H:%M",
            "%Y-%m-%d %H:%M%z",
        ] {
            assert_eq!(TimeFormat::check_pattern(ok), Ok(()), "{ok}");
        }
        for bad in ["%H:%M", "%Q", "%m/%d %H", "nonsense"] {
            assert!(TimeFormat::check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("1.5s"), Ok(1500));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert_eq!(format_duration(3_723_000), "1h02m");
        assert_eq!(format_duration(42_000), "42s");
    }

    #[test]
    fn patterns_whose_fields_run_into_each_other_are_refused() {
        // Epoch seconds then a day: the seconds swallow a two-digit day.
        assert!(TimeFormat::check_pattern("%s%e").is_err());
        assert!(TimeFormat::check_pattern("%s%m").is_err());
        assert!(TimeFormat::check_pattern("%s %e").is_ok());
        assert!(
            TimeFormat::check_pattern("%Y%m%d%H").is_ok(),
            "fixed widths read back"
        );
    }

    proptest! {
        /// The fast parser agrees with chrono on every valid RFC 3339 timestamp.
        #[test]
        fn agrees_with_chrono(ms in -2_000_000_000_000i64..32_000_000_000_000i64, off_min in -1439i64..1439) {
            let off = chrono::FixedOffset::east_opt((off_min * 60) as i32).unwrap();
            let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap().with_timezone(&off);
            let text = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            prop_assert_eq!(TimeFormat::Auto.parse(&text), Ok(ms));
        }

        /// Arbitrary text never panics the parser.
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = TimeFormat::Auto.parse(&s);
        }

        /// A mapping's pattern is written by whoever sent the export: checking any
        /// pattern and reading any text with it never panics, and a pattern that passes
        /// the check reads back what it wrote, to its precision.
        #[test]
        fn patterns_never_panic_and_checked_ones_read_back(
            format in "(%[YmdyHMSjsbBeIpz%]|[-/ :T.]|[a-z]){0,8}",
            text in "[0-9A-Za-z/: +-]{0,24}",
            // 1970 to 2065: a two-digit year reads back in 1969-2068.
            ms in 0i64..3_000_000_000_000,
        ) {
            let f = TimeFormat::Pattern { format: format.clone(), offset_ms: 0 };
            let _ = f.parse(&text);
            if TimeFormat::check_pattern(&format).is_ok() {
                let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
                let written = t.format(&format).to_string();
                let read = f.parse(&written);
                prop_assert!(read.is_ok(), "{format:?} wrote {written:?}");
                let read = read.unwrap();
                // Fields the pattern leaves out below the day read as zero: never later
                // than the time written, and within a day of it.
                prop_assert!(read <= ms && ms - read < 86_400_000, "{format:?}: {written:?} → {read}");
            }
        }

        #[test]
        fn never_panics_near_shape(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,9})?(Z|[+-][0-9]{2}:[0-9]{2})?") {
            let _ = TimeFormat::Auto.parse(&s);
        }
    }
}
