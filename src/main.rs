//! The `wattchdog` binary: parse the command line, set up logging, run the command,
//! print its summary, map errors to exit codes.

use clap::Parser;
use std::io::{self, IsTerminal};
use std::process::ExitCode;
use wattchdog::app::cli::{Cli, Command};
use wattchdog::app::{self, Summary};

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
        Command::Replay(a) => {
            let json = a.json;
            app::replay::run(a).and_then(|s| s.map_or(Ok(ExitCode::SUCCESS), |s| print(s, json)))
        }
        Command::Simulate(a) => app::simulate::run(*a).and_then(|s| print(s, false)),
        Command::Eval(a) => {
            let json = a.json;
            app::eval::run(a).and_then(|s| print(s, json))
        }
        Command::Train(a) => app::train::run(a).and_then(|s| print(s, false)),
        Command::Learn(a) => app::learn::run(a).and_then(|s| print(s, false)),
        Command::Calibrate(a) => {
            let json = a.json;
            app::calibrate::run(a).and_then(|s| print(s, json))
        }
        Command::CheckConfig(a) => {
            let json = a.json;
            app::check_config::run(a).and_then(|s| print(s, json))
        }
        Command::Run(a) => app::run::run(a).and_then(|s| print(s, false)),
        Command::Demo(a) => app::demo::run(a).and_then(|s| print(s, false)),
        Command::Kafka(a) => app::kafka::run(a).and_then(|(s, json)| print(s, json)),
        Command::Completions(a) => {
            app::install::completions(a.shell, &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages(a) => app::install::man_pages(&a.out)
            .map(|_| ExitCode::SUCCESS)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints a command's summary: JSON on standard output, or the human text where the
/// command sends it.
fn print<S: Summary>(summary: S, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", summary.json()?);
    } else if summary.human_to_stderr() {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    Ok(ExitCode::from(summary.exit_code()))
}
