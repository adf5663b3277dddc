//! wattchdog detects cyber-physical attacks on the power, cooling and grid telemetry of
//! data centres: UPS units, chillers, CRAHs, PDUs and the grid interconnect meter.
//!
//! Every source feeds one pipeline, driven by event time:
//!
//! ```text
//! capture files ───────────────► source ─┐
//!                                        ├► Event ─► pipeline (reorder buffer → features → detectors) ─► correlator ─► sinks
//! Modbus poller, MQTT subscriber ─► live ─┘
//! ```
//!
//! # Layout
//! - [`model`]: readings, commands, findings, alerts, incidents (the design's data model).
//! - [`vocabulary`]: the metric vocabulary as a typed table with physical limits.
//! - [`time`]: event-time parsing (fast RFC 3339) and durations.
//! - [`config`]: `wattchdog.toml`, validated, with per-kind detector overrides.
//! - [`tomlfile`]: reading people-written TOML with errors that name file, key and line.
//! - [`source`]: capture readers (JSONL, CSV long and wide; gzip and zstd) and bad-line
//!   accounting.
//! - [`feature`]: the registry of points and per-point feature state; frames.
//! - [`detect`]: the `Detector` trait and one module per detector family.
//! - [`attack`]: MITRE ATT&CK for ICS techniques.
//! - [`protocol`]: Modbus register maps and the codec both ways, built-in profiles, read
//!   plans, device images; MQTT topic maps and Sparkplug B (no I/O).
//! - [`collect`]: live collectors (the Modbus TCP poller, the MQTT subscriber).
//! - [`broker`]: the embedded MQTT broker for the demo and tests.
//! - [`live`]: `run` — collectors into the pipeline on the event-time clock.
//! - [`pipeline`]: reorder buffer, watermark, frames, ticks: the one pipeline.
//! - [`correlate`]: findings → alerts → incidents.
//! - [`sink`]: alert outputs.
//! - [`store`]: the durable store (SQLite, WAL): alerts, incidents, acks, webhook outbox.
//! - [`soc`]: the live SOC sinks: store, HTTP API and dashboard, SSE, metrics, webhooks.
//! - [`http`]: the API, the stream and the dashboard page.
//! - [`webhook`]: signed webhook delivery from the outbox.
//! - [`replay`]: replay of captures with a report.
//! - [`report_html`]: the self-contained HTML report of a replay or an evaluation.
//! - [`eval`]: scoring alerts against labels.
//! - [`sim`]: a simulated facility with scheduled attacks, writing labelled captures or
//!   serving its devices over Modbus TCP or publishing them to MQTT.
//! - [`demo`]: `wattchdog demo`, the whole system on one machine.
//! - [`iforest`]: the isolation forest, written as a linfa algorithm.
//! - [`model_file`]: versioned model files, checked as untrusted input.
//! - [`vectors`]: per-kind feature vectors of a device against its own baseline.
//! - [`train`]: `wattchdog train`, fitting a kind's forest on normal captures.
//! - [`cli`]: the command line.

pub mod app;
pub mod config;
pub mod correlate;
pub mod detect;
pub mod feature;
pub mod http;
pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod protocol;
pub mod report;
pub mod sim;
pub mod sink;
pub mod source;
pub mod time;
pub mod tomlfile;

pub use config::Config;
pub use correlate::Output;
pub use model::{Alert, Command, DeviceKind, Finding, Incident, Quality, Reading, Severity};
pub use pipeline::Pipeline;
