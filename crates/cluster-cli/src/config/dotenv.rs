//! Environment files (`env-file = ".env"`, `--env-file`), in the dotenv syntax most tools
//! share: `NAME=value` lines, `export ` allowed before the name, `#` comments and blank
//! lines ignored; a value in single quotes is taken as it is, one in double quotes
//! understands `\n`, `\t`, `\"` and `\\`, an unquoted one is trimmed and ends at ` #`.
//! No variable expansion and no multi-line values: what the file says is what the worker
//! gets.

use std::path::Path;

use super::{ConfigFileError, Location};

/// The largest environment file read.
const MAX_ENV_FILE: u64 = 1 << 20;

/// Reads `path`'s variables, in order.
///
/// # Errors
/// [`ConfigFileError`] with `path:line:column` for a line that is not `NAME=value`.
pub(crate) fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ConfigFileError> {
    let read_error = |source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(read_error)?.len() > MAX_ENV_FILE {
        return Err(ConfigFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigFileError> {
    let mut variables = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = |column: usize, message: &str| ConfigFileError::Syntax {
            at: Location {
                path: path.to_owned(),
                line: index + 1,
                column,
            },
            message: message.to_owned(),
        };
        let indent = line.len() - trimmed.len();
        let body = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((name, value)) = body.split_once('=') else {
            return Err(at(indent + 1, "expected NAME=value"));
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(at(
                indent + 1,
                "a variable name is letters, digits and _, not starting with a digit",
            ));
        }
        let column = line.len() - value.len() + 1;
        let value = unquote(value.trim()).map_err(|why| at(column, why))?;
        variables.push((name.to_owned(), value));
    }
    Ok(variables)
}

fn unquote(value: &str) -> Result<String, &'static str> {
    if let Some(rest) = value.strip_prefix('\'') {
        let Some(end) = rest.find('\'') else {
            return Err("a single quote that does not end on this line");
        };
        return Ok(rest[..end].to_owned());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(other) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        return Err("a double quote that does not end on this line");
    }
    let value = match value.find(" #") {
        Some(comment) => &value[..comment],
        None => value,
    };
    Ok(value.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_dotenv_forms_are_read() {
        let text = "# settings\n\nA=1\nexport B = two words \nC='lit $X # no comment'\nD=\"line\\nbreak \\\"q\\\"\"\nE=value # comment\nF=\n";
        let vars = parse(Path::new(".env"), text).unwrap();
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("lit $X # no comment"));
        assert_eq!(get("D"), Some("line\nbreak \"q\""));
        assert_eq!(get("E"), Some("value"));
        assert_eq!(get("F"), Some(""));
    }

    #[test]
    fn a_bad_line_is_located() {
        let error = parse(Path::new("app.env"), "A=1\n  not a pair\n").unwrap_err();
        assert_eq!(error.to_string(), "app.env:2:3: expected NAME=value");
        let error = parse(Path::new("app.env"), "A=\"open\n").unwrap_err();
        assert!(
            error.to_string().starts_with("app.env:1:3: a double quote"),
            "{error}"
        );
        assert!(parse(Path::new("x"), "1A=2").is_err());
    }
}
