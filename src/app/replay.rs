//! Replay of captures through the pipeline: several files merged by event time, as fast
//! as the machine goes or paced at a multiple of real time, with a report.

use crate::app::cli::ReplayArgs;
use crate::app::{create, load_config, Summary};
use crate::config::Config;
use crate::correlate::exceptions::Exceptions;
use crate::correlate::Output;
use crate::model::event::Event;
use crate::model::Ts;
use crate::pipeline::Pipeline;
use crate::report::eval::{load_labels, LabelWindow, Score};
use crate::report::html::{self, Context as HtmlContext, FileDigest};
pub use crate::report::ReplayReport;
use crate::sink::{discard, AlertJsonl, Sink, SinkError, Stamp};
use crate::source::csv::WideMapping;
use crate::source::{
    open_capture, ByteCounter, CaptureSource, FileStats, OpenOptions, SourceError,
};
use crate::time::format_ts;
use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::Path;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What to replay and how.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Capture files (`-` is stdin).
    pub inputs: Vec<PathBuf>,
    /// Mapping for wide CSV files.
    pub mapping: Option<WideMapping>,
    /// Pace at this multiple of real time (`None`: as fast as possible).
    pub speed: Option<f64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Keep every finding's score in the report (for `--report-html`).
    pub keep_scores: bool,
    /// Analysts' exceptions to apply (`--exceptions`).
    pub exceptions: Option<Exceptions>,
    /// A protocol baseline to judge against instead of learning (`--baseline`).
    pub baseline: Option<crate::detect::baseline::Baseline>,
}

/// Why a replay could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// An input could not be opened or its header is unusable.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// No inputs were given.
    #[error("no capture files given")]
    NoInputs,
    /// A sink failed (e.g. a closed pipe).
    #[error("cannot write alerts: {0}")]
    Output(#[from] SinkError),
}

/// Keeps the latest snapshot of each id, in order of first appearance.
struct Latest<T> {
    order: Vec<String>,
    by_id: HashMap<String, T>,
}

impl<T: Clone> Latest<T> {
    fn new() -> Self {
        Self {
            order: Vec::new(),
            by_id: HashMap::new(),
        }
    }
    fn put(&mut self, id: &str, v: T) {
        if self.by_id.insert(id.to_owned(), v).is_none() {
            self.order.push(id.to_owned());
        }
    }
    fn into_vec(mut self) -> Vec<T> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect()
    }
}

/// Replays the inputs through a fresh pipeline, handing every output to `sink`.
pub fn replay(
    cfg: &Config,
    opts: &ReplayOptions,
    sink: &mut dyn Sink,
) -> Result<ReplayReport, ReplayError> {
    if opts.inputs.is_empty() {
        return Err(ReplayError::NoInputs);
    }
    let counter = ByteCounter::default();
    let how = OpenOptions::from_config(cfg, opts.mapping.clone());
    let sources: Vec<Box<dyn CaptureSource>> = opts
        .inputs
        .iter()
        .map(|p| open_capture(p, &how, &counter))
        .collect::<Result<_, _>>()?;
    let total_bytes: u64 = opts
        .inputs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let bar = opts.progress.then(|| progress_bar(total_bytes));
    let mut pipeline = cfg.build_pipeline();
    if opts.keep_scores {
        pipeline.log_scores();
    }
    if let Some(e) = &opts.exceptions {
        pipeline.set_exceptions(e.clone());
    }
    if let Some(b) = &opts.baseline {
        pipeline.adopt_baseline(b);
    }
    let report = replay_into(
        pipeline,
        sources,
        opts.speed,
        &mut |_| {
            if let Some(bar) = &bar {
                bar.set_position(counter.get());
            }
        },
        sink,
    )?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

/// Replays already opened sources, merged by event time. `progress` is called every
/// 65,536 events with the number of events so far.
pub fn replay_sources(
    cfg: &Config,
    sources: Vec<Box<dyn CaptureSource>>,
    speed: Option<f64>,
    progress: &mut dyn FnMut(u64),
    sink: &mut dyn Sink,
) -> Result<ReplayReport, ReplayError> {
    replay_into(cfg.build_pipeline(), sources, speed, progress, sink)
}

/// [`replay_sources`] through a pipeline the caller built (with extra detectors, say).
pub fn replay_into(
    mut pipeline: Pipeline,
    mut sources: Vec<Box<dyn CaptureSource>>,
    speed: Option<f64>,
    progress: &mut dyn FnMut(u64),
    sink: &mut dyn Sink,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let mut heads: BinaryHeap<Reverse<(Ts, usize)>> = BinaryHeap::new();
    let mut pending: Vec<Option<Event>> = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter_mut().enumerate() {
        let ev = s.next_event(&mut pipeline.registry);
        if let Some(e) = &ev {
            heads.push(Reverse((e.ts(), i)));
        }
        pending.push(ev);
    }
    let mut alerts = Latest::new();
    let mut incidents = Latest::new();
    let mut outputs = Vec::new();
    let mut stamp = Stamp::wall();
    let mut handle = |outputs: &mut Vec<Output>| -> Result<(), SinkError> {
        for mut o in outputs.drain(..) {
            stamp.stamp(&mut o);
            sink.put(&o)?;
            match o {
                Output::Alert(a) => alerts.put(&a.id.clone(), a),
                Output::Incident(i) => incidents.put(&i.id.clone(), i),
            }
        }
        Ok(())
    };
    // Paced on the site's present, not on any one line's word: a line dated decades
    // early or late must not make the replay sleep for them.
    let mut pace_from: Option<Ts> = None;
    let pace_start = Instant::now();
    let mut n: u64 = 0;
    while let Some(Reverse((_, i))) = heads.pop() {
        let Some(ev) = pending[i].take() else {
            continue;
        };
        if let (Some(speed), Some(now)) = (speed, pipeline.present()) {
            let t0 = *pace_from.get_or_insert(now);
            let due = Duration::from_secs_f64(((now - t0).max(0) as f64 / 1000.0) / speed);
            if let Some(wait) = due.checked_sub(pace_start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        pipeline.push(ev, &mut outputs);
        if !outputs.is_empty() {
            handle(&mut outputs)?;
        }
        if let Some(next) = sources[i].next_event(&mut pipeline.registry) {
            heads.push(Reverse((next.ts(), i)));
            pending[i] = Some(next);
        }
        n += 1;
        if n % 65_536 == 0 {
            progress(n);
        }
    }
    pipeline.finish(&mut outputs);
    handle(&mut outputs)?;
    // Alerts still open carry more findings than their last emitted snapshot.
    for a in pipeline.open_alerts() {
        alerts.put(&a.id, a.clone());
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut files: Vec<FileStats> = sources.iter().map(|s| s.stats().clone()).collect();
    for f in files.iter_mut().filter(|f| f.error.is_none()) {
        f.error = f.nothing_read();
    }
    let mut bad_by_reason = BTreeMap::new();
    for f in &files {
        for (r, c) in &f.bad {
            *bad_by_reason.entry(*r).or_insert(0) += c;
        }
    }
    let stats = pipeline.stats().clone();
    let scores = pipeline.take_scores();
    Ok(ReplayReport {
        lines: files.iter().map(|f| f.lines).sum(),
        bad_lines: files.iter().map(FileStats::bad_total).sum(),
        bad_by_reason,
        errors: files.iter().filter_map(|f| f.error.clone()).collect(),
        files,
        readings_per_s: if elapsed > 0.0 {
            stats.readings as f64 / elapsed
        } else {
            0.0
        },
        pipeline: stats,
        detectors: pipeline.detector_names(),
        notes: pipeline.detector_notes(),
        devices: pipeline
            .registry
            .devices()
            .iter()
            .map(|d| d.name.clone())
            .collect(),
        first_ts: pipeline.span().map(|(first, _)| format_ts(first)),
        last_ts: pipeline.span().map(|(_, last)| format_ts(last)),
        elapsed_s: elapsed,
        alerts: alerts.into_vec(),
        incidents: incidents.into_vec(),
        scores,
    })
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
/// `wattchdog replay`'s summary: the report (the human text goes to standard error,
/// beside alerts on standard output).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ReplaySummary(pub ReplayReport);

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.render())
    }
}

impl Summary for ReplaySummary {
    fn human_to_stderr(&self) -> bool {
        true
    }

    fn exit_code(&self) -> u8 {
        u8::from(!self.0.errors.is_empty())
    }
}

/// `wattchdog replay`: alerts to `--alerts` or standard output, the report where asked.
/// `None` when the reader of standard output hung up (`| head`): not an error.
pub fn run(a: ReplayArgs) -> anyhow::Result<Option<ReplaySummary>> {
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let opts = ReplayOptions {
        inputs: a.files.clone(),
        mapping,
        speed: a.speed.filter(|s| *s > 0.0),
        progress: !a.no_progress && io::stderr().is_terminal(),
        keep_scores: a.report_html.is_some(),
        exceptions: a
            .exceptions
            .as_deref()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Exceptions::from_toml(&text, &p.display().to_string()).map_err(anyhow::Error::msg)
            })
            .transpose()?,
        baseline: a.baseline.as_deref().map(load_baseline).transpose()?,
    };
    let out: Option<Box<dyn Write>> = match (&a.alerts, a.json) {
        (Some(p), _) => Some(Box::new(create(p)?)),
        (None, false) => Some(Box::new(BufWriter::new(io::stdout().lock()))),
        (None, true) => None,
    };
    let mut jsonl = out.map(AlertJsonl::new);
    let mut none = discard();
    let sink: &mut dyn Sink = match &mut jsonl {
        Some(s) => s,
        None => &mut none,
    };
    let result = replay(&cfg, &opts, sink).and_then(|r| Ok((r, sink.flush()?)));
    // A reader that stops early (`| head`) is not an error worth a message.
    if let Err(ReplayError::Output(SinkError::Io(e))) = &result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Ok(None);
        }
    }
    let (report, ()) = result?;
    if let Some(p) = &a.report {
        serde_json::to_writer_pretty(create(p)?, &report).context("cannot write the report")?;
    }
    if let Some(p) = &a.report_html {
        let labels = sidecar_labels(
            &a.files,
            &OpenOptions::from_config(&cfg, opts.mapping.clone()),
        );
        let source = HtmlSource {
            cfg: &cfg,
            config_path: a.config.as_deref(),
            opts: &opts,
        };
        write_html_report(p, &source, &report, labels, None, 0)?;
    }
    Ok(Some(ReplaySummary(report)))
}

/// The labelled windows of the captures that have them and read cleanly (a report
/// without labels is still a report).
pub fn sidecar_labels(files: &[PathBuf], how: &OpenOptions) -> Vec<LabelWindow> {
    let mut out = Vec::new();
    for f in files {
        match capture_labels(f, how) {
            Ok(Some((labels, _))) => out.extend(labels),
            Ok(None) => {}
            Err(e) => eprintln!("warning: labels not drawn: {e}"),
        }
    }
    out
}

/// A capture's labelled windows and the warnings about them: its sidecar's
/// (`<name>.labels.json`) when it has one, else the runs of a wide CSV's label columns
/// (read by a pass over the file; each run names every device of the file, and is
/// called by its column); `None` when it has neither.
pub fn capture_labels(
    capture: &Path,
    how: &OpenOptions,
) -> Result<Option<crate::report::eval::Labels>, crate::report::eval::EvalError> {
    let sidecar = crate::sim::labels_path(capture);
    if sidecar.exists() {
        return load_labels(&sidecar).map(Some);
    }
    if !matches!(
        crate::source::detect_format(capture),
        crate::source::Format::Csv
    ) {
        return Ok(None);
    }
    let mut source = open_capture(capture, how, &ByteCounter::default())?;
    // Bounded like a pipeline's: a file of endless distinct points is not kept whole.
    let mut reg =
        crate::model::points::Registry::new(crate::pipeline::PipelineParams::default().max_points);
    while source.next_event(&mut reg).is_some() {}
    let stats = source.stats();
    if let Some(e) = stats.error.clone().or_else(|| stats.nothing_read()) {
        return Err(crate::report::eval::EvalError::Unread(e));
    }
    let devices: Vec<String> = reg.devices().iter().map(|d| d.name.clone()).collect();
    let windows: Vec<LabelWindow> = source
        .stats()
        .label_windows
        .iter()
        .map(|w| LabelWindow {
            start: w.start,
            end: w.end,
            scenario: w.column.clone(),
            devices: devices.clone(),
        })
        .collect();
    Ok((!windows.is_empty()).then_some((windows, Vec::new())))
}

/// What a replay read: the config and the captures, for the HTML report's digests and
/// its second read of the incidents' telemetry.
pub struct HtmlSource<'a> {
    /// The config used.
    pub cfg: &'a Config,
    /// Its file, if not the defaults.
    pub config_path: Option<&'a Path>,
    /// The replay's options (captures, mapping).
    pub opts: &'a ReplayOptions,
}

/// Writes the HTML report of a replay: digests the captures and the config, reads the
/// captures again for the incidents' telemetry, renders.
pub fn write_html_report(
    path: &Path,
    source: &HtmlSource<'_>,
    report: &ReplayReport,
    labels: Vec<LabelWindow>,
    score: Option<Score>,
    grace: i64,
) -> anyhow::Result<()> {
    let digest = |p: &Path| -> anyhow::Result<(u64, String)> {
        let bytes = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let sha = crate::app::train::sha256_file(p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        Ok((bytes, sha))
    };
    let mut files = Vec::new();
    for f in &source.opts.inputs {
        let (bytes, sha256) = digest(f)?;
        files.push(FileDigest {
            name: f.display().to_string(),
            bytes,
            sha256,
        });
    }
    let config = match source.config_path {
        Some(p) => format!("{} (sha256 {})", p.display(), digest(p)?.1),
        None => "built-in defaults".to_owned(),
    };
    let how = OpenOptions::from_config(source.cfg, source.opts.mapping.clone());
    let telemetry = html::gather(report, &source.opts.inputs, &how)?;
    let ctx = HtmlContext {
        files,
        config,
        labels,
        score,
        grace,
        generated: format!(
            "generated {} by wattchdog {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
            env!("CARGO_PKG_VERSION")
        ),
    };
    let html = html::render(report, &ctx, &telemetry, &report.scores);
    std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a protocol baseline file (`wattchdog learn`'s output).
pub fn load_baseline(path: &Path) -> anyhow::Result<crate::detect::baseline::Baseline> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::detect::baseline::Baseline::from_toml(&text, &path.display().to_string())
        .map_err(anyhow::Error::msg)
}
