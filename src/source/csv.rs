//! CSV captures, long and wide.
//!
//! - **Long**: header `ts,site,device,kind,metric,value[,quality]`, one reading per row.
//! - **Wide** (historian and dataset exports): a time column plus one column per point.
//!   A small TOML mapping ([`WideMapping`]) names the time column and format, the label
//!   columns (kept out of the readings; their runs become label windows in the report)
//!   and how columns map to device/kind/metric. Without a mapping, the first column is
//!   the time (RFC 3339, epoch, or a naive time taken as UTC), the device is the file's
//!   stem, the kind `other`, each column a metric, and columns named `label`, `anomaly`,
//!   `changepoint`, `is_anomaly` or `attack` are labels.
//!
//! Rows are split with `csv-core` (quoting per RFC 4180), one bounded line at a time.
//! The delimiter is `,` unless the mapping says otherwise or the header has `;` and no `,`.

use super::{BadReason, CaptureSource, FileStats, LabelWindow, Line, Lines, SourceError};
use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::Ts;
use crate::time::{parse_duration, TimeFormat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// Where one wide column goes; unset fields fall back to the mapping's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// Device name.
    pub device: Option<String>,
    /// Device kind.
    pub kind: Option<String>,
    /// Metric name (default: the column name, lower-cased, non-alphanumerics as `_`).
    pub metric: Option<String>,
    /// Multiply the value by this (unit conversion).
    pub scale: Option<f64>,
    /// Then add this.
    pub offset: Option<f64>,
}

/// Mapping of a wide CSV, loaded from TOML.
///
/// ```toml
/// time_column = "datetime"
/// time_format = "%Y-%m-%d %H:%M:%S"   # or "auto" (default), "epoch_s", "epoch_ms"
/// utc_offset = "+03:00"               # of naive local times
/// delimiter = ";"
/// site = "skab"
/// device = "pump-1"
/// kind = "chiller"
/// label_columns = ["anomaly", "changepoint"]
/// ignore_columns = []
/// [columns."Volume Flow RateRMS"]
/// metric = "flow_lps"
/// scale = 0.016667                    # L/min to L/s
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WideMapping {
    /// Name of the time column (default: the first column).
    pub time_column: Option<String>,
    /// `auto`, `epoch_s`, `epoch_ms` or a chrono strftime pattern.
    pub time_format: String,
    /// Offset of naive local times from UTC, `±HH:MM`.
    pub utc_offset: String,
    /// Field delimiter (one ASCII character).
    pub delimiter: Option<String>,
    /// Site of every reading.
    pub site: String,
    /// Default device (default: the file's stem).
    pub device: Option<String>,
    /// Default kind.
    pub kind: String,
    /// Label columns.
    pub label_columns: Vec<String>,
    /// Columns to skip.
    pub ignore_columns: Vec<String>,
    /// Per-column mapping.
    pub columns: BTreeMap<String, ColumnMap>,
}

const DEFAULT_LABELS: [&str; 5] = ["label", "anomaly", "changepoint", "is_anomaly", "attack"];

impl Default for WideMapping {
    fn default() -> Self {
        Self {
            time_column: None,
            time_format: "auto".into(),
            utc_offset: "+00:00".into(),
            delimiter: None,
            site: "site".into(),
            device: None,
            kind: "other".into(),
            label_columns: DEFAULT_LABELS.map(String::from).to_vec(),
            ignore_columns: Vec::new(),
            columns: BTreeMap::new(),
        }
    }
}

impl WideMapping {
    /// Loads a mapping file; errors name the key and line.
    pub fn load(path: &Path) -> Result<Self, SourceError> {
        let err = |message: String| SourceError::Format {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let m: Self =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        m.time_format().map_err(err)?;
        m.delimiter_byte(b',').map_err(err)?;
        Ok(m)
    }

    /// One line for `check-config`: how time is read, what is mapped, what is a label.
    pub fn describe(&self) -> String {
        let time = match (&self.time_column, self.time_format.as_str()) {
            (Some(c), "auto" | "rfc3339") => format!("time in column {c:?} (RFC 3339 or epoch)"),
            (None, "auto" | "rfc3339") => "time in the first column (RFC 3339 or epoch)".into(),
            (c, f) => format!(
                "time in {} as {f:?}{}",
                c.as_deref()
                    .map_or_else(|| "the first column".into(), |c| format!("column {c:?}")),
                if f.starts_with("epoch") {
                    String::new()
                } else {
                    format!(" at UTC{}", self.utc_offset)
                }
            ),
        };
        format!(
            "{time}; site {}, kind {}; {} columns mapped, {} ignored; labels from {}",
            self.site,
            self.kind,
            self.columns.len(),
            self.ignore_columns.len(),
            if self.label_columns.is_empty() {
                "no column".to_owned()
            } else {
                self.label_columns.join(", ")
            }
        )
    }

    fn time_format(&self) -> Result<TimeFormat, String> {
        Ok(match self.time_format.as_str() {
            "auto" | "rfc3339" => TimeFormat::AutoAssumeUtc,
            "epoch_s" => TimeFormat::EpochSeconds,
            "epoch_ms" => TimeFormat::EpochMillis,
            pattern => {
                TimeFormat::check_pattern(pattern)?;
                TimeFormat::Pattern {
                    format: pattern.to_owned(),
                    offset_ms: parse_offset(&self.utc_offset)
                        .ok_or_else(|| format!("utc_offset {:?} is not ±HH:MM", self.utc_offset))?,
                }
            }
        })
    }

    fn delimiter_byte(&self, sniffed: u8) -> Result<u8, String> {
        match self.delimiter.as_deref() {
            None => Ok(sniffed),
            Some("\\t" | "\t") => Ok(b'\t'),
            Some(d) if d.len() == 1 && d.is_ascii() => Ok(d.as_bytes()[0]),
            Some(d) => Err(format!("delimiter {d:?} must be one ASCII character")),
        }
    }
}

fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => (1, s),
    };
    let (h, m) = rest.split_once(':')?;
    let ms = parse_duration(&format!("{h}h")).ok()? + parse_duration(&format!("{m}m")).ok()?;
    Some(sign * ms)
}

/// Metric name for a column without an explicit mapping.
fn metric_name(column: &str) -> String {
    let mut out = String::with_capacity(column.len());
    for c in column.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

enum Layout {
    Long { quality: Option<usize> },
    Wide(Box<Wide>),
}

/// Where a value column goes.
struct Target {
    device: String,
    kind: String,
    metric: String,
    scale: f64,
    offset: f64,
}

/// A label column and the labelled run it is in, if any.
struct LabelColumn {
    index: usize,
    name: String,
    run: Option<(Ts, Ts)>,
}

struct Wide {
    time: usize,
    format: TimeFormat,
    site: String,
    /// Per column: its target, or None for the time, ignored and label columns.
    columns: Vec<Option<Target>>,
    labels: Vec<LabelColumn>,
}

/// A CSV capture (long or wide).
pub struct CsvSource {
    lines: Lines,
    rows: Rows,
    done: bool,
}

/// Turns rows into events; apart from the line reader so both can be borrowed at once.
struct Rows {
    parser: csv_core::Reader,
    layout: Layout,
    fields: Vec<u8>,
    ends: Vec<usize>,
    pending: std::collections::VecDeque<Event>,
    stats: FileStats,
}

impl CsvSource {
    /// Reads the header and decides the layout.
    pub fn new(
        mut reader: Box<dyn BufRead + Send>,
        name: String,
        max_line: usize,
        mapping: Option<&WideMapping>,
        path: &Path,
    ) -> Result<Self, SourceError> {
        let fmt_err = |message: String| SourceError::Format {
            path: name.clone(),
            message,
        };
        let mut header = Vec::new();
        match super::read_line_bounded(&mut *reader, &mut header, max_line) {
            Ok(Line::Ok) => {}
            Ok(Line::Eof) => return Err(fmt_err("empty file: no CSV header".into())),
            Ok(Line::TooLong) => {
                return Err(fmt_err(format!("header longer than {max_line} bytes")))
            }
            Err(e) => return Err(fmt_err(format!("cannot read the header: {e}"))),
        }
        let header_text = String::from_utf8_lossy(&header)
            .trim_start_matches('\u{feff}')
            .to_owned();
        let sniffed = if header_text.contains(';') && !header_text.contains(',') {
            b';'
        } else {
            b','
        };
        let default_mapping = WideMapping::default();
        let m = mapping.unwrap_or(&default_mapping);
        let delim = m.delimiter_byte(sniffed).map_err(fmt_err)?;
        let mut parser = csv_core::ReaderBuilder::new().delimiter(delim).build();
        let cols = split_line(&mut parser, header_text.as_bytes())
            .ok_or_else(|| fmt_err("broken quoting in the header".into()))?;
        let cols: Vec<String> = cols.into_iter().map(|c| c.trim().to_owned()).collect();
        let long = ["ts", "site", "device", "kind", "metric", "value"];
        let layout = if cols.len() >= 6 && cols[..6] == long && mapping.is_none() {
            Layout::Long {
                quality: cols.iter().position(|c| c == "quality"),
            }
        } else {
            Layout::Wide(Box::new(wide_layout(&cols, m, path).map_err(fmt_err)?))
        };
        let format = match layout {
            Layout::Long { .. } => "csv-long",
            Layout::Wide(_) => "csv-wide",
        };
        let mut stats = FileStats::new(&name, format);
        stats.lines = 1;
        Ok(Self {
            lines: Lines::new(reader, max_line, 1),
            rows: Rows {
                parser,
                layout,
                fields: Vec::with_capacity(256),
                ends: Vec::with_capacity(16),
                pending: Default::default(),
                stats,
            },
            done: false,
        })
    }
}

impl Rows {
    fn row(&mut self, line: u64, text: &[u8], reg: &mut Registry) {
        let Some(n) = split_into(&mut self.parser, text, &mut self.fields, &mut self.ends) else {
            self.stats
                .bad_line(line, BadReason::BadCsvRow, "broken quoting");
            return;
        };
        let field = |i: usize| -> &[u8] {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.fields[start..self.ends[i]]
        };
        let text = |i: usize| std::str::from_utf8(field(i)).map(str::trim);
        match &mut self.layout {
            Layout::Long { quality } => {
                if n < 6 {
                    self.stats.bad_line(
                        line,
                        BadReason::BadCsvRow,
                        format!("{n} columns, expected at least 6"),
                    );
                    return;
                }
                let parsed = (|| {
                    let t = |i| text(i).map_err(|e| (BadReason::InvalidUtf8, e.to_string()));
                    let ts = TimeFormat::Auto
                        .parse(t(0)?)
                        .map_err(|e| (BadReason::BadTimestamp, e.to_string()))?;
                    let v = t(5)?;
                    let value: f64 = v.parse().map_err(|_| {
                        (BadReason::WrongType, format!("value {v:?} is not a number"))
                    })?;
                    let q = match quality {
                        Some(i) if *i < n => Some(t(*i)?).filter(|q| !q.is_empty()),
                        _ => None,
                    };
                    super::jsonl::reading(ts, t(1)?, t(2)?, t(3)?, t(4)?, value, q, reg)
                })();
                match parsed {
                    Ok(ev) => {
                        self.stats.readings += 1;
                        self.pending.push_back(ev);
                    }
                    Err((reason, detail)) => self.stats.bad_line(line, reason, detail),
                }
            }
            Layout::Wide(w) => {
                if n != w.columns.len() {
                    self.stats.bad_line(
                        line,
                        BadReason::BadCsvRow,
                        format!("{n} columns, the header has {}", w.columns.len()),
                    );
                    return;
                }
                let ts = match text(w.time)
                    .map_err(|e| e.to_string())
                    .and_then(|t| w.format.parse(t).map_err(|e| e.to_string()))
                {
                    Ok(ts) => ts,
                    Err(e) => {
                        self.stats.bad_line(line, BadReason::BadTimestamp, e);
                        return;
                    }
                };
                for l in &mut w.labels {
                    let on = text(l.index)
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                        .is_some_and(|v| v != 0.0);
                    match (on, l.run.as_mut()) {
                        (true, Some((_, end))) => *end = ts,
                        (true, None) => l.run = Some((ts, ts)),
                        (false, Some(&mut (start, end))) => {
                            self.stats.label_windows.push(LabelWindow {
                                column: l.name.clone(),
                                start,
                                end,
                            });
                            l.run = None;
                        }
                        (false, None) => {}
                    }
                }
                let mut bad = None;
                for (i, col) in w.columns.iter().enumerate() {
                    let Some(Target {
                        device,
                        kind,
                        metric,
                        scale,
                        offset,
                    }) = col
                    else {
                        continue;
                    };
                    let Ok(t) = text(i) else {
                        bad = Some((
                            BadReason::InvalidUtf8,
                            format!("column {} is not UTF-8", i + 1),
                        ));
                        continue;
                    };
                    if t.is_empty() {
                        continue; // a gap in this point, not a bad row
                    }
                    let value = match t.parse::<f64>() {
                        Ok(v) => v * *scale + *offset,
                        Err(_) => {
                            bad = Some((
                                BadReason::WrongType,
                                format!("column {metric}: {t:?} is not a number"),
                            ));
                            continue;
                        }
                    };
                    match super::jsonl::reading(ts, &w.site, device, kind, metric, value, None, reg)
                    {
                        Ok(ev) => {
                            self.stats.readings += 1;
                            self.pending.push_back(ev);
                        }
                        Err(e) => bad = Some(e),
                    }
                }
                if let Some((reason, detail)) = bad {
                    self.stats.bad_line(line, reason, detail);
                }
            }
        }
    }

    fn finish_labels(&mut self) {
        if let Layout::Wide(w) = &mut self.layout {
            for l in &mut w.labels {
                if let Some((start, end)) = l.run.take() {
                    self.stats.label_windows.push(LabelWindow {
                        column: l.name.clone(),
                        start,
                        end,
                    });
                }
            }
        }
    }
}

fn wide_layout(cols: &[String], m: &WideMapping, path: &Path) -> Result<Wide, String> {
    let time = match &m.time_column {
        Some(t) => cols
            .iter()
            .position(|c| c == t)
            .ok_or_else(|| format!("no time column {t:?} in the header"))?,
        None => 0,
    };
    let stem = path
        .file_name()
        .map(|f| {
            f.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or("device")
                .to_owned()
        })
        .filter(|s| !s.is_empty() && s != "-")
        .unwrap_or_else(|| "device".into());
    let device = m.device.clone().unwrap_or(stem);
    for name in m.columns.keys() {
        if !cols.contains(name) {
            return Err(format!(
                "mapping names column {name:?}, which is not in the header"
            ));
        }
    }
    let mut labels = Vec::new();
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == time || m.ignore_columns.contains(c) {
                return None;
            }
            if m.label_columns.iter().any(|l| l.eq_ignore_ascii_case(c)) {
                labels.push(LabelColumn {
                    index: i,
                    name: c.clone(),
                    run: None,
                });
                return None;
            }
            let cm = m.columns.get(c).cloned().unwrap_or_default();
            Some(Target {
                device: cm.device.unwrap_or_else(|| device.clone()),
                kind: cm.kind.unwrap_or_else(|| m.kind.clone()),
                metric: cm.metric.unwrap_or_else(|| metric_name(c)),
                scale: cm.scale.unwrap_or(1.0),
                offset: cm.offset.unwrap_or(0.0),
            })
        })
        .collect();
    Ok(Wide {
        time,
        format: m.time_format()?,
        site: m.site.clone(),
        columns,
        labels,
    })
}

/// Splits one line into fields; `None` on broken quoting.
fn split_line(parser: &mut csv_core::Reader, line: &[u8]) -> Option<Vec<String>> {
    let (mut fields, mut ends) = (Vec::new(), Vec::new());
    let n = split_into(parser, line, &mut fields, &mut ends)?;
    let mut start = 0;
    Some(
        (0..n)
            .map(|i| {
                let s = String::from_utf8_lossy(&fields[start..ends[i]]).into_owned();
                start = ends[i];
                s
            })
            .collect(),
    )
}

/// Splits one line into `fields` (concatenated) and `ends` (end offsets), reusing both.
fn split_into(
    parser: &mut csv_core::Reader,
    line: &[u8],
    fields: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Option<usize> {
    use csv_core::ReadRecordResult as R;
    parser.reset();
    fields.clear();
    ends.clear();
    fields.resize(line.len() + 16, 0);
    ends.resize(line.len() + 2, 0);
    let mut input = line;
    let (mut out_at, mut end_at) = (0, 0);
    loop {
        let (res, nin, nout, nend) =
            parser.read_record(input, &mut fields[out_at..], &mut ends[end_at..]);
        input = &input[nin..];
        // csv-core tracks the record across calls: `ends` are already absolute.
        out_at += nout;
        end_at += nend;
        match res {
            R::InputEmpty => {
                if input.is_empty() {
                    // Signal the end of the record.
                    let (res, _, nout, nend) =
                        parser.read_record(&[], &mut fields[out_at..], &mut ends[end_at..]);
                    out_at += nout;
                    end_at += nend;
                    return matches!(res, R::Record | R::End).then(|| {
                        fields.truncate(out_at);
                        end_at
                    });
                }
            }
            R::Record => {
                fields.truncate(out_at);
                return Some(end_at);
            }
            R::End => return None,
            R::OutputFull | R::OutputEndsFull => {
                let more = fields.len().max(16);
                fields.resize(fields.len() + more, 0);
                let more = ends.len().max(4);
                ends.resize(ends.len() + more, 0);
            }
        }
    }
}

impl CaptureSource for CsvSource {
    fn next_event(&mut self, reg: &mut Registry) -> Option<Event> {
        loop {
            if let Some(ev) = self.rows.pending.pop_front() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            match self.lines.next_line(&mut self.rows.stats) {
                Some((line, text)) => self.rows.row(line, text, reg),
                None => {
                    self.done = true;
                    self.rows.finish_labels();
                }
            }
        }
    }

    fn stats(&self) -> &FileStats {
        &self.rows.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source(
        text: &str,
        mapping: Option<&WideMapping>,
        name: &str,
    ) -> Result<(CsvSource, Vec<Event>, Registry), SourceError> {
        let reader: Box<dyn BufRead + Send> =
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        let mut src = CsvSource::new(reader, name.into(), 1 << 20, mapping, Path::new(name))?;
        let mut reg = Registry::new(1000);
        let mut evs = Vec::new();
        while let Some(e) = src.next_event(&mut reg) {
            evs.push(e);
        }
        Ok((src, evs, reg))
    }

    #[test]
    fn long_csv() {
        let text = "ts,site,device,kind,metric,value\n2026-07-07T10:00:00Z,ams1,ups-1,ups,load_pct,41.5\n2026-07-07T10:00:01Z,ams1,ups-1,ups,load_pct,abc\n\"2026-07-07T10:00:02Z\",ams1,\"ups-1\",ups,load_pct,42\nbroken,row\n";
        let (src, evs, _) = source(text, None, "a.csv").unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(src.rows.stats.format, "csv-long");
        assert_eq!(src.rows.stats.bad.get(&BadReason::WrongType), Some(&1));
        assert_eq!(src.rows.stats.bad.get(&BadReason::BadCsvRow), Some(&1));
        assert_eq!(src.rows.stats.first_bad[0].line, 3);
    }

    #[test]
    fn wide_csv_default_mapping_with_labels() {
        let text = "datetime;Temperature;Volume Flow RateRMS;anomaly\n2020-03-09 10:14:33;70.1;32.0;0\n2020-03-09 10:14:34;70.2;;1\n2020-03-09 10:14:35;70.3;31.0;1\n2020-03-09 10:14:36;70.4;31.5;0\n";
        let (src, evs, reg) = source(text, None, "data/1.csv").unwrap();
        assert_eq!(src.rows.stats.format, "csv-wide");
        assert_eq!(evs.len(), 7, "the empty cell is a gap, not a reading");
        let dev = reg.device(0);
        assert_eq!((dev.name.as_str(), dev.kind_name.as_str()), ("1", "other"));
        assert_eq!(reg.point(1).metric, "volume_flow_raterms");
        assert_eq!(src.rows.stats.label_windows.len(), 1);
        assert_eq!(
            src.rows.stats.label_windows[0].end - src.rows.stats.label_windows[0].start,
            1000
        );
    }

    #[test]
    fn wide_csv_with_mapping() {
        let m: WideMapping = toml::from_str(
            "time_column = \"t\"\ntime_format = \"%d/%m/%Y %H:%M\"\nutc_offset = \"+02:00\"\nsite = \"lab\"\ndevice = \"ch-1\"\nkind = \"chiller\"\n[columns.F]\nmetric = \"flow_lps\"\nscale = 0.5\n",
        )
        .unwrap();
        let (src, evs, reg) = source("F,t\n10,09/03/2020 12:00\n", Some(&m), "x.csv").unwrap();
        assert_eq!(src.rows.stats.bad_total(), 0);
        match &evs[0] {
            Event::Sample { ts, value, .. } => {
                assert_eq!(crate::time::format_ts(*ts), "2020-03-09T10:00:00.000Z");
                assert_eq!(*value, 5.0);
            }
            e => panic!("{e:?}"),
        }
        assert!(reg.point(0).spec.is_some(), "mapped onto the vocabulary");
    }

    #[test]
    fn header_problems_are_clear() {
        let err = |r: Result<(CsvSource, Vec<Event>, Registry), SourceError>| {
            r.err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(err(source("", None, "e.csv")).contains("empty file"));
        let m = WideMapping {
            time_column: Some("when".into()),
            ..WideMapping::default()
        };
        assert!(err(source("t,x\n", Some(&m), "e.csv")).contains("no time column"));
    }

    proptest! {
        /// Arbitrary bytes never panic either layout.
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut text = b"ts,site,device,kind,metric,value\n".to_vec();
            text.extend_from_slice(&body);
            let s = String::from_utf8_lossy(&text).into_owned();
            let _ = source(&s, None, "p.csv");
            let mut wide = b"t,a,b,label\n".to_vec();
            wide.extend_from_slice(&body);
            let _ = source(&String::from_utf8_lossy(&wide), None, "w.csv");
        }
    }
}
