//! Sinks: where alerts and incidents go. For now, alert JSONL (stdout or a file); the
//! durable store, webhooks and the live stream build on the same [`Output`] events.

pub mod store;
pub mod webhook;

use crate::correlate::Output;
use std::io::{self, Write};

/// Writes each alert snapshot (opened, escalated, closed) as one JSON line in the
/// DESIGN.md alert schema. Consumers key on `id`: the last line of an id is its state.
pub struct AlertJsonl<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> AlertJsonl<W> {
    /// Writes to `out` (buffer it: one `write` per alert otherwise).
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// Writes the output if it is an alert.
    pub fn handle(&mut self, o: &Output) -> io::Result<()> {
        if let Output::Alert(a) = o {
            serde_json::to_writer(&mut self.out, a)?;
            self.out.write_all(b"\n")?;
            self.written += 1;
        }
        Ok(())
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
