//! `--balance hash=...`: sticky sessions. A `cluster-worker` program keyed by a cookie, an
//! unmodified Node server keyed by the client's address (steered by the kernel): every
//! request of a key reaches one slot, the keys spread over the slots, a slot's replacement
//! gets that slot's keys back and the other slots keep theirs.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_testkit::{header_of, http_get_from, http_request_from};
use rustix::process::Signal;
use support::{ClusterProcess, Load, hello_cluster};

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
    let (mut cluster, port) = hello_cluster(&["-w", "4", "--balance", "hash=cookie:sid"]);
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
    let (mut cluster, port) = hello_cluster(&["-w", "2", "--balance", "hash=header:x-user"]);
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

/// `cluster -w 4 --balance BALANCE --listen 127.0.0.1:0 node tests/peers/SCRIPT`, ready.
fn node_cluster(balance: &str, script: &str) -> (ClusterProcess, u16) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script);
    let cluster = ClusterProcess::start(&[
        "-w",
        "4",
        "--balance",
        balance,
        "--listen",
        "127.0.0.1:0",
        "node",
        script.to_str().unwrap(),
    ]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    (cluster, port)
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
    let (mut cluster, port) = node_cluster("hash=ip", "server.js");
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

/// A Socket.IO long-polling session from `source`: its id, once connected.
struct Session {
    source: Ipv4Addr,
    sid: String,
}

const ENGINE: &str = "/socket.io/?EIO=4&transport=polling";

impl Session {
    /// The handshake, then the connection to the main namespace.
    fn open(port: u16, source: Ipv4Addr) -> Result<Self, String> {
        let body = body_of(&http_get_from(source, port, ENGINE, "")?);
        let sid = body
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or_else(|| format!("no session id in {body:?}"))?
            .to_owned();
        let session = Self { source, sid };
        session.post(port, "40")?;
        let connected = session.poll(port)?;
        if !connected.starts_with("40") {
            return Err(format!("not connected: {connected:?}"));
        }
        Ok(session)
    }

    fn post(&self, port: u16, packet: &str) -> Result<(), String> {
        let path = format!("{ENGINE}&sid={}", self.sid);
        let headers = "content-type: text/plain;charset=UTF-8\r\n";
        http_request_from(self.source, port, "POST", &path, headers, packet).map(|_| ())
    }

    fn poll(&self, port: u16) -> Result<String, String> {
        let path = format!("{ENGINE}&sid={}", self.sid);
        Ok(body_of(&http_get_from(self.source, port, &path, "")?))
    }

    /// Emits `echo` with `text`; the pid of the worker that answered.
    fn echo(&self, port: u16, text: &str) -> Result<String, String> {
        self.post(port, &format!("42[\"echo\",\"{text}\"]"))?;
        let reply = self.poll(port)?;
        reply
            .split(" from ")
            .nth(1)
            .map(|pid| pid.trim_end_matches("\"]").to_owned())
            .ok_or_else(|| format!("no echo in {reply:?}"))
    }
}

fn body_of(response: &str) -> String {
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Runs `f` for every index in `0..n` on 16 threads; the results in order.
fn on_threads<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let result = f(i);
                    results.lock().unwrap().push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// An unmodified Socket.IO 4 server (long-polling, whose sessions live in the worker that
/// made them) under `-w 4 --balance hash=ip`: 1,000 sessions from 50 client addresses, each
/// connected and echoing, with 0 "Session ID unknown"; after one worker is killed, only the
/// sessions it held are unknown (they reconnect, on its replacement), every other session
/// goes on where it was.
#[test]
fn socket_io_long_polling_sessions_stick_and_only_a_killed_workers_reconnect() {
    let (mut cluster, port) = node_cluster("hash=ip", "socketio_server.js");
    let source = |i: usize| Ipv4Addr::new(127, 0, 0, 2 + (i % 50) as u8);
    let opened = on_threads(1000, |i| {
        let session = Session::open(port, source(i))?;
        let pid = session.echo(port, &i.to_string())?;
        Ok::<_, String>((session, pid))
    });
    let failures: Vec<&String> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 1000 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let sessions: Vec<(Session, String)> = opened.into_iter().map(Result::unwrap).collect();
    let pids: HashSet<&String> = sessions.iter().map(|(_, pid)| pid).collect();
    assert_eq!(pids.len(), 4, "{pids:?}");

    let killed = sessions[0].1.clone();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(killed.parse().unwrap()).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    let began = Instant::now();
    while cluster.worker_pids().len() < 4
        || cluster.worker_pids().contains(&killed.parse().unwrap())
    {
        assert!(began.elapsed() < LIMIT, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.wait_for("all workers ready", LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    let again = on_threads(1000, |i| {
        let (session, pid) = &sessions[i];
        match session.echo(port, "again") {
            Ok(now) => Ok((pid == &killed, Some(now == *pid), None)),
            Err(e) if e.contains("Session ID unknown") => {
                let reopened = Session::open(port, session.source)?;
                Ok((pid == &killed, None, Some(reopened.echo(port, "back")?)))
            }
            Err(e) => Err(e),
        }
    });
    let (mut kept, mut reconnected, mut new_homes) = (0, 0, HashSet::new());
    for result in &again {
        match result {
            Ok((false, Some(true), None)) => kept += 1,
            Ok((true, None, Some(home))) => {
                reconnected += 1;
                new_homes.insert(home.clone());
            }
            other => panic!(
                "a session that should have {}: {other:?}",
                "stayed (its worker lived) or reconnected (its worker was killed)"
            ),
        }
    }
    let held = sessions.iter().filter(|(_, pid)| *pid == killed).count();
    assert_eq!(reconnected, held);
    assert_eq!(new_homes.len(), 1, "{new_homes:?}");
    eprintln!(
        "figure: Socket.IO, hash=ip, 4 workers: 1000 sessions from 50 addresses, 0 unknown; one worker killed: {kept} went on, {reconnected} (all its own) reconnected on its replacement"
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

/// The control: the same server under plain `reuseport` (the kernel hashes each connection's
/// ports, not its client) loses sessions at once, which is what `hash=ip` is for.
#[test]
fn without_hash_socket_io_sessions_are_unknown_to_the_other_workers() {
    let (mut cluster, port) = node_cluster("reuseport", "socketio_server.js");
    let opened = on_threads(200, |i| {
        Session::open(port, Ipv4Addr::new(127, 0, 0, 2 + (i % 50) as u8)).map(|_| ())
    });
    let unknown = opened
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.contains("Session ID unknown")))
        .count();
    eprintln!("figure: Socket.IO under plain reuseport: {unknown} of 200 sessions unknown at once");
    assert!(unknown >= 50, "{unknown} of 200");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}
