//! wattchdog detects cyber-physical attacks on the power, cooling and grid telemetry of
//! data centres: UPS units, chillers, CRAHs, PDUs and the grid interconnect meter.
//!
//! Every source feeds one pipeline, driven by event time; data flows one way:
//!
//! ```text
//! captures, Modbus poller, MQTT subscriber, Kafka ─► Event ─► pipeline (reorder buffer →
//!   features → detectors) ─► correlator ─► sinks (JSONL, store, webhooks, SSE, metrics)
//! ```
//!
//! # Layout
//! - [`model`]: readings, commands, events, the point registry, alerts, incidents, the
//!   metric vocabulary, ATT&CK for ICS techniques.
//! - [`protocol`]: Modbus register maps and codec, read plans, MQTT topic maps, Sparkplug B
//!   (no I/O).
//! - [`source`]: capture readers (JSONL, CSV, pcap) and live collectors (Modbus, MQTT).
//! - [`feature`]: per-point running statistics and per-device frames.
//! - [`pipeline`]: reorder buffer, watermark, frames, ticks: the one pipeline.
//! - [`detect`]: the `Detector` trait and one module per detector, each with its parameters.
//! - [`correlate`]: findings → alerts → incidents.
//! - [`sink`]: alert JSONL, the durable store, the webhook outbox.
//! - [`http`]: the API, the live stream, metrics and the dashboard.
//! - [`config`]: `wattchdog.toml`, composed of the components' parameters.
//! - [`report`]: the replay report, scoring against labels, the HTML report.
//! - [`sim`]: a simulated facility with scheduled attacks.
//! - [`kafka`]: many sites over Kafka (edge forwarder, central consumer group).
//! - [`app`]: one module per command.
//! - [`time`]: event-time parsing and durations.
//! - [`tomlfile`]: people-written TOML, with errors that name file, key and line.

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
