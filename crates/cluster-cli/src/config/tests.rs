//! The file's keys, values and errors, against the real command line definition.

use clap::CommandFactory;

use super::*;
use crate::args::Args;

fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
    ConfigFile::parse(Path::new("cluster.toml"), text, &Args::command())
}

#[test]
fn options_become_arguments_and_the_program_follows() {
    let file = parse(
        "workers = 3\nshutdown_timeout = \"5s\"\nlisten = [\"127.0.0.1:0\", \"unix:/tmp/x.sock\"]\nprogram = \"./server\"\nargs = [\"--port\", 8080]\n[env]\nAPP = \"blue\"\n",
    )
    .unwrap();
    let mut arguments = file.option_arguments(|_| false);
    arguments.sort();
    assert_eq!(
        arguments,
        [
            "--env=APP=blue",
            "--listen=127.0.0.1:0",
            "--listen=unix:/tmp/x.sock",
            "--shutdown-timeout=5s",
            "--workers=3"
        ]
    );
    assert_eq!(
        file.program_arguments(),
        ["--", "./server", "--port", "8080"]
    );
    // What the command line or the environment set is left out.
    assert!(
        !file
            .option_arguments(|id| id == "workers")
            .iter()
            .any(|a| a.starts_with("--workers"))
    );
}

#[test]
fn errors_say_where_which_key_and_why() {
    let error = parse("workers = 2\nshutdown-timout = \"5s\"\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "cluster.toml:2:1: unknown key `shutdown-timout`; did you mean `shutdown-timeout`?"
    );
    let error = parse("\nworkers = \"many\"\n").unwrap_err().to_string();
    assert!(
        error.starts_with("cluster.toml:2:11: `workers`: invalid value 'many'"),
        "{error}"
    );
    let error = parse("balance = \"random\"\n").unwrap_err().to_string();
    assert!(error.contains("use shared, round-robin"), "{error}");
    let error = parse("workers = [1, 2]\n").unwrap_err().to_string();
    assert!(error.contains("expected one value"), "{error}");
    let error = parse("env = \"A=1\"\n").unwrap_err().to_string();
    assert!(error.contains("expected a table"), "{error}");
    let error = parse("workers = 2\nworkers = 3\n").unwrap_err().to_string();
    assert!(error.starts_with("cluster.toml:2:1: "), "{error}");
    let error = parse("args = [\"x\"]\n").unwrap_err().to_string();
    assert!(error.contains("without a `program`"), "{error}");
    assert!(matches!(
        parse("help = true\n"),
        Err(ConfigFileError::UnknownKey { .. })
    ));
}

/// The complete example in `contrib/` (shown by the README) is a valid file.
#[test]
fn the_shipped_example_file_is_valid() {
    let text = include_str!("../../../../contrib/cluster.toml");
    let file = parse(text).unwrap();
    assert_eq!(file.program_arguments()[1], "/usr/local/bin/app");
    assert!(file.option_arguments(|_| false).len() > 20);
}

#[test]
fn the_shipped_example_file_names_every_key() {
    let text = include_str!("../../../../contrib/cluster.toml");
    let written: Vec<&str> = text
        .lines()
        .map(|line| line.trim_start_matches(['#', ' ']))
        .filter_map(|line| line.split_once(" =").map(|(key, _)| key))
        .collect();
    let command = Args::command();
    let missing: Vec<&str> = command
        .get_arguments()
        .filter(|arg| !["help", "version", "config"].contains(&arg.get_id().as_str()))
        .filter_map(clap::Arg::get_long)
        .filter(|long| *long != "env" && !written.contains(long))
        .collect();
    assert!(missing.is_empty(), "contrib/cluster.toml lacks {missing:?}");
    // The keys written as comments are valid too, once uncommented.
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    parse(&uncommented).unwrap();
}
