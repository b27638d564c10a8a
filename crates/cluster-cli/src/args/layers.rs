//! The settings in layers: the command line over `CLUSTER_*` variables over the
//! configuration file over the defaults, all through clap's one definition of each option.
//!
//! The command line is read first, only to find `--config` and which options it (or the
//! environment) sets; the file's other options become arguments placed before the command
//! line's, its program after them, and clap reads the whole again. What comes out is
//! [`Loaded`]: the arguments, the validated watcher configuration, the worker count, and
//! every setting as text for telling what a reload changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::bail;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use cluster_watcher::WatcherConfig;

use super::Args;
use crate::config::{ConfigFile, ConfigFileError, read_env_file};

/// Everything one reading of the settings gives.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) args: Args,
    /// Validated; PROGRAM not yet looked up.
    pub(crate) config: WatcherConfig,
    pub(crate) workers: usize,
    /// Every setting as text, by key (`workers`, `program`, `env.NAME`, …).
    pub(crate) settings: BTreeMap<String, String>,
    /// Where the program is named, when the configuration file named it.
    pub(crate) program_at: Option<crate::config::Location>,
}

impl Loaded {
    /// The program, looked up and checked ([`resolve_program`]); a
    /// failure names the file's place when the file named it.
    ///
    /// # Errors
    /// When it is missing, a directory or not executable.
    pub(crate) fn resolved_program(&self) -> anyhow::Result<PathBuf> {
        program_of(&self.config, self.program_at.as_ref())
    }
}

/// `config`'s program, looked up and checked; a failure names `program_at`, the file's
/// place that named it, if any.
///
/// # Errors
/// When it is missing, a directory or not executable.
pub(crate) fn program_of(
    config: &WatcherConfig,
    program_at: Option<&crate::config::Location>,
) -> anyhow::Result<PathBuf> {
    let found = resolve_program(&config.program, config.cwd.as_deref());
    match program_at {
        Some(at) => anyhow::Context::with_context(found, || format!("{at}: `program`")),
        None => found,
    }
}

/// Why the settings cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The command line (or what the file made of it) is wrong, as clap says.
    #[error("{}", one_line(.0))]
    Clap(#[from] clap::Error),
    /// The configuration file or the environment file is wrong.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// The settings contradict each other, or say nothing to run.
    #[error("{0}")]
    Invalid(String),
}

/// Reads the settings from `argv` (the whole command line, program name first), the
/// environment and the file `--config` names.
///
/// # Errors
/// [`LoadError`]: nothing is started on any of them.
pub(crate) fn load(argv: &[OsString]) -> Result<Loaded, LoadError> {
    let command = Args::command();
    let first = command.clone().try_get_matches_from(argv)?;
    let file = first
        .get_one::<PathBuf>("config")
        .map(|path| ConfigFile::read(path, &command))
        .transpose()?;
    let first_had_program = first.contains_id("command");
    let matches = match &file {
        None => first,
        Some(file) => {
            let set_here = |id: &str| {
                matches!(
                    first.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
            };
            let mut stitched = argv[..1].to_vec();
            stitched.extend(file.option_arguments(set_here).into_iter().map(Into::into));
            stitched.extend(argv[1..].iter().cloned());
            if !first_had_program {
                stitched.extend(file.program_arguments().into_iter().map(Into::into));
            }
            command.clone().try_get_matches_from(stitched)?
        }
    };
    let args = Args::from_arg_matches(&matches)?;
    if args.command.is_empty() {
        return Err(LoadError::Invalid(
            "no program to run: give PROGRAM after the options, or `program` in the configuration file (-c FILE)".into(),
        ));
    }
    let in_file = |reason: String| match &file {
        Some(file) => format!("{}: {reason}", file.path.display()),
        None => reason,
    };
    let mut config = args
        .watcher_config()
        .map_err(|e| LoadError::Invalid(in_file(e.to_string())))?;
    if let Some(path) = &args.env_file {
        let from_file = read_env_file(path)?;
        config.env.splice(
            0..0,
            from_file.into_iter().map(|(k, v)| (k.into(), v.into())),
        );
    }
    let program_at = file
        .as_ref()
        .filter(|_| !first_had_program)
        .and_then(|f| f.program_at.clone());
    config.source = file.map(|f| f.path.display().to_string());
    let workers = args.worker_count();
    let settings = settings(&command, &matches, &config, workers);
    Ok(Loaded {
        args,
        config,
        workers,
        settings,
        program_at,
    })
}

/// Every setting as text by key: the options as clap read them (defaults included), the
/// program and its arguments, the worker count, and each environment variable workers get
/// (`env.NAME`, from the environment file and `--env`, the later one winning).
fn settings(
    command: &clap::Command,
    matches: &ArgMatches,
    config: &WatcherConfig,
    workers: usize,
) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(id, "help" | "version" | "config" | "env") {
            continue;
        }
        if let Some(values) = matches.get_raw(id) {
            let text: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
            settings.insert(long.to_owned(), text.join(" "));
        }
    }
    settings.insert("workers".into(), workers.to_string());
    settings.insert("program".into(), config.program.display().to_string());
    let args: Vec<String> = config
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    settings.insert("args".into(), args.join(" "));
    for (name, value) in &config.env {
        settings.insert(
            format!("env.{}", name.to_string_lossy()),
            value.to_string_lossy().into_owned(),
        );
    }
    if let Some(cwd) = &config.cwd {
        settings.insert("cwd".into(), cwd.display().to_string());
    }
    settings
}

/// The keys whose values differ between two readings' settings, in order.
pub(crate) fn changed(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|key| old.get(*key) != new.get(*key))
        .collect();
    keys.into_iter().cloned().collect()
}

/// clap's message on one line, without its `error: ` prefix and usage hint.
fn one_line(error: &clap::Error) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Looks PROGRAM up (in `PATH` when it is a bare name; a relative path from `cwd`, the
/// workers' directory, when given) and checks it can run, so a typo gets a one-line answer
/// rather than a worker that fails to start.
///
/// # Errors
/// When it is missing, a directory or not executable.
fn resolve_program(program: &Path, cwd: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = if program.components().count() > 1 {
        vec![cwd.map_or_else(|| program.to_owned(), |dir| dir.join(program))]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(program))
            .collect()
    };
    let Some(found) = candidates.into_iter().find(|c| c.exists()) else {
        bail!("program {} not found", program.display());
    };
    if found.is_dir() {
        bail!("program {} is a directory", found.display());
    }
    if rustix::fs::access(&found, rustix::fs::Access::EXEC_OK).is_err() {
        bail!("program {} is not executable", found.display());
    }
    Ok(found)
}
