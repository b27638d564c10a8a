//! WebSockets through a restart, across servers (issue 25): the same client harness (the
//! test kit's `WsLoad`: sessions that echo a message every 100 ms and reconnect when the
//! server closes) against `cluster` running the `long-lived` example, uvicorn's multiprocess
//! mode (its SIGHUP restart of the workers), and Node's cluster module with the `ws`
//! package (workers replaced one by one, the old one disconnected, then killed after 5 s as
//! PM2's reload does). Each server runs two workers; one restart under 400 sessions.
//! Prints how every connection the server ended was ended: the close code, or abnormal
//! (1006: no Close frame, a reset), and the largest share of closes in one second.
//!
//! ```sh
//! CLUSTER_PEERS_WS=1 tests/peers/install.sh
//! cargo build --release -p cluster-cli -p cluster-examples -p cluster-bench --bins --examples
//! target/release/ws-peers
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_bench::{ServerProcess, env_or, free_port, signal};
use cluster_testkit::{WsEnd, WsLoad};
use rustix::process::Signal;

struct Peer {
    name: &'static str,
    command: Vec<String>,
    restart: Signal,
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let text = |p: PathBuf| p.to_string_lossy().into_owned();
    let release = root.join("target/release");
    let venv = root.join("target/peers/venv/bin");
    let sessions = env_or("WS_SESSIONS", 400) as usize;
    let mut peers = vec![Peer {
        name: "cluster -w 2 --drain-spread 5s, SIGUSR1",
        command: [
            text(release.join("cluster")),
            "-w".into(),
            "2".into(),
            "-l".into(),
            "warn".into(),
            "--drain-spread".into(),
            "5s".into(),
            text(release.join("examples/long-lived")),
            "127.0.0.1:{port}".into(),
        ]
        .to_vec(),
        restart: Signal::USR1,
    }];
    if venv.join("uvicorn").exists() {
        peers.push(Peer {
            name: "uvicorn --workers 2 (wsproto), SIGHUP",
            command: [
                text(venv.join("uvicorn")),
                "--workers".into(),
                "2".into(),
                "--ws".into(),
                "wsproto".into(),
                "--log-level".into(),
                "warning".into(),
                "--app-dir".into(),
                text(root.join("tests/peers")),
                "--port".into(),
                "{port}".into(),
                "ws_app:app".into(),
            ]
            .to_vec(),
            restart: Signal::HUP,
        });
    } else {
        eprintln!("uvicorn skipped: run tests/peers/install.sh");
    }
    if root.join("target/peers/node_modules/ws").exists() {
        peers.push(Peer {
            name: "node cluster + ws, workers replaced (SIGHUP)",
            command: vec![
                "node".into(),
                text(root.join("bench/node/ws-cluster.js")),
                "{port}".into(),
            ],
            restart: Signal::HUP,
        });
    } else {
        eprintln!("node skipped: run CLUSTER_PEERS_WS=1 tests/peers/install.sh");
    }
    println!("\n## WebSockets through one restart, 2 workers, {sessions} sessions\n");
    println!(
        "| server | closes by the server | 1012 | 1001 | other codes | abnormal (1006, reset) | most closes in one second | echoes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for peer in &peers {
        run(peer, sessions);
    }
}

/// One server: sessions on, one restart, what the clients saw.
fn run(peer: &Peer, sessions: usize) {
    let port = free_port();
    let server = ServerProcess::command(&peer.command, &[], port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{} never listened", peer.name);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let load = WsLoad::start(
        &format!("ws://127.0.0.1:{port}/ws"),
        sessions,
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(3));
    signal(server.pid(), peer.restart);
    std::thread::sleep(Duration::from_secs(12));
    let results = load.finish();
    drop(server);
    let ends: Vec<(Instant, WsEnd)> = results
        .iter()
        .flat_map(|s| s.ends.iter().cloned())
        .filter(|(_, end)| *end != WsEnd::Finished)
        .collect();
    let count = |pick: &dyn Fn(&WsEnd) -> bool| ends.iter().filter(|(_, e)| pick(e)).count();
    let restart = count(&|e| *e == WsEnd::Closed(1012));
    let going_away = count(&|e| *e == WsEnd::Closed(1001));
    let abnormal = count(&|e| matches!(e, WsEnd::Abnormal(_)));
    let other = ends.len() - restart - going_away - abnormal;
    let mut seconds = BTreeMap::<u64, usize>::new();
    if let Some(first) = ends.iter().map(|(at, _)| *at).min() {
        for (at, _) in &ends {
            *seconds
                .entry(at.duration_since(first).as_secs())
                .or_default() += 1;
        }
    }
    let busiest = seconds.values().copied().max().unwrap_or(0);
    let share = if ends.is_empty() {
        0.0
    } else {
        busiest as f64 * 100.0 / ends.len() as f64
    };
    let echoes: u64 = results.iter().map(|s| s.echoed).sum();
    println!(
        "| {} | {} | {restart} | {going_away} | {other} | {abnormal} | {share:.0} % | {echoes} |",
        peer.name,
        ends.len()
    );
}
