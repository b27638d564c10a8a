//! `cluster status | restart | scale | stop | logs` against a running cluster's control
//! socket, its protections, and `--metrics`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;
use support::{ClusterProcess, current_pids, free_port, http_get, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A private directory for this test's control socket.
fn control_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cluster-control-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("control.sock")
}

/// Runs `cluster ARGS --control PATH`; (exit code, stdout, stderr).
fn client(path: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(workspace_bin("cluster"))
        .args(args)
        .arg("--control")
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn status(path: &std::path::Path) -> Value {
    let (code, out, err) = client(path, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn start(path: &std::path::Path, workers: &str, mode: &[&str]) -> ClusterProcess {
    let worker = workspace_bin("test-worker");
    let mut args = vec![
        "-w",
        workers,
        "--min-uptime",
        "100ms",
        "--control",
        path.to_str().unwrap(),
        worker.to_str().unwrap(),
    ];
    args.extend_from_slice(mode);
    let cluster = ClusterProcess::start(&args);
    cluster.wait_for("control socket ready", LIMIT);
    cluster
}

#[test]
fn status_counts_a_crash_and_a_restart_that_returns_when_done() {
    let path = control_path("status");
    let mut cluster = start(&path, "3", &["serve", "127.0.0.1:0"]);
    let before = status(&path);
    assert_eq!(before["ready_workers"], 3);
    let first = current_pids(&before);
    assert_eq!(first.len(), 3);
    // kill -9 of slot 2's worker: counted as a crash, a new pid, generation 2.
    std::thread::sleep(Duration::from_millis(300));
    support::signal(first[1] as u32, Signal::KILL);
    let deadline = Instant::now() + LIMIT;
    let after_kill = loop {
        let now = status(&path);
        if now["ready_workers"] == 3 && now["slots"][1]["generation"] == 2 {
            break now;
        }
        assert!(Instant::now() < deadline, "{now}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let slot = &after_kill["slots"][1];
    assert_eq!(slot["restarts"]["crashed"], 1);
    assert_eq!(slot["last_exit"]["status"], "signal 9 (SIGKILL)");
    assert_ne!(current_pids(&after_kill)[1], first[1]);
    assert!(slot["workers"][0]["rss_bytes"].as_u64().unwrap() > 0);
    // The table has a header and one row per worker.
    let (code, table, _) = client(&path, &["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("3 of 3 workers ready"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("ready")).count(),
        4,
        "{table}"
    );

    // `cluster restart` returns when the restart is done: every pid new.
    let (code, out, err) = client(&path, &["restart"]);
    assert_eq!(code, 0, "{out}{err}");
    let restarted = status(&path);
    assert_eq!(restarted["rolling_restarts_completed"], 1);
    assert!(
        current_pids(&restarted)
            .iter()
            .all(|p| !current_pids(&after_kill).contains(p))
    );
    for slot in restarted["slots"].as_array().unwrap() {
        assert_eq!(slot["restarts"]["rolling"], 1);
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn a_failed_restart_says_why_and_the_old_workers_serve() {
    let path = control_path("failed");
    let mut cluster = start(&path, "2", &["serve-until-gen", "127.0.0.1:0", "2"]);
    let port = cluster.port();
    let before = current_pids(&status(&path));
    let (code, _, err) = client(&path, &["restart"]);
    assert_eq!(code, 1);
    assert!(err.contains("before it was ready"), "{err}");
    assert_eq!(
        current_pids(&status(&path)),
        before,
        "the old workers are kept"
    );
    assert!(http_get(port).is_ok());
    assert_eq!(status(&path)["rolling_restarts_failed"], 1);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn scale_follows_and_stop_stops() {
    let path = control_path("scale");
    let mut cluster = start(&path, "2", &["serve", "127.0.0.1:0"]);
    let (code, out, _) = client(&path, &["scale", "5"]);
    assert_eq!((code, out.trim()), (0, "5 workers"));
    let deadline = Instant::now() + LIMIT;
    while status(&path)["ready_workers"] != 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client(&path, &["scale", "-3"]).0, 0);
    let deadline = Instant::now() + LIMIT;
    while cluster.worker_pids().len() != 2 {
        assert!(Instant::now() < deadline, "{:?}", cluster.worker_pids());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&path)["wanted_workers"], 2);
    assert_eq!(
        client(&path, &["scale", "0"]).0,
        1,
        "zero workers is refused"
    );
    assert_eq!(client(&path, &["stop"]).0, 0);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    assert!(!path.exists(), "the socket file goes with the cluster");
}

#[test]
fn logs_follow_shows_lines_logged_after_attaching() {
    let path = control_path("logs");
    let mut cluster = start(&path, "1", &["serve", "127.0.0.1:0"]);
    let mut follower = Command::new(workspace_bin("cluster"))
        .args(["logs", "-f", "--worker", "1", "--control"])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap());
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(client(&path, &["restart"]).0, 0);
    let new_pid = current_pids(&status(&path))[0];
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = received.recv_timeout(LIMIT).expect("a line");
        if line.contains("listening on") && line.contains(&format!("pid={new_pid}")) {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let _ = follower.kill();
    let _ = follower.wait();
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn another_user_is_turned_away() {
    let path = control_path("user");
    let mut cluster = start(&path, "1", &["serve", "127.0.0.1:0"]);
    let as_nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(workspace_bin("cluster"))
            .args(["status", "--control"])
            .arg(path)
            .output()
            .unwrap()
    };
    // The directory is 0700: nobody cannot even reach the socket.
    let output = as_nobody(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // Opened up, SO_PEERCRED still refuses the other user.
    let dir = path.parent().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = as_nobody(&path);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // Said in the cluster's log (written a moment later, by its log thread).
    cluster.wait_for("refused another user", LIMIT);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn garbage_oversize_lines_and_a_thousand_idle_connections_disturb_nothing() {
    let path = control_path("garbage");
    let mut cluster = start(&path, "2", &["serve", "127.0.0.1:0"]);
    let port = cluster.port();
    let watcher = cluster.pid();
    let baseline = support::fd_count(watcher);
    // Garbage gets an error answer and the connection stays usable.
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .write_all(b"this is not json\n{\"cmd\":\"status\"}\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":false"), "{line}");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    // An oversize line is refused and the connection closed.
    let mut big = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let _ = big.write_all(&vec![b'x'; 64 * 1024]);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("over 4 KiB"), "{answer}");
    // A thousand idle connections: the cluster serves and answers meanwhile.
    let idle: Vec<_> = (0..1000)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&path).ok())
        .collect();
    assert!(http_get(port).is_ok());
    assert!(cluster.worker_pids().len() == 2);
    drop(idle);
    drop((stream, reader, big));
    let deadline = Instant::now() + LIMIT;
    while support::fd_count(watcher) > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // (The baseline may hold a transient descriptor, a request in flight, say: a leak is
    // more than it, never fewer.)
    let after = support::fd_count(watcher);
    assert!(
        after <= baseline,
        "no descriptor leaked: {after} after, {baseline} before"
    );
    assert_eq!(status(&path)["ready_workers"], 2);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

/// One GET on 127.0.0.1:`port`: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[test]
fn metrics_parse_as_prometheus_text_and_readyz_follows_readiness() {
    let path = control_path("metrics");
    let metrics = free_port();
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--min-uptime",
        "100ms",
        "--backoff-initial",
        "5s",
        "--control",
        path.to_str().unwrap(),
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        worker.to_str().unwrap(),
        "serve-until-gen",
        "127.0.0.1:0",
        "3",
    ]);
    cluster.wait_for("metrics on", LIMIT);
    assert_eq!(get(metrics, "/healthz").0, 200);
    assert_eq!(get(metrics, "/readyz").0, 200);
    // A crash: generation 2 serves again.
    std::thread::sleep(Duration::from_millis(300));
    support::signal(cluster.worker_pids()[0], Signal::KILL);
    let deadline = Instant::now() + LIMIT;
    while status(&path)["slots"][0]["generation"] != 2 || status(&path)["ready_workers"] != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, text) = get(metrics, "/metrics");
    assert_eq!(code, 200);
    // Parsed by the Prometheus project's own Python parser.
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/peers/venv/bin/python");
    let mut parser = Command::new(python)
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfor family in parse(sys.stdin.read()):\n    for s in family.samples:\n        print(s.name, dict(s.labels), s.value)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let parsed = parser.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let samples = String::from_utf8_lossy(&parsed.stdout);
    let crashes = samples
        .lines()
        .find(|l| l.starts_with("cluster_restarts_total") && l.contains("'cause': 'crashed'"))
        .unwrap_or_else(|| panic!("{samples}"));
    assert!(
        crashes.ends_with(" 1") || crashes.ends_with(" 1.0"),
        "{crashes}"
    );
    assert_eq!(
        status(&path)["slots"][0]["restarts"]["crashed"],
        1,
        "the same count"
    );
    // Generation 3 and later exit at once: no worker is ready, and /readyz says so.
    support::signal(cluster.worker_pids()[0], Signal::KILL);
    let deadline = Instant::now() + LIMIT;
    while get(metrics, "/readyz").0 != 503 {
        assert!(Instant::now() < deadline, "{:?}", get(metrics, "/readyz"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(metrics, "/healthz").0, 200);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

/// Requests on new connections from one thread while `f` runs: (ok, failed).
fn under_light_load(port: u16, f: impl FnOnce()) -> (u64, Vec<String>) {
    let load = support::Load::start(port, 1);
    f();
    let (ok, failed, _) = load.finish();
    (ok, failed)
}

#[test]
fn a_growing_worker_is_recycled_before_the_ceiling_and_nothing_fails() {
    let path = control_path("memory");
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--max-memory",
        "64M",
        "--control",
        path.to_str().unwrap(),
        worker.to_str().unwrap(),
        "grow",
        "10",
        "127.0.0.1:0",
    ]);
    let port = cluster.port();
    cluster.wait_for("control socket ready", LIMIT);
    let (ok, failed) = under_light_load(port, || {
        cluster.wait_for("recycling worker", Duration::from_secs(30));
        let deadline = Instant::now() + LIMIT;
        while status(&path)["slots"][0]["restarts"]["recycled"].as_u64() < Some(1) {
            assert!(Instant::now() < deadline, "{}", status(&path));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    assert!(ok > 50, "{ok}");
    assert!(
        !cluster.output().contains("memory past the hard ceiling"),
        "{}",
        cluster.output()
    );
    assert!(cluster.output().contains("over 64 MiB") || cluster.output().contains("MiB over"));
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn workers_recycled_by_age_never_leave_fewer_than_three_ready() {
    let path = control_path("age");
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "4",
        "--max-age",
        "3s",
        "--recycle-jitter",
        "1s",
        "--control",
        path.to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    let port = cluster.port();
    cluster.wait_for("control socket ready", LIMIT);
    let mut fewest = 4;
    let (ok, failed) = under_light_load(port, || {
        let until = Instant::now() + Duration::from_secs(12);
        while Instant::now() < until {
            let ready = status(&path)["ready_workers"].as_u64().unwrap();
            fewest = fewest.min(ready);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let recycled: u64 = status(&path)["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"]["recycled"].as_u64().unwrap())
        .sum();
    eprintln!(
        "figure: --max-age 3s --recycle-jitter 1s, 12 s: {recycled} recycled, {ok} ok, {} failed, fewest ready {fewest}",
        failed.len()
    );
    assert!(recycled >= 8, "{recycled}");
    assert!(fewest >= 3, "{fewest} ready at one point");
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn a_worker_that_accepted_max_requests_is_recycled() {
    let path = control_path("requests");
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--max-requests",
        "300",
        "--heartbeat-interval",
        "200ms",
        "--control",
        path.to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    let port = cluster.port();
    cluster.wait_for("control socket ready", LIMIT);
    let (ok, failed) = under_light_load(port, || {
        cluster.wait_for("connections accepted, limit", LIMIT);
        std::thread::sleep(Duration::from_secs(1));
    });
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    let status = status(&path);
    let recycled: u64 = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"]["recycled"].as_u64().unwrap())
        .sum();
    assert!(recycled >= 1, "{status}");
    // A fresh worker has not reported yet; the field is there for those that have.
    assert!(
        status["slots"][0]["workers"][0].get("accepted").is_some(),
        "{status}"
    );
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}
