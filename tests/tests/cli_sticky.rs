//! `--balance hash=...`: sticky sessions. A `cluster-worker` program keyed by a cookie, an
//! unmodified Node server keyed by the client's address (steered by the kernel): every
//! request of a key reaches one slot, the keys spread over the slots, a slot's replacement
//! gets that slot's keys back and the other slots keep theirs.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_testkit::{header_of, http_get_from};
use rustix::process::Signal;
use support::{ClusterProcess, Load, free_port, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

/// The slot (`x-cluster-worker`) and pid that answered session `n` (cookie `sid=s<n>`),
/// sent from one of 50 client addresses.
fn cookie_session(port: u16, n: u32) -> (String, String) {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (n % 50) as u8);
    let response = http_get_from(source, port, "/", &format!("cookie: theme=x; sid=s{n}\r\n"))
        .unwrap_or_else(|e| panic!("session {n}: {e}"));
    let header = |name| header_of(&response, name).unwrap_or_default().to_owned();
    (header("x-cluster-worker"), header("x-cluster-pid"))
}

fn rolling_restart(cluster: &ClusterProcess) {
    let restarts = cluster.count("rolling restart complete");
    cluster.signal(Signal::USR1);
    let began = Instant::now();
    while cluster.count("rolling restart complete") == restarts {
        assert!(began.elapsed() < LIMIT, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 400 sessions keyed by cookie over 4 workers: each always on one slot, every slot within
/// half of even; through a rolling restart under load, every session on the same slot (by
/// a new pid) and no request failed.
#[test]
fn a_cookie_keeps_every_session_on_its_slot_through_a_rolling_restart() {
    let port = free_port();
    let hello = workspace_bin("hello-http");
    let address = format!("127.0.0.1:{port}");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "4",
        "--balance",
        "hash=cookie:sid",
        hello.to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    assert!(
        cluster.output().contains("hash=cookie:sid"),
        "{}",
        cluster.output()
    );
    let mut slot_of = HashMap::new();
    let mut per_slot: HashMap<String, u32> = HashMap::new();
    for n in 0..400 {
        let (slot, _) = cookie_session(port, n);
        assert_eq!(cookie_session(port, n).0, slot, "session {n} moved");
        *per_slot.entry(slot.clone()).or_default() += 1;
        slot_of.insert(n, slot);
    }
    assert_eq!(per_slot.len(), 4, "{per_slot:?}");
    assert!(
        per_slot.values().all(|n| (50..=150).contains(n)),
        "{per_slot:?}"
    );
    let pids_before: HashSet<String> = (0..400).map(|n| cookie_session(port, n).1).collect();

    let load = Load::start(port, 2);
    std::thread::sleep(Duration::from_millis(500));
    rolling_restart(&cluster);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, _) = load.finish();
    assert!(ok >= 200, "{ok} requests");
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {failed:?}",
        failed.len()
    );
    for n in 0..400 {
        let (slot, pid) = cookie_session(port, n);
        assert_eq!(
            slot, slot_of[&n],
            "session {n} left its slot at the restart"
        );
        assert!(!pids_before.contains(&pid), "session {n} on an old worker");
    }
    eprintln!(
        "figure: hash=cookie:sid, 4 workers: 400 sessions {per_slot:?}, 0 moved by a rolling restart, {ok} requests under load, 0 failed"
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// A request without the cookie goes by its address, and a head that never ends is
/// handed on after the time limit, not held: the worker answers it once it is complete.
#[test]
fn a_request_without_the_key_goes_by_address_and_a_slow_head_is_not_held() {
    let port = free_port();
    let hello = workspace_bin("hello-http");
    let address = format!("127.0.0.1:{port}");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--balance",
        "hash=header:x-user",
        hello.to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let source = Ipv4Addr::new(127, 0, 0, 9);
    let first = http_get_from(source, port, "/", "").unwrap();
    let again = http_get_from(source, port, "/", "").unwrap();
    assert_eq!(
        header_of(&first, "x-cluster-worker"),
        header_of(&again, "x-cluster-worker")
    );
    // Half a head, then the rest after the watcher's 2 s limit: answered all the same.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    slow.write_all(b"x-user: 7\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    slow.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

fn node_server() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers/server.js")
        .to_string_lossy()
        .into_owned()
}

/// The pid that answered a request from `source` (the Node server answers `pid N`).
fn pid_for(port: u16, source: Ipv4Addr) -> String {
    let response = http_get_from(source, port, "/", "").unwrap();
    response
        .rsplit("pid ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// An unmodified Node server under `--listen` with `hash=ip`: the kernel program sends each
/// of 40 client addresses to one worker, spread over the four; when one worker is killed,
/// the other workers keep their addresses and the killed slot's replacement gets the killed
/// worker's addresses back.
#[test]
fn hash_ip_keeps_each_address_on_its_slot_for_an_unmodified_program() {
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "4",
        "--balance",
        "hash=ip",
        "--listen",
        "127.0.0.1:0",
        "node",
        &node_server(),
    ]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    assert!(
        cluster.output().contains("reuseport hash=ip"),
        "{}",
        cluster.output()
    );
    let sources: Vec<Ipv4Addr> = (2..42).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let before: Vec<String> = sources.iter().map(|s| pid_for(port, *s)).collect();
    for (source, pid) in sources.iter().zip(&before) {
        assert_eq!(&pid_for(port, *source), pid, "{source} moved");
    }
    let distinct: HashSet<&String> = before.iter().collect();
    assert_eq!(distinct.len(), 4, "{before:?}");

    let killed = before[0].clone();
    let ready = cluster.count("ready");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(killed.parse().unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    let began = Instant::now();
    while cluster.worker_pids().len() < 4
        || cluster.worker_pids().contains(&killed.parse().unwrap())
        || cluster.count("ready") == ready
    {
        assert!(began.elapsed() < LIMIT, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<String> = sources.iter().map(|s| pid_for(port, *s)).collect();
    let replacement: HashSet<&String> = before
        .iter()
        .zip(&after)
        .filter(|(b, _)| **b == killed)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        replacement.len(),
        1,
        "the killed slot's addresses split: {after:?}"
    );
    assert!(!replacement.contains(&killed));
    for ((source, b), a) in sources.iter().zip(&before).zip(&after) {
        if *b != killed {
            assert_eq!(a, b, "{source} moved though its worker lived");
        }
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}
