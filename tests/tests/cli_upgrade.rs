//! Upgrading the watcher itself (issue 19): `kill -USR2` and `cluster upgrade` under load in
//! every balance mode, upgrades that fail, and ten in a row. Every process these tests start
//! stays in the process group of the first watcher, which the test kit kills at the end.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_testkit::KeepAliveLoad;
use rustix::process::Signal;
use support::{ClusterProcess, Load, children_of, fd_count, process_running, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    support::scratch_dir("cluster-upgrade", name)
}

/// Waits until the pid file names another process than `old`, and `old` is gone; the new pid.
fn wait_new_watcher(cluster: &ClusterProcess, pid_file: &Path, old: u32) -> u32 {
    support::wait_new_watcher(cluster, pid_file, old, LIMIT)
}

fn upgrade_under_load(balance: &str) {
    let dir = scratch(balance);
    let pid_file = dir.join("pid");
    let hello = workspace_bin("hello-http");
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--balance",
        balance,
        "-p",
        pid_file.to_str().unwrap(),
        "--control",
        dir.join("control.sock").to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    let old = cluster.pid();
    assert_eq!(support::pid_in(&pid_file), old);
    let old_workers = children_of(old);
    let load = Load::start(port, 2);
    let keep_alive = KeepAliveLoad::start(port, 8, "/");
    std::thread::sleep(Duration::from_millis(500));
    cluster.signal(Signal::USR2);
    let new = wait_new_watcher(&cluster, &pid_file, old);
    // Stopped below; this stops it also when a check fails (it is not this test's child).
    let _last = cluster_testkit::StopOnDrop { pid: new };
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    let kept = keep_alive.finish();
    let new_workers = children_of(new);
    eprintln!(
        "figure: upgrade {balance}: {ok} new-connection requests, {} failed; {} keep-alive \
         requests, {} failed",
        failed.len(),
        kept.ok,
        kept.failed.len()
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(
        kept.failed.is_empty(),
        "{:?}",
        &kept.failed[..kept.failed.len().min(5)]
    );
    assert!(ok > 200 && kept.ok > 200, "{ok} {}", kept.ok);
    assert_eq!(new_workers.len(), 2, "{}", cluster.output());
    assert!(new_workers.iter().all(|p| !old_workers.contains(p)));
    // The new watcher answers on the control socket, and stops cleanly.
    let status = std::process::Command::new(workspace_bin("cluster"))
        .args([
            "status",
            "--control",
            dir.join("control.sock").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("pid {new}")),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    support::signal(new, Signal::TERM);
    let deadline = Instant::now() + LIMIT;
    while process_running(new) {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_file.exists(), "the new watcher removes its pid file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigusr2_upgrades_without_a_failed_request_in_shared_mode() {
    upgrade_under_load("shared");
}

#[test]
fn sigusr2_upgrades_without_a_failed_request_in_round_robin_mode() {
    upgrade_under_load("round-robin");
}

#[test]
fn sigusr2_upgrades_without_a_failed_request_in_reuseport_mode() {
    upgrade_under_load("reuseport");
}

#[test]
fn sigusr2_upgrades_without_a_failed_request_in_least_conn_mode() {
    upgrade_under_load("least-conn");
}

fn cluster_upgrade(control: &Path) -> std::process::Output {
    std::process::Command::new(workspace_bin("cluster"))
        .args(["upgrade", "--control", control.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn a_new_binary_that_exits_at_once_leaves_the_old_watcher_serving() {
    let dir = scratch("exits");
    // The cluster runs from a copy, so the copy can be replaced by a broken "new version".
    let binary = dir.join("cluster");
    std::fs::copy(workspace_bin("cluster"), &binary).unwrap();
    let control = dir.join("control.sock");
    let hello = workspace_bin("hello-http");
    let cluster = support::ServerProcess::spawn(
        &binary,
        &[
            "-w",
            "2",
            "--control",
            control.to_str().unwrap(),
            hello.to_str().unwrap(),
            "127.0.0.1:0",
        ],
        &[],
        cluster_testkit::Output::Collect,
    );
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    let workers = cluster.worker_pids();
    // A new "binary" that fails at once, put in place as installers do (rename over).
    let broken = dir.join("cluster.new");
    std::fs::write(&broken, "#!/bin/sh\necho broken build >&2\nexit 3\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&broken).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &binary).unwrap();
    let answer = cluster_upgrade(&control);
    let error = String::from_utf8_lossy(&answer.stderr);
    assert!(!answer.status.success());
    assert!(
        error.contains("exited before its workers were ready"),
        "{error}"
    );
    cluster.wait_for("upgrade failed; this watcher keeps serving", LIMIT);
    assert_eq!(cluster.worker_pids(), workers);
    assert!(support::http_get(port).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workers_that_never_get_ready_leave_the_old_watcher_serving() {
    let dir = scratch("never-ready");
    let control = dir.join("control.sock");
    let flag = dir.join("broken");
    let worker = workspace_bin("test-worker");
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--ready-timeout",
        "1s",
        "--control",
        control.to_str().unwrap(),
        worker.to_str().unwrap(),
        "serve-unless-file",
        flag.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    let workers = cluster.worker_pids();
    std::fs::write(&flag, "").unwrap();
    let answer = cluster_upgrade(&control);
    let error = String::from_utf8_lossy(&answer.stderr);
    assert!(!answer.status.success());
    assert!(error.contains("the new watcher failed"), "{error}");
    assert_eq!(cluster.worker_pids(), workers);
    let body = support::http_get(port).unwrap();
    assert!(body.contains("gen 1"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ten_upgrades_in_a_row_leak_no_descriptor() {
    let dir = scratch("ten");
    let pid_file = dir.join("pid");
    let control = dir.join("control.sock");
    let hello = workspace_bin("hello-http");
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--balance",
        "round-robin",
        "-p",
        pid_file.to_str().unwrap(),
        "--control",
        control.to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    let first = cluster.pid();
    let first_fds = fd_count(first);
    let mut current = first;
    // The first watcher also holds what its launcher left open (made close-on-exec, so
    // never passed on): every successor is started the same way, by its predecessor, and the
    // first of them is the baseline a leak would grow from.
    let mut baseline = None;
    // The watchers the upgrades start are not this test's children.
    let mut last = cluster_testkit::StopOnDrop::default();
    for round in 0..10 {
        let answer = cluster_upgrade(&control);
        assert!(
            answer.status.success(),
            "upgrade {round}: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
        current = wait_new_watcher(&cluster, &pid_file, current);
        last.pid = current;
        assert!(support::http_get(port).is_ok());
        if baseline.is_none() {
            std::thread::sleep(Duration::from_millis(300));
            baseline = Some(fd_count(current));
        }
    }
    // Settled: the last hand-over's link closed when the old watcher went.
    std::thread::sleep(Duration::from_millis(300));
    let last_fds = fd_count(current);
    let baseline = baseline.unwrap();
    eprintln!(
        "figure: descriptors: first watcher {first_fds}, first successor {baseline}, tenth {last_fds}"
    );
    assert_eq!(
        last_fds, baseline,
        "the tenth successor holds what the first did"
    );
    assert!(last_fds <= first_fds);
    support::signal(current, Signal::TERM);
    let deadline = Instant::now() + LIMIT;
    while process_running(current) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stop_during_an_upgrade_stops_the_cluster_and_the_new_watcher_with_it() {
    let dir = scratch("stop-during");
    let flag = dir.join("broken");
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--ready-timeout",
        "30s",
        worker.to_str().unwrap(),
        "serve-unless-file",
        flag.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    // The new watcher's worker never gets ready: the upgrade would wait 30 s.
    std::fs::write(&flag, "").unwrap();
    cluster.signal(Signal::USR2);
    let line = cluster.wait_for("upgrade: new watcher started", LIMIT);
    let new: u32 = line
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"));
    std::thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    cluster.signal(Signal::TERM);
    let status = cluster.wait(LIMIT);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    assert!(status.success(), "{}", cluster.output());
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_running(new) {
        assert!(
            Instant::now() < deadline,
            "the new watcher outlived the stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
