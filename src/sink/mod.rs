//! Sinks: where alerts and incidents go. Every one is a [`Sink`]; [`Fanout`] hands an
//! output to the durable one (the store, with its webhook deliveries) before any other
//! sees it, so nothing is reported that a crash could lose. Alert JSONL is here; the
//! store and the webhook outbox are below; the SOC surface is `app::soc`.

pub mod store;
pub mod syslog;
pub mod webhook;

use crate::correlate::Output;
use crate::model::AlertStatus;
use rustc_hash::FxHashMap;
use std::io::{self, Write};
use store::StoreError;
use thiserror::Error;

/// Whether an alert passes a receiver's filters (webhooks and syslog sinks share them):
/// an empty list of sites, kinds or techniques lets all through.
pub(crate) fn passes(
    a: &crate::model::Alert,
    sites: &[String],
    kinds: &[String],
    min_severity: crate::model::Severity,
    roles: &[crate::model::Role],
    techniques: &[String],
) -> bool {
    (sites.is_empty() || sites.contains(&a.site))
        && (kinds.is_empty() || kinds.contains(&a.kind))
        && a.severity >= min_severity
        && roles.contains(&a.role)
        && (techniques.is_empty() || techniques.iter().any(|t| t == a.technique.id))
}

/// Why a sink did not take an output.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Writing failed (a closed pipe, a full disk).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The store did not commit it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where outputs go, in the order the pipeline made them.
pub trait Sink {
    /// Takes one output; an error means it was not taken (for the store: not committed).
    fn put(&mut self, o: &Output) -> Result<(), SinkError>;

    /// Makes what was taken visible (flushes buffers).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A closure is a sink (tests, printers, counters).
impl<F: FnMut(&Output) -> io::Result<()>> Sink for F {
    fn put(&mut self, o: &Output) -> Result<(), SinkError> {
        Ok(self(o)?)
    }
}

/// A sink that keeps nothing (training, scoring).
pub fn discard() -> impl Sink {
    |_: &Output| Ok(())
}

/// The sinks of one job: `durable` commits each output before `rest` sees it, and an
/// output it refuses goes nowhere else.
pub struct Fanout<'a> {
    /// The store, when there is one.
    pub durable: Option<&'a mut dyn Sink>,
    /// Everything else, in order.
    pub rest: &'a mut dyn Sink,
}

impl Sink for Fanout<'_> {
    fn put(&mut self, o: &Output) -> Result<(), SinkError> {
        if let Some(d) = self.durable.as_mut() {
            d.put(o)?;
        }
        self.rest.put(o)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(d) = self.durable.as_mut() {
            d.flush()?;
        }
        self.rest.flush()
    }
}

impl Fanout<'_> {
    /// Stamps and hands on every output, in order, leaving `outputs` empty.
    pub fn deliver(
        &mut self,
        stamp: &mut Stamp,
        outputs: &mut Vec<Output>,
    ) -> Result<(), SinkError> {
        for mut o in outputs.drain(..) {
            stamp.stamp(&mut o);
            self.put(&o)?;
        }
        Ok(())
    }
}

/// Gives each alert its `detected_at`: the wall time the sinks first saw it, kept on
/// every later snapshot of the same alert. The pipeline and the correlator work in event
/// time only; this is the one place the wall clock meets an alert.
pub struct Stamp {
    now: fn() -> String,
    open: FxHashMap<String, String>,
}

impl Stamp {
    /// Stamps with the wall clock.
    pub fn wall() -> Self {
        Self::with(crate::time::now_rfc3339)
    }

    /// Stamps with `now` (tests pin it).
    pub fn with(now: fn() -> String) -> Self {
        Self {
            now,
            open: FxHashMap::default(),
        }
    }

    /// Sets `detected_at` on an alert snapshot; an alert's entry leaves with its closing.
    pub fn stamp(&mut self, o: &mut Output) {
        let Output::Alert(a) = o else { return };
        a.detected_at = match a.status {
            AlertStatus::Open => self
                .open
                .entry(a.id.clone())
                .or_insert_with(self.now)
                .clone(),
            AlertStatus::Closed => self.open.remove(&a.id).unwrap_or_else(self.now),
        };
    }
}

/// Writes each alert snapshot (opened, escalated, closed) as one JSON line in the
/// alert schema of docs/design.md. Consumers key on `id`: the last line of an id is its state.
pub struct AlertJsonl<W: Write> {
    out: W,
    written: u64,
    line_buffered: bool,
}

impl<W: Write> AlertJsonl<W> {
    /// Writes to `out` (buffer it: one `write` per alert otherwise).
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            line_buffered: false,
        }
    }

    /// Writes to `out` and flushes after every alert (a live run's file is tailed).
    pub fn line_buffered(out: W) -> Self {
        Self {
            line_buffered: true,
            ..Self::new(out)
        }
    }

    /// Writes the output if it is an alert.
    pub fn handle(&mut self, o: &Output) -> io::Result<()> {
        if let Output::Alert(a) = o {
            serde_json::to_writer(&mut self.out, a)?;
            self.out.write_all(b"\n")?;
            self.written += 1;
            if self.line_buffered {
                self.out.flush()?;
            }
        }
        Ok(())
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl<W: Write> Sink for AlertJsonl<W> {
    fn put(&mut self, o: &Output) -> Result<(), SinkError> {
        Ok(self.handle(o)?)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Incident, Severity};

    fn incident(id: &str) -> Output {
        Output::Incident(Incident {
            id: id.into(),
            site: "s".into(),
            start: 0,
            end: 0,
            severity: Severity::Low,
            alerts: Vec::new(),
            devices: Vec::new(),
            detectors: Vec::new(),
            techniques: Vec::new(),
            summary: String::new(),
            cause: String::new(),
            headline: String::new(),
            affected: Vec::new(),
            status: AlertStatus::Open,
        })
    }

    #[test]
    fn the_durable_sink_sees_each_output_first_and_a_refused_one_goes_nowhere_else() {
        let seen = std::cell::RefCell::new(Vec::new());
        let mut store = |o: &Output| {
            let Output::Incident(i) = o else {
                unreachable!()
            };
            seen.borrow_mut().push(format!("store {}", i.id));
            if i.id == "refused" {
                return Err(io::Error::other("disk full"));
            }
            Ok(())
        };
        let mut rest = |o: &Output| {
            let Output::Incident(i) = o else {
                unreachable!()
            };
            seen.borrow_mut().push(format!("rest {}", i.id));
            Ok(())
        };
        let mut fanout = Fanout {
            durable: Some(&mut store),
            rest: &mut rest,
        };
        fanout.put(&incident("a")).unwrap();
        assert!(fanout.put(&incident("refused")).is_err());
        fanout.put(&incident("b")).unwrap();
        assert_eq!(
            *seen.borrow(),
            ["store a", "rest a", "store refused", "store b", "rest b"]
        );
    }

    #[test]
    fn an_alert_keeps_the_time_it_was_first_seen_until_it_closes() {
        use crate::model::Alert;
        let mut clock = Stamp::with(|| "first".into());
        let snapshot =
            |id: &str, status| Output::Alert(Alert::sample(id, 0, Severity::Low, status));
        let mut opened = snapshot("a", AlertStatus::Open);
        clock.stamp(&mut opened);
        clock.now = || "later".into();
        let mut escalated = snapshot("a", AlertStatus::Open);
        let mut other = snapshot("b", AlertStatus::Open);
        let mut closed = snapshot("a", AlertStatus::Closed);
        let mut reopened = snapshot("a", AlertStatus::Open);
        for o in [&mut escalated, &mut other, &mut closed, &mut reopened] {
            clock.stamp(o);
        }
        let at = |o: &Output| match o {
            Output::Alert(a) => a.detected_at.clone(),
            Output::Incident(_) => unreachable!(),
        };
        assert_eq!(at(&opened), "first");
        assert_eq!(at(&escalated), "first");
        assert_eq!(at(&closed), "first");
        assert_eq!(at(&other), "later");
        assert_eq!(at(&reopened), "later", "a closed alert's entry is gone");
        assert_eq!(clock.open.len(), 2, "b and the reopened a");
    }

    #[test]
    fn alert_jsonl_writes_alerts_only_and_counts_them() {
        let mut out = AlertJsonl::new(Vec::new());
        out.put(&incident("i")).unwrap();
        assert_eq!(out.written(), 0);
        assert!(out.out.is_empty());
    }
}
