//! `wattchdog calibrate`: thresholds from a site's own clean history, for the number of
//! false alarms the site says it can live with.
//!
//! 1. Each clean capture is replayed on its own through the ordinary pipeline with every
//!    threshold rule tapped ([`crate::detect::tap`]): what `ewma_z`, `cusum`, `physics`
//!    (jump and sustained shift) and `iforest` compare with their thresholds, as each
//!    subject's largest value per block of event time (`--block`, 10 minutes). Labelled windows (a sidecar,
//!    or a wide CSV's label columns) and 30 minutes after them are left out.
//! 2. The budget is split equally between the rules that could be fitted, and within a
//!    rule every subject-block gets the same chance: `p = share × weeks seen ÷ blocks
//!    seen`. Each kind's tail of block maxima is fitted ([`crate::detect::tail`]) and
//!    its threshold set where a block maximum exceeds it with probability `p` (by the
//!    fit of the whole history, or of either half of it if that says higher; a kind whose
//!    halves cannot each be fitted keeps its value) — but,
//!    when the budget allows less than one alarm in the history seen, never at or below
//!    the largest value that history reached — rounded up to 4 significant digits. A rule whose threshold cannot be met (a forest score
//!    above 1) is disabled for the kind; a kind with too little data keeps its value.
//! 3. The base config with those thresholds is written as `wattchdog.toml`, checked by
//!    loading it, then the captures are replayed once more with it and its alerts
//!    counted (the detectors without a threshold to calibrate raise theirs too).
//! 4. `calibration.json` says what was chosen and why.
//!
//! Same inputs, same files, byte for byte.

use crate::app::cli::CalibrateArgs;
use crate::app::replay::{capture_labels, replay_into, ReplayError};
use crate::app::train::sha256_file;
use crate::app::{load_config, Summary};
use crate::config::Config;
use crate::detect::tail::Tail;
use crate::detect::tap::{Range, Rule, Series, Tap};
use crate::model::{DeviceKind, Ts};
use crate::report::eval::parse_ts;
use crate::sink::discard;
use crate::source::csv::WideMapping;
use crate::source::{open_capture, ByteCounter, OpenOptions};
use crate::time::format_duration;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

const WEEK: f64 = 7.0 * 86_400_000.0;

/// Time after a labelled window's end still left out (the plant settles).
const LABEL_MARGIN: Ts = 30 * 60_000;

/// How many false alarms a site accepts, per unit of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Alarms.
    pub count: f64,
    /// Per this unit.
    pub unit: &'static str,
    /// The unit in milliseconds.
    pub unit_ms: f64,
}

impl Budget {
    /// Parses `1/week`, `0.5/day`, `3/month`.
    pub fn parse(s: &str) -> Result<Budget, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write a count per unit, e.g. 1/week"))?;
        let count: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a number"))?;
        if !(count.is_finite() && count > 0.0 && count <= 1e6) {
            return Err(format!("{s:?}: the count must be above 0"));
        }
        let (unit, unit_ms) = match unit.trim() {
            "hour" | "h" => ("hour", 3_600_000.0),
            "day" | "d" => ("day", 86_400_000.0),
            "week" | "w" => ("week", WEEK),
            "month" => ("month", 30.0 * 86_400_000.0),
            u => {
                return Err(format!(
                    "{s:?}: unknown unit {u:?} (hour, day, week, month)"
                ))
            }
        };
        Ok(Budget {
            count,
            unit,
            unit_ms,
        })
    }

    /// Alarms per week.
    pub fn per_week(&self) -> f64 {
        self.count * WEEK / self.unit_ms
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

/// One capture calibrated on.
#[derive(Debug, Serialize)]
pub struct CaptureSeen {
    /// File name.
    pub file: String,
    /// Its SHA-256.
    pub sha256: String,
    /// First and last event time.
    pub first: Option<String>,
    /// Last event time.
    pub last: Option<String>,
    /// Readings replayed.
    pub readings: u64,
    /// Labelled windows left out.
    pub windows_left_out: usize,
}

/// The fitted tail of one kind's block maxima.
#[derive(Debug, Serialize)]
pub struct TailSeen {
    /// Level the peaks are taken over.
    pub level: f64,
    /// Share of block maxima above it.
    pub share: f64,
    /// Generalised Pareto shape (floored at 0).
    pub shape: f64,
    /// Generalised Pareto scale.
    pub scale: f64,
}

/// What was decided for one rule and kind.
#[derive(Debug, Serialize)]
pub struct KindChoice {
    /// Device kind.
    pub kind: String,
    /// Points or devices judged.
    pub subjects: usize,
    /// Block maxima recorded.
    pub blocks: usize,
    /// The largest statistic seen.
    pub largest_seen: Option<f64>,
    /// The base config's threshold.
    pub before: Option<f64>,
    /// The threshold written (`None`: kept or disabled).
    pub threshold: Option<f64>,
    /// What was done.
    pub decision: Decision,
    /// Why, when it was not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Expected false alarms per week from this kind's tail at the threshold written.
    pub expected_per_week: Option<f64>,
    /// Blocks of the clean captures at or over the threshold written.
    pub clean_blocks_over: usize,
    /// The fit.
    pub tail: Option<TailSeen>,
}

/// What was done with one rule's threshold for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A threshold was written.
    Set,
    /// The base config's value stays.
    Kept,
    /// The rule is turned off for the kind: no threshold can meet the budget.
    Disabled,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Set => "set",
            Decision::Kept => "kept",
            Decision::Disabled => "disabled",
        })
    }
}

/// What was decided for one rule.
#[derive(Debug, Serialize)]
pub struct RuleChoice {
    /// The rule.
    #[serde(skip)]
    pub rule: Rule,
    /// Config key under `[kinds.<kind>]`.
    pub key: String,
    /// Its share of the budget, alarms per week.
    pub share_per_week: f64,
    /// Chance per subject and block the thresholds are set for.
    pub block_probability: f64,
    /// Per kind.
    pub kinds: Vec<KindChoice>,
}

/// What `calibrate` wrote and why (`calibration.json`).
#[derive(Debug, Serialize)]
pub struct Calibration {
    /// The config written.
    pub config: String,
    /// The budget asked for.
    pub budget: String,
    /// The budget in alarms per week.
    pub budget_per_week: f64,
    /// How the budget was split.
    pub split: String,
    /// Event time per block (each subject's largest statistic per block is fitted).
    pub block: String,
    /// Clean history seen, in weeks.
    pub weeks_seen: f64,
    /// The captures.
    pub captures: Vec<CaptureSeen>,
    /// Each threshold rule.
    pub rules: Vec<RuleChoice>,
    /// Metrics whose clean range was written as their `envelope` band, per kind.
    pub envelopes: BTreeMap<String, usize>,
    /// Metrics given no band, per kind: constant throughout, or either half of the
    /// history, widened by the margin, not holding the other.
    pub envelopes_unsettled: BTreeMap<String, usize>,
    /// Incidents the written config raised on the same captures (what the budget is
    /// about: alerts of one cause are grouped into one).
    pub clean_incidents: usize,
    /// Alerts the written config raised on the same captures, by detector (the detectors
    /// with no threshold to calibrate included).
    pub clean_alerts: BTreeMap<String, usize>,
    /// wattchdog version.
    pub wattchdog: String,
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "calibrated on {:.2} weeks of clean history ({} captures) for {} false alarms ({:.3}/week), wrote {}",
            self.weeks_seen,
            self.captures.len(),
            self.budget,
            self.budget_per_week,
            self.config
        )?;
        for r in &self.rules {
            writeln!(f, "  {} ({:.3}/week):", r.key, r.share_per_week)?;
            for k in &r.kinds {
                let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
                writeln!(
                    f,
                    "    {:<11} {:>5} subjects {:>7} blocks  largest {:>10}  {} → {}  {}",
                    k.kind,
                    k.subjects,
                    k.blocks,
                    num(k.largest_seen),
                    num(k.before),
                    num(k.threshold),
                    k.decision
                )?;
                if let Some(why) = &k.why {
                    writeln!(f, "      {why}")?;
                }
            }
        }
        let total: usize = self.clean_alerts.values().sum();
        write!(
            f,
            "  on the clean captures with it: {} incidents, {total} alerts",
            self.clean_incidents
        )?;
        for (d, n) in &self.clean_alerts {
            write!(f, " {d}={n}")?;
        }
        writeln!(f)
    }
}

impl Summary for Calibration {}

/// `wattchdog calibrate`.
pub fn run(a: CalibrateArgs) -> anyhow::Result<Calibration> {
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let base = match &a.config {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .parse::<toml::Table>()
            .with_context(|| format!("{} is not TOML", p.display()))?,
        None => toml::Table::new(),
    };
    let base_dir = a
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    calibrate(
        Base {
            cfg,
            table: base,
            dir: base_dir,
        },
        mapping,
        &a.files,
        a.false_alarms,
        a.block,
        &a.out,
    )
}

/// The config calibrated.
#[derive(Debug, Clone)]
pub struct Base {
    /// As loaded.
    pub cfg: Config,
    /// As written (the calibrated config is this with the thresholds set).
    pub table: toml::Table,
    /// What its relative paths are relative to.
    pub dir: PathBuf,
}

/// Calibrates `base` on the clean `files` and writes `out/wattchdog.toml` and
/// `out/calibration.json`.
pub fn calibrate(
    base: Base,
    mapping: Option<WideMapping>,
    files: &[PathBuf],
    budget: Budget,
    block: Ts,
    out: &Path,
) -> anyhow::Result<Calibration> {
    let Base {
        cfg,
        table: mut base,
        dir: base_dir,
    } = base;
    let cfg = &cfg;
    let how = OpenOptions::from_config(cfg, mapping);
    let mut series: BTreeMap<(Rule, DeviceKind), Series> = BTreeMap::new();
    let mut ranges: BTreeMap<(DeviceKind, String), Vec<Range>> = BTreeMap::new();
    let mut captures = Vec::new();
    let mut span_ms = 0i64;
    for path in files {
        let tap = Tap::new(block);
        let windows = capture_labels(path, &how)?.map_or_else(Vec::new, |(l, _)| l);
        tap.leave_out(
            windows
                .iter()
                .map(|w| (w.start, w.end.saturating_add(LABEL_MARGIN)))
                .collect(),
        );
        let report = replay_file(cfg.build_tapped_pipeline(Some(tap.clone())), path, &how)?;
        let taken = tap.take();
        for (key, s) in taken.series {
            let into = series.entry(key).or_default();
            into.maxima.extend(s.maxima);
            into.subjects += s.subjects;
        }
        for (key, blocks) in taken.ranges {
            ranges.entry(key).or_default().extend(blocks);
        }
        if let (Some(a), Some(b)) = (
            report.first_ts.as_deref().and_then(parse_ts),
            report.last_ts.as_deref().and_then(parse_ts),
        ) {
            span_ms += b - a;
        }
        captures.push(CaptureSeen {
            file: crate::app::train::file_name(path),
            sha256: sha256_file(path)?,
            first: report.first_ts,
            last: report.last_ts,
            readings: report.pipeline.readings,
            windows_left_out: windows.len(),
        });
    }
    if span_ms <= 0 {
        bail!("the captures span no time: nothing to calibrate on");
    }
    let weeks = span_ms as f64 / WEEK;
    let mut rules = choose(cfg, &series, budget.per_week(), weeks);
    if rules
        .iter()
        .all(|r| r.kinds.iter().all(|k| k.threshold.is_none()))
    {
        bail!(
            "no threshold could be fitted: {:.1} hours of clean history gave fewer than {} blocks of {} for every kind and rule (each half needs {}; a shorter --block gives more)",
            span_ms as f64 / 3.6e6,
            2 * crate::detect::tail::MIN_MAXIMA,
            format_duration(block),
            crate::detect::tail::MIN_MAXIMA
        );
    }
    write_thresholds(&mut base, &rules);
    let (bands, unsettled) = bands(cfg, ranges);
    write_envelopes(&mut base, &bands);
    absolute_model_dirs(&mut base, &base_dir);

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config_path = out.join("wattchdog.toml");
    let text = format!(
        "# Written by `wattchdog calibrate` for {budget} false alarms from {:.2} weeks of clean\n# history ({}); see calibration.json beside it.\n{}",
        weeks,
        captures.iter().map(|c| c.file.as_str()).collect::<Vec<_>>().join(", "),
        toml::to_string(&base).context("cannot write the config")?
    );
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let calibrated = Config::load(&config_path)
        .with_context(|| format!("the written {} does not load", config_path.display()))?;

    let (mut clean_alerts, mut clean_incidents) = (BTreeMap::new(), 0);
    for path in files {
        let report = replay_file(calibrated.build_pipeline(), path, &how)?;
        clean_incidents += report.incidents.len();
        for a in &report.alerts {
            *clean_alerts.entry(a.detector.to_string()).or_insert(0) += 1;
        }
    }
    for r in &mut rules {
        r.kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
    }
    let calibration = Calibration {
        config: config_path.display().to_string(),
        budget: budget.to_string(),
        budget_per_week: budget.per_week(),
        split: format!("equal shares between the rules fitted; within a rule, the same chance for every subject (point; device and relation for physics; device for the forest and the residual model) and block of {}", format_duration(block)),
        block: format_duration(block),
        weeks_seen: weeks,
        captures,
        rules,
        envelopes: per_kind(bands.keys()),
        envelopes_unsettled: per_kind(unsettled.iter()),
        clean_incidents,
        clean_alerts,
        wattchdog: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let report_path = out.join("calibration.json");
    std::fs::write(
        &report_path,
        serde_json::to_string_pretty(&calibration)? + "\n",
    )
    .with_context(|| format!("cannot write {}", report_path.display()))?;
    Ok(calibration)
}

/// Replays one capture through `pipeline`, failing on a capture that could not be read.
fn replay_file(
    pipeline: crate::pipeline::Pipeline,
    path: &Path,
    how: &OpenOptions,
) -> anyhow::Result<crate::report::ReplayReport> {
    let source = open_capture(path, how, &ByteCounter::default()).map_err(ReplayError::from)?;
    let report = replay_into(pipeline, vec![source], None, &mut |_| {}, &mut discard())?;
    if let Some(e) = report.errors.first() {
        bail!("{}: {e}", path.display());
    }
    Ok(report)
}

/// The threshold `rule` currently has for `kind` in `cfg` (a forest without a model has
/// none).
fn current(cfg: &Config, rule: Rule, kind: DeviceKind) -> Option<f64> {
    let p = cfg.detectors.get(kind);
    Some(match rule {
        Rule::EwmaZ => p.ewma_z.threshold,
        Rule::Cusum => p.cusum.threshold,
        Rule::Physics => p.physics.threshold,
        Rule::PhysicsCusum => p.physics.cusum_threshold,
        Rule::PhysicsSustained => p.physics.sustained_threshold,
        Rule::ResidualMargin => p.residual.margin,
        Rule::TimescaleMargin => p.timescale.margin,
        Rule::Iforest => p
            .iforest
            .threshold
            .or_else(|| cfg.models.get(kind).as_ref().map(|m| m.file.threshold))?,
    })
}

/// The lowest and highest value `rule`'s threshold may take: a forest's score is at
/// most 1; a residual margin below 1 would flag more than the warm-up quantile it
/// multiplies.
fn bounds(rule: Rule) -> (f64, f64) {
    match rule {
        Rule::Iforest => (0.0, 1.0),
        Rule::ResidualMargin => (1.0, f64::INFINITY),
        Rule::EwmaZ
        | Rule::Cusum
        | Rule::Physics
        | Rule::PhysicsCusum
        | Rule::PhysicsSustained
        | Rule::TimescaleMargin => (0.0, f64::INFINITY),
    }
}

/// Rounds up to 4 significant digits (a threshold only ever errs on the quiet side).
fn round_up(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return v;
    }
    let decimals = (3 - v.log10().floor() as i32).max(0);
    let step = 10f64.powi(-decimals);
    let up = (v / step).ceil() * step;
    format!("{up:.*}", decimals as usize).parse().unwrap_or(up)
}

/// One kind's record under a rule, and the fit of its whole history.
type KindSeries<'a> = (DeviceKind, &'a Series, Option<Tail>);

/// Splits the budget and sets each rule's thresholds (see the module's docs).
fn choose(
    cfg: &Config,
    series: &BTreeMap<(Rule, DeviceKind), Series>,
    budget_per_week: f64,
    weeks: f64,
) -> Vec<RuleChoice> {
    let mut by_rule: BTreeMap<Rule, Vec<KindSeries<'_>>> = BTreeMap::new();
    for (&(rule, kind), s) in series {
        by_rule
            .entry(rule)
            .or_default()
            .push((kind, s, Tail::fit(&s.maxima)));
    }
    let fitted = by_rule
        .values()
        .filter(|ks| ks.iter().any(|(_, _, t)| t.is_some()))
        .count()
        .max(1);
    let share = budget_per_week / fitted as f64;
    by_rule
        .into_iter()
        .map(|(rule, kinds)| {
            let (floor, ceiling) = bounds(rule);
            let blocks: usize = kinds.iter().map(|(_, s, _)| s.maxima.len()).sum();
            let p = (share * weeks / blocks.max(1) as f64).min(1.0);
            let kinds = kinds
                .into_iter()
                .map(|(kind, s, tail)| {
                    let largest = s.maxima.iter().copied().reduce(f64::max);
                    let mut c = KindChoice {
                        kind: kind.to_string(),
                        subjects: s.subjects,
                        blocks: s.maxima.len(),
                        largest_seen: largest,
                        before: current(cfg, rule, kind),
                        threshold: None,
                        decision: Decision::Kept,
                        why: None,
                        expected_per_week: None,
                        clean_blocks_over: 0,
                        tail: None,
                    };
                    let Some(t) = tail else {
                        c.why = Some(format!(
                            "fewer than {} blocks or too few distinct large values to fit a tail",
                            crate::detect::tail::MIN_MAXIMA
                        ));
                        return c;
                    };
                    // The fit extrapolates; the history bounds it from below: a budget
                    // that allows less than one alarm in the history seen cannot have a
                    // threshold the history reached.
                    // A statistic that wanders between periods (a forest's score follows
                    // the weather and the load) is judged by its worse half: each half of
                    // the history, in time order, fitted on its own.
                    let half = s.maxima.len() / 2;
                    let halves: Vec<Tail> = [&s.maxima[..half], &s.maxima[half..]]
                        .into_iter()
                        .filter_map(Tail::fit)
                        .collect();
                    if halves.len() < 2 {
                        c.why = Some(format!(
                            "{} blocks; each half of the history needs a fit of its own ({} blocks or more) to check the other",
                            s.maxima.len(),
                            crate::detect::tail::MIN_MAXIMA
                        ));
                        return c;
                    }
                    let fitted = halves
                        .iter()
                        .map(|h| h.quantile(p))
                        .fold(t.quantile(p), f64::max);
                    let at = round_up(if p * (s.maxima.len() as f64) < 1.0 {
                        fitted.max(t.largest * (1.0 + 1e-4))
                    } else {
                        fitted
                    });
                    c.tail = Some(TailSeen {
                        level: t.level,
                        share: t.share,
                        shape: t.shape,
                        scale: t.scale,
                    });
                    let at = at.max(floor);
                    if !(at.is_finite() && at > 0.0) {
                        c.why = Some(format!("the fitted threshold {at} is not positive"));
                    } else if at > ceiling {
                        c.decision = Decision::Disabled;
                        c.why = Some(format!(
                            "meeting the budget needs {at:.4}, above the largest possible {ceiling}"
                        ));
                    } else {
                        c.threshold = Some(at);
                        c.expected_per_week =
                            Some(t.exceedance(at) * s.maxima.len() as f64 / weeks);
                        c.clean_blocks_over = s.maxima.iter().filter(|&&m| m >= at).count();
                        c.decision = Decision::Set;
                    }
                    c
                })
                .collect();
            RuleChoice {
                rule,
                key: rule.key(),
                share_per_week: share,
                block_probability: p,
                kinds,
            }
        })
        .collect()
}

/// Writes each rule's decisions under `[kinds.<kind>.<detector>]`.
fn write_thresholds(base: &mut toml::Table, rules: &[RuleChoice]) {
    for r in rules {
        let (detector, field) = r.rule.detector_and_field();
        for k in &r.kinds {
            let set = match (k.decision, k.threshold) {
                (Decision::Set, Some(v)) => (field, toml::Value::Float(v)),
                (Decision::Disabled, _) => ("enabled", toml::Value::Boolean(false)),
                _ => continue,
            };
            let table = table_at(base, &["kinds", k.kind.as_str(), detector]);
            table.insert(set.0.to_owned(), set.1);
        }
    }
}

/// The table at `path` under `base`, made (over anything else there) if missing.
fn table_at<'a>(base: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    path.iter().fold(base, |t, name| {
        let v = t
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !v.is_table() {
            *v = toml::Value::Table(toml::Table::new());
        }
        match v {
            toml::Value::Table(t) => t,
            _ => unreachable!("made a table above"),
        }
    })
}

/// How many metrics of each kind.
fn per_kind<'a>(keys: impl Iterator<Item = &'a (DeviceKind, String)>) -> BTreeMap<String, usize> {
    keys.fold(BTreeMap::new(), |mut m, (k, _)| {
        *m.entry(k.to_string()).or_insert(0) += 1;
        m
    })
}

/// Each kind and metric's band: the range of all its blocks, when its history has
/// settled — each half (in time) of its blocks, widened by the kind's `envelope.margin`
/// on each side, holds the other half — and it was not constant. The rest, unsettled.
#[allow(clippy::type_complexity)]
fn bands(
    cfg: &Config,
    ranges: BTreeMap<(DeviceKind, String), Vec<Range>>,
) -> (
    BTreeMap<(DeviceKind, String), (f64, f64)>,
    Vec<(DeviceKind, String)>,
) {
    let (mut bands, mut unsettled) = (BTreeMap::new(), Vec::new());
    for (key, mut blocks) in ranges {
        let margin = cfg.detectors.get(key.0).envelope.margin;
        blocks.sort_by_key(|r| r.block);
        let span = |rs: &[Range]| {
            rs.iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
                    (lo.min(r.lo), hi.max(r.hi))
                })
        };
        let (a, b) = blocks.split_at(blocks.len() / 2);
        let (whole, a, b) = (span(&blocks), span(a), span(b));
        let holds = |(lo, hi): (f64, f64), (olo, ohi): (f64, f64)| {
            let w = margin * (hi - lo);
            lo - w <= olo && ohi <= hi + w
        };
        if whole.1 > whole.0 && holds(a, b) && holds(b, a) {
            bands.insert(key, whole);
        } else {
            unsettled.push(key);
        }
    }
    (bands, unsettled)
}

/// Writes each kind's metric ranges as its `envelope` bands.
fn write_envelopes(base: &mut toml::Table, ranges: &BTreeMap<(DeviceKind, String), (f64, f64)>) {
    for ((kind, metric), (lo, hi)) in ranges {
        let band = table_at(
            base,
            &[
                "kinds",
                kind.as_str(),
                "envelope",
                "metrics",
                metric.as_str(),
            ],
        );
        band.insert("min".into(), toml::Value::Float(*lo));
        band.insert("max".into(), toml::Value::Float(*hi));
    }
}

/// Model directories relative to the base config are made absolute: the written config
/// sits elsewhere.
fn absolute_model_dirs(base: &mut toml::Table, base_dir: &Path) {
    let fix = |t: &mut toml::Table| {
        if let Some(toml::Value::String(dir)) = t.get_mut("models") {
            let p = Path::new(dir.as_str());
            if p.is_relative() {
                let joined = base_dir.join(p);
                *dir = std::path::absolute(&joined)
                    .unwrap_or(joined)
                    .display()
                    .to_string();
            }
        }
    };
    if let Some(toml::Value::Table(detectors)) = base.get_mut("detectors") {
        for (_, d) in detectors.iter_mut() {
            if let Some(d) = d.as_table_mut() {
                fix(d);
            }
        }
    }
    if let Some(toml::Value::Table(kinds)) = base.get_mut("kinds") {
        for k in kinds
            .iter_mut()
            .map(|(_, v)| v)
            .filter_map(|v| v.as_table_mut())
        {
            for d in k
                .iter_mut()
                .map(|(_, v)| v)
                .filter_map(|v| v.as_table_mut())
            {
                fix(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_with_their_units() {
        let b = Budget::parse("1/week").unwrap();
        assert_eq!(b.per_week(), 1.0);
        assert!((Budget::parse("0.5/day").unwrap().per_week() - 3.5).abs() < 1e-12);
        assert!((Budget::parse("2 / h").unwrap().per_week() - 336.0).abs() < 1e-9);
        for bad in ["1", "x/week", "0/week", "-1/day", "1/fortnight", "inf/day"] {
            assert!(Budget::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_budget_text_is_a_positive_rate_or_an_error(s in "\\PC{0,24}", n in 0.0f64..1e7) {
            if let Ok(b) = Budget::parse(&s) {
                proptest::prop_assert!(b.per_week().is_finite() && b.per_week() > 0.0);
            }
            let text = format!("{n}/day");
            match Budget::parse(&text) {
                Ok(b) => proptest::prop_assert!((b.per_week() - 7.0 * n).abs() <= 1e-9 * n.max(1.0)),
                Err(_) => proptest::prop_assert!(n == 0.0 || n > 1e6),
            }
        }
    }

    #[test]
    fn thresholds_round_up_to_four_significant_digits() {
        assert_eq!(round_up(6.12341), 6.124);
        assert_eq!(round_up(0.512301), 0.5124);
        assert_eq!(round_up(12345.6), 12346.0);
        assert_eq!(round_up(7.0), 7.0);
    }

    #[test]
    fn thresholds_and_disablings_go_under_their_kinds_and_model_dirs_become_absolute() {
        let mut base: toml::Table =
            "[detectors.iforest]\nmodels = \"m\"\n[kinds.ups.ewma_z]\nwarmup_samples = 9\n"
                .parse()
                .unwrap();
        let kind = |kind: &str, threshold: Option<f64>, decision| KindChoice {
            kind: kind.into(),
            subjects: 1,
            blocks: 100,
            largest_seen: None,
            before: None,
            threshold,
            decision,
            why: None,
            expected_per_week: None,
            clean_blocks_over: 0,
            tail: None,
        };
        let rules = vec![
            RuleChoice {
                rule: Rule::EwmaZ,
                key: Rule::EwmaZ.key(),
                share_per_week: 1.0,
                block_probability: 1e-4,
                kinds: vec![
                    kind("ups", Some(7.5), Decision::Set),
                    kind("pdu", None, Decision::Kept),
                ],
            },
            RuleChoice {
                rule: Rule::Iforest,
                key: Rule::Iforest.key(),
                share_per_week: 1.0,
                block_probability: 1e-4,
                kinds: vec![kind("chiller", None, Decision::Disabled)],
            },
        ];
        write_thresholds(&mut base, &rules);
        let ranges = [((DeviceKind::Ups, "load_pct".to_owned()), (10.0, 40.5))].into();
        write_envelopes(&mut base, &ranges);
        absolute_model_dirs(&mut base, Path::new("/etc/site"));
        let text = toml::to_string(&base).unwrap();
        let cfg = Config::from_toml_str(
            &text.replace("/etc/site/m", env!("CARGO_MANIFEST_DIR")),
            "t",
        );
        assert_eq!(
            base["kinds"]["ups"]["ewma_z"]["threshold"].as_float(),
            Some(7.5)
        );
        assert_eq!(
            base["kinds"]["ups"]["ewma_z"]["warmup_samples"].as_integer(),
            Some(9)
        );
        assert!(base["kinds"].get("pdu").is_none());
        let band = &base["kinds"]["ups"]["envelope"]["metrics"]["load_pct"];
        assert_eq!(
            (band["min"].as_float(), band["max"].as_float()),
            (Some(10.0), Some(40.5))
        );
        assert_eq!(
            base["kinds"]["chiller"]["iforest"]["enabled"].as_bool(),
            Some(false)
        );
        assert_eq!(
            base["detectors"]["iforest"]["models"].as_str(),
            Some("/etc/site/m")
        );
        // The kinds and keys written are ones the config accepts (the models directory
        // aside, which holds no model here).
        let e = cfg.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.contains("kinds."), "{e}");
    }

    #[test]
    fn a_band_is_written_only_for_a_history_that_settled() {
        let r = |block, lo, hi| Range { block, lo, hi };
        let key = |m: &str| (DeviceKind::Chiller, m.to_owned());
        let ranges = [
            // Steady: either half widened by half its width holds the other.
            (
                key("steady"),
                vec![
                    r(0, 6.9, 7.1),
                    r(1, 6.8, 7.0),
                    r(2, 6.95, 7.2),
                    r(3, 6.9, 7.05),
                ],
            ),
            // Climbing all day: the second half is far outside the first.
            (
                key("climbing"),
                vec![
                    r(0, 1.0, 2.0),
                    r(1, 2.0, 3.0),
                    r(2, 5.0, 6.0),
                    r(3, 8.0, 9.0),
                ],
            ),
            // Never moved.
            (key("standby"), vec![r(0, 0.0, 0.0), r(1, 0.0, 0.0)]),
        ]
        .into();
        let (bands, unsettled) = bands(&Config::default(), ranges);
        assert_eq!(bands.len(), 1);
        assert_eq!(bands[&key("steady")], (6.8, 7.2));
        assert_eq!(unsettled, vec![key("climbing"), key("standby")]);
    }
}
