//! Sources of events. Capture files (JSONL, CSV long and wide, compressed or not) are
//! read line by line with a bounded line length; every bad line is counted by reason and
//! the first few are kept with `file:line` for the report and the log. A source never
//! stops for a bad line; an I/O error (a truncated `.gz`, say) ends that file with an
//! error naming it, and everything read before it is kept.

pub mod bacnet;
pub mod csv;
pub mod jsonl;
pub mod modbus;
pub mod mqtt;
pub mod pcap;
pub mod poll;
pub mod snmp;

use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::Ts;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// Why a line was rejected; the snake_case name is the key in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BadReason {
    /// Longer than `pipeline.max_line_bytes`.
    LineTooLong,
    /// Not UTF-8.
    InvalidUtf8,
    /// Not a JSON object, or cut short.
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type.
    WrongType,
    /// The timestamp is not in a known format or out of range.
    BadTimestamp,
    /// The value is NaN or infinite.
    NonFiniteValue,
    /// `type` is neither `reading` nor `command`.
    UnknownRecordType,
    /// The quality is not good/bad/stale.
    BadQuality,
    /// The row has the wrong number of columns or broken quoting.
    BadCsvRow,
    /// The capture names more points than `pipeline.max_points`.
    TooManyPoints,
    /// A packet whose link, IP or TCP header cannot be read.
    BadPacket,
    /// A link type other than Ethernet, Linux cooked, loopback or raw IP.
    UnsupportedLink,
    /// A packet cut short by the capture's snaplen.
    TruncatedPacket,
    /// Bytes on a Modbus port that are not Modbus (protocol id not 0).
    NotModbus,
    /// An MBAP length outside 2..=254.
    BadMbapLength,
    /// A PDU that does not fit its function's layout.
    BadPdu,
    /// A response that does not fit its request (size, echo, function).
    ResponseMismatch,
    /// A response to no outstanding request.
    UnsolicitedResponse,
    /// A datagram on a BACnet/IP port that is not BACnet/IP, or a request whose
    /// parameters break the grammar.
    BadBacnet,
}

impl BadReason {
    /// The report key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LineTooLong => "line_too_long",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::BadTimestamp => "bad_timestamp",
            Self::NonFiniteValue => "non_finite_value",
            Self::UnknownRecordType => "unknown_record_type",
            Self::BadQuality => "bad_quality",
            Self::BadCsvRow => "bad_csv_row",
            Self::TooManyPoints => "too_many_points",
            Self::BadPacket => "bad_packet",
            Self::UnsupportedLink => "unsupported_link",
            Self::TruncatedPacket => "truncated_packet",
            Self::NotModbus => "not_modbus",
            Self::BadMbapLength => "bad_mbap_length",
            Self::BadPdu => "bad_pdu",
            Self::ResponseMismatch => "response_mismatch",
            Self::UnsolicitedResponse => "unsolicited_response",
            Self::BadBacnet => "bad_bacnet",
        }
    }
}

/// A rejected line, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadLine {
    /// File name as given.
    pub file: String,
    /// 1-based line number (packet number in packet captures).
    pub line: u64,
    /// Reason.
    pub reason: BadReason,
    /// Detail (parser message).
    pub detail: String,
}

/// How many bad lines per file are kept (and logged) with their details.
pub const KEEP_BAD_LINES: usize = 10;

/// Counters of one input file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileStats {
    /// File name as given (`-` for stdin).
    pub file: String,
    /// Format used.
    pub format: String,
    /// Lines read (including header and bad lines); packets in packet captures.
    pub lines: u64,
    /// Readings produced.
    pub readings: u64,
    /// Commands produced.
    pub commands: u64,
    /// Bad lines by reason.
    pub bad: BTreeMap<BadReason, u64>,
    /// The first few bad lines.
    pub first_bad: Vec<BadLine>,
    /// The error that ended the file early, if any.
    pub error: Option<String>,
    /// Labelled windows found in label columns (wide CSV).
    pub label_windows: Vec<LabelWindow>,
    /// Packet, stream and Modbus counters (packet captures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<pcap::WireStats>,
}

impl FileStats {
    /// Empty counters for a file.
    pub fn new(file: &str, format: &str) -> Self {
        Self {
            file: file.to_owned(),
            format: format.to_owned(),
            ..Self::default()
        }
    }

    /// Counts a bad line, keeping and logging the first few.
    pub fn bad_line(&mut self, line: u64, reason: BadReason, detail: impl Into<String>) {
        *self.bad.entry(reason).or_default() += 1;
        if self.first_bad.len() < KEEP_BAD_LINES {
            let detail: String = detail.into().chars().take(200).collect();
            tracing::warn!(file = %self.file, line, reason = reason.as_str(), %detail, "bad capture line");
            self.first_bad.push(BadLine {
                file: self.file.clone(),
                line,
                reason,
                detail,
            });
        }
    }

    /// Total bad lines.
    pub fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }

    /// Why a file that had lines gave nothing: every one was bad (a time format that
    /// matches no row, a wrong delimiter). A replay of it must not look like a quiet day.
    pub fn nothing_read(&self) -> Option<String> {
        let bad = self.bad_total();
        // A packet capture of devices without a register map still gives exchanges.
        let exchanges = self
            .wire
            .as_ref()
            .is_some_and(|w| w.adus > 0 || w.bacnet_datagrams > 0);
        (self.readings == 0 && self.commands == 0 && !exchanges && bad > 0).then(|| {
            let first = self.first_bad.first().map_or_else(String::new, |b| {
                format!(
                    "; the first, line {}: {}: {}",
                    b.line,
                    b.reason.as_str(),
                    b.detail
                )
            });
            format!(
                "{}: none of its {bad} data lines could be read{first}",
                self.file
            )
        })
    }
}

/// A labelled interval taken from a label column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelWindow {
    /// Label column.
    pub column: String,
    /// First labelled row's time.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub start: Ts,
    /// Last labelled row's time.
    #[serde(serialize_with = "crate::time::serde_ts::serialize")]
    pub end: Ts,
}

/// Why an input could not be opened at all.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Missing file, permissions, …
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The header or the mapping does not fit.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A source of capture events.
pub trait CaptureSource {
    /// The next event, interning its point in `reg`; `None` at the end (or after an I/O
    /// error, which is recorded in [`CaptureSource::stats`]).
    fn next_event(&mut self, reg: &mut Registry) -> Option<Event>;
    /// Counters so far.
    fn stats(&self) -> &FileStats;
}

/// Counts bytes read from the underlying file, for progress bars.
#[derive(Clone, Debug, Default)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    /// Bytes read so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Counted<R> {
    inner: R,
    counter: ByteCounter,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Compression, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain text.
    None,
    /// `.gz`
    Gzip,
    /// `.zst`
    Zstd,
}

/// The name without a compression suffix, and the compression.
pub fn split_compression(name: &str) -> (&str, Compression) {
    if let Some(base) = name.strip_suffix(".gz") {
        (base, Compression::Gzip)
    } else if let Some(base) = name.strip_suffix(".zst") {
        (base, Compression::Zstd)
    } else {
        (name, Compression::None)
    }
}

/// Opens a capture (`-` is stdin), decompressing by suffix; counts compressed bytes read.
pub fn open_input(
    path: &Path,
    counter: &ByteCounter,
) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let name = path.to_string_lossy();
    let open_err = |source| SourceError::Open {
        path: name.to_string(),
        source,
    };
    let raw: Box<dyn Read + Send> = if name == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(open_err)?)
    };
    let counted = Counted {
        inner: raw,
        counter: counter.clone(),
    };
    let (_, comp) = split_compression(&name);
    Ok(match comp {
        Compression::None => Box::new(BufReader::with_capacity(1 << 16, counted)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(BufReader::new(counted)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            1 << 16,
            zstd::stream::read::Decoder::new(counted).map_err(open_err)?,
        )),
    })
}

/// What [`read_line_bounded`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its `\n` or `\r\n`) is in the buffer.
    Ok,
    /// The line was longer than the bound; it was skipped up to its end.
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one line into `buf` (cleared first), never holding more than `max` bytes: a
/// longer line is consumed to its end and reported as [`Line::TooLong`].
pub fn read_line_bounded(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            let body = if done { take - 1 } else { take };
            if buf.len() + body > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..body]);
            }
        }
        r.consume(take);
        if done {
            break;
        }
    }
    if !any {
        return Ok(Line::Eof);
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Line::Ok)
}

/// Numbered, bounded lines of one capture. Over-long lines are counted as bad, blank
/// lines skipped, and an I/O error ends the file with the error recorded in the stats.
pub struct Lines {
    reader: Box<dyn BufRead + Send>,
    buf: Vec<u8>,
    line: u64,
    max: usize,
    done: bool,
}

impl Lines {
    /// Lines of `reader`, at most `max` bytes each, numbered after `lines_before`.
    pub fn new(reader: Box<dyn BufRead + Send>, max: usize, lines_before: u64) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(256),
            line: lines_before,
            max,
            done: false,
        }
    }

    /// The next non-blank line and its 1-based number; `None` at the end.
    pub fn next_line(&mut self, stats: &mut FileStats) -> Option<(u64, &[u8])> {
        while !self.done {
            match read_line_bounded(&mut *self.reader, &mut self.buf, self.max) {
                Ok(Line::Eof) => self.done = true,
                Ok(Line::TooLong) => {
                    self.line += 1;
                    stats.lines += 1;
                    let detail = format!("longer than {} bytes", self.max);
                    stats.bad_line(self.line, BadReason::LineTooLong, detail);
                }
                Ok(Line::Ok) => {
                    self.line += 1;
                    stats.lines += 1;
                    if !self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Some((self.line, &self.buf));
                    }
                }
                Err(e) => {
                    tracing::error!(file = %stats.file, line = self.line, error = %e, "capture ended early");
                    stats.error = Some(format!(
                        "{}: read error after line {}: {e}",
                        stats.file, self.line
                    ));
                    self.done = true;
                }
            }
        }
        None
    }
}

/// The capture formats, told apart by file name (and, for CSV, by header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Canonical JSONL.
    Jsonl,
    /// CSV, long or wide (decided by its header).
    Csv,
    /// pcap or pcapng (decided by its magic number).
    Pcap,
}

/// The format of a capture from its name; stdin and unknown names are JSONL.
pub fn detect_format(path: &Path) -> Format {
    let name = path.to_string_lossy();
    let (base, _) = split_compression(&name);
    let base = base.to_ascii_lowercase();
    if base.ends_with(".csv") {
        Format::Csv
    } else if base.ends_with(".pcap") || base.ends_with(".pcapng") || base.ends_with(".cap") {
        Format::Pcap
    } else {
        Format::Jsonl
    }
}

/// Opens any capture file as a source.
pub fn open_capture(
    path: &Path,
    how: &OpenOptions,
    counter: &ByteCounter,
) -> Result<Box<dyn CaptureSource>, SourceError> {
    let reader = open_input(path, counter)?;
    let name = path.to_string_lossy().to_string();
    let max_line = how.max_line_bytes;
    Ok(match detect_format(path) {
        Format::Jsonl => Box::new(jsonl::JsonlSource::new(reader, name, max_line)),
        Format::Csv => Box::new(csv::CsvSource::new(
            reader,
            name,
            max_line,
            how.mapping.as_ref(),
            path,
        )?),
        Format::Pcap => Box::new(pcap::PcapSource::new(
            Box::new(reader),
            name,
            how.wire.clone(),
        )?),
    })
}

/// How capture files are read, beyond their names.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Mapping of wide CSV files.
    pub mapping: Option<csv::WideMapping>,
    /// Longest accepted line (`pipeline.max_line_bytes`).
    pub max_line_bytes: usize,
    /// Modbus ports and devices of packet captures.
    pub wire: Arc<pcap::WireMap>,
}

impl OpenOptions {
    /// The options a configuration implies, with a wide-CSV mapping if one was given.
    pub fn from_config(cfg: &crate::Config, mapping: Option<csv::WideMapping>) -> Self {
        Self {
            mapping,
            max_line_bytes: cfg.pipeline.max_line_bytes,
            wire: cfg.wire.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_unread_only_when_every_line_was_bad_and_nothing_came_of_it() {
        let mut f = FileStats::new("x.csv", "csv-wide");
        assert_eq!(f.nothing_read(), None, "an empty file is an empty day");
        f.bad_line(2, BadReason::BadTimestamp, "no match");
        let said = f.nothing_read().unwrap();
        assert!(
            said.starts_with("x.csv: none of its 1 data lines"),
            "{said}"
        );
        assert!(said.contains("line 2: bad_timestamp: no match"), "{said}");
        f.readings = 1;
        assert_eq!(f.nothing_read(), None);
        // A packet capture of devices without a map gives exchanges, not readings.
        let mut p = FileStats::new("x.pcap", "pcap");
        p.bad_line(7, BadReason::BadPdu, "short PDU");
        assert!(p.nothing_read().is_some());
        p.wire = Some(pcap::WireStats {
            adus: 3,
            ..Default::default()
        });
        assert_eq!(p.nothing_read(), None);
    }

    #[test]
    fn bounded_lines() {
        let data = b"short\r\nthis line is far too long\nok\nlast-no-newline";
        let mut r: &[u8] = data;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line_bounded(&mut r, &mut buf, 16).unwrap() {
                Line::Ok => got.push(String::from_utf8(buf.clone()).unwrap()),
                Line::TooLong => got.push("<too long>".into()),
                Line::Eof => break,
            }
        }
        assert_eq!(got, ["short", "<too long>", "ok", "last-no-newline"]);
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(detect_format(Path::new("a.jsonl.zst")), Format::Jsonl);
        assert_eq!(detect_format(Path::new("a.CSV.gz")), Format::Csv);
        assert_eq!(detect_format(Path::new("-")), Format::Jsonl);
    }
}
