//! Starting, serving and stopping a cluster of real worker processes in both balance modes.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cluster_watcher::{Balance, ClusterWatcher, KillReason, StartError, StopCause, WatcherConfig};
use support::{http_get_async, http_get_at, process_exists, test_worker, watcher_port};

async fn serve_in(balance: Balance) {
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]).balance(balance));
    watcher.start(4).await.unwrap();
    let workers = watcher.workers();
    assert_eq!(workers.len(), 4);
    assert!(workers.iter().all(|w| w.ready));
    let port = watcher_port(&watcher);
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let body = http_get_async(port).await.unwrap();
        seen.insert(body.split(" pid").next().unwrap().to_owned());
    }
    if balance == Balance::RoundRobin {
        // Strict turns: every worker serves.
        assert_eq!(seen.len(), 4, "{seen:?}");
    } else {
        assert!(!seen.is_empty());
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let started = Instant::now();
    let exits = watcher.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    assert_eq!(exits.len(), 4);
    for exit in &exits {
        assert_eq!(exit.status, cluster_watcher::ExitKind::Code(0), "{exit:?}");
        assert_eq!(exit.stopped, Some(StopCause::Stop));
        assert_eq!(exit.killed, None);
    }
    for pid in pids {
        assert!(
            !process_exists(pid),
            "worker {pid} still exists (or is a zombie)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_start_serve_and_stop_in_shared_mode() {
    serve_in(Balance::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_start_serve_and_stop_in_round_robin_mode() {
    serve_in(Balance::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_is_killed_at_the_shutdown_timeout() {
    let mut config = test_worker(&["serve-slow-stop", "127.0.0.1:0", "30000"]);
    config.shutdown_timeout = Duration::from_millis(500);
    let watcher = ClusterWatcher::new(config);
    watcher.start(2).await.unwrap();
    let pids: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    let started = Instant::now();
    let exits = watcher.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    for exit in &exits {
        assert_eq!(exit.killed, Some(KillReason::ShutdownTimeout), "{exit:?}");
        assert_eq!(exit.status, cluster_watcher::ExitKind::Signal(9));
    }
    assert!(pids.iter().all(|&pid| !process_exists(pid)));
}

#[tokio::test]
async fn start_errors_say_which_worker_failed_and_why() {
    let missing = ClusterWatcher::new(WatcherConfig::new("/nonexistent/program"));
    let err = missing.start(2).await.unwrap_err();
    assert!(matches!(err, StartError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/program"), "{err}");

    let exits = ClusterWatcher::new(test_worker(&["exit-before-ready", "7"]));
    let err = exits.start(2).await.unwrap_err();
    assert!(
        matches!(
            err,
            StartError::ExitedBeforeReady {
                status: cluster_watcher::ExitKind::Code(7),
                ..
            }
        ),
        "{err:?}"
    );

    let mut config = test_worker(&["never-ready"]);
    config.ready_timeout = Duration::from_millis(300);
    let slow = ClusterWatcher::new(config);
    let err = slow.start(1).await.unwrap_err();
    assert!(matches!(err, StartError::NotReady { .. }), "{err:?}");
    assert!(slow.workers().is_empty());

    assert!(matches!(
        ClusterWatcher::new(test_worker(&["serve"])).start(0).await,
        Err(StartError::ZeroWorkers)
    ));
}

/// In round-robin mode one pipe carries a worker's connections for every address it listens
/// on; whichever listener reads a connection meant for another passes it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_serves_two_addresses_through_one_pipe() {
    let config = test_worker(&["serve", "127.0.0.1:0,127.0.0.2:0"]).balance(Balance::RoundRobin);
    let watcher = ClusterWatcher::new(config);
    watcher.start(2).await.unwrap();
    // A worker is ready at its first listen; the second comes a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.server_sockets().sockets().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ports: Vec<(std::net::IpAddr, u16)> = watcher
        .server_sockets()
        .sockets()
        .into_iter()
        .filter_map(|(_, fd)| {
            // A duplicate: dropping the std listener must not close the watcher's socket.
            let listener = std::net::TcpListener::from(fd.try_clone().ok()?);
            let address = listener.local_addr().ok()?;
            Some((address.ip(), address.port()))
        })
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers = Vec::new();
        for _ in 0..20 {
            for &(ip, port) in &ports {
                answers.push((ip, http_get_at(ip, port)));
            }
        }
        answers
    })
    .await
    .unwrap();
    watcher.stop().await;
    for (ip, answer) in &answers {
        assert!(answer.is_ok(), "{ip}: {answer:?}");
    }
}

/// A watcher stopped and started again serves again, in round-robin mode too. A
/// connection made while it is stopped is neither refused nor closed: it is served after
/// the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_round_robin_watcher_serves_again_when_restarted() {
    use std::io::{Read, Write};
    let watcher =
        ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]).balance(Balance::RoundRobin));
    let mut waiting: Option<std::net::TcpStream> = None;
    for _ in 0..2 {
        watcher.start(2).await.unwrap();
        let port = watcher_port(&watcher);
        if let Some(mut early) = waiting.take() {
            let answer = tokio::task::spawn_blocking(move || {
                early.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut answer = String::new();
                early.read_to_string(&mut answer).map(|_| answer)
            })
            .await
            .unwrap()
            .unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        }
        let answer = http_get_async(port).await;
        assert!(answer.is_ok(), "{answer:?}");
        watcher.stop().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let early = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        early
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // No worker serves it now: reading finds nothing, neither data nor end of file.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut probe = [0; 16];
        let after = early
            .set_nonblocking(true)
            .and_then(|()| (&early).read(&mut probe));
        assert!(
            after
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the connection was closed while the watcher was stopped: {after:?}"
        );
        early.set_nonblocking(false).unwrap();
        waiting = Some(early);
    }
}

/// Round-robin: when a reload moves the workers to another address, the old address's
/// socket closes (its accept thread, blocked in `accept`, is woken and lets go of its
/// copy): clients are refused there instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_no_worker_listens_on_after_a_reload_refuses_connections() {
    let config = |address: &str| test_worker(&["serve", address]).balance(Balance::RoundRobin);
    let watcher = ClusterWatcher::new(config("127.0.0.1:0"));
    watcher.start(2).await.unwrap();
    let old = watcher_port(&watcher);
    assert!(http_get_async(old).await.is_ok());
    let new = cluster_testkit::free_port();
    let moved = config(&format!("127.0.0.1:{new}"));
    watcher.reload(moved, 2, vec!["args".into()]).await.unwrap();
    assert!(http_get_async(new).await.is_ok());
    // The release comes with the reload's end; the wake takes a moment more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = std::net::TcpStream::connect(("127.0.0.1", old));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the old address still takes connections: {refused:?}"
    );
    watcher.stop().await;
}
