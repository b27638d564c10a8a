//! The `cluster` command line: help, version, bad arguments, bad programs, the pid file.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;
use support::{ClusterProcess, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

fn cluster(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("cluster"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_and_version_read_well() {
    let help = cluster(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "--workers",
        "--balance",
        "round-robin",
        "--pid-file",
        "--shutdown-timeout",
        "SIGHUP",
        "SIGUSR1",
        "SIGTTIN",
        "CLUSTER_WORKERS",
        "Exit status",
        "Examples:",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    // Every option of the configuration, with its environment variable and default.
    for (option, env, default) in [
        (
            "--shutdown-timeout",
            "CLUSTER_SHUTDOWN_TIMEOUT",
            Some("10s"),
        ),
        ("--ready-timeout", "CLUSTER_READY_TIMEOUT", Some("30s")),
        (
            "--heartbeat-interval",
            "CLUSTER_HEARTBEAT_INTERVAL",
            Some("1s"),
        ),
        (
            "--heartbeat-timeout",
            "CLUSTER_HEARTBEAT_TIMEOUT",
            Some("10s"),
        ),
        (
            "--backoff-initial",
            "CLUSTER_BACKOFF_INITIAL",
            Some("100ms"),
        ),
        ("--backoff-max", "CLUSTER_BACKOFF_MAX", Some("10s")),
        ("--min-uptime", "CLUSTER_MIN_UPTIME", Some("1s")),
        (
            "--restart-parallelism",
            "CLUSTER_RESTART_PARALLELISM",
            Some("1"),
        ),
        ("--workers", "CLUSTER_WORKERS", None),
        (
            "--balance",
            "CLUSTER_BALANCE",
            Some("reuseport for programs given TCP listeners"),
        ),
        ("--pid-file", "CLUSTER_PID_FILE", None),
        ("--name", "CLUSTER_NAME", Some("cluster")),
        ("--log-level", "CLUSTER_LOG_LEVEL", Some("info")),
        ("--log-format", "CLUSTER_LOG_FORMAT", Some("pretty")),
        ("--log-file", "CLUSTER_LOG_FILE", None),
    ] {
        let entry = help_entry(&text, option);
        assert!(
            entry.contains(&format!("[env: {env}=")),
            "{option} lacks its variable:\n{entry}"
        );
        if let Some(default) = default {
            assert!(
                entry.contains(&format!("[default: {default}")),
                "{option} lacks its default:\n{entry}"
            );
        }
    }
    let version = cluster(&["--version"]);
    assert!(version.status.success());
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("cluster ")
    );
}

/// The lines of `--help` that describe `option`, up to the next option.
fn help_entry(help: &str, option: &str) -> String {
    let mut entry = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Option lines are indented by at most 6 columns, their descriptions by 10.
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            inside = trimmed.split([',', ' ']).any(|word| word == option);
        }
        if inside {
            entry.push(line);
        }
    }
    assert!(!entry.is_empty(), "no {option} in --help:\n{help}");
    entry.join("\n")
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    for args in [
        &["-w", "0", "true"][..],
        &["-w", "many", "true"],
        &["--workers", "-3", "true"],
        &["--balance", "random", "true"],
        &["-t", "soon", "true"],
        &["-t", "-1", "true"],
        &["--ready-timeout", "5 days", "true"],
        &["--heartbeat-interval", "1e3", "true"],
        &["--restart-parallelism", "0", "true"],
        &["--log-level", "info,[", "true"],
        &["--no-such-option", "true"],
        &[],
    ] {
        let out = cluster(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} gives a reason");
    }
}

fn fails_with(args: &[&str], reason: &str) {
    let out = cluster(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(reason), "{stderr:?} should say {reason:?}");
}

#[test]
fn bad_programs_fail_with_one_line() {
    fails_with(&["/nonexistent/server"], "not found");
    fails_with(&["no-such-program-anywhere"], "not found");
    fails_with(&["/tmp"], "is a directory");
    let dir = std::env::temp_dir().join(format!("cli-args-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Root may execute anything with an x bit; without one, even root gets EACCES.
    fails_with(&[plain.to_str().unwrap()], "not executable");
    let failing = dir.join("exits");
    std::fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cluster(&["-w", "2", failing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("exit status 3 before it was ready"),
        "{stderr}"
    );
    fails_with(&["-p", "/nonexistent-dir/x.pid", "true"], "pid file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pid_file_is_written_removed_and_guards_against_a_second_start() {
    let dir = std::env::temp_dir().join(format!("cli-pid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("cluster.pid");
    let hello = workspace_bin("hello-http");
    let args = [
        "-w",
        "1",
        "-p",
        pid_file.to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ];
    let mut first = ClusterProcess::start(&args);
    first.wait_for("all workers ready", LIMIT);
    let recorded = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(recorded.trim(), first.child.id().to_string());

    let second = cluster(&args);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8(second.stderr)
            .unwrap()
            .contains("running process")
    );

    first.signal(Signal::TERM);
    assert!(first.wait(LIMIT).success());
    assert!(!pid_file.exists(), "removed on exit");

    // A stale pid file (no such process) is replaced.
    std::fs::write(&pid_file, "999999999\n").unwrap();
    let mut third = ClusterProcess::start(&args);
    third.wait_for("all workers ready", LIMIT);
    third.signal(Signal::INT);
    assert!(third.wait(LIMIT).success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_double_dash_after_the_program_is_dropped_and_environment_fallbacks_work() {
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start_with_env(
        &[hello.to_str().unwrap(), "--", "127.0.0.1:0"],
        &[("CLUSTER_WORKERS", "3")],
    );
    cluster.wait_for("all workers ready", LIMIT);
    assert!(
        cluster
            .wait_for("starting cluster", LIMIT)
            .contains("workers=3")
    );
    assert_eq!(cluster.worker_pids().len(), 3);
    // hello-http got `127.0.0.1:0`, not `--`, as its address.
    cluster.port();
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

/// Knobs that contradict each other are bad arguments too: clap's form of error, status 2,
/// from options and from environment variables alike.
#[test]
fn contradicting_options_exit_2_with_a_one_line_reason() {
    /// Arguments, environment, and what the reason must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 5] = [
        (
            &[
                "--heartbeat-timeout",
                "1s",
                "--heartbeat-interval",
                "2s",
                "true",
            ],
            &[],
            "heartbeat timeout",
        ),
        (
            &["true"],
            &[
                ("CLUSTER_HEARTBEAT_TIMEOUT", "500ms"),
                ("CLUSTER_HEARTBEAT_INTERVAL", "0.5"),
            ],
            "heartbeat timeout",
        ),
        (
            &["--heartbeat-interval", "0s", "true"],
            &[],
            "heartbeat interval",
        ),
        (&["--ready-timeout", "0", "true"], &[], "ready timeout"),
        (
            &["--backoff-initial", "1m", "--backoff-max", "30s", "true"],
            &[],
            "backoff",
        ),
    ];
    for (args, env, reason) in cases {
        let out = Command::new(workspace_bin("cluster"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid configuration: ") && first.contains(reason),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// Durations in seconds (as `-t` always took) and with units both reach the watcher.
#[test]
fn durations_take_seconds_and_units() {
    let worker = workspace_bin("cli-worker");
    let worker = worker.to_str().unwrap();
    // A worker that never reports ready, with a short ready timeout: the start fails with the
    // timeout named, long before the default 30 s.
    for (ready_timeout, shown) in [("0.5", "500ms"), ("700ms", "700ms")] {
        let started = std::time::Instant::now();
        let out = cluster(&[
            "-w",
            "1",
            "--ready-timeout",
            ready_timeout,
            "-t",
            "2",
            worker,
            "ready-up-to",
            "0",
            "127.0.0.1:0",
        ]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("not ready within {shown}")),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// An error whose text already includes its cause is not followed by that cause again.
#[test]
fn a_failure_names_its_cause_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cli-cause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Executable, but `exec` fails: its interpreter does not exist.
    let script = dir.join("no-interpreter");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cluster(&["-w", "1", script.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains("cannot run"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cluster completions` and `cluster man` come from the same definition as `--help`: a
/// bash script that bash accepts, and a man page naming every option `--help` lists.
#[test]
fn completions_and_the_man_page_follow_the_help() {
    let cluster = workspace_bin("cluster");
    let run = |args: &[&str]| {
        let out = Command::new(&cluster).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    let script =
        std::env::temp_dir().join(format!("cluster-completion-{}.bash", std::process::id()));
    std::fs::write(&script, &bash).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(checked.status.success(), "{checked:?}");
    assert!(bash.contains("--shutdown-timeout"), "{bash:.300}");
    for shell in ["zsh", "fish"] {
        assert!(
            run(&["completions", shell]).contains("shutdown-timeout"),
            "{shell}"
        );
    }
    // roff writes each dash as `\-`.
    let man = run(&["man"]).replace("\\-", "-");
    assert!(man.contains(".TH cluster"), "{man:.200}");
    let help = run(&["--help"]);
    let options: std::collections::BTreeSet<&str> = help
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            let end = w[2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(w.len(), |i| i + 2);
            &w[..end]
        })
        .filter(|w| w.len() > 2)
        .collect();
    assert!(options.len() > 30, "{options:?}");
    for option in options {
        assert!(man.contains(option), "the man page lacks {option}");
    }
    let bad = Command::new(&cluster)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
