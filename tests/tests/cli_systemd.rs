//! The cluster under a service manager: sd_notify datagrams to a test-owned
//! `NOTIFY_SOCKET`, socket activation with `systemd-socket-activate`, the stop delay, and
//! orphans of double-forking workers (subreaper).

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{ClusterProcess, free_port, http_get, process_running, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A test-owned NOTIFY_SOCKET.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Manager {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("cluster-notify-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self { socket, path }
    }

    /// Datagrams until one contains `needle` (at most `limit`); all of them.
    fn until(&self, needle: &str, limit: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = text.contains(needle);
                seen.push((Instant::now(), text));
                if done {
                    return seen;
                }
            }
        }
        panic!("no datagram with {needle:?} within {limit:?}: {seen:?}");
    }

    /// Datagrams received during `time`.
    fn during(&self, time: Duration) -> Vec<String> {
        let deadline = Instant::now() + time;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }
}

/// Zombie children of `parent` (exited, not reaped).
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let after = stat
                    .rsplit_once(')')
                    .map(|(_, a)| a.to_owned())
                    .unwrap_or_default();
                let fields: Vec<&str> = after.split_whitespace().collect();
                fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

/// The children of `parent` running `sleep 299.5` (the long-lived daemon).
fn daemons_of(parent: u32) -> Vec<u32> {
    support::children_of(parent)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("299.5"))
        })
        .collect()
}

#[test]
fn ready_reloading_watchdog_and_stopping_reach_the_manager() {
    let manager = Manager::new("notify");
    let worker = workspace_bin("cli-worker");
    let started = Instant::now();
    let mut cluster = ClusterProcess::start_with_env(
        &[
            "-w",
            "2",
            worker.to_str().unwrap(),
            "slow-ready",
            "500",
            "127.0.0.1:0",
        ],
        &[
            ("NOTIFY_SOCKET", manager.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    // READY=1 only once both workers are ready (each takes 500 ms).
    let seen = manager.until("READY=1", LIMIT);
    let (at, ready) = seen.last().unwrap();
    assert!(
        at.duration_since(started) >= Duration::from_millis(500),
        "{ready}"
    );
    assert!(
        ready.contains(&format!("MAINPID={}", cluster.pid())),
        "{ready}"
    );
    cluster.wait_for("all workers ready", LIMIT);
    // The watchdog at half the requested interval.
    let beats = manager.during(Duration::from_secs(1));
    let count = beats.iter().filter(|d| d.contains("WATCHDOG=1")).count();
    assert!((3..=8).contains(&count), "{count} in 1 s: {beats:?}");
    // None while the supervision loop cannot run.
    cluster.signal(Signal::STOP);
    let silent = manager.during(Duration::from_secs(1));
    cluster.signal(Signal::CONT);
    assert!(
        !silent.iter().any(|d| d.contains("WATCHDOG=1")),
        "{silent:?}"
    );
    // SIGHUP (`systemctl reload`): RELOADING=1 with MONOTONIC_USEC, then READY=1 once the
    // reload is kept; no READY=1 in between (the rolling restart inside it says nothing).
    cluster.signal(Signal::HUP);
    let seen = manager.until("RELOADING=1", LIMIT);
    assert!(
        seen.last().unwrap().1.contains("MONOTONIC_USEC="),
        "{seen:?}"
    );
    let seen = manager.until("READY=1", LIMIT);
    assert!(seen.last().unwrap().1.contains("reloaded"), "{seen:?}");
    cluster.wait_for("reload complete", LIMIT);
    // SIGUSR1 stays a plain rolling restart, told the same way.
    cluster.signal(Signal::USR1);
    manager.until("RELOADING=1", LIMIT);
    let seen = manager.until("READY=1", LIMIT);
    assert!(
        seen.last().unwrap().1.contains("rolling restart"),
        "{seen:?}"
    );
    cluster.wait_for("rolling restart complete", LIMIT);
    cluster.signal(Signal::TERM);
    manager.until("STOPPING=1", LIMIT);
    assert!(cluster.wait(LIMIT).success());
}

#[test]
fn the_stop_delay_reports_not_ready_while_still_serving() {
    let metrics = free_port();
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--stop-delay",
        "2s",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    let port = cluster.port();
    cluster.wait_for("metrics on", LIMIT);
    let readyz = || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        response[9..12].to_owned()
    };
    assert_eq!(readyz(), "200");
    let stopped = Instant::now();
    cluster.signal(Signal::TERM);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(readyz(), "503", "not ready at once");
    // Still serving until the delay is over.
    while stopped.elapsed() < Duration::from_millis(1700) {
        assert!(http_get(port).is_ok());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster.wait(LIMIT).success());
    assert!(stopped.elapsed() >= Duration::from_secs(2));
}

#[test]
fn a_socket_activated_cluster_serves_on_the_inherited_socket() {
    let hello = workspace_bin("hello-http");
    let cluster = workspace_bin("cluster");
    // Shared; round-robin, where the watcher's accept thread finds the inherited socket
    // non-blocking and waits with poll; a program given the socket.
    for (balance, program_mode) in [("shared", false), ("round-robin", false), ("", true)] {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        // (This systemd-socket-activate waits for the first connection before it execs.)
        let mut args = vec!["-l", &address, cluster.to_str().unwrap(), "-w", "2"];
        if !balance.is_empty() {
            args.extend(["--balance", balance]);
        }
        let listen = address.clone();
        if program_mode {
            args.extend(["--listen", &listen]);
            args.push(hello.to_str().unwrap());
            // hello-http adopts descriptor 3 (LISTEN_FDS from the cluster) for its address.
            args.push(&address);
        } else {
            args.push(hello.to_str().unwrap());
            args.push(&address);
        }
        let server = support::ServerProcess::spawn(
            "systemd-socket-activate",
            &args,
            &[],
            cluster_testkit::Output::Collect,
        );
        server.wait_ready(port);
        for _ in 0..20 {
            assert_eq!(http_get(port).unwrap(), "Hello, World!", "{balance}");
        }
        server.wait_for("adopted a socket-activated listener", LIMIT);
    }
}

#[test]
fn orphans_of_a_worker_are_reaped_and_stopped_with_the_cluster() {
    let worker = workspace_bin("test-worker");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "1",
        worker.to_str().unwrap(),
        "daemonize-grandchildren",
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    std::thread::sleep(Duration::from_millis(1500));
    let me = cluster.pid();
    // The short-lived daemon came to the cluster (subreaper) and was reaped: no zombie.
    let zombies = zombies_of(me);
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
    // The long-lived one is the cluster's child now, and goes with it.
    let daemons = daemons_of(me);
    assert_eq!(daemons.len(), 1, "{:?}", support::children_of(me));
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    assert!(daemons.iter().all(|p| !process_running(*p)));
}

#[test]
fn as_pid_one_in_a_pid_namespace_orphans_leave_no_zombie_and_no_process() {
    let worker = workspace_bin("test-worker");
    let cluster = workspace_bin("cluster");
    let mut namespace = support::ServerProcess::spawn(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            cluster.to_str().unwrap(),
            "-w",
            "1",
            worker.to_str().unwrap(),
            "daemonize-grandchildren",
            "127.0.0.1:0",
        ],
        &[],
        cluster_testkit::Output::Collect,
    );
    namespace.wait_for("all workers ready", LIMIT);
    // unshare forks the cluster, which is PID 1 inside: every orphan comes to it.
    let pid_one = support::children_of(namespace.pid())[0];
    std::thread::sleep(Duration::from_millis(1500));
    let zombies = zombies_of(pid_one).len();
    assert_eq!(zombies, 0);
    let daemons = daemons_of(pid_one);
    assert_eq!(daemons.len(), 1);
    support::signal(pid_one, Signal::TERM);
    assert!(namespace.wait(LIMIT).success(), "{}", namespace.output());
    assert!(daemons.iter().all(|p| !process_running(*p)));
}

#[test]
fn restarting_the_cluster_behind_a_held_socket_refuses_no_connection() {
    // The test plays systemd's socket unit: it holds the socket; each cluster gets it as
    // descriptor 3 with LISTEN_FDS and LISTEN_PID (set by a shell that execs the cluster).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let hello = workspace_bin("hello-http");
    let cluster = workspace_bin("cluster");
    /// Kills its cluster if the test fails half-way (it is no ServerProcess: it needs the
    /// listener placed at descriptor 3).
    struct Started(std::process::Child);
    impl Drop for Started {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                support::signal(self.0.id(), Signal::KILL);
                let _ = self.0.wait();
            }
        }
    }
    let start = || {
        let mut command = std::process::Command::new("/bin/sh");
        command
            .args([
                "-c",
                "LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec \"$@\"",
                "sh",
            ])
            .arg(&cluster)
            .args(["-w", "2", "-l", "warn"])
            .arg(&hello)
            .arg(&address)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
        fdpass::inherit_fds_at(&mut command, vec![fd], 3);
        Started(command.spawn().unwrap())
    };
    let mut first = start();
    let deadline = Instant::now() + LIMIT;
    while http_get(port).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = support::Load::start(port, 4);
    std::thread::sleep(Duration::from_millis(700));
    support::signal(first.0.id(), Signal::TERM);
    assert!(first.0.wait().unwrap().success());
    let mut second = start();
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, failed, _) = load.finish();
    assert!(
        failed.is_empty(),
        "{} failed of {ok}: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 100, "{ok}");
    support::signal(second.0.id(), Signal::TERM);
    assert!(second.0.wait().unwrap().success());
}

/// After `SIGUSR2` the service manager is told the new watcher's pid (gunicorn's USR2
/// re-exec leaves systemd tracking the old one, gunicorn#2856), and the new watcher's
/// notifications follow.
#[test]
fn an_upgrade_tells_the_service_manager_the_new_main_pid() {
    let manager = Manager::new("upgrade");
    let hello = workspace_bin("hello-http");
    let pid_file =
        std::env::temp_dir().join(format!("cluster-upgrade-notify-{}.pid", std::process::id()));
    let cluster = ClusterProcess::start_with_env(
        &[
            "-w",
            "1",
            "-p",
            pid_file.to_str().unwrap(),
            "--control",
            manager.path.with_extension("control").to_str().unwrap(),
            hello.to_str().unwrap(),
            "127.0.0.1:0",
        ],
        &[("NOTIFY_SOCKET", manager.path.to_str().unwrap())],
    );
    manager.until("READY=1", LIMIT);
    let old = cluster.pid();
    cluster.signal(Signal::USR2);
    let seen = manager.until("handed over to the new watcher", LIMIT);
    let handed = &seen.last().unwrap().1;
    let new: u32 = handed
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {handed:?}"));
    assert_ne!(new, old);
    // The pid file names it too, once the new watcher took over.
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_to_string(&pid_file)
        .unwrap_or_default()
        .trim()
        != new.to_string()
    {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + LIMIT;
    while process_running(old) {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    support::signal(new, Signal::TERM);
    manager.until("STOPPING=1", LIMIT);
}
