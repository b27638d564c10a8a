//! The cluster run as a hostile user and a hostile environment would run it: the watcher
//! paused, workers that break the shared socket, run short of descriptors, flood the
//! watcher, start-up kill loops, ports moved by a deploy, a watcher killed outright.

mod support;

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use cluster_watcher::{Balance, ClusterWatcher, Event};
use rustix::process::{Pid, Signal};
use support::{
    ClusterProcess, captured_logs, children_of, free_port, http_get, http_get_async, log_text,
    process_running, test_worker, watcher_port, workspace_bin,
};

const LIMIT: Duration = Duration::from_secs(10);

/// Resident memory of this process (the watcher, in library tests), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Waits until `port` answers, at most `limit`.
async fn answers_within(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_get_async(port).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn a_twelve_second_stall_of_the_watcher_replaces_no_healthy_worker() {
    let worker = workspace_bin("test-worker");
    let mut cluster =
        ClusterProcess::start(&["-w", "3", worker.to_str().unwrap(), "serve", "127.0.0.1:0"]);
    let port = cluster.port();
    cluster.wait_for("all workers ready", LIMIT);
    let before = cluster.worker_pids();
    assert_eq!(before.len(), 3);
    // A VM pause, a debugger, a full stdout pipe: the watcher does not run for 12 s (its
    // heartbeat timeout is 10 s) while the workers go on.
    cluster.signal(Signal::STOP);
    std::thread::sleep(Duration::from_secs(12));
    cluster.signal(Signal::CONT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.worker_pids(), before, "{}", cluster.output());
    assert!(http_get(port).is_ok());
    assert_eq!(cluster.count("worker killed"), 0, "{}", cluster.output());
    cluster.wait_for("did not run for a while", LIMIT);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shutting_down_the_shared_socket_does_not_kill_the_port() {
    let logs = captured_logs();
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    assert!(http_get_async(port).await.is_ok());
    // What a worker does to wake its accept thread: shutdown() on its copy. Every copy is
    // one open file description, so this one (the watcher's own) is the same thing.
    let (_, socket) = watcher.server_sockets().sockets().pop().unwrap();
    rustix::net::shutdown(&*socket, rustix::net::Shutdown::Both).unwrap();
    assert!(
        !rustix::net::sockopt::socket_acceptconn(&*socket).unwrap(),
        "the socket no longer listens, for any worker"
    );
    assert!(
        answers_within(port, Duration::from_secs(10)).await,
        "recovered:\n{}",
        log_text(&logs)
    );
    assert!(log_text(&logs).contains("stopped listening"));
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_nonblocking_flag_on_the_shared_socket_is_restored() {
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    let (_, socket) = watcher.server_sockets().sockets().pop().unwrap();
    let flags = rustix::fs::fcntl_getfl(&*socket).unwrap();
    rustix::fs::fcntl_setfl(&*socket, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
    let deadline = Instant::now() + LIMIT;
    while !rustix::fs::fcntl_getfl(&*socket)
        .unwrap()
        .contains(rustix::fs::OFlags::NONBLOCK)
    {
        assert!(Instant::now() < deadline, "O_NONBLOCK restored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        assert!(http_get_async(port).await.is_ok());
    }
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_workers_hold_no_copy_of_the_listening_socket() {
    let watcher =
        ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]).balance(Balance::RoundRobin));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    assert!(http_get_async(port).await.is_ok());
    let (_, socket) = watcher.server_sockets().sockets().pop().unwrap();
    let inode = rustix::fs::fstat(socket.as_fd()).unwrap().st_ino;
    let wanted = format!("socket:[{inode}]");
    for worker in watcher.workers() {
        for entry in std::fs::read_dir(format!("/proc/{}/fd", worker.pid)).unwrap() {
            let link = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
            assert_ne!(
                link.to_string_lossy(),
                wanted,
                "worker {} holds the listener",
                worker.pid
            );
        }
    }
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_near_the_descriptor_limit_closes_no_client() {
    let watcher =
        ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]).balance(Balance::RoundRobin));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    // `ulimit -n 48` for the workers.
    for worker in watcher.workers() {
        let pid = Pid::from_raw(worker.pid as i32).unwrap();
        let limit = rustix::process::Rlimit {
            current: Some(48),
            maximum: Some(48),
        };
        rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit).unwrap();
    }
    // 120 idle clients: connected, sending nothing.
    let clients: Vec<std::net::TcpStream> = (0..120)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for mut client in &clients {
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match client.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => closed += 1,
        }
    }
    eprintln!("figure: ulimit -n 48, 120 idle clients: {closed} closed");
    assert_eq!(closed, 0, "clients closed by the cluster");
    drop(clients);
    assert!(answers_within(port, LIMIT).await);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_kill_loop_backs_off_like_any_crash_loop() {
    let watcher = ClusterWatcher::new(test_worker(&["kill-self-from-gen", "2", "127.0.0.1:0"]));
    watcher.start(1).await.unwrap();
    // From generation 2 on, every worker is SIGKILLed right after it starts: not asked for
    // by the watcher, so it counts toward the backoff like any early end.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let first = watcher.workers()[0].pid;
    let mut events = watcher.events();
    rustix::process::kill_process(Pid::from_raw(first as i32).unwrap(), Signal::KILL).unwrap();
    let mut starts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if matches!(event, Event::Started { .. }) {
            starts += 1;
        }
    }
    // 266 a second without backoff; with it: 0, 100, 200, 400, 800 ms, ...
    eprintln!("figure: start-up SIGKILL loop: {starts} starts in 3 s");
    assert!((3..=8).contains(&starts), "{starts} starts in 3 s");
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_of_a_running_slot_backs_off() {
    let mut config = test_worker(&["serve-until-gen", "127.0.0.1:0", "2"]);
    config.min_uptime = Duration::from_secs(5);
    config.backoff_initial = Duration::from_millis(200);
    let watcher = ClusterWatcher::new(config);
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    let worker = watcher.workers()[0];
    rustix::process::kill_process(Pid::from_raw(worker.pid as i32).unwrap(), Signal::KILL).unwrap();
    // Generations 2 and later exit at once: 0, 200, 400, 800, 1600 ms.
    let mut starts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if matches!(event, Event::Started { .. }) {
            starts += 1;
        }
    }
    eprintln!("figure: crash loop of a running slot: {starts} starts in 3 s");
    assert!((3..=7).contains(&starts), "{starts} starts in 3 s");
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stop_requests_is_one_stop() {
    let before = rss();
    let watcher = ClusterWatcher::new(test_worker(&["flood-shutdown", "200000"]));
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    let exit = support::next_event(&mut events, Duration::from_secs(30), |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    assert_eq!(exit.stopped, Some(cluster_watcher::StopCause::Requested));
    let grown = rss().saturating_sub(before);
    eprintln!(
        "figure: 200000 stop requests: watcher grew {} KiB",
        grown >> 10
    );
    assert!(grown < 64 << 20, "the watcher grew by {} MiB", grown >> 20);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flood_nobody_reads_stays_bounded() {
    let before = rss();
    let watcher = ClusterWatcher::new(test_worker(&["flood-messages", "65536"]));
    watcher.start(1).await.unwrap();
    // Nobody calls messages(): the queue fills, then messages are counted and dropped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while watcher.dropped_messages() < 1000 {
        assert!(
            Instant::now() < deadline,
            "{} dropped",
            watcher.dropped_messages()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "figure: 64 KiB messages nobody reads: {} dropped, watcher grew {} KiB",
        watcher.dropped_messages(),
        grown >> 10
    );
    assert!(grown < 64 << 20, "the watcher grew by {} MiB", grown >> 20);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_log_line_is_cut_and_a_newline_cannot_forge_a_line() {
    let logs = captured_logs();
    let watcher = ClusterWatcher::new(test_worker(&["log-huge", "16777216"]));
    watcher.start(1).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while !log_text(&logs).contains("after the huge line") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = log_text(&logs);
    let longest = text.lines().map(str::len).max().unwrap();
    eprintln!("figure: a 16 MiB log line becomes at most {longest} bytes");
    assert!(longest < 20_000, "a line of {longest} bytes");
    assert!(text.contains("more bytes"));
    assert!(
        text.contains("after the huge line\\nforged line"),
        "escaped"
    );
    assert!(!text.lines().any(|l| l.starts_with("forged line")));
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_listens_on_after_a_restart_is_closed() {
    let (old, new) = (free_port(), free_port());
    let file = std::env::temp_dir().join(format!("cluster-address-{}", std::process::id()));
    std::fs::write(&file, format!("127.0.0.1:{old}")).unwrap();
    let watcher = ClusterWatcher::new(test_worker(&["serve-address-file", file.to_str().unwrap()]));
    watcher.start(2).await.unwrap();
    assert!(http_get_async(old).await.is_ok());
    // A deploy moves the port.
    std::fs::write(&file, format!("127.0.0.1:{new}")).unwrap();
    watcher.restart().await.unwrap();
    assert!(http_get_async(new).await.is_ok());
    // Closed once the old workers, which drop their copies as they stop, are gone.
    let deadline = Instant::now() + LIMIT;
    while std::net::TcpStream::connect(("127.0.0.1", old)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the old port is closed, not left hanging"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_error_is_said_in_the_watchers_log() {
    let logs = captured_logs();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let watcher = ClusterWatcher::new(test_worker(&["serve", &address]));
    assert!(watcher.start(1).await.is_err());
    let text = log_text(&logs);
    assert!(
        text.lines()
            .any(|l| l.contains("cannot listen") && l.contains("in use")),
        "{text}"
    );
}

#[test]
fn a_sigkilled_watcher_leaves_no_worker_behind_even_one_that_never_connected() {
    // `sleep` is no cluster worker: it never connects, never reports ready.
    let mut cluster = ClusterProcess::start(&["-w", "2", "sleep", "300"]);
    let deadline = Instant::now() + LIMIT;
    while cluster.worker_pids().len() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = cluster.worker_pids();
    cluster.signal(Signal::KILL);
    let _ = cluster.wait(LIMIT);
    let deadline = Instant::now() + LIMIT;
    while workers.iter().any(|p| process_running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(workers.iter().all(|p| !process_running(*p)), "orphans left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_forks_leaves_nothing_behind_when_stopped() {
    let watcher = ClusterWatcher::new(test_worker(&["fork-grandchild", "127.0.0.1:0"]));
    watcher.start(1).await.unwrap();
    let worker = watcher.workers()[0].pid;
    let grandchildren = children_of(worker);
    assert_eq!(grandchildren.len(), 1);
    watcher.stop().await;
    let deadline = Instant::now() + LIMIT;
    while grandchildren.iter().any(|p| process_running(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(grandchildren.iter().all(|p| !process_running(*p)));
}
