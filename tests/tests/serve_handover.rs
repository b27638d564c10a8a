//! Live WebSocket sessions handed to the next generation (issue 30): `ws-echo`'s sessions,
//! each sending a numbered message every 100 ms and checking the numbered reply (with the
//! session's message count, its state, and the pid that answered), through rolling restarts
//! and an upgrade of the watcher itself, in every balance mode: no session closed, no
//! message lost, repeated or reordered, the state moved with every session, the longest
//! pause between two replies bounded; a message in the middle of its frames when the stop
//! comes kept whole; a new generation that resumes nothing closes with 1012, counted.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_testkit::{SessionLoad, SessionRecord, process_running};
use rustix::process::Signal;
use support::{ClusterProcess, children_of, workspace_bin};

const LIMIT: Duration = Duration::from_secs(60);

fn scratch(test: &str) -> PathBuf {
    support::scratch_dir("cluster-handover", test)
}

/// `cluster -w WORKERS --balance BALANCE --pid-file … EXTRA ws-echo`, ready; and its port.
fn start(
    dir: &Path,
    workers: &str,
    balance: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (ClusterProcess, u16) {
    let pid_file = dir.join("pid");
    let mut args = vec!["-w", workers, "--balance", balance, "--pid-file"];
    args.push(pid_file.to_str().unwrap());
    args.extend_from_slice(extra);
    let program = workspace_bin("ws-echo");
    args.extend([program.to_str().unwrap(), "127.0.0.1:0"]);
    let cluster = ClusterProcess::start_with_env(&args, env);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    (cluster, port)
}

/// One rolling restart of `watcher`, complete.
fn rolling_restart(cluster: &ClusterProcess, watcher: u32, done_before: usize) {
    support::signal(watcher, Signal::USR1);
    let deadline = Instant::now() + LIMIT;
    while cluster.count("rolling restart complete") <= done_before {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Upgrades the watcher (SIGUSR2); the new watcher's pid, once the old one is gone.
fn upgrade(cluster: &ClusterProcess, pid_file: &Path, old: u32) -> u32 {
    support::signal(old, Signal::USR2);
    support::wait_new_watcher(cluster, pid_file, old, LIMIT)
}

/// `cluster_sessions_closed_total{worker="all"}` on the `/metrics` at `port`, and the whole
/// exposition (for a failure's message).
fn sessions_closed(port: u16) -> (u64, String) {
    let response =
        cluster_testkit::http_get_from(std::net::Ipv4Addr::LOCALHOST, port, "/metrics", "")
            .unwrap_or_default();
    let counted = response
        .lines()
        .find(|l| l.starts_with("cluster_sessions_closed_total{worker=\"all\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    (counted as u64, response)
}

/// What the sessions saw, summed up and checked against the bounds.
fn check(records: &[SessionRecord], first_workers: &[u32], mode: &str) {
    let replies: u64 = records.iter().map(|r| r.replies).sum();
    let ended: Vec<&String> = records.iter().filter_map(|r| r.ended.as_ref()).collect();
    let wrong: Vec<&String> = records.iter().filter_map(|r| r.wrong.as_ref()).collect();
    let longest = records
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default();
    let stayed = records
        .iter()
        .filter(|r| r.pids.last().is_none_or(|p| first_workers.contains(p)))
        .count();
    let workers_seen: usize = records.iter().map(|r| r.pids.len()).max().unwrap_or(0);
    let mut gaps: Vec<Duration> = records.iter().map(|r| r.longest_gap).collect();
    gaps.sort();
    let at = |q: f64| {
        gaps.get(((gaps.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "longest gap a session: p50 {:?}, p90 {:?}, p99 {:?}",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    eprintln!(
        "figure: hand-over, {mode}: {} sessions, {replies} replies, {} ended, {} wrong, longest gap {longest:?}, up to {workers_seen} workers a session, {stayed} still on a first-generation worker",
        records.len(),
        ended.len(),
        wrong.len()
    );
    assert!(
        ended.is_empty(),
        "{} ended: {:?}",
        ended.len(),
        &ended[..ended.len().min(3)]
    );
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    // The bound is for the optimized build (`cargo nextest run --release`); the
    // debug build's WebSocket code is many times slower on this 2-core machine.
    let bound = Duration::from_millis(if cfg!(debug_assertions) { 1000 } else { 250 });
    assert!(longest <= bound, "longest gap {longest:?}, bound {bound:?}");
    if std::env::var("HANDOVER_ROUNDS").is_err() {
        assert_eq!(
            stayed, 0,
            "sessions still answered by a first-generation worker"
        );
    }
}

/// 1,000 sessions (`HANDOVER_SESSIONS` to change it) through 3 rolling restarts of 4
/// workers, then an upgrade of the watcher.
fn through_restarts_and_an_upgrade(mode: &str) {
    // A thousand sessions take both cores: one such test at a time under plain `cargo test`.
    let _alone = support::serial();
    let sessions = std::env::var("HANDOVER_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let dir = scratch(mode);
    let (cluster, port) = start(&dir, "4", mode, &[], &[]);
    let watcher = cluster.pid();
    let first_workers = children_of(watcher);
    let load = SessionLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        sessions,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(500));
    // HANDOVER_ROUNDS=0 HANDOVER_UPGRADE=0: the same load with nothing moving, to compare.
    let knob = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    for round in 0..knob("HANDOVER_ROUNDS", 3) {
        rolling_restart(&cluster, watcher, round);
        std::thread::sleep(Duration::from_millis(300));
    }
    let new = match knob("HANDOVER_UPGRADE", 1) {
        0 => {
            std::thread::sleep(Duration::from_millis(3000));
            watcher
        }
        _ => upgrade(&cluster, &dir.join("pid"), watcher),
    };
    // Stopped below; this stops it also when a check fails (it is not this test's child).
    let _last = cluster_testkit::StopOnDrop { pid: new };
    std::thread::sleep(Duration::from_millis(1000));
    let records = load.finish();
    if std::env::var("HANDOVER_DEBUG").is_ok() {
        eprintln!("{}", cluster.output());
    }
    check(&records, &first_workers, mode);
    support::signal(new, Signal::TERM);
    let deadline = Instant::now() + LIMIT;
    while process_running(new) {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_move_through_restarts_and_an_upgrade_in_shared_mode() {
    through_restarts_and_an_upgrade("shared");
}

#[test]
fn sessions_move_through_restarts_and_an_upgrade_in_round_robin_mode() {
    through_restarts_and_an_upgrade("round-robin");
}

#[test]
fn sessions_move_through_restarts_and_an_upgrade_in_reuseport_mode() {
    through_restarts_and_an_upgrade("reuseport");
}

/// The watcher carries every session of every restart: its descriptors and memory stay flat
/// over 20 restarts with 1,000 sessions moving at each (measured after the first, warm).
#[test]
fn the_watcher_stays_flat_through_twenty_restarts_of_moving_sessions() {
    // A thousand sessions take both cores: one such test at a time under plain `cargo test`.
    let _alone = support::serial();
    let dir = scratch("flat");
    let (mut cluster, port) = start(&dir, "4", "shared", &[], &[]);
    let watcher = cluster.pid();
    let first_workers = children_of(watcher);
    let load = SessionLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        1000,
        Duration::from_millis(100),
    );
    rolling_restart(&cluster, watcher, 0);
    // The old generation gone, its pipes closed.
    std::thread::sleep(Duration::from_millis(1000));
    let (fds, rss) = (
        cluster_testkit::fd_count(watcher),
        cluster_testkit::rss_kib(watcher),
    );
    for round in 1..20 {
        rolling_restart(&cluster, watcher, round);
    }
    std::thread::sleep(Duration::from_millis(1000));
    let (fds_after, rss_after) = (
        cluster_testkit::fd_count(watcher),
        cluster_testkit::rss_kib(watcher),
    );
    let records = load.finish();
    eprintln!(
        "figure: watcher through 20 restarts with 1,000 moving sessions: descriptors {fds} -> {fds_after}, RSS {rss} -> {rss_after} KiB"
    );
    check(&records, &first_workers, "20 restarts");
    assert!(fds_after <= fds, "descriptors {fds} -> {fds_after}");
    assert!(rss_after <= rss + 2048, "RSS {rss} -> {rss_after} KiB");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A binary message of 1 MiB sent in four frames 300 ms apart, a restart asked for after
/// the first: the old worker waits for the message's end, echoes it whole, then the session
/// moves; the next message is answered by the new worker.
#[test]
fn a_message_in_the_middle_of_its_frames_at_the_stop_is_kept_whole() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let dir = scratch("big");
    let (cluster, port) = start(&dir, "1", "shared", &[], &[]);
    let watcher = cluster.pid();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/ws");
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        socket.send(Message::text("0")).await.unwrap();
        let first = socket.next().await.unwrap().unwrap().into_text().unwrap();
        let body: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for (i, part) in body.chunks(1 << 18).enumerate() {
            let (opcode, last) = match i {
                0 => (OpCode::Data(Data::Binary), false),
                3 => (OpCode::Data(Data::Continue), true),
                _ => (OpCode::Data(Data::Continue), false),
            };
            socket
                .send(Message::Frame(Frame::message(part.to_vec(), opcode, last)))
                .await
                .unwrap();
            if i == 0 {
                support::signal(watcher, Signal::USR1);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let echo = tokio::time::timeout(LIMIT, socket.next()).await.unwrap();
        let Some(Ok(Message::Binary(echo))) = echo else {
            panic!("no whole echo: {echo:?}");
        };
        assert!(echo == body, "the 1 MiB message came back different");
        // The restart goes on; the session is answered by the new worker, its count intact.
        let deadline = Instant::now() + LIMIT;
        while cluster.count("rolling restart complete") == 0 {
            assert!(Instant::now() < deadline, "{}", cluster.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        socket.send(Message::text("2")).await.unwrap();
        let after = socket.next().await.unwrap().unwrap().into_text().unwrap();
        eprintln!("figure: 1 MiB message across a stop: first reply {first:?}, after the restart {after:?}");
        let pid = |reply: &str| reply.split(' ').nth(2).map(str::to_owned);
        assert_eq!(after.split(' ').nth(1), Some("3"), "the count moved: {after}");
        assert_ne!(pid(&first), pid(&after), "{first} then {after}");
    });
    let mut cluster = cluster;
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A next generation that resumes nothing (here, workers after the first generation do
/// not call `ws::resume`): every session is closed with 1012, none abnormally, and counted
/// on `/metrics`.
#[test]
fn sessions_a_new_generation_does_not_take_are_closed_with_1012_and_counted() {
    let dir = scratch("refused");
    let metrics = cluster_testkit::free_port();
    let metrics_address = format!("127.0.0.1:{metrics}");
    let (mut cluster, port) = start(
        &dir,
        "2",
        "shared",
        &["--metrics", &metrics_address],
        &[("WS_ECHO_RESUME_UP_TO_GENERATION", "1")],
    );
    let load = SessionLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        40,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_millis(500));
    rolling_restart(&cluster, cluster.pid(), 0);
    // The closes are counted by the new workers and reported with their heartbeats.
    std::thread::sleep(Duration::from_millis(2500));
    let records = load.finish();
    let codes: Vec<Option<u16>> = records.iter().map(|r| r.closed_with).collect();
    let (counted, response) = sessions_closed(metrics);
    eprintln!(
        "figure: sessions refused by the new generation: closes {codes:?}; counted {counted}"
    );
    assert!(codes.iter().all(|c| *c == Some(1012)), "{codes:?}");
    assert!(records.iter().all(|r| r.wrong.is_none()));
    assert_eq!(counted, records.len() as u64, "{response}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// permessage-deflate negotiated (the application takes it, Node's `ws` client compresses
/// every message): the sessions work, and at a restart, since the client's compression
/// window cannot move, every one is closed with 1012, none abnormally, each counted.
#[test]
fn deflate_sessions_are_closed_with_1012_at_a_restart_and_counted() {
    let dir = scratch("deflate");
    let metrics = cluster_testkit::free_port();
    let metrics_address = format!("127.0.0.1:{metrics}");
    let (mut cluster, port) = start(
        &dir,
        "2",
        "shared",
        &["--metrics", &metrics_address],
        &[("WS_ECHO_DEFLATE", "1")],
    );
    // DEFLATE_SESSIONS=1000 for the whole harness.
    let sessions: u64 = std::env::var("DEFLATE_SESSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/deflate_client.js");
    let client = std::process::Command::new("node")
        .arg(&script)
        .arg(format!("ws://127.0.0.1:{port}/ws"))
        .arg(sessions.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (tests/peers/install.sh installs the ws package)");
    std::thread::sleep(Duration::from_millis(1500));
    rolling_restart(&cluster, cluster.pid(), 0);
    let output = client.wait_with_output().unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the client's summary");
    std::thread::sleep(Duration::from_millis(1500));
    let (counted, response) = sessions_closed(metrics);
    let mut brief = summary.clone();
    brief["extensions"] = serde_json::json!(format!(
        "{} x {}",
        summary["extensions"].as_array().map_or(0, Vec::len),
        summary["extensions"][0]
    ));
    eprintln!("figure: permessage-deflate sessions at a restart: {brief}; counted {counted}");
    let extensions = summary["extensions"].as_array().unwrap();
    assert!(
        extensions
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.contains("permessage-deflate"))),
        "{summary}"
    );
    assert_eq!(
        summary["closes"],
        serde_json::json!({"1012": sessions}),
        "{summary}"
    );
    assert_eq!(summary["wrong"], 0, "{summary}");
    assert!(summary["replies"].as_u64().unwrap() > sessions, "{summary}");
    assert_eq!(counted, sessions, "{response}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}
