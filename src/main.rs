//! The `wattchdog` binary: parse the command line, set up logging, call the library,
//! map errors to exit codes.

use anyhow::{Context, Result};
use clap::Parser;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use wattchdog::app::cli::{
    CheckConfigArgs, Cli, Command, DemoArgs, EvalArgs, ReplayArgs, RunArgs, SimulateArgs,
    TrainArgs, TrainDetector,
};
use wattchdog::app::replay::{replay, ReplayError, ReplayOptions};
use wattchdog::app::train::{train, train_residual, TrainOptions};
use wattchdog::model::DeviceKind;
use wattchdog::sink::AlertJsonl;
use wattchdog::source::csv::WideMapping;
use wattchdog::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        // rumqttd logs every client that hangs up early (our own readiness probe) as an error.
        .unwrap_or_else(|| "warn,rumqttd=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Replay(a) => run_replay(a),
        Command::Simulate(a) => run_simulate(a),
        Command::Eval(a) => run_eval(a),
        Command::Train(a) => run_train(a),
        Command::CheckConfig(a) => check_config(a),
        Command::Run(a) => run_live(a),
        Command::Demo(a) => run_demo(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn run_replay(a: ReplayArgs) -> Result<ExitCode> {
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let opts = ReplayOptions {
        inputs: a.files.clone(),
        mapping,
        speed: a.speed.filter(|s| *s > 0.0),
        progress: !a.no_progress && io::stderr().is_terminal(),
        keep_scores: a.report_html.is_some(),
    };
    let out: Option<Box<dyn Write>> = match (&a.alerts, a.json) {
        (Some(p), _) => Some(Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))),
        (None, false) => Some(Box::new(BufWriter::new(io::stdout().lock()))),
        (None, true) => None,
    };
    let mut sink = out.map(AlertJsonl::new);
    let result = replay(&cfg, &opts, &mut |o| match &mut sink {
        Some(s) => s.handle(o),
        None => Ok(()),
    });
    // A reader that stops early (`| head`) is not an error worth a message.
    if let Err(ReplayError::Output(e)) = &result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let report = result?;
    if let Some(s) = &mut sink {
        match s.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r.context("cannot write alerts")?,
        }
    }
    if let Some(p) = &a.report {
        let f = BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        );
        serde_json::to_writer_pretty(f, &report).context("cannot write the report")?;
    }
    if let Some(p) = &a.report_html {
        let labels = sidecar_labels(&a.files);
        write_html_report(
            p,
            &cfg,
            a.config.as_deref(),
            &opts,
            &report,
            labels,
            None,
            0,
        )?;
    }
    if a.json {
        let mut stdout = io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        eprint!("{}", report.render());
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_simulate(a: SimulateArgs) -> Result<ExitCode> {
    use wattchdog::sim;
    use wattchdog::source::{split_compression, Compression};
    let facility = match &a.facility {
        Some(p) => sim::Facility::load(p)?,
        None => sim::Facility::variant(&a.variant)?,
    };
    let opts = sim::SimOptions {
        start: match (&a.start, &a.serve_modbus) {
            (Some(t), _) => wattchdog::time::TimeFormat::Auto
                .parse(t)
                .context("--start")?,
            // Live devices run on the wall clock: start on the current second.
            (None, _) if a.serve_modbus.is_some() || a.publish_mqtt.is_some() => {
                chrono::Utc::now().timestamp() * 1000
            }
            (None, _) => 1_783_382_400_000, // 2026-07-07T00:00:00Z
        },
        hours: a.hours,
        seed: a.seed,
        attacks: sim::parse_attacks(&a.attacks)?,
        intensity: sim::Intensity::parse(&a.intensity)
            .with_context(|| format!("--intensity {:?}: use subtle or obvious", a.intensity))?,
    };
    anyhow::ensure!(
        a.hours > 0.0 && a.hours.is_finite(),
        "--hours must be positive"
    );
    if let Some(addr) = &a.serve_modbus {
        return serve_modbus(&a, addr, facility, &opts);
    }
    if let Some(url) = &a.publish_mqtt {
        return publish_mqtt(&a, url, facility, &opts);
    }
    let file =
        File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    let name = a.output.to_string_lossy().into_owned();
    let pcap = wattchdog::source::detect_format(&a.output) == wattchdog::source::Format::Pcap;
    anyhow::ensure!(
        a.write_config.is_none() || pcap,
        "--write-config needs --serve-modbus or a .pcap output"
    );
    let labels = match split_compression(&name).1 {
        _ if pcap => {
            anyhow::ensure!(
                !name.to_ascii_lowercase().ends_with(".pcapng"),
                "the simulator writes classic pcap: name the output .pcap"
            );
            let mut w = BufWriter::new(file);
            let l = sim::pcap::simulate_pcap(&facility, &opts, &mut w)?;
            w.flush()?;
            if let Some(path) = &a.write_config {
                let devices = sim::pcap::devices(&facility, &opts)?;
                std::fs::write(path, sim::pcap::replay_config(&devices, &facility.site))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            l
        }
        Compression::None => {
            let mut w = BufWriter::new(file);
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.flush()?;
            l
        }
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(
                BufWriter::new(file),
                flate2::Compression::new(a.level.unwrap_or(6).clamp(0, 9) as u32),
            );
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.finish()?.flush()?;
            l
        }
        Compression::Zstd => {
            let mut w =
                zstd::stream::write::Encoder::new(BufWriter::new(file), a.level.unwrap_or(9))?;
            let l = sim::simulate(&facility, &opts, &mut w)?;
            w.finish()?.flush()?;
            l
        }
    };
    let labels_path = sim::labels_path(&a.output);
    std::fs::write(&labels_path, serde_json::to_string_pretty(&labels)? + "\n")
        .with_context(|| format!("cannot write {}", labels_path.display()))?;
    eprintln!(
        "wrote {} ({} h, seed {}) and {} ({} attacks)",
        a.output.display(),
        a.hours,
        a.seed,
        labels_path.display(),
        labels.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_eval(a: EvalArgs) -> Result<ExitCode> {
    use wattchdog::report::eval::{self, AlertView, Score};
    let cfg = load_config(a.config.as_deref())?;
    let mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    let grace = wattchdog::time::parse_duration(&a.grace).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        a.alerts.is_none() || a.files.len() == 1,
        "--alerts scores one capture: give exactly one"
    );
    anyhow::ensure!(
        a.report_html.is_none() || a.files.len() == 1,
        "--report-html reports one capture: give exactly one"
    );
    let mut score = Score::default();
    let mut html = None;
    for file in &a.files {
        let labels_path = wattchdog::sim::labels_path(file);
        if !labels_path.exists() {
            return Err(eval::EvalError::NoLabels {
                capture: file.display().to_string(),
                expected: labels_path.display().to_string(),
            }
            .into());
        }
        let (labels, warnings) = eval::load_labels(&labels_path)?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let (alerts, span) = match &a.alerts {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let alerts: Vec<AlertView> = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(i, l)| {
                        serde_json::from_str(l)
                            .with_context(|| format!("{}:{}", p.display(), i + 1))
                    })
                    .collect::<Result<_>>()?;
                let lo = labels
                    .iter()
                    .map(|l| l.start)
                    .chain(alerts.iter().map(|a| a.ts))
                    .min()
                    .unwrap_or(0);
                let hi = labels
                    .iter()
                    .map(|l| l.end)
                    .chain(alerts.iter().map(|a| a.ts))
                    .max()
                    .unwrap_or(0);
                (alerts, (lo, hi))
            }
            None => {
                let opts = ReplayOptions {
                    inputs: vec![file.clone()],
                    mapping: mapping.clone(),
                    speed: None,
                    progress: false,
                    keep_scores: a.report_html.is_some(),
                };
                let report = replay(&cfg, &opts, &mut |_| Ok(()))?;
                if a.report_html.is_some() {
                    html = Some((opts, report.clone(), labels.clone()));
                }
                for e in &report.errors {
                    eprintln!("warning: {e}");
                }
                let known = report.devices.iter().cloned().collect();
                let unknown = eval::unknown_devices(&labels, &known);
                if !unknown.is_empty() {
                    eprintln!(
                        "warning: {} names devices the capture never mentions: {}",
                        labels_path.display(),
                        unknown.join(", ")
                    );
                }
                let span = (
                    report
                        .first_ts
                        .as_deref()
                        .and_then(eval::parse_ts)
                        .unwrap_or(0),
                    report
                        .last_ts
                        .as_deref()
                        .and_then(eval::parse_ts)
                        .unwrap_or(0),
                );
                let alerts = report
                    .alerts
                    .iter()
                    .map(|x| AlertView {
                        id: x.id.clone(),
                        ts: x.ts,
                        device: x.device.clone(),
                        detector: x.detector.to_owned(),
                        incident_id: x.incident_id.clone(),
                    })
                    .collect();
                (alerts, span)
            }
        };
        eval::score_capture(&mut score, &labels, &alerts, span, grace);
    }
    score.finish();
    if let (Some(p), Some((opts, report, labels))) = (&a.report_html, html) {
        write_html_report(
            p,
            &cfg,
            a.config.as_deref(),
            &opts,
            &report,
            labels,
            Some(score.clone()),
            grace,
        )?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&score)?);
    } else {
        print!("{}", score.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// The labelled windows of the captures' sidecars that exist and read cleanly (a report
/// without labels is still a report).
fn sidecar_labels(files: &[std::path::PathBuf]) -> Vec<wattchdog::report::eval::LabelWindow> {
    let mut out = Vec::new();
    for f in files {
        let path = wattchdog::sim::labels_path(f);
        if path.exists() {
            match wattchdog::report::eval::load_labels(&path) {
                Ok((labels, _)) => out.extend(labels),
                Err(e) => eprintln!("warning: labels not drawn: {e}"),
            }
        }
    }
    out
}

/// Writes the HTML report of a replay: digests the captures and the config, reads the
/// captures again for the incidents' telemetry, renders.
#[allow(clippy::too_many_arguments)]
fn write_html_report(
    path: &std::path::Path,
    cfg: &Config,
    config_path: Option<&std::path::Path>,
    opts: &ReplayOptions,
    report: &wattchdog::app::replay::ReplayReport,
    labels: Vec<wattchdog::report::eval::LabelWindow>,
    score: Option<wattchdog::report::eval::Score>,
    grace: i64,
) -> Result<()> {
    use wattchdog::report::html::{self, Context, FileDigest};
    let digest = |p: &std::path::Path| -> Result<(u64, String)> {
        let bytes = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let sha = wattchdog::app::train::sha256_file(p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        Ok((bytes, sha))
    };
    let mut files = Vec::new();
    for f in &opts.inputs {
        let (bytes, sha256) = digest(f)?;
        files.push(FileDigest {
            name: f.display().to_string(),
            bytes,
            sha256,
        });
    }
    let config = match config_path {
        Some(p) => format!("{} (sha256 {})", p.display(), digest(p)?.1),
        None => "built-in defaults".to_owned(),
    };
    let how = wattchdog::source::OpenOptions::from_config(cfg, opts.mapping.clone());
    let telemetry = html::gather(report, &opts.inputs, &how)?;
    let ctx = Context {
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

fn run_train(a: TrainArgs) -> Result<ExitCode> {
    let cfg = load_config(a.config.as_deref())?;
    let kind = DeviceKind::parse(&a.kind);
    if kind.as_str() != a.kind {
        anyhow::bail!(
            "--kind {}: not a device kind (one of: {})",
            a.kind,
            DeviceKind::ALL.map(|k| k.as_str()).join(", ")
        );
    }
    let mut opts = TrainOptions::new(a.files, kind);
    opts.mapping = a.mapping.as_deref().map(WideMapping::load).transpose()?;
    opts.trees = a.trees;
    opts.sample_size = a.sample_size;
    opts.seed = a.seed;
    opts.extrapolate = !a.no_extrapolate;
    if let (Some(q), TrainDetector::Iforest) = (a.quantile, a.detector) {
        opts.quantile = q;
    }
    opts.every = a.every;
    opts.warmup_samples = a.warmup_samples;
    opts.label_margin = wattchdog::time::parse_duration(&a.label_margin)
        .map_err(|e| anyhow::anyhow!("--label-margin {}: {e}", a.label_margin))?;
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let write = |json: String| {
        std::fs::write(&a.output, json + "\n")
            .with_context(|| format!("cannot write {}", a.output.display()))
    };
    match a.detector {
        TrainDetector::Iforest => {
            let model = train(&cfg, &opts)?;
            write(model.to_json())?;
            let p = &model.provenance;
            eprintln!(
                "wrote {}: {kind} model, {} features, {} rows from {} device(s) ({} labelled rows left out), threshold {:.4} (q{})",
                a.output.display(),
                model.features.len(),
                p.rows,
                p.devices.len(),
                p.labelled_rows_left_out,
                model.threshold,
                p.threshold_quantile
            );
        }
        TrainDetector::Residual => {
            let file = train_residual(&cfg, &opts, a.quantile)?;
            write(file.to_json())?;
            let (m, p) = (&file.model, &file.provenance);
            eprintln!(
                "wrote {}: {kind} residual model over {} metrics ({} slow), {} rows from {} device(s) ({} labelled rows left out), thresholds T² {:.2} SPE {:.2} d² {:.2} (q{} × {})",
                a.output.display(),
                m.columns.len(),
                m.slow.iter().filter(|&&s| s).count(),
                p.rows,
                p.devices.len(),
                p.labelled_rows_left_out,
                m.thresholds[0],
                m.thresholds[1],
                m.thresholds[2],
                file.settings.quantile,
                file.settings.margin
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(a: CheckConfigArgs) -> Result<ExitCode> {
    if a.mapping {
        WideMapping::load(&a.file)?;
    } else if a.register_map {
        let m = wattchdog::tomlfile::load(
            &a.file,
            wattchdog::protocol::registers::RegisterMap::from_toml_str,
        )?;
        println!(
            "{}: ok, profile {} ({}), {} registers",
            a.file.display(),
            m.profile,
            m.kind,
            m.registers.len()
        );
        return Ok(ExitCode::SUCCESS);
    } else {
        let cfg = Config::load(&a.file)?;
        let base = a.file.parent().unwrap_or(std::path::Path::new("."));
        let origin = a.file.display().to_string();
        let devices = cfg.modbus.resolve(base, &origin)?;
        let brokers = cfg.mqtt.resolve(base, &origin)?;
        if a.json {
            let modbus: Vec<serde_json::Value> = devices
                .iter()
                .map(|d| {
                    let requests: Vec<serde_json::Value> = d
                        .requests
                        .iter()
                        .map(|r| serde_json::json!({"function": r.function(), "start": r.start, "count": r.count}))
                        .collect();
                    serde_json::json!({"site": d.site, "name": d.name, "address": d.address, "unit": d.unit, "profile": d.map.profile, "requests": requests})
                })
                .collect();
            println!("{}", serde_json::json!({ "modbus": modbus }));
            return Ok(ExitCode::SUCCESS);
        }
        let mut parts = Vec::new();
        let forests: Vec<String> = DeviceKind::ALL
            .iter()
            .filter_map(|&k| {
                cfg.models
                    .get(k)
                    .as_ref()
                    .map(|m| format!("{k} ({})", m.origin))
            })
            .collect();
        if !forests.is_empty() {
            parts.push(format!("iforest models: {}", forests.join(", ")));
        }
        if !devices.is_empty() {
            let requests: usize = devices.iter().map(|d| d.requests.len()).sum();
            parts.push(format!(
                "{} Modbus devices, {} read requests per poll cycle",
                devices.len(),
                requests
            ));
            parts.push(format!(
                "packet captures: Modbus on TCP ports {}",
                cfg.wire
                    .ports()
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            for d in cfg.wire.unmatched() {
                eprintln!("warning: {d}: a host name, which packet captures cannot be matched to; give its IP address");
            }
        }
        for b in &brokers {
            parts.push(format!(
                "MQTT {} subscribing to {}",
                b.cfg.url,
                b.map.filters().join(" ")
            ));
        }
        if !parts.is_empty() {
            println!("{}: ok, {}", a.file.display(), parts.join("; "));
            return Ok(ExitCode::SUCCESS);
        }
    }
    println!("{}: ok", a.file.display());
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Checks the live-simulation options, writes the labels and opens the capture.
fn live_simulation(
    a: &SimulateArgs,
    facility: &wattchdog::sim::Facility,
    opts: &wattchdog::sim::SimOptions,
) -> Result<(
    wattchdog::sim::Simulator,
    BufWriter<File>,
    wattchdog::time::Clock,
)> {
    use wattchdog::sim;
    anyhow::ensure!(
        a.speed > 0.0 && a.speed <= 10_000.0,
        "--speed must be in (0, 10000]"
    );
    let name = a.output.to_string_lossy();
    anyhow::ensure!(
        !name.ends_with(".gz") && !name.ends_with(".zst"),
        "a live simulation streams its capture: give a plain .jsonl output"
    );
    let simulator = sim::Simulator::new(facility.clone(), opts)?;
    let labels_path = sim::labels_path(&a.output);
    std::fs::write(
        &labels_path,
        serde_json::to_string_pretty(&simulator.labels())? + "\n",
    )
    .with_context(|| format!("cannot write {}", labels_path.display()))?;
    let out = BufWriter::new(
        File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?,
    );
    let clock = wattchdog::time::Clock {
        epoch: opts.start,
        speed: a.speed,
    };
    Ok((simulator, out, clock))
}

fn publish_mqtt(
    a: &SimulateArgs,
    url: &str,
    facility: wattchdog::sim::Facility,
    opts: &wattchdog::sim::SimOptions,
) -> Result<ExitCode> {
    use wattchdog::sim::publish;
    let popts = publish::PublishOptions::from_url(url, a.sparkplug).map_err(anyhow::Error::msg)?;
    let (simulator, out, clock) = live_simulation(a, &facility, opts)?;
    eprintln!(
        "publishing {} devices to {url} ({}) at {}x; capture {}; Ctrl-C stops",
        simulator.devices().len(),
        if a.sparkplug { "Sparkplug B" } else { "JSON" },
        a.speed,
        a.output.display()
    );
    let sent = runtime()?.block_on(publish::publish(
        simulator,
        facility.site.clone(),
        popts,
        clock,
        Box::new(out),
        stop_signal(),
    ))?;
    eprintln!("published {sent} messages");
    Ok(ExitCode::SUCCESS)
}

fn serve_modbus(
    a: &SimulateArgs,
    addr: &str,
    facility: wattchdog::sim::Facility,
    opts: &wattchdog::sim::SimOptions,
) -> Result<ExitCode> {
    use wattchdog::sim::serve;
    let (simulator, out, clock) = live_simulation(a, &facility, opts)?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let devices = serve::served_devices(&simulator)?;
        if let Some(p) = &a.write_config {
            let text = serve::run_config(&facility.site, bound, &devices, clock, &a.poll_interval);
            // Written whole under a temporary name, so a reader never sees half a file.
            let tmp = p.with_extension("toml.tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, p))
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        eprintln!(
            "serving {} devices on {bound} (units 1-{}) at {}x; capture {}; Ctrl-C stops",
            devices.len(),
            devices.len(),
            a.speed,
            a.output.display()
        );
        serve::serve(
            simulator,
            facility.site.clone(),
            listener,
            clock,
            Box::new(out),
            Default::default(),
            stop_signal(),
        )
        .await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_live(a: RunArgs) -> Result<ExitCode> {
    let cfg = Config::load(&a.config)?;
    let base = a
        .config
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let origin = a.config.display().to_string();
    let duration = a
        .duration
        .as_deref()
        .map(wattchdog::time::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--duration")?;
    let alerts_path = a.alerts.clone().or_else(|| cfg.sinks.alerts.clone());
    let out: Box<dyn Write> = match &alerts_path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(io::stdout().lock()),
    };
    let mut sink = AlertJsonl::new(out);
    let rt = runtime()?;
    let report = rt.block_on(async {
        let stop = async {
            match duration {
                Some(ms) => {
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(ms.max(0) as u64)) => {}
                        () = stop_signal() => {}
                    }
                }
                None => stop_signal().await,
            }
        };
        wattchdog::app::run::run(
            &cfg,
            &base,
            &origin,
            &mut |o| {
                sink.handle(o)?;
                sink.flush()
            },
            stop,
        )
        .await
    })?;
    sink.flush()?;
    let requests: u64 = report.devices.iter().map(|d| d.requests).sum();
    let failed: u64 = report
        .devices
        .iter()
        .map(|d| d.timeouts + d.transport_errors)
        .sum();
    eprintln!(
        "run: {} devices, {} requests ({} failed), {} readings, {} alerts",
        report.devices.len(),
        requests,
        failed,
        report.pipeline.readings,
        sink.written()
    );
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run_demo(a: DemoArgs) -> Result<ExitCode> {
    use wattchdog::app::demo::{self, DemoOptions};
    let intensity = wattchdog::sim::Intensity::parse(&a.intensity)
        .with_context(|| format!("--intensity {:?}: use subtle or obvious", a.intensity))?;
    let mqtt_kinds = match a.mqtt_kinds.trim() {
        "none" | "" => Vec::new(),
        list => list.split(',').map(|k| k.trim().to_owned()).collect(),
    };
    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("wattchdog-demo-{}", std::process::id())),
            true,
        ),
    };
    let opts = DemoOptions {
        speed: a.speed,
        listen: a.listen.clone(),
        mqtt_kinds,
        variant: a.variant.clone(),
        seed: a.seed,
        intensity,
        dir: dir.clone(),
    };
    let mut seen = std::collections::HashSet::new();
    let result = runtime()?.block_on(demo::run(
        opts,
        &mut |url, schedule| {
            println!("wattchdog demo: dashboard at {url}");
            println!("(the token is in the link; Ctrl-C stops)\nattacks (wall-clock time):");
            for (at, scenario, devices) in schedule {
                println!("  {at}  {scenario} on {devices}");
            }
        },
        &mut |o| {
            if let wattchdog::correlate::Output::Alert(al) = o {
                if seen.insert(al.id.clone()) {
                    println!(
                        "alert {:?} {} {}: {}",
                        al.severity, al.device, al.detector, al.summary
                    );
                }
            }
            Ok(())
        },
        stop_signal(),
    ));
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
