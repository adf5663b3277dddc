//! The `wattchdog` binary: parse the command line, set up logging, call the library,
//! map errors to exit codes.

use anyhow::{Context, Result};
use clap::Parser;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::process::ExitCode;
use wattchdog::cli::{CheckConfigArgs, Cli, Command, ReplayArgs, SimulateArgs};
use wattchdog::replay::{replay, ReplayOptions};
use wattchdog::sink::AlertJsonl;
use wattchdog::source::csv::WideMapping;
use wattchdog::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".into());
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
        Command::CheckConfig(a) => check_config(a),
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
    };
    let out: Option<Box<dyn Write>> = match (&a.alerts, a.json) {
        (Some(p), _) => Some(Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))),
        (None, false) => Some(Box::new(BufWriter::new(io::stdout().lock()))),
        (None, true) => None,
    };
    let mut sink = out.map(AlertJsonl::new);
    let report = replay(&cfg, &opts, &mut |o| match &mut sink {
        Some(s) => s.handle(o),
        None => Ok(()),
    })?;
    if let Some(s) = &mut sink {
        s.flush().context("cannot write alerts")?;
    }
    if let Some(p) = &a.report {
        let f = BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        );
        serde_json::to_writer_pretty(f, &report).context("cannot write the report")?;
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
        start: wattchdog::time::TimeFormat::Auto
            .parse(&a.start)
            .context("--start")?,
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
    let file =
        File::create(&a.output).with_context(|| format!("cannot create {}", a.output.display()))?;
    let name = a.output.to_string_lossy().into_owned();
    let labels = match split_compression(&name).1 {
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

fn check_config(a: CheckConfigArgs) -> Result<ExitCode> {
    if a.mapping {
        WideMapping::load(&a.file)?;
    } else {
        Config::load(&a.file)?;
    }
    println!("{}: ok", a.file.display());
    Ok(ExitCode::SUCCESS)
}
