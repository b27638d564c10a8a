//! `cluster.toml`: the configuration file, read into the command line's own terms.
//!
//! Every key is a long option of `cluster --help`, with the same name and the same value
//! syntax (`shutdown-timeout = "10s"`, `workers = 4`, `listen = ["127.0.0.1:8000"]`;
//! `_` may stand for `-`), plus `program` and `args` (the worker program and its arguments)
//! and an `[env]` table (each entry one `--env NAME=VALUE`). There is no second list of
//! names: a key is looked up among clap's arguments, its value checked by that argument's
//! own parser, and the file becomes arguments placed before the command line's
//! ([`ConfigFile::option_arguments`]), so the command line and `CLUSTER_*` variables override it.
//! Errors say `file:line:column`, the key, and what was expected; an unknown key is an
//! error, with a suggestion when it looks misspelt.

mod dotenv;
mod keys;

use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) use self::dotenv::read_env_file;
use self::keys::{Key, lookup, value_strings};

/// The largest configuration file read (a mistake, such as a log file given by error, is
/// refused rather than parsed).
const MAX_FILE: u64 = 1 << 20;

/// Where in a file: `path:line:column`, from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) path: PathBuf,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Location {
    /// The place of byte `offset` of `text`, the contents of `path`.
    fn of(path: &Path, text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            path: path.to_owned(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// What is wrong with a configuration file (or the environment file it names).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {} bytes: not a configuration file", path.display(), MAX_FILE)]
    TooLarge { path: PathBuf },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    #[error("{at}: unknown key `{key}`{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        at: Location,
        key: String,
        suggestion: Option<String>,
    },
    #[error("{at}: `{key}`: {message}")]
    Value {
        at: Location,
        key: String,
        message: String,
    },
}

/// A configuration file, read and checked key by key.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFile {
    /// Where it was read from.
    pub(crate) path: PathBuf,
    /// Each option it sets: clap's argument id and its values, as command-line text.
    options: Vec<(String, String, Vec<String>)>,
    /// `program` and `args`.
    command: Option<Vec<String>>,
    /// Where `program` is written.
    pub(crate) program_at: Option<Location>,
}

impl ConfigFile {
    /// Reads and checks `path` against `command`'s arguments.
    ///
    /// # Errors
    /// [`ConfigFileError`] with the place and the reason.
    pub(crate) fn read(path: &Path, command: &clap::Command) -> Result<Self, ConfigFileError> {
        let read_error = |source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_FILE {
            return Err(ConfigFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Self::parse(path, &text, command)
    }

    /// Checks `text`, the contents of `path`.
    fn parse(path: &Path, text: &str, command: &clap::Command) -> Result<Self, ConfigFileError> {
        let at = |offset: usize| Location::of(path, text, offset);
        let root = toml::de::DeTable::parse(text).map_err(|e| ConfigFileError::Syntax {
            at: at(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let mut file = Self {
            path: path.to_owned(),
            options: Vec::new(),
            command: None,
            program_at: None,
        };
        let mut program = None;
        let mut args = Vec::new();
        for (key, value) in root.get_ref() {
            let name = key.get_ref().replace('_', "-");
            let value_at = at(value.span().start);
            let invalid = |message: String| ConfigFileError::Value {
                at: value_at.clone(),
                key: name.clone(),
                message,
            };
            match lookup(command, &name).map_err(|suggestion| ConfigFileError::UnknownKey {
                at: at(key.span().start),
                key: key.get_ref().to_string(),
                suggestion,
            })? {
                Key::Program => {
                    file.program_at = Some(value_at.clone());
                    program =
                        Some(value.get_ref().as_str().map(str::to_owned).ok_or_else(|| {
                            invalid("expected the program's path or name, as a string".into())
                        })?)
                }
                Key::Args => args = value_strings(value.get_ref(), true).map_err(invalid)?,
                Key::Env(arg) => {
                    let table = value.get_ref().as_table().ok_or_else(|| {
                        invalid("expected a table of NAME = \"value\" entries".into())
                    })?;
                    let mut values = Vec::new();
                    for (name, value) in table {
                        let text = value_strings(value.get_ref(), false).map_err(&invalid)?;
                        values.push(format!("{}={}", name.get_ref(), text.concat()));
                    }
                    keys::check_values(command, arg, &values).map_err(invalid)?;
                    file.options
                        .push((arg.to_owned(), "env".to_owned(), values));
                }
                Key::Option { id, long, many } => {
                    let values = value_strings(value.get_ref(), many).map_err(&invalid)?;
                    keys::check_values(command, id, &values).map_err(invalid)?;
                    file.options.push((id.to_owned(), long.to_owned(), values));
                }
            }
        }
        if let Some(program) = program {
            file.command = Some(std::iter::once(program).chain(args).collect());
        } else if !args.is_empty() {
            return Err(ConfigFileError::Value {
                at: at(0),
                key: "args".into(),
                message: "arguments without a `program`".into(),
            });
        }
        Ok(file)
    }

    /// The file's options as command-line arguments (placed before the command line's),
    /// leaving out those `overridden` says the command line or the environment set.
    pub(crate) fn option_arguments(&self, overridden: impl Fn(&str) -> bool) -> Vec<String> {
        let mut arguments = Vec::new();
        for (id, long, values) in &self.options {
            if overridden(id) {
                continue;
            }
            for value in values {
                arguments.push(format!("--{long}={value}"));
            }
        }
        arguments
    }

    /// `--`, the program and its arguments (placed after the command line's options),
    /// if the file names a program.
    pub(crate) fn program_arguments(&self) -> Vec<String> {
        self.command
            .iter()
            .fold(Vec::new(), |mut arguments, command| {
                arguments.push("--".to_owned());
                arguments.extend(command.iter().cloned());
                arguments
            })
    }
}

#[cfg(test)]
mod tests;
