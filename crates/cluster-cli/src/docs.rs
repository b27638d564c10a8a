//! `cluster completions bash|zsh|fish` and `cluster man`: a shell completion script and the
//! man page, generated from the same clap definition as `cluster --help`, so they cannot
//! drift from it.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Args;

/// Runs `cluster completions SHELL` or `cluster man`; `argv` starts with the command's name.
pub(crate) fn main(argv: Vec<OsString>) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let command = || Args::command().name("cluster");
    let outcome = match argv.first().and_then(|a| a.to_str()) {
        Some("man") => clap_mangen::Man::new(command()).render(&mut stdout),
        _ => {
            let shell = argv
                .get(1)
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<Shell>().ok());
            let Some(shell) = shell else {
                eprintln!(
                    "cluster completions: give a shell: bash, zsh, fish, elvish or powershell"
                );
                return ExitCode::from(2);
            };
            clap_complete::generate(shell, &mut command(), "cluster", &mut stdout);
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e}");
            ExitCode::FAILURE
        }
    }
}
