//! `cluster.toml`, `cluster check` and `cluster reload`: a file's changes applied under load
//! with no failed request, a bad file that changes nothing, a failing configuration rolled
//! back, SIGHUP with the service manager told, and a change that takes a new watcher.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_testkit::KeepAliveLoad;
use rustix::process::Signal;
use serde_json::Value;
use support::{ClusterProcess, Load, current_pids, free_port, process_exists, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

/// A private directory with a `cluster.toml` and a control socket path.
struct Setup {
    dir: PathBuf,
    port: u16,
}

impl Setup {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cluster-reload-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            port: free_port(),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Writes the file: hello-http on this test's port, with `extra` lines and `[env]`.
    fn write(&self, extra: &str, env: &str) {
        let program = workspace_bin("hello-http");
        let text = format!(
            "program = {program:?}\nargs = [\"127.0.0.1:{}\"]\ncontrol = {:?}\nmin-uptime = \"1s\"\n{extra}\n[env]\n{env}\n",
            self.port,
            self.control()
        );
        std::fs::write(self.file(), text).unwrap();
    }

    fn start(&self) -> ClusterProcess {
        let cluster = ClusterProcess::start(&["-c", self.file().to_str().unwrap()]);
        cluster.wait_for("control socket ready", LIMIT);
        cluster
    }

    /// `cluster ARGS --control PATH`: (exit code, stdout, stderr).
    fn client(&self, args: &[&str]) -> (i32, String, String) {
        run(Command::new(workspace_bin("cluster"))
            .args(args)
            .arg("--control")
            .arg(self.control()))
    }

    fn status(&self) -> Value {
        let (code, out, err) = self.client(&["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

fn run(command: &mut Command) -> (i32, String, String) {
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `cluster check -c FILE`: (exit code, stdout, stderr).
fn check(file: &Path) -> (i32, String, String) {
    run(Command::new(workspace_bin("cluster"))
        .args(["check", "-c"])
        .arg(file))
}

/// One request on a new connection: (`x-app-version`, `x-cluster-pid`).
fn version_and_pid(port: u16) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let header = |name: &str| {
        response
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("-")
            .trim()
            .to_owned()
    };
    (header("x-app-version"), header("x-cluster-pid"))
}

/// Keep-alive and new-connection clients against the cluster.
struct Traffic {
    keep_alive: KeepAliveLoad,
    fresh: Load,
}

impl Traffic {
    fn start(port: u16) -> Self {
        Self {
            keep_alive: KeepAliveLoad::start(port, 4, "/"),
            fresh: Load::start(port, 2),
        }
    }

    /// Stops both and checks that not one request failed, and that there was load.
    fn finish_without_failure(self, what: &str) {
        let kept = self.keep_alive.finish();
        let (ok, mut failed, _) = self.fresh.finish();
        failed.extend(kept.failed);
        let ok = ok + kept.ok;
        eprintln!("{what}: {ok} requests, {} failed", failed.len());
        let first: Vec<&String> = failed.iter().take(5).collect();
        assert!(
            failed.is_empty(),
            "{} failed of {ok}: {first:?}",
            failed.len()
        );
        assert!(ok > 100, "too little load: {ok}");
    }
}

#[test]
fn a_reload_applies_a_new_environment_and_worker_count_with_no_failed_request() {
    let setup = Setup::new("apply");
    setup.write("workers = 2", "APP_VERSION = \"blue\"");
    let mut cluster = setup.start();
    let before = current_pids(&setup.status());
    assert_eq!(version_and_pid(setup.port).0, "blue");
    let traffic = Traffic::start(setup.port);
    std::thread::sleep(Duration::from_millis(500));
    setup.write("workers = 3", "APP_VERSION = \"green\"");
    let (code, out, err) = setup.client(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("changed env.APP_VERSION, workers"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    traffic.finish_without_failure("reload under load");
    // Every worker now is new and runs the new environment; the old ones are gone.
    let status = setup.status();
    let after = current_pids(&status);
    assert_eq!(after.len(), 3);
    assert_eq!(status["configuration"]["generation"], 2);
    assert_eq!(status["configuration"]["changed"][0], "env.APP_VERSION");
    for _ in 0..30 {
        let (version, pid) = version_and_pid(setup.port);
        assert_eq!(version, "green");
        assert!(
            after.contains(&pid.parse().unwrap()),
            "{pid} not in {after:?}"
        );
    }
    let deadline = Instant::now() + LIMIT;
    while before.iter().any(|pid| process_exists(*pid as u32)) {
        assert!(Instant::now() < deadline, "old workers left: {before:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn a_bad_file_is_refused_by_check_and_reload_and_changes_nothing() {
    let setup = Setup::new("bad");
    setup.write("workers = 2", "APP_VERSION = \"blue\"");
    let (code, out, _) = check(&setup.file());
    assert_eq!(code, 0);
    assert!(
        out.contains(": ok: ") && out.contains("with 2 workers"),
        "{out}"
    );
    let mut cluster = setup.start();
    let before = current_pids(&setup.status());
    let file = setup.file().display().to_string();
    for (extra, expected) in [
        (
            "workers = \"two\"",
            format!("{file}:5:11: `workers`: invalid value 'two'"),
        ),
        (
            "wrokers = 2",
            format!("{file}:5:1: unknown key `wrokers`; did you mean `workers`?"),
        ),
        (
            "shutdown-timeout = [1]",
            format!("{file}:5:20: `shutdown-timeout`: expected one value"),
        ),
    ] {
        setup.write(extra, "APP_VERSION = \"green\"");
        let (code, _, err) = check(&setup.file());
        assert_eq!(code, 1, "{extra}");
        assert!(err.contains(&expected), "{extra}: {err}");
        let started = Instant::now();
        let (code, _, err) = setup.client(&["reload"]);
        assert_eq!(code, 1, "{extra}");
        assert!(err.contains(&expected), "{extra}: {err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // A program that is not there.
    setup.write("workers = 2", "APP_VERSION = \"green\"");
    let text = std::fs::read_to_string(setup.file()).unwrap();
    let missing = setup.dir.join("no-such-server");
    let line = text.lines().next().unwrap().to_owned();
    std::fs::write(
        setup.file(),
        text.replace(&line, &format!("program = {missing:?}")),
    )
    .unwrap();
    let (code, _, err) = check(&setup.file());
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{file}:1:11: `program`: program {} not found",
            missing.display()
        )),
        "{err}"
    );
    let (code, _, err) = setup.client(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    // Nothing was restarted, and the cluster serves as before.
    let status = setup.status();
    assert_eq!(current_pids(&status), before);
    assert_eq!(status["configuration"]["generation"], 1);
    assert_eq!(version_and_pid(setup.port).0, "blue");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn a_configuration_that_fails_after_ready_is_rolled_back_with_no_failed_request() {
    let setup = Setup::new("rollback");
    setup.write("workers = 2", "APP_VERSION = \"blue\"");
    let mut cluster = setup.start();
    let traffic = Traffic::start(setup.port);
    std::thread::sleep(Duration::from_millis(300));
    setup.write(
        "workers = 2",
        "APP_VERSION = \"green\"\nHELLO_FAIL_AFTER_MS = \"500\"",
    );
    let started = Instant::now();
    let (code, out, err) = setup.client(&["reload"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("rolled back to the last good configuration"),
        "{err}"
    );
    assert!(
        err.contains("after it was ready (within --min-uptime)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    std::thread::sleep(Duration::from_millis(300));
    traffic.finish_without_failure(&format!("rollback answered in {took:?}, under load"));
    // The old configuration serves, and status says what failed.
    let status = setup.status();
    assert_eq!(status["ready_workers"], 2);
    assert_eq!(status["configuration"]["generation"], 1);
    let failed = &status["configuration"]["failed"];
    assert_eq!(failed["generation"], 2);
    assert!(
        failed["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "env.HELLO_FAIL_AFTER_MS")
    );
    for _ in 0..10 {
        assert_eq!(version_and_pid(setup.port).0, "blue");
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn the_command_line_and_the_environment_override_the_file() {
    let setup = Setup::new("layers");
    setup.write("workers = 2", "");
    let summary = |command: &mut Command| {
        let (code, out, err) = run(command);
        assert_eq!(code, 0, "{err}");
        out
    };
    let file = setup.file();
    let cluster = workspace_bin("cluster");
    assert!(
        summary(Command::new(&cluster).args(["check", "-c"]).arg(&file)).contains("with 2 workers")
    );
    assert!(
        summary(
            Command::new(&cluster)
                .args(["check", "-c"])
                .arg(&file)
                .env("CLUSTER_WORKERS", "5")
        )
        .contains("with 5 workers")
    );
    // CLUSTER_CONFIG names the file.
    assert!(
        summary(
            Command::new(&cluster)
                .arg("check")
                .env("CLUSTER_CONFIG", &file)
        )
        .contains("with 2 workers")
    );
    // A flag beats the environment, which beats the file: a cluster started so runs 1.
    let mut started = ClusterProcess::start_with_env(
        &["-w", "1", "-c", file.to_str().unwrap()],
        &[("CLUSTER_WORKERS", "3")],
    );
    started.wait_for("control socket ready", LIMIT);
    assert_eq!(current_pids(&setup.status()).len(), 1);
    started.signal(Signal::TERM);
    assert!(started.wait(LIMIT).success());
}

#[test]
fn a_change_the_running_watcher_cannot_make_goes_through_an_upgrade() {
    let setup = Setup::new("upgrade");
    setup.write(
        "workers = 2\nbalance = \"shared\"",
        "APP_VERSION = \"blue\"",
    );
    let mut cluster = setup.start();
    let old_watcher = setup.status()["pid"].as_u64().unwrap();
    let traffic = Traffic::start(setup.port);
    std::thread::sleep(Duration::from_millis(300));
    setup.write(
        "workers = 2\nbalance = \"round-robin\"",
        "APP_VERSION = \"green\"",
    );
    let (code, out, err) = setup.client(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("changed balance, env.APP_VERSION"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    traffic.finish_without_failure("reload through an upgrade under load");
    let status = setup.status();
    assert_eq!(status["balance"], "round-robin");
    assert_ne!(status["pid"].as_u64().unwrap(), old_watcher);
    assert_eq!(version_and_pid(setup.port).0, "green");
    // The old watcher handed over and exited.
    assert!(cluster.wait(LIMIT).success());
    let new_watcher = status["pid"].as_u64().unwrap() as u32;
    support::signal(new_watcher, Signal::TERM);
    let deadline = Instant::now() + LIMIT;
    while process_exists(new_watcher) {
        assert!(Instant::now() < deadline, "the new watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
