//! `cluster check [-c FILE]`: reads and checks the settings as a start would, without
//! starting anything: the file (syntax, keys, values), the environment file, the program
//! (found and executable), the working directory, the paths to watch, and the knobs
//! against each other. Status 0 and a summary, or 1 and the first problem with its place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;

use crate::args::load;

/// Check a configuration file without starting anything.
#[derive(Debug, Parser)]
#[command(name = "cluster check")]
struct CheckArgs {
    /// The file [default: $CLUSTER_CONFIG]
    #[arg(short, long, env = "CLUSTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs `cluster check`; `argv` starts with `check`.
pub(crate) fn main(argv: Vec<OsString>) -> ExitCode {
    let args = CheckArgs::parse_from(argv);
    match check(args.config) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cluster check: {}", crate::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The summary of a good file, or what is wrong.
fn check(file: Option<PathBuf>) -> anyhow::Result<String> {
    let Some(file) = file else {
        bail!("nothing to check: give -c FILE (or set CLUSTER_CONFIG)");
    };
    let argv: Vec<OsString> = vec!["cluster".into(), "--config".into(), file.clone().into()];
    let loaded = load(&argv)?;
    let config = &loaded.config;
    if let Some(cwd) = &config.cwd
        && !cwd.is_dir()
    {
        bail!("{}: cwd {}: not a directory", file.display(), cwd.display());
    }
    let program = loaded.resolved_program()?;
    for path in &loaded.args.watch {
        if !path.exists() {
            bail!(
                "{}: watch {}: no such file or directory",
                file.display(),
                path.display()
            );
        }
    }
    let listeners = match config.listen.len() {
        0 => String::new(),
        n => format!(", {n} listener{}", if n == 1 { "" } else { "s" }),
    };
    Ok(format!(
        "{}: ok: {} with {} workers, balance {}{listeners}, {} environment variables",
        file.display(),
        program.display(),
        loaded.workers,
        config.balance_description(),
        config.env.len(),
    ))
}
