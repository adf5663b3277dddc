//! Sinks: where alerts and incidents go. Alert JSONL (stdout or a file) is here; the
//! durable store and the webhook outbox are below; the SOC surface (`app::soc`) and the
//! Kafka alerts topic consume the same [`Output`] events.

pub mod store;
pub mod webhook;

use crate::correlate::Output;
use std::io::{self, Write};

/// Writes each alert snapshot (opened, escalated, closed) as one JSON line in the
/// alert schema of docs/design.md. Consumers key on `id`: the last line of an id is its state.
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
