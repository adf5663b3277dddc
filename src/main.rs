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
    let _ = a;
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
