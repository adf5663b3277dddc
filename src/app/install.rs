//! What a package installs beside the binary: shell completions and man pages, made
//! from the command line's own definition so they never drift from it.

use crate::app::cli::Cli;
use clap::CommandFactory;
use std::io::{self, Write};
use std::path::Path;

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "wattchdog", out);
}

/// Writes `wattchdog.1` and `wattchdog-<command>.1` for each command into `dir`.
pub fn man_pages(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_man_page_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        let main = std::fs::read_to_string(dir.path().join("wattchdog.1")).unwrap();
        assert!(
            main.contains(".TH wattchdog 1"),
            "{}",
            &main[..200.min(main.len())]
        );
        for c in Cli::command()
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
        {
            let page = dir.path().join(format!("wattchdog-{}.1", c.get_name()));
            assert!(page.exists(), "{}", page.display());
        }
        let mut bash = Vec::new();
        completions(clap_complete::Shell::Bash, &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("check-config") && bash.contains("--exceptions"));
    }
}
