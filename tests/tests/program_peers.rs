//! Unmodified servers as workers (`cluster --listen`): uvicorn, gunicorn, Node, a Rust
//! server using `listenfd`, and `cluster-worker` programs under `systemd-socket-activate`.
//! The Python peers live in a virtual environment that `tests/peers/install.sh` (run by
//! `./test.sh`) creates under `target/`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{
    ClusterProcess, Load, children_of, free_port, http_get, process_running, workspace_bin,
};

const LIMIT: Duration = Duration::from_secs(40);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn peers() -> String {
    root().join("tests/peers").to_string_lossy().into_owned()
}

/// A program of the peers' virtual environment.
fn venv(name: &str) -> String {
    let path = root().join("target/peers/venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/peers/install.sh (./test.sh does)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for child in children_of(parent) {
            all.push(child);
            frontier.push(child);
        }
    }
    all
}

/// Load (a new connection per request) through a rolling restart; returns (ok, failed).
fn restart_under_load(cluster: &ClusterProcess, port: u16) -> (u64, Vec<String>) {
    // Two clients: enough load, and room left on two cores for the new workers to start.
    let load = Load::start(port, 2);
    std::thread::sleep(Duration::from_secs(1));
    let restarts = cluster.count("rolling restart complete");
    cluster.signal(Signal::USR1);
    let deadline = Instant::now() + LIMIT;
    while cluster.count("rolling restart complete") == restarts {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, _) = load.finish();
    (ok, failed)
}

/// `cluster -w 2 --balance BALANCE --listen 127.0.0.1:0 uvicorn --fd 3 app:app`, ready.
fn uvicorn_cluster(balance: &str) -> ClusterProcess {
    let uvicorn = venv("uvicorn");
    let peers = peers();
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--balance",
        balance,
        "--listen",
        "127.0.0.1:0",
        &uvicorn,
        "--fd",
        "3",
        "--app-dir",
        &peers,
        "app:app",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    cluster
}

#[test]
fn uvicorn_runs_unmodified_restarts_under_load_and_survives_a_kill() {
    let mut cluster = uvicorn_cluster("shared");
    let port = cluster.port();
    let before = cluster.worker_pids();
    assert_eq!(before.len(), 2);
    // Both workers answer, each with its own pid.
    let load = Load::start(port, 4);
    std::thread::sleep(Duration::from_secs(2));
    let (_, _, seen) = load.finish();
    let answering: Vec<u32> = seen
        .iter()
        .filter_map(|b| b.strip_prefix("pid ")?.parse().ok())
        .collect();
    assert!(
        answering.iter().all(|p| before.contains(p)),
        "{answering:?} {before:?}"
    );
    assert_eq!(answering.len(), 2, "both workers answer: {answering:?}");

    let (ok, failed) = restart_under_load(&cluster, port);
    eprintln!(
        "figure: uvicorn rolling restart under load: {ok} ok, {} failed {failed:?}",
        failed.len()
    );
    assert!(ok >= 2000, "{ok} requests");
    // uvicorn closes a connection accepted but not yet read at its SIGTERM (measured alone
    // under a plain supervisor: 0-4 of ~12k): at most 5 in 10,000.
    assert!(
        failed.len() as u64 * 2000 <= ok.max(2000),
        "{} failed of {ok}",
        failed.len()
    );
    let after = cluster.worker_pids();
    assert!(after.iter().all(|p| !before.contains(p)), "all pids new");

    // kill -9 of a worker: only requests in flight on it may fail (one per client thread).
    let load = Load::start(port, 4);
    std::thread::sleep(Duration::from_millis(500));
    support::signal(after[0], Signal::KILL);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, _) = load.finish();
    assert!(
        failed.len() <= 4,
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn gunicorn_takes_listen_fds_alone_reports_ready_and_leaves_nothing_behind() {
    let gunicorn = venv("gunicorn");
    let peers = peers();
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--ready-after",
        "off",
        "--ready-timeout",
        "15s",
        "--listen",
        "http=127.0.0.1:0",
        &gunicorn,
        "-w",
        "2",
        "--chdir",
        &peers,
        "app_wsgi:app",
    ]);
    let port = cluster.port();
    // Ready only through READY=1 on NOTIFY_SOCKET (the timer is off).
    cluster.wait_for("all workers ready", LIMIT);
    let body = http_get(port).unwrap();
    assert!(body.starts_with("pid "), "{body}");
    // The wrong-LISTEN_PID trap: gunicorn would have bound its default 127.0.0.1:8000.
    assert!(std::net::TcpStream::connect(("127.0.0.1", 8000)).is_err());
    // gunicorn's master says READY=1 as it forks its own workers.
    let tree = || -> Vec<u32> {
        cluster
            .worker_pids()
            .into_iter()
            .flat_map(|w| std::iter::once(w).chain(descendants(w)))
            .collect()
    };
    let deadline = Instant::now() + LIMIT;
    while tree().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "2 masters with 2 workers each: {:?}",
            tree()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tree = tree();
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(|p| process_running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        tree.iter().all(|p| !process_running(*p)),
        "gunicorn processes left"
    );
}

#[test]
fn node_restarts_under_load() {
    let server = format!("{}/server.js", peers());
    let mut cluster =
        ClusterProcess::start(&["-w", "2", "--listen", "127.0.0.1:0", "node", &server]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    let before = cluster.worker_pids();
    let (ok, failed) = restart_under_load(&cluster, port);
    eprintln!(
        "figure: node rolling restart under load: {ok} ok, {} failed",
        failed.len()
    );
    assert!(ok >= 2000, "{ok} requests");
    assert!(
        failed.len() as u64 * 2000 <= ok.max(2000),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    assert!(cluster.worker_pids().iter().all(|p| !before.contains(p)));
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn a_listenfd_server_runs_under_cluster_as_under_systemd_socket_activate() {
    let server = workspace_bin("listenfd-axum");
    let server = server.to_str().unwrap();
    let mut cluster = ClusterProcess::start(&["-w", "2", "--listen", "127.0.0.1:0", server]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    assert!(http_get(port).unwrap().starts_with("pid "));
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());

    // The reference: the same binary under systemd's own activator.
    let port = free_port();
    let reference = support::ServerProcess::spawn(
        "systemd-socket-activate",
        &["-l", &format!("127.0.0.1:{port}"), server],
        &[],
        cluster_testkit::Output::Collect,
    );
    reference.wait_ready(port);
    assert!(http_get(port).unwrap().starts_with("pid "));
}

#[test]
fn a_cluster_worker_program_adopts_a_socket_activated_listener() {
    let hello = workspace_bin("hello-http");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let server = support::ServerProcess::spawn(
        "systemd-socket-activate",
        &["-l", &address, hello.to_str().unwrap(), &address],
        &[],
        cluster_testkit::Output::Collect,
    );
    // Had it bound the address itself, the activator's socket would have made it fail.
    server.wait_ready(port);
    assert_eq!(http_get(port).unwrap(), "Hello, World!");
}

#[test]
fn bad_program_mode_input_gets_a_clear_answer() {
    // An address in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let mut cluster = ClusterProcess::start(&["-w", "1", "--listen", &address, "sleep", "10"]);
    assert_eq!(cluster.wait(LIMIT).code(), Some(1));
    assert!(cluster.output().contains("in use"), "{}", cluster.output());

    // A Unix path where a live server listens.
    let path = std::env::temp_dir().join(format!("cluster-live-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let unix = format!("unix:{}", path.display());
    let mut cluster = ClusterProcess::start(&["-w", "1", "--listen", &unix, "sleep", "10"]);
    assert_eq!(cluster.wait(LIMIT).code(), Some(1));
    assert!(cluster.output().contains("in use"), "{}", cluster.output());
    let _ = std::fs::remove_file(&path);

    // A program that exits at once: a failed start, said in one line.
    let mut cluster = ClusterProcess::start(&["-w", "2", "--listen", "127.0.0.1:0", "false"]);
    assert_eq!(cluster.wait(LIMIT).code(), Some(1));
    assert!(
        cluster.output().contains("before it was ready"),
        "{}",
        cluster.output()
    );

    // Round-robin needs cluster-worker programs.
    let mut cluster = ClusterProcess::start(&[
        "--balance",
        "round-robin",
        "--listen",
        "127.0.0.1:0",
        "sleep",
        "10",
    ]);
    assert_eq!(cluster.wait(LIMIT).code(), Some(2));
    assert!(
        cluster.output().contains("round-robin"),
        "{}",
        cluster.output()
    );
}

#[test]
fn a_unix_listener_gets_its_mode_and_is_removed_at_stop() {
    let path = std::env::temp_dir().join(format!("cluster-unix-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listen = format!("unix:{},mode=0660", path.display());
    let server = format!("{}/server.js", peers());
    let mut cluster = ClusterProcess::start(&["-w", "1", "--listen", &listen, "node", &server]);
    cluster.wait_for("all workers ready", LIMIT);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    assert!(!path.exists(), "the socket file is removed at stop");
}

#[test]
fn a_program_that_binds_its_own_port_is_reported() {
    // python's http.server ignores descriptor 3 and binds a port of its own.
    let own = free_port().to_string();
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--ready-after",
        "200ms",
        "--listen",
        "127.0.0.1:0",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &own,
    ]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    // Clients of the cluster's port wait in its accept queue; nobody takes them.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        std::thread::sleep(Duration::from_millis(1500));
        if cluster.count("ignoring the inherited descriptor") > 0 {
            break;
        }
    }
    cluster.wait_for("ignoring the inherited descriptor", LIMIT);
    drop(clients);
    cluster.signal(Signal::TERM);
    let _ = cluster.wait(LIMIT);
}

#[test]
fn uvicorn_in_reuseport_mode_loses_nothing_through_restarts_and_a_kill() {
    let mut cluster = uvicorn_cluster("reuseport");
    let port = cluster.port();
    let before = cluster.worker_pids();
    // Each slot's socket is steered away from and drained before its old worker gets
    // SIGTERM, so uvicorn seldom has an accepted-but-unread connection to drop; seldom, not
    // never (1 reset of 11,561 in a CI run of session 7): at most one a restart, as the
    // default-mode test allows.
    let (ok, failed) = restart_under_load(&cluster, port);
    eprintln!(
        "figure: uvicorn reuseport rolling restart under load: {ok} ok, {} failed {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 2000, "{ok} requests");
    at_most_one_a_restart(1, &failed);
    let after = cluster.worker_pids();
    assert!(after.iter().all(|p| !before.contains(p)), "all pids new");

    // kill -9: the connections queued on its slot's socket wait for the replacement; only
    // those it had accepted may fail: one per client thread in flight, and (seen once in
    // ten runs on a loaded machine) a second one per thread, so two per thread at most.
    let load = Load::start(port, 4);
    std::thread::sleep(Duration::from_millis(500));
    support::signal(after[0], Signal::KILL);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, _) = load.finish();
    eprintln!(
        "figure: uvicorn reuseport kill -9 under load: {ok} ok, {} failed {:?}",
        failed.len(),
        &failed[..failed.len().min(8)]
    );
    assert!(
        failed.len() <= 8,
        "{} failed of {ok}: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// The cluster keeps its `--listen` sockets through any number of rolling restarts (a bug
/// once released them after the first, and the second could not start its workers).
#[test]
fn three_rolling_restarts_in_a_row_replace_every_worker_each_time() {
    let server = workspace_bin("listenfd-axum");
    for balance in ["shared", "reuseport"] {
        let mut cluster = ClusterProcess::start(&[
            "-w",
            "2",
            "--balance",
            balance,
            "--ready-after",
            "200ms",
            "--listen",
            "127.0.0.1:0",
            server.to_str().unwrap(),
        ]);
        let port = cluster.port();
        cluster.wait_for("all workers ready", LIMIT);
        for round in 1..=3 {
            let before = cluster.worker_pids();
            cluster.signal(Signal::USR1);
            let deadline = Instant::now() + LIMIT;
            while cluster.count("rolling restart complete signal") < round {
                assert!(
                    Instant::now() < deadline && cluster.count("rolling restart incomplete") == 0,
                    "{balance}, round {round}: {}",
                    cluster.output()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let deadline = Instant::now() + LIMIT;
            while cluster.worker_pids().iter().any(|p| before.contains(p)) {
                assert!(Instant::now() < deadline, "{}", cluster.output());
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(http_get(port).unwrap().starts_with("pid "));
        }
        cluster.signal(Signal::TERM);
        assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    }
}

/// `GET /metrics` from the cluster's metrics port: the merged `app_requests` counter.
fn merged_requests(metrics: u16) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .lines()
        .find(|l| l.starts_with("app_requests_total{worker=\"all\"}"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// `cluster -w 2 EXTRA --listen 127.0.0.1:0 uvicorn --fd 3 --app-dir tests/peers APP`, with
/// `env`, ready.
fn uvicorn_app(app: &str, extra: &[&str], env: &[(&str, &str)]) -> ClusterProcess {
    let uvicorn = venv("uvicorn");
    let peers = peers();
    let mut args = vec!["-w", "2"];
    args.extend_from_slice(extra);
    args.extend(["--listen", "127.0.0.1:0", &uvicorn, "--fd", "3"]);
    args.extend(["--app-dir", &peers, app]);
    let cluster = ClusterProcess::start_with_env(&args, env);
    cluster.wait_for("all workers ready", LIMIT);
    cluster
}

/// One rolling restart (SIGUSR1), `meanwhile` called every 50 ms until it is complete; how
/// long it took.
fn rolling_restart(cluster: &ClusterProcess, mut meanwhile: impl FnMut()) -> Duration {
    let restarts = cluster.count("rolling restart complete");
    let began = Instant::now();
    cluster.signal(Signal::USR1);
    while cluster.count("rolling restart complete") == restarts {
        assert!(began.elapsed() < LIMIT, "{}", cluster.output());
        meanwhile();
        std::thread::sleep(Duration::from_millis(50));
    }
    began.elapsed()
}

/// uvicorn closes, unread, what it accepted before its SIGTERM took effect (up to its next
/// 100 ms tick). Reuseport mode leaves it nothing to accept by then (its slot drained before
/// the signal, held back from new connections until it is seen no longer listening, and
/// slots replaced back to back drained in turn): 0 resets in 15 runs of about 6,000
/// requests (session 9), where there were 8 before. The bound allows a stalled machine.
fn at_most_one_a_restart(restarts: usize, failed: &[String]) {
    assert!(failed.len() <= restarts, "{failed:?}");
}

/// Two rolling restarts of `cluster` under new-connection load, its merged
/// `app_requests_total` scraped meanwhile and never lower than before: the requests answered,
/// those that failed, and the counter at the end.
fn merged_through_two_restarts(cluster: &ClusterProcess, metrics: u16) -> (u64, Vec<String>, u64) {
    let load = Load::start(cluster.port(), 2);
    let mut last = 0.0;
    for _ in 0..2 {
        rolling_restart(cluster, || {
            if let Some(now) = merged_requests(metrics) {
                assert!(
                    now >= last,
                    "the merged counter went back from {last} to {now}"
                );
                last = now;
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    let merged = merged_requests(metrics).expect("the merged counter");
    assert!(
        merged >= last,
        "the merged counter went back from {last} to {merged}"
    );
    (ok, failed, merged as u64)
}

/// A uvicorn application that serves prometheus_client's default registry on the port the
/// cluster gives it (one line): its counter merged over both workers, through two rolling
/// restarts, never lower than before, and short of the answered requests only by those
/// served between a stopping worker's last read and its end (it is read every 25 ms while it
/// drains: none, in six runs out of six; before that follow-up, up to 98 of 3,584).
#[test]
fn uvicorn_metrics_are_merged_and_survive_restarts() {
    let metrics = free_port();
    let metrics_address = format!("127.0.0.1:{metrics}");
    let mut cluster = uvicorn_app("metrics_app:app", &["--metrics", &metrics_address], &[]);
    let (ok, failed, merged) = merged_through_two_restarts(&cluster, metrics);
    eprintln!(
        "uvicorn metrics: merged {merged} for {ok} answered requests ({} failed) through 2 restarts",
        failed.len()
    );
    // Not this test's subject: uvicorn's own resets, a few at most (its metrics thread takes
    // the GIL and widens its window).
    assert!(failed.len() <= 5, "{failed:?}");
    // Every answered request counted; one whose connection uvicorn reset may or may not
    // have been.
    assert!(merged <= ok + failed.len() as u64, "{merged} > {ok}");
    assert!(merged >= ok, "{merged} of {ok} answered requests counted");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

/// prom-client (Node) serving its default registry on `CLUSTER_METRICS_PORT`: through two
/// rolling restarts under load the merged counter never goes back and counts every answered
/// request, those of the stopped workers included (the program stays up 100 ms after its
/// last request, so the watcher's reads while it drains see them all).
#[test]
fn node_prom_client_metrics_are_merged_and_count_every_answered_request() {
    let metrics = free_port();
    let metrics_address = format!("127.0.0.1:{metrics}");
    let server = format!("{}/metrics_server.js", peers());
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--metrics",
        &metrics_address,
        "--listen",
        "127.0.0.1:0",
        "node",
        &server,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let (ok, failed, merged) = merged_through_two_restarts(&cluster, metrics);
    eprintln!(
        "prom-client metrics: merged {merged} for {ok} answered requests ({} failed) through 2 restarts",
        failed.len()
    );
    assert!(ok > 1000, "{ok}");
    // Every answered request counted; a failed one may or may not have been.
    assert!(merged >= ok, "{merged} of {ok} answered requests counted");
    assert!(merged <= ok + failed.len() as u64, "{merged} > {ok}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// uvicorn under `--listen` with no `--balance`: the default for programs given TCP
/// listeners is reuseport, whose slot is drained before the stop signal, so uvicorn seldom
/// holds a connection it accepted but had not read when its SIGTERM comes (shared mode lost 8
/// and 40 of about 33,000). Three rolling restarts under new-connection load: at most one
/// failed request a restart (the issue asks one in 10,000: not met every run, see
/// RELIABILITY.md).
#[test]
fn uvicorn_in_the_default_mode_fails_at_most_once_a_restart() {
    let mut cluster = uvicorn_app("app:app", &[], &[]);
    assert!(
        cluster.output().contains("balance=\"reuseport\""),
        "{}",
        cluster.output()
    );
    let load = Load::start(cluster.port(), 2);
    for _ in 0..3 {
        rolling_restart(&cluster, || {});
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, failed, _) = load.finish();
    eprintln!(
        "figure: uvicorn, default balance, 3 rolling restarts: {ok} ok, {} failed {failed:?}",
        failed.len()
    );
    assert!(ok > 1000, "{ok}");
    // The bound: one in 10,000 (a run is about 6,000 requests).
    at_most_one_a_restart(1, &failed);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

/// uvicorn with a slow start-up (3 s before it serves its socket) and no `--ready-after`:
/// seen running its event loop without the listener, it is waited for rather than counted
/// ready after the fallback's second, so rolling restarts stop no old worker before its
/// successor serves: each restart takes the time its replacements need.
#[test]
fn a_slow_starting_uvicorn_is_ready_when_it_listens_not_after_a_guess() {
    let mut cluster = uvicorn_app("slow_app:app", &[], &[("STARTUP_SECONDS", "3")]);
    assert!(
        !cluster.output().contains("counted ready by --ready-after"),
        "{}",
        cluster.output()
    );
    let load = Load::start(cluster.port(), 2);
    for _ in 0..2 {
        // Two slots, each replacement 3 s in starting: a restart that took less counted a
        // replacement ready before it served.
        let took = rolling_restart(&cluster, || {});
        assert!(took >= Duration::from_millis(5500), "a restart in {took:?}");
    }
    let (ok, failed, _) = load.finish();
    eprintln!(
        "figure: uvicorn starting in 3 s, 2 rolling restarts: {ok} ok, {} failed",
        failed.len()
    );
    at_most_one_a_restart(2, &failed);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}
