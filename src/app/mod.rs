//! The commands: each assembles sources, the pipeline and sinks for one job, as
//! `app::<command>::run(args) -> Result<Summary>`; the binary only parses arguments,
//! prints the summary and maps errors to exit codes.

pub mod broker;
pub mod calibrate;
pub mod check_config;
pub mod cli;
pub mod demo;
pub mod eval;
pub mod install;
pub mod kafka;
pub mod learn;
pub mod replay;
pub mod run;
pub mod simulate;
pub mod soc;
pub mod train;

use crate::Config;
use anyhow::Context;
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// What a command reports when it ends: the human text (`Display`) or, with `--json`,
/// JSON (`Serialize`).
pub trait Summary: fmt::Display + Serialize {
    /// Whether the human text goes to standard error (standard output carries the
    /// command's data, such as alerts).
    fn human_to_stderr(&self) -> bool {
        false
    }

    /// The JSON form.
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The exit status: 0, or 1 for a job that finished but met errors (a capture cut
    /// short, say).
    fn exit_code(&self) -> u8 {
        0
    }
}

/// The config file, or the built-in defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// A buffered new file, with its name in the error.
pub fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path).with_context(|| {
        format!("cannot create {}", path.display())
    })?))
}

/// The runtime of the live commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
pub async fn stop_signal() {
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
