//! A file's keys as clap's arguments, and its values as their command-line text.

use std::ffi::OsString;

use toml::de::DeValue;

/// Keys of the file that are not options.
const FILE_ONLY: [&str; 2] = ["program", "args"];

/// Options that make no sense in the file.
const NOT_IN_FILE: [&str; 3] = ["help", "version", "config"];

/// What a key of the file is.
pub(super) enum Key<'c> {
    Program,
    Args,
    /// The `[env]` table: entries of `--env`, whose id this is.
    Env(&'c str),
    /// An option: clap's id, its long name, whether it takes several values.
    Option {
        id: &'c str,
        long: &'c str,
        many: bool,
    },
}

/// The key named `name` (`-` for `_` already); an unknown one gives the closest known
/// name, if one is close.
pub(super) fn lookup<'c>(
    command: &'c clap::Command,
    name: &'c str,
) -> Result<Key<'c>, Option<String>> {
    match name {
        "program" => return Ok(Key::Program),
        "args" => return Ok(Key::Args),
        _ => {}
    }
    let option = command
        .get_arguments()
        .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
        .find(|arg| arg.get_long() == Some(name));
    match option {
        Some(arg) if name == "env" => Ok(Key::Env(arg.get_id().as_str())),
        Some(arg) => Ok(Key::Option {
            id: arg.get_id().as_str(),
            long: arg.get_long().unwrap_or(name),
            many: matches!(arg.get_action(), clap::ArgAction::Append),
        }),
        None => Err(suggest(command, name)),
    }
}

/// The known key closest to `name`, if it is close enough to be a misspelling.
fn suggest(command: &clap::Command, name: &str) -> Option<String> {
    command
        .get_arguments()
        .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
        .filter_map(clap::Arg::get_long)
        .chain(FILE_ONLY)
        .map(|known| (strsim::jaro_winkler(name, known), known))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known.to_owned())
}

/// A value as command-line text: strings as they are, numbers and booleans as written;
/// with `many`, an array gives one text per element.
pub(super) fn value_strings(value: &DeValue<'_>, many: bool) -> Result<Vec<String>, String> {
    match value {
        DeValue::Array(items) if many => items.iter().map(|item| scalar(item.get_ref())).collect(),
        DeValue::Array(_) => Err("expected one value, found an array".into()),
        other => scalar(other).map(|text| vec![text]),
    }
}

fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(text) => Ok(text.to_string()),
        DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("{integer}: {e}")),
        DeValue::Float(float) => Ok(float.as_str().to_owned()),
        DeValue::Boolean(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

/// Checks each of `values` with the parser of the argument `id`, as the command line
/// would; the reason, as clap words it, when one is refused. (The parser is run through a
/// command of that one argument: clap does not expose it alone, and the whole command
/// would also judge requirements between options, which the file's layering settles
/// later.)
pub(super) fn check_values(
    command: &clap::Command,
    id: &str,
    values: &[String],
) -> Result<(), String> {
    let Some(arg) = command.get_arguments().find(|a| a.get_id() == id) else {
        return Ok(());
    };
    if !arg.get_action().takes_values() {
        return Ok(());
    }
    let mut alone = clap::Arg::new("value")
        .long(arg.get_long().unwrap_or(id).to_owned())
        .value_parser(arg.get_value_parser().clone())
        .action(clap::ArgAction::Append);
    if let Some(names) = arg.get_value_names() {
        alone = alone.value_names(names.to_vec());
    }
    let check = clap::Command::new("cluster")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone);
    let long = arg.get_long().unwrap_or(id);
    let argv = values
        .iter()
        .map(|value| OsString::from(format!("--{long}={value}")));
    check
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|error| clap_reason(&error))
}

/// clap's message without its `error: ` prefix and usage hint, on one line.
fn clap_reason(error: &clap::Error) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join(" ")
}
