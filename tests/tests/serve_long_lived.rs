//! Long-lived connections through restarts (issue 25): WebSockets served by `serve_axum`
//! and closed with 1012 at the drain, spread over `--drain-spread`; event streams ended
//! cleanly; HTTP/2 drained with GOAWAY (h2load); at most two generations alive through a
//! burst of restarts; hostile clients cut at `--drain-timeout`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster_testkit::{WsEnd, WsLoad, WsSession};
use rustix::process::Signal;
use support::long_lived::{
    GoAway, deaf_websocket, goaway_listener, h2load_rows, pushy_http2, read_event_stream,
    stalled_event_stream,
};
use support::{ClusterProcess, Load, free_port, process_running, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

/// `cluster -w WORKERS OPTIONS… long-lived 127.0.0.1:PORT`, ready.
fn start(workers: &str, options: &[&str]) -> (ClusterProcess, u16) {
    let port = free_port();
    let program = workspace_bin("long-lived");
    let address = format!("127.0.0.1:{port}");
    let mut args = vec!["-w", workers];
    args.extend_from_slice(options);
    args.extend([program.to_str().unwrap(), address.as_str()]);
    let cluster = ClusterProcess::start(&args);
    cluster.wait_for("all workers ready", LIMIT);
    (cluster, port)
}

/// Waits until none of `pids` runs; how long that took.
fn wait_gone(pids: &[u32], limit: Duration) -> Duration {
    let started = Instant::now();
    while pids.iter().any(|p| process_running(*p)) {
        assert!(
            started.elapsed() < limit,
            "{pids:?} still run after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Every connection end the sessions saw, but the load's own final closes.
fn server_ends(sessions: &[WsSession]) -> Vec<(Instant, WsEnd)> {
    sessions
        .iter()
        .flat_map(|s| s.ends.iter().cloned())
        .filter(|(_, end)| *end != WsEnd::Finished)
        .collect()
}

fn echo_sessions(port: u16) {
    let load = WsLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        20,
        Duration::from_millis(10),
    );
    std::thread::sleep(Duration::from_secs(1));
    let sessions = load.finish();
    let echoed: u64 = sessions.iter().map(|s| s.echoed).sum();
    assert!(
        sessions.iter().all(|s| s.echoed >= 5 && s.lost == 0),
        "{sessions:?}"
    );
    assert!(server_ends(&sessions).is_empty(), "{sessions:?}");
    eprintln!("{echoed} messages echoed by 20 sessions");
}

#[test]
fn an_axum_websocket_route_echoes_standalone_and_clustered() {
    let port = free_port();
    let program = workspace_bin("long-lived");
    let standalone = ClusterProcess::spawn(
        &program,
        &[format!("127.0.0.1:{port}")],
        &[],
        cluster_testkit::Output::Collect,
    );
    standalone.wait_ready(port);
    echo_sessions(port);
    drop(standalone);

    let (mut cluster, port) = start("2", &[]);
    echo_sessions(port);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn websocket_sessions_close_with_1012_spread_over_the_drain_window() {
    const SESSIONS: usize = 2000;
    let (mut cluster, port) = start("4", &["--drain-spread", "10s", "--drain-timeout", "15s"]);
    let old = cluster.worker_pids();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let load = WsLoad::start(&url, SESSIONS, Duration::from_millis(500));
    std::thread::sleep(Duration::from_secs(4));
    cluster.signal(Signal::USR1);
    cluster.wait_for("rolling restart complete", LIMIT);
    let drained = wait_gone(&old, Duration::from_secs(25));
    std::thread::sleep(Duration::from_secs(1));
    let sessions = load.finish();

    let ends = server_ends(&sessions);
    let abnormal: Vec<_> = ends
        .iter()
        .filter(|(_, end)| !matches!(end, WsEnd::Closed(1012)))
        .collect();
    let echoed: u64 = sessions.iter().map(|s| s.echoed).sum();
    // Closes per second, from the first.
    let first = ends.iter().map(|(at, _)| *at).min().expect("closes");
    let mut windows = BTreeMap::<u64, usize>::new();
    for (at, _) in &ends {
        *windows
            .entry(at.duration_since(first).as_secs())
            .or_default() += 1;
    }
    let busiest = windows.values().copied().max().unwrap_or(0);
    eprintln!(
        "{SESSIONS} sessions, {echoed} echoes, {} closes by the server ({} not 1012), old workers gone in {drained:?}; closes per second: {windows:?}",
        ends.len(),
        abnormal.len()
    );
    assert!(
        abnormal.is_empty(),
        "{:?}",
        &abnormal[..abnormal.len().min(5)]
    );
    assert!(ends.len() >= SESSIONS, "every session was on an old worker");
    assert!(
        busiest * 100 <= ends.len() * 15,
        "a one-second window held {busiest} of {} closes",
        ends.len()
    );
    assert!(
        sessions.iter().all(|s| s.echoed > 0),
        "every session echoed"
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn event_streams_end_cleanly_at_a_restart() {
    let (mut cluster, port) = start("2", &["--drain-spread", "1s"]);
    let readers: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || read_event_stream(port, "/events?every=20", LIMIT)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    cluster.signal(Signal::USR1);
    for reader in readers {
        let end = reader.join().unwrap();
        assert!(end.clean, "{end:?}");
        assert!(end.events >= 10, "{end:?}");
        assert!(end.at.duration_since(restarted) < Duration::from_secs(10));
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn http2_streams_survive_three_rolling_restarts_under_h2load() {
    let h2load = Path::new("/usr/bin/h2load");
    assert!(
        h2load.exists(),
        "h2load is missing: tests/peers/install.sh installs nghttp2-client (./test.sh runs it)"
    );
    let (mut cluster, port) = start("2", &[]);
    let log = std::env::temp_dir().join(format!("h2load-{}.tsv", std::process::id()));
    let client = std::process::Command::new(h2load)
        .args(["-c64", "-m10", "-t1", "-D", "9"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.signal(Signal::USR1);
        let deadline = Instant::now() + LIMIT;
        while cluster.count("rolling restart complete") < round {
            assert!(Instant::now() < deadline, "{}", cluster.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let output = client.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    let rows = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let (ok, failed, unsent) = h2load_rows(&rows);
    eprintln!(
        "h2load -c64 -m10 through 3 restarts: {ok} streams succeeded, {failed} sent and failed, {unsent} queued by h2load after a GOAWAY and never sent"
    );
    assert!(ok > 1000, "{summary}");
    assert_eq!(failed, 0, "{summary}");
    assert!(unsent * 100 <= ok, "{unsent} never sent of {ok}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// RFC 9113 §6.8's two-phase GOAWAY, read off the wire: at a restart an idle HTTP/2 client
/// is told first "no new streams soon" (last stream 2^31-1, NO_ERROR), then, after a PING
/// round trip, the last stream the server processed (1, NO_ERROR), and the connection ends.
#[test]
fn an_http2_connection_gets_the_two_phase_goaway_with_no_error_at_a_restart() {
    let (mut cluster, port) = start("1", &[]);
    let (connected, answered) = std::sync::mpsc::channel();
    let listener = goaway_listener(port, connected);
    answered
        .recv_timeout(LIMIT)
        .expect("the answer to the first request");
    cluster.signal(Signal::USR1);
    cluster.wait_for("rolling restart complete", LIMIT);
    let goaways = listener.join().unwrap();
    eprintln!("GOAWAY frames at a restart: {goaways:?}");
    assert_eq!(
        goaways,
        [
            GoAway {
                last_stream: (1 << 31) - 1,
                code: 0
            },
            GoAway {
                last_stream: 1,
                code: 0
            }
        ],
        "{}",
        cluster.output()
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// Who is alive in each slot, sampled from the control socket.
fn sample(path: &Path) -> Option<cluster_ipc::status::ClusterStatus> {
    let mut client = cluster_ipc::control::ControlClient::connect(path, Some(LIMIT)).ok()?;
    match client.ask(&cluster_ipc::control::Request::Status).ok()? {
        cluster_ipc::control::Response::Status(status) => Some(*status),
        _ => None,
    }
}

#[test]
fn ten_restarts_a_second_apart_keep_at_most_two_generations() {
    let dir = std::env::temp_dir().join(format!("cluster-ten-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.sock");
    let control_arg = control.to_str().unwrap();
    let (mut cluster, port) = start(
        "2",
        &[
            "--drain-spread",
            "2s",
            "--drain-timeout",
            "4s",
            "--control",
            control_arg,
        ],
    );
    let http = Load::start(port, 2);
    let ws = WsLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        40,
        Duration::from_millis(100),
    );
    let mut requests = Vec::new();
    // pid -> (first seen stopping, last seen alive); the most workers seen in one slot.
    let mut stops = BTreeMap::<u32, (Option<Instant>, Instant)>::new();
    let mut most_in_a_slot = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(18) {
        if requests.len() < 10
            && started.elapsed() >= Duration::from_secs(requests.len() as u64 + 1)
        {
            requests.push(
                std::process::Command::new(workspace_bin("cluster"))
                    .args(["restart", "--control", control_arg])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        if let Some(status) = sample(&control) {
            let now = Instant::now();
            for slot in &status.slots {
                most_in_a_slot = most_in_a_slot.max(slot.workers.len());
                for worker in &slot.workers {
                    let entry = stops.entry(worker.pid).or_insert((None, now));
                    entry.1 = now;
                    if worker.phase == cluster_ipc::status::WorkerPhase::Stopping {
                        entry.0.get_or_insert(now);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for mut request in requests {
        assert!(request.wait().unwrap().success());
    }
    let (ok, failed, _) = http.finish();
    let sessions = ws.finish();
    let abnormal: Vec<_> = server_ends(&sessions)
        .into_iter()
        .filter(|(_, end)| !matches!(end, WsEnd::Closed(1012)))
        .collect();
    let longest_drain = stops
        .values()
        .filter_map(|(stopping, last)| Some(last.duration_since((*stopping)?)))
        .max()
        .unwrap_or_default();
    eprintln!(
        "10 restarts: {} workers seen, at most {most_in_a_slot} in a slot, longest drain {longest_drain:?}, {ok} requests, {} failed, {} abnormal WebSocket ends",
        stops.len(),
        failed.len(),
        abnormal.len()
    );
    assert!(
        most_in_a_slot <= 2,
        "{most_in_a_slot} workers alive in one slot"
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(
        abnormal.is_empty(),
        "{:?}",
        &abnormal[..abnormal.len().min(5)]
    );
    assert!(longest_drain <= Duration::from_secs(5), "{longest_drain:?}");
    assert!(stops.len() > 4, "workers were replaced: {stops:?}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hostile_clients_are_cut_at_the_drain_timeout_and_hold_nobody_up() {
    let (mut cluster, port) = start("1", &["--drain-spread", "1s", "--drain-timeout", "3s"]);
    let old = cluster.worker_pids();
    let deaf = deaf_websocket(port);
    let stalled = stalled_event_stream(port);
    let pushy = pushy_http2(port);
    std::thread::sleep(Duration::from_millis(500));
    let http = Load::start(port, 1);
    cluster.signal(Signal::USR1);
    let stopping = cluster.wait_for("draining its connections", LIMIT);
    let told = Instant::now();
    let gone = wait_gone(&old, LIMIT);
    let pushy_end = pushy.join().unwrap().expect("the HTTP/2 connection ended");
    let (ok, failed, _) = http.finish();
    eprintln!(
        "old worker gone {gone:?} after its stop ({stopping}); the pushy HTTP/2 client cut after {:?}; {ok} requests meanwhile, {} failed",
        pushy_end.saturating_duration_since(told),
        failed.len()
    );
    assert!(gone <= Duration::from_secs(4), "{gone:?}");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 10, "the new worker served meanwhile");
    assert!(
        !cluster.output().contains("watcher kills worker"),
        "the worker ended itself: {}",
        cluster.output()
    );
    drop((deaf, stalled));
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}
