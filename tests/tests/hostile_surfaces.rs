//! The third hostile run: the surfaces added in session 4 (control socket, notify socket,
//! metrics, upgrade, watch, recycling) under attack and under mistakes. Each test failed on
//! the code before the fix it names.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{ClusterProcess, Load, children_of, free_port, http_get, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = support::scratch_dir("cluster-hostile3", test);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Runs the `cluster` binary with `args`; (exit code, stdout, stderr).
fn cluster_command(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(workspace_bin("cluster"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn control(path: &Path, command: &[&str]) -> (i32, String, String) {
    let mut args: Vec<&str> = command.to_vec();
    args.extend(["--control", path.to_str().unwrap()]);
    cluster_command(&args)
}

/// The pids of live processes whose command line contains `needle` (clusters excepted:
/// theirs holds their workers' arguments).
fn processes_with(needle: &str) -> Vec<i32> {
    let cluster = workspace_bin("cluster").to_string_lossy().into_owned();
    procfs::process::all_processes()
        .unwrap()
        .flatten()
        .filter(|p| p.stat().is_ok_and(|s| s.state != 'Z'))
        .filter(|p| p.cmdline().is_ok_and(|c| c.first() != Some(&cluster)))
        .filter(|p| p.cmdline().is_ok_and(|c| c.join(" ").contains(needle)))
        .map(|p| p.pid)
        .collect()
}

/// The pids of live clusters whose command line contains `needle`.
fn clusters_with(needle: &str) -> Vec<i32> {
    let cluster = workspace_bin("cluster").to_string_lossy().into_owned();
    procfs::process::all_processes()
        .unwrap()
        .flatten()
        .filter(|p| p.stat().is_ok_and(|s| s.state != 'Z'))
        .filter(|p| {
            p.cmdline()
                .is_ok_and(|c| c.first() == Some(&cluster) && c.join(" ").contains(needle))
        })
        .map(|p| p.pid)
        .collect()
}

fn hello() -> String {
    workspace_bin("hello-http").to_string_lossy().into_owned()
}

/// Stops, when dropped, whatever cluster answers on a control socket: a watcher that took
/// over from one the test started is not the test's child.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = control(&self.0, &["stop"]);
    }
}

/// Waits until `done` holds, at most `limit`; whether it did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

// ---- 1. PID 1

#[test]
fn an_upgrade_of_a_watcher_that_is_pid_1_keeps_the_cluster_serving() {
    let dir = scratch("pid1");
    let path = dir.join("control.sock");
    let hello = hello();
    let cluster = ClusterProcess::spawn(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            workspace_bin("cluster").to_str().unwrap(),
            "-w",
            "2",
            "--control",
            path.to_str().unwrap(),
            &hello,
            "127.0.0.1:0",
        ],
        &[],
        cluster_testkit::Output::Collect,
    );
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    let watcher = children_of(cluster.pid())[0];
    let load = Load::start(port, 2);
    std::thread::sleep(Duration::from_millis(300));
    support::signal(watcher, Signal::USR2);
    cluster.wait_for("staying as the namespace's init", LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 100, "{ok}");
    let (code, status, err) = control(&path, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("2 of 2 workers ready"), "{status}");
    // A stop reaches the new watcher through PID 1, and everything ends.
    support::signal(watcher, Signal::TERM);
    let mut cluster = cluster;
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

// ---- 2. Programs that daemonize

/// Serves in its first generation; every later one daemonizes (double fork, `setsid`, the
/// parent exits 0) and serves from the daemon: a deploy that broke start-up.
const DAEMONIZE: &str = r#"
import os, socket, sys
generation = int(os.environ["CLUSTER_WORKER_MARK"].split(".")[2])
if generation > 1:
    if os.fork():
        sys.exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
listener = socket.socket(fileno=3)
while True:
    connection, _ = listener.accept()
    connection.recv(4096)
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    connection.close()
"#;

fn daemonizing_program(test: &str, env: &[(&str, &str)]) {
    let dir = scratch(test);
    let script = dir.join(format!("{test}.py"));
    std::fs::write(&script, DAEMONIZE).unwrap();
    let script = script.to_str().unwrap();
    let mut cluster = ClusterProcess::start_with_env(
        &["-w", "2", "--listen", "127.0.0.1:0", "python3", script],
        env,
    );
    cluster.wait_for("all workers ready", LIMIT);
    assert_eq!(processes_with(script).len(), 2);
    // Two rolling restarts: every replacement daemonizes, so none becomes ready (its main
    // process exits), and the old workers are kept.
    for round in 1..=2 {
        cluster.signal(Signal::USR1);
        assert!(
            eventually(LIMIT, || cluster.count("rolling restart incomplete")
                >= round),
            "{}",
            cluster.output()
        );
    }
    // What the failed replacements left behind is gone: only the two first workers run.
    assert!(
        eventually(Duration::from_secs(5), || processes_with(script).len() == 2),
        "{} processes of the program:\n{}",
        processes_with(script).len(),
        cluster.output()
    );
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
    assert!(
        eventually(Duration::from_secs(3), || processes_with(script).is_empty()),
        "{:?} left",
        processes_with(script)
    );
}

#[test]
fn a_program_that_daemonizes_leaves_nothing_behind() {
    daemonizing_program("daemon-cgroup", &[]);
}

#[test]
fn a_program_that_daemonizes_leaves_nothing_behind_without_cgroups_too() {
    daemonizing_program("daemon-marks", &[("CLUSTER_CGROUPS", "off")]);
}

// ---- 3. Blocking descriptors

#[test]
fn listen_descriptors_arrive_blocking_and_stay_so() {
    // A plain blocking accept() loop: a non-blocking descriptor makes it raise at once.
    let program = r#"
import os, socket
listener = socket.socket(fileno=3)
print("blocking" if os.get_blocking(3) else "non-blocking", flush=True)
while True:
    connection, _ = listener.accept()
    connection.recv(4096)
    connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    connection.close()
"#;
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--listen",
        "127.0.0.1:0",
        "python3",
        "-c",
        program,
    ]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    // Past three listener checks (every 2 s), with requests all along.
    let load = Load::start(port, 2);
    std::thread::sleep(Duration::from_secs(7));
    let (ok, failed, _) = load.finish();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 100, "{ok}");
    assert!(
        !cluster.output().contains("non-blocking"),
        "{}",
        cluster.output()
    );
    assert!(
        cluster.output().contains(": blocking"),
        "{}",
        cluster.output()
    );
    assert_eq!(
        cluster.count("exited unexpectedly"),
        0,
        "{}",
        cluster.output()
    );
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

// ---- 4, 5, 14. Upgrades: the worker count, a stop meanwhile, the answer

#[test]
fn an_upgrade_during_a_rolling_restart_keeps_the_wanted_worker_count() {
    let dir = scratch("upgrade-count");
    let path = dir.join("control.sock");
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--control",
        path.to_str().unwrap(),
        worker.to_str().unwrap(),
        "serve-after",
        "1500",
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let _stop = StopOnDrop(path.clone());
    // A restart whose replacement takes 1.5 s: three processes run meanwhile.
    let restart = Command::new(workspace_bin("cluster"))
        .args(["restart", "--control", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = control(&path, &["upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(restart);
    let (code, status, err) = control(&path, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["wanted_workers"], 2, "{status}");
    let _ = cluster.wait(LIMIT);
}

#[test]
fn cluster_stop_during_an_upgrade_stops_the_cluster() {
    let dir = scratch("stop-upgrade");
    let path = dir.join("control.sock");
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--control",
        path.to_str().unwrap(),
        worker.to_str().unwrap(),
        "serve-after",
        "2000",
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let upgrade = Command::new(workspace_bin("cluster"))
        .args(["upgrade", "--control", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cluster.wait_for("upgrade: new watcher started", LIMIT);
    let (code, out, err) = control(&path, &["stop"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    let upgrade = upgrade.wait_with_output().unwrap();
    assert_eq!(upgrade.status.code(), Some(1), "{upgrade:?}");
    // Nothing runs on: neither the new watcher nor any worker.
    let path = path.to_str().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || clusters_with(path).is_empty()),
        "{:?}",
        clusters_with(path)
    );
}

#[test]
fn cluster_upgrade_returns_once_the_new_watcher_answers() {
    let dir = scratch("upgrade-answers");
    let path = dir.join("control.sock");
    let hello = hello();
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--control",
        path.to_str().unwrap(),
        &hello,
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let stop = StopOnDrop(path.clone());
    for round in 0..3 {
        let (code, out, err) = control(&path, &["upgrade"]);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        let (code, _, err) = control(&path, &["status"]);
        assert_eq!(
            code, 0,
            "round {round}: status right after the upgrade: {err}"
        );
    }
    drop(stop);
    let _ = cluster.wait(LIMIT);
}

// ---- 6, 7, 8. The control socket

#[test]
fn a_control_directory_another_user_made_is_refused_and_never_believed() {
    let base = scratch("impostor");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The victim runs as uid 65534 with no XDG_RUNTIME_DIR; another user (65533) made its
    // default directory first, world-writable, and serves a socket there.
    let planted = base.join("cluster-65534");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65533), Some(65533)).unwrap();
    let socket = planted.join("cluster.sock");
    let impostor = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::os::unix::fs::chown(&socket, Some(65533), Some(65533)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let answers = std::thread::spawn(move || {
        for stream in impostor.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = stream.write_all(b"{\"ok\":true}\n");
        }
    });
    let as_victim = |args: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(workspace_bin("cluster"))
            .args(args)
            .env("TMPDIR", &base)
            .env_remove("XDG_RUNTIME_DIR");
        command
    };
    let hello = hello();
    let mut cluster = ClusterProcess::spawn(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            workspace_bin("cluster").to_str().unwrap(),
            "-w",
            "1",
            &hello,
            "127.0.0.1:0",
        ],
        &[("TMPDIR".into(), base.to_string_lossy().into_owned())],
        cluster_testkit::Output::Collect,
    );
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    // The watcher refuses the directory, loudly, and serves on.
    let refusal = cluster.wait_for("no control socket", LIMIT);
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(http_get(port).is_ok());
    // The victim's client does not believe the impostor.
    let output = as_victim(&["stop"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("someone else"), "{err}");
    assert!(http_get(port).is_ok(), "the cluster still runs");
    drop(answers);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn control_naming_a_regular_file_leaves_it_alone() {
    let dir = scratch("regular-file");
    let file = dir.join("precious.conf");
    std::fs::write(&file, "keep me").unwrap();
    let (code, _, err) = cluster_command(&[
        "-w",
        "1",
        "--control",
        file.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_client_in_another_pid_namespace_is_answered() {
    let dir = scratch("pidns");
    let path = dir.join("control.sock");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let output = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(workspace_bin("cluster"))
        .args(["status", "--control", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 of 1 workers ready"));
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn an_explicit_control_path_another_cluster_holds_is_fatal() {
    let dir = scratch("clash");
    let path = dir.join("control.sock");
    let mut first = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    first.wait_for("control socket ready", LIMIT);
    let mut second = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    let status = second.wait(LIMIT);
    assert_eq!(status.code(), Some(1), "{}", second.output());
    assert!(
        second.output().contains("already answers"),
        "{}",
        second.output()
    );
    first.signal(Signal::TERM);
    let _ = first.wait(LIMIT);
}

#[test]
fn refused_clients_get_a_reason_and_a_flood_of_them_one_warning() {
    let dir = scratch("refusals");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("control.sock");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("control socket ready", LIMIT);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = r#"
import socket, sys
answers = []
for _ in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    answers.append(s.makefile().readline())
print(answers[0].strip())
"#;
    let output = Command::new("setpriv")
        // The system's Python: the one on root's PATH may live where nobody may not go.
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            probe,
        ])
        .arg(&path)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.contains("\"ok\":false") && answer.contains("uid 65534"),
        "{output:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cluster.count("refused another user"),
        1,
        "{}",
        cluster.output()
    );
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

// ---- 9. Metrics connections

#[test]
fn idle_metrics_connections_starve_neither_the_watcher_nor_the_port() {
    let metrics = free_port();
    let hello = hello();
    let mut cluster = ClusterProcess::spawn(
        "prlimit",
        &[
            "--nofile=256:256",
            workspace_bin("cluster").to_str().unwrap(),
            "-w",
            "2",
            "--balance",
            "round-robin",
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
            &hello,
            "127.0.0.1:0",
        ],
        &[],
        cluster_testkit::Output::Collect,
    );
    let port = cluster.port();
    cluster.wait_for("metrics on", LIMIT);
    let idle: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let answered = (0..5).filter(|_| http_get(port).is_ok()).count();
    assert_eq!(answered, 5, "{}", cluster.output());
    drop(idle);
    assert!(eventually(LIMIT, || scrape(metrics).contains("cluster_workers")));
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

/// `GET /metrics` on 127.0.0.1:`port`: the response, or nothing.
fn scrape(port: u16) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut response);
    response
}

// ---- 10. A memory limit that cannot be met

#[test]
fn a_memory_limit_that_cannot_be_met_backs_off_and_says_so() {
    let program = r#"
import socket, time
hog = bytearray(200 * 1024 * 1024)
for i in range(0, len(hog), 4096):
    hog[i] = 1
listener = socket.socket(fileno=3)
while True:
    time.sleep(1)
"#;
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--max-memory",
        "64M",
        "--backoff-initial",
        "1s",
        "--ready-after",
        "200ms",
        "--listen",
        "127.0.0.1:0",
        "python3",
        "-c",
        program,
    ]);
    std::thread::sleep(Duration::from_secs(12));
    let kills = cluster.count("killed by the watcher and reaped");
    // Before: killed and restarted about once a second (17 times in 20 s).
    assert!(
        (2..=6).contains(&kills),
        "{kills} kills:\n{}",
        cluster.output()
    );
    cluster.wait_for("memory limit cannot be met", LIMIT);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

// ---- 11. Log followers

#[test]
fn log_followers_that_leave_free_their_slot_at_once() {
    let dir = scratch("followers");
    let path = dir.join("control.sock");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("control socket ready", LIMIT);
    let followers: Vec<_> = (0..64)
        .map(|_| {
            Command::new(workspace_bin("cluster"))
                .args(["logs", "-f", "--control", path.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for mut follower in followers {
        let _ = follower.kill();
        let _ = follower.wait();
    }
    // A quiet cluster writes no line that would have noticed them gone.
    let started = Instant::now();
    let (code, _, err) = control(&path, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

// ---- 12. The first build

#[test]
fn a_stop_during_the_first_build_kills_the_build_and_exits_cleanly() {
    let dir = scratch("first-build");
    let marker = format!("sleep 37.{}", std::process::id() % 1000);
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--watch",
        dir.to_str().unwrap(),
        "--build",
        &marker,
        &hello(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("building", LIMIT);
    assert!(!processes_with(&marker).is_empty());
    cluster.signal(Signal::TERM);
    let status = cluster.wait(Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", cluster.output());
    assert!(
        eventually(Duration::from_secs(2), || processes_with(&marker)
            .is_empty()),
        "the build runs on"
    );
}

#[test]
fn a_build_that_runs_too_long_is_killed() {
    let dir = scratch("build-timeout");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--watch",
        dir.to_str().unwrap(),
        "--build",
        "sleep 30",
        "--build-timeout",
        "1s",
        &hello(),
        "127.0.0.1:0",
    ]);
    let status = cluster.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", cluster.output());
    assert!(
        cluster.output().contains("still running after"),
        "{}",
        cluster.output()
    );
}

// ---- 13. READY=1 from a child that is gone

#[test]
fn ready_from_a_child_that_exits_at_once_is_heard() {
    // The shell reports through a child (as `systemd-notify --ready` does) that is gone by
    // the time the datagram is read.
    let program = r#"python3 -c 'import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])'; exec sleep 300"#;
    for round in 0..4 {
        let mut cluster = ClusterProcess::start(&[
            "-w",
            "4",
            "--ready-after",
            "off",
            "--ready-timeout",
            "5s",
            "--listen",
            "127.0.0.1:0",
            "sh",
            "-c",
            program,
        ]);
        cluster.wait_for("all workers ready", Duration::from_secs(10));
        cluster.signal(Signal::TERM);
        let _ = cluster.wait(LIMIT);
        let _ = round;
    }
}

// ---- Minor ones

#[test]
fn status_into_a_closed_pipe_is_not_a_panic() {
    let dir = scratch("pipe");
    let path = dir.join("control.sock");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "3",
        "--control",
        path.to_str().unwrap(),
        &hello(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let script = format!(
        "{} status --control {} | head -1",
        workspace_bin("cluster").display(),
        path.display()
    );
    let output = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!err.contains("panicked"), "{err}");
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn a_scale_past_what_can_start_logs_a_handful_of_lines() {
    let dir = scratch("spawn-failures");
    let program = dir.join("server");
    std::fs::copy(workspace_bin("hello-http"), &program).unwrap();
    let control_path = dir.join("control.sock");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--control",
        control_path.to_str().unwrap(),
        program.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    // The program goes away: every start fails.
    std::fs::remove_file(&program).unwrap();
    let (code, _, err) = control(&control_path, &["scale", "300"]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(Duration::from_secs(3));
    let lines = cluster.count("cannot start worker");
    assert!((1..=6).contains(&lines), "{lines} lines");
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn a_stop_is_prompt_with_a_worker_that_never_became_ready() {
    let dir = scratch("never-ready");
    let slow = dir.join("slow");
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        worker.to_str().unwrap(),
        "slow-if-file",
        slow.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    // The next worker hangs before it links (a slow start, a stuck import).
    std::fs::write(&slow, "").unwrap();
    cluster.signal(Signal::TTIN);
    cluster.wait_for("generation=1", LIMIT);
    assert!(eventually(LIMIT, || cluster.worker_pids().len() == 2));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
    // Before: the whole shutdown timeout (10 s) for the one that never became ready.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stop took {:?}",
        started.elapsed()
    );
}
