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
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
    let version = cluster(&["--version"]);
    assert!(version.status.success());
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("cluster ")
    );
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    for args in [
        &["-w", "0", "true"][..],
        &["-w", "many", "true"],
        &["--workers", "-3", "true"],
        &["--balance", "random", "true"],
        &["-t", "soon", "true"],
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
