//! The command line (clap derive). The binary in `main.rs` only dispatches.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Detects cyber-physical attacks on data-centre power, cooling and grid telemetry.
#[derive(Debug, Parser)]
#[command(name = "wattchdog", version, about)]
pub struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `wattchdog=debug`); default `warn`, or
    /// the RUST_LOG environment variable.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay captures (JSONL, CSV; .gz/.zst) through the detectors and report.
    Replay(ReplayArgs),
    /// Write a simulated facility's telemetry, with scheduled attacks, and its labels.
    Simulate(Box<SimulateArgs>),
    /// Score detections against the captures' labels sidecars.
    Eval(EvalArgs),
    /// Fit the isolation-forest model of a device kind on normal captures.
    Train(TrainArgs),
    /// Learn a protocol baseline (writers, masters, talkers, requests, rates per device)
    /// from clean captures, for `replay|eval --baseline`.
    Learn(LearnArgs),
    /// Set detector thresholds from a site's clean history for a false-alarm budget, and
    /// write the config.
    Calibrate(CalibrateArgs),
    /// Validate a config file (or a wide-CSV mapping, or a Modbus register map).
    CheckConfig(CheckConfigArgs),
    /// Poll the configured devices live and raise alerts (Ctrl-C or SIGTERM stops).
    Run(RunArgs),
    /// The whole system on this machine: a simulated facility over Modbus and MQTT,
    /// scheduled attacks, the dashboard (Ctrl-C stops).
    Demo(DemoArgs),
    /// Many sites over Kafka: create or check the topics, show where the group stands.
    Kafka(KafkaArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (wattchdog.1 and one per command) into a directory.
    Manpages(ManpagesArgs),
}

/// `wattchdog kafka`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KafkaCommand,
}

/// `wattchdog kafka …`.
#[derive(Debug, Subcommand)]
pub enum KafkaCommand {
    /// Create the telemetry topic (and the alerts topic, if the config names one) with
    /// the admin API, or check the ones that exist. Exits 1 when one has fewer partitions
    /// than asked for.
    Init(KafkaInitArgs),
    /// Where the consumer group stands: members and the partitions each owns, and per
    /// partition its end, committed offset, lag and committed event time.
    Status(KafkaStatusArgs),
}

/// `wattchdog kafka init`.
#[derive(Debug, Args)]
pub struct KafkaInitArgs {
    /// A config with a `[kafka]` table (brokers, topics, client properties).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Partitions per topic: at least the central instances you may ever run, a
    /// multiple of them for an even spread (24 spreads over 2, 3, 4, 6, 8, 12).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// Replicas per partition (default: the brokers' count, at most 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication: Option<i32>,
    /// How long the telemetry topic keeps records: at least the warm-up plus the
    /// longest outage of the central instances to ride out.
    #[arg(long, default_value = "24h")]
    pub retention: String,
    /// How long the alerts topic keeps records.
    #[arg(long, default_value = "30d")]
    pub alerts_retention: String,
    /// JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `wattchdog kafka status`.
#[derive(Debug, Args)]
pub struct KafkaStatusArgs {
    /// A config with a `[kafka]` table (brokers, topic, group).
    #[arg(short, long)]
    pub config: PathBuf,
    /// JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `wattchdog completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// `wattchdog manpages`.
#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Directory to write them into (created if missing).
    pub out: PathBuf,
}

/// `wattchdog demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated seconds per wall second (100: the first attack within two minutes).
    #[arg(long, default_value_t = 100.0)]
    pub speed: f64,
    /// Dashboard address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Device kinds collected over MQTT; the others are polled over Modbus TCP
    /// (`none` for Modbus only).
    #[arg(long, default_value = "pdu,crah,env")]
    pub mqtt_kinds: String,
    /// Device kinds read over SNMP (UPS-MIB with traps for `ups`; `none` for none);
    /// not also in --mqtt-kinds.
    #[arg(long, default_value = "ups")]
    pub snmp_kinds: String,
    /// Device kinds read over BACnet/IP (ReadPropertyMultiple and COV subscriptions;
    /// `chiller` and `crah` have object maps; `none` for none); not also in another list.
    #[arg(long, default_value = "chiller")]
    pub bacnet_kinds: String,
    /// Facility variant.
    #[arg(long, default_value = "default")]
    pub variant: String,
    /// Seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Attack intensity: obvious or subtle.
    #[arg(long, default_value = "obvious")]
    pub intensity: String,
    /// Keep the store and configs here (default: a temporary directory, removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `wattchdog run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file with the sources (`[[modbus.devices]]`).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Write alert JSONL here (appending) instead of `[sinks] alerts` or stdout.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Stop after this long (wall time, e.g. `90s`); default: until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub duration: Option<String>,
    /// Write the run summary (JSON) here at shutdown.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `wattchdog eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Labelled captures (each with `<name>.labels.json` beside it).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Config file for the replay.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Score these alerts (JSONL) instead of replaying (one capture only).
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Mapping for wide CSV captures.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Time after a window's end in which a detection still counts (e.g. `5m`).
    #[arg(long, default_value = "5m")]
    pub grace: String,
    /// Print the score as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the HTML report of the replay with the per-scenario table (one capture
    /// only, not with --alerts).
    #[arg(long, conflicts_with = "alerts")]
    pub report_html: Option<PathBuf>,
    /// Judge the protocol against this baseline (`wattchdog learn`'s output).
    #[arg(long, value_name = "FILE", conflicts_with = "alerts")]
    pub baseline: Option<PathBuf>,
    /// Replay once per value with one detector parameter set for every device kind
    /// (`physics.cusum_threshold=10,20,30`) and print the delay–false-alarm curve.
    #[arg(long, value_name = "KEY=V1,V2,…", conflicts_with_all = ["alerts", "report_html"])]
    pub sweep: Option<String>,
}

/// `wattchdog learn`.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// Clean captures (any format `replay` reads, packet captures included): everything
    /// in them is taken for normal.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Config file (device names and profiles, Modbus ports of packet captures).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Mapping for wide CSV captures.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// The baseline file to write.
    #[arg(short, long)]
    pub out: PathBuf,
}

/// `wattchdog calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The site's clean captures (any format `replay` reads), consecutive periods of the
    /// site; labelled windows in them are left out.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory to write `wattchdog.toml` and `calibration.json` into (created).
    #[arg(short, long)]
    pub out: PathBuf,
    /// False alarms the site accepts: a count per `hour`, `day`, `week` or `month` (30
    /// days), e.g. `1/week`, `0.5/day`.
    #[arg(long, default_value = "1/week", value_parser = crate::app::calibrate::Budget::parse)]
    pub false_alarms: crate::app::calibrate::Budget,
    /// Event time per block: each point's largest statistic per block is what the tails
    /// are fitted to. Shorter gives more blocks from a short history (and errs on the
    /// quiet side: an alert spanning two blocks is counted twice).
    #[arg(long, default_value = "10m", value_parser = crate::time::parse_duration)]
    pub block: i64,
    /// Base config: its settings are kept, and the thresholds written over them.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Mapping for wide CSV captures.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Print the calibration report as JSON on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// The detectors `wattchdog train` makes models for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainDetector {
    /// `<kind>.iforest.json`.
    Iforest,
    /// `<kind>.residual.json`.
    Residual,
}

/// `wattchdog train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Normal captures (windows in a `<name>.labels.json` beside one are left out).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Device kind: ups, chiller, crah, grid_meter, pdu, env.
    #[arg(long)]
    pub kind: String,
    /// Output model file (e.g. `models/chiller.iforest.json`,
    /// `site-models/chiller.residual.json`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which detector's model: the isolation forest, or the residual model (PCA
    /// T²/SPE and Mahalanobis, fitted with the config's `[detectors.residual]` settings;
    /// `--trees`, `--sample-size`, `--seed`, `--no-extrapolate`, `--every` and
    /// `--warmup-samples` are the forest's).
    #[arg(long, value_enum, default_value_t = TrainDetector::Iforest)]
    pub detector: TrainDetector,
    /// Config whose `[features]` parameters the features use.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Mapping for wide CSV captures.
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Trees.
    #[arg(long, default_value_t = 100)]
    pub trees: usize,
    /// Rows per tree (ψ).
    #[arg(long, default_value_t = 256)]
    pub sample_size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Plain isolation-forest scores (saturating beyond the training data), as in the
    /// paper and scikit-learn, instead of extrapolating ones.
    #[arg(long)]
    pub no_extrapolate: bool,
    /// Quantile of the training scores taken as the alert threshold (default: 0.9999
    /// for a forest; the config's `residual.quantile` for a residual model).
    #[arg(long)]
    pub quantile: Option<f64>,
    /// Keep every n-th frame of a device.
    #[arg(long, default_value_t = 5)]
    pub every: u32,
    /// Samples each device needs before its frames are kept.
    #[arg(long, default_value_t = 600)]
    pub warmup_samples: u64,
    /// Time after a labelled window's end still left out (e.g. `30m`).
    #[arg(long, default_value = "30m")]
    pub label_margin: String,
}

/// `wattchdog replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Capture files, merged by event time; `-` reads JSONL from stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Config file (default: built-in defaults).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Mapping for wide CSV files (TOML; see README).
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Write alert JSONL here instead of stdout.
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Write the full report (JSON) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the incident responder's report here: one self-contained HTML file with
    /// a timeline and per-incident plots (labels drawn when a sidecar exists).
    #[arg(long)]
    pub report_html: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the human summary on stderr (alerts
    /// then go only to --alerts).
    #[arg(long)]
    pub json: bool,
    /// Pace the replay at this multiple of real time (default: as fast as possible).
    #[arg(long)]
    pub speed: Option<f64>,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Apply analysts' exceptions from this file (`[[exception]]` tables, as
    /// `GET /api/v1/exceptions?format=toml` exports them).
    #[arg(long, value_name = "FILE")]
    pub exceptions: Option<PathBuf>,
    /// Judge the protocol against this baseline (`wattchdog learn`'s output) instead of
    /// learning from the capture's first hour.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
}

/// `wattchdog simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Output capture (.jsonl, .jsonl.gz, .jsonl.zst, or .pcap: the Modbus/TCP traffic);
    /// labels go beside it.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Simulated hours (all eleven attacks need 9.9 h).
    #[arg(long, default_value_t = 10.0)]
    pub hours: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Attacks: `all`, `none`, or a comma-separated list of scenario names.
    #[arg(long, default_value = "all")]
    pub attacks: String,
    /// Attack intensity: `subtle` or `obvious`.
    #[arg(long, default_value = "obvious")]
    pub intensity: String,
    /// Built-in facility variant: default, hyperscale-60hz, edge-small.
    #[arg(long, default_value = "default", conflicts_with = "facility")]
    pub variant: String,
    /// Facility description (TOML) instead of a built-in variant.
    #[arg(long)]
    pub facility: Option<PathBuf>,
    /// Site name, instead of the facility's (several simulated sites side by side).
    #[arg(long, value_parser = site_name)]
    pub site: Option<String>,
    /// Start time (RFC 3339); default 2026-07-07T00:00:00Z, or now with --serve-modbus.
    #[arg(long)]
    pub start: Option<String>,
    /// Serve the devices over Modbus TCP at this address (port 0: any free port) while
    /// simulating on the clock, instead of writing the capture as fast as possible.
    #[arg(long, conflicts_with = "publish_mqtt")]
    pub serve_modbus: Option<String>,
    /// With --serve-modbus: also serve the devices of `--snmp-kinds` as SNMPv2c agents,
    /// one UDP port each from this address's port up (port 0: any free ports).
    #[arg(long, requires = "serve_modbus")]
    pub serve_snmp: Option<String>,
    /// With --serve-snmp: the device kinds served over SNMP (read over SNMP, not Modbus,
    /// in the --write-config file).
    #[arg(long, default_value = "ups,pdu", requires = "serve_snmp")]
    pub snmp_kinds: String,
    /// With --serve-snmp: send notifications (traps) to this `host:port`; the
    /// --write-config file listens there.
    #[arg(long, requires = "serve_snmp")]
    pub snmp_trap_to: Option<String>,
    /// With --serve-modbus: also serve the devices of `--bacnet-kinds` as BACnet/IP
    /// devices, one UDP port each from this address's port up (port 0: any free ports).
    #[arg(long, requires = "serve_modbus")]
    pub serve_bacnet: Option<String>,
    /// With --serve-bacnet: the device kinds served over BACnet/IP (read over BACnet,
    /// not Modbus, in the --write-config file).
    #[arg(long, default_value = "chiller,crah", requires = "serve_bacnet")]
    pub bacnet_kinds: String,
    /// Publish the devices to this MQTT broker (`mqtt://host:port`) while simulating on
    /// the clock (topic map `wattchdog-sim`, or `wattchdog-sim-sparkplug` with --sparkplug).
    #[arg(long)]
    pub publish_mqtt: Option<String>,
    /// With --publish-mqtt: Sparkplug B instead of JSON.
    #[arg(long, requires = "publish_mqtt")]
    pub sparkplug: bool,
    /// With --serve-modbus or --publish-mqtt: simulated seconds per wall second.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// With --serve-modbus: write a `wattchdog run` config polling the served devices
    /// (written once the port is bound). With a `.pcap` output: write the config that
    /// names the devices behind the simulated gateway, for replaying the capture.
    #[arg(long)]
    pub write_config: Option<PathBuf>,
    /// Poll interval to put in the --write-config file.
    #[arg(long, default_value = "1s", requires = "write_config")]
    pub poll_interval: String,
    /// Compression level for .gz (0-9) or .zst (1-22) output.
    #[arg(long)]
    pub level: Option<i32>,
}

/// `wattchdog check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file.
    pub file: PathBuf,
    /// Treat the file as a wide-CSV mapping instead.
    #[arg(long, conflicts_with = "register_map")]
    pub mapping: bool,
    /// Treat the file as a Modbus register map (`protocols/modbus/*.toml`) instead.
    #[arg(long, conflicts_with = "object_map")]
    pub register_map: bool,
    /// Treat the file as an SNMP object map (`protocols/snmp/*.toml`) instead.
    #[arg(long, conflicts_with = "mapping")]
    pub object_map: bool,
    /// Treat the file as a BACnet object map (`protocols/bacnet/*.toml`) instead.
    #[arg(long, conflicts_with_all = ["mapping", "register_map", "object_map"])]
    pub bacnet_map: bool,
    /// Print the Modbus devices and their read plans (or, with `--mapping`, the mapping
    /// with its defaults filled in) as JSON, for scripts.
    #[arg(long, conflicts_with_all = ["register_map", "object_map", "bacnet_map"])]
    pub json: bool,
}

/// A site name: letters, digits, `.`, `_` and `-`, at most 64.
fn site_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a site name is 1-64 letters, digits, '.', '_' or '-'".into())
    }
}
