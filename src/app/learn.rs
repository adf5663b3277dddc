//! `wattchdog learn`: a protocol baseline from clean captures. Everything in them is
//! taken for normal — every write learned, every client's requests and busiest minute
//! kept per device — and written as a baseline file that `replay|eval --baseline`
//! judge against instead of learning from a capture's own first hour.

use crate::app::cli::LearnArgs;
use crate::app::{load_config, Summary};
use crate::detect::wire::Protocol;
use crate::detect::Detector;
use crate::model::event::Event;
use crate::model::points::Registry;
use crate::model::DeviceKind;
use crate::source::csv::WideMapping;
use crate::source::{open_capture, ByteCounter, OpenOptions};
use crate::time::format_ts;
use anyhow::Context;
use serde::Serialize;
use std::fmt;

/// What `learn` wrote.
#[derive(Debug, Serialize)]
pub struct LearnSummary {
    /// The baseline file.
    pub out: String,
    /// Writes learned (client × device × function).
    pub writes: usize,
    /// Talkers learned (client × device).
    pub talkers: usize,
    /// Commands and exchanges read.
    pub events: u64,
    /// Lines or frames that could not be read.
    pub bad: u64,
}

impl fmt::Display for LearnSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {}: {} writes and {} talkers learned from {} commands and exchanges ({} bad lines or frames)",
            self.out, self.writes, self.talkers, self.events, self.bad
        )
    }
}

impl Summary for LearnSummary {
    fn human_to_stderr(&self) -> bool {
        true
    }
}

/// `wattchdog learn`.
pub fn run(a: LearnArgs) -> anyhow::Result<LearnSummary> {
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let how = OpenOptions::from_config(&cfg, mapping);
    let counter = ByteCounter::default();
    let setup = cfg.detect_setup();
    let params = setup.params.get(DeviceKind::Other).protocol.clone();
    let mut detector = Protocol::learner(params, setup.device_maps.clone());
    let mut reg = Registry::new(cfg.pipeline.max_points);
    let (mut events, mut bad) = (0u64, 0u64);
    // Findings of a clean capture are not wanted: everything in it is normal.
    let mut ignored = Vec::new();
    let mut span: Option<(i64, i64)> = None;
    for file in &a.files {
        let mut source = open_capture(file, &how, &counter)?;
        while let Some(event) = source.next_event(&mut reg) {
            let ts = event.ts();
            span = Some(span.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))));
            match event {
                Event::Command(c) => match reg.intern_device(&c.site, &c.device, "") {
                    Ok(device) => detector.command(&c, device, &reg, &mut ignored),
                    Err(e) => {
                        tracing::warn!(device = %c.device, error = %e, "command not learned");
                        continue;
                    }
                },
                Event::Traffic(t) => detector.traffic(&t, &reg, &mut ignored),
                Event::Sample { .. } => continue,
            }
            events += 1;
            ignored.clear();
        }
        let stats = source.stats();
        bad += stats.bad_total();
        if let Some(e) = &stats.error {
            anyhow::bail!("{}: {e}", file.display());
        }
        if let Some(e) = stats.nothing_read() {
            anyhow::bail!("{e}");
        }
    }
    let names: Vec<String> = a.files.iter().map(|f| f.display().to_string()).collect();
    let from = match span {
        Some((lo, hi)) => format!(
            "{} ({} → {})",
            names.join(", "),
            format_ts(lo),
            format_ts(hi)
        ),
        None => names.join(", "),
    };
    let baseline = detector.baseline(&reg, from);
    std::fs::write(&a.out, baseline.to_toml())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    Ok(LearnSummary {
        out: a.out.display().to_string(),
        writes: baseline.exception.len(),
        talkers: baseline.talker.len(),
        events,
        bad,
    })
}
