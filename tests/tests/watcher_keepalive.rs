//! Keep-alive clients through rolling restarts and scale-downs: idle connections are handed
//! to the next generation, so no request fails (issue 13).

mod support;

use std::io::{BufReader, Write};
use std::time::Duration;

use cluster_testkit::KeepAliveLoad;
use cluster_watcher::{Balance, ClusterWatcher, WatcherConfig};
use support::{response, watcher_port, workspace_bin};

fn program(name: &str, balance: Balance) -> WatcherConfig {
    let mut config = WatcherConfig::new(workspace_bin(name))
        .arg("127.0.0.1:0")
        .balance(balance);
    config.shutdown_timeout = Duration::from_secs(10);
    config
}

async fn restarts_under_keep_alive(name: &str, balance: Balance) {
    let watcher = ClusterWatcher::new(program(name, balance));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    let before: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    let load = KeepAliveLoad::start(port, 16, "/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        watcher.restart().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let result = tokio::task::spawn_blocking(move || load.finish())
        .await
        .unwrap();
    let after: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    eprintln!(
        "{name} {balance:?}: {} requests, {} failed, {} connections opened",
        result.ok,
        result.failed.len(),
        result.connections
    );
    assert!(
        result.failed.is_empty(),
        "{:?}",
        &result.failed[..result.failed.len().min(5)]
    );
    assert!(result.ok > 1000, "only {} requests", result.ok);
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "every worker replaced"
    );
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_http_keep_alive_loses_nothing_through_restarts_in_shared_mode() {
    restarts_under_keep_alive("hello-http", Balance::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_http_keep_alive_loses_nothing_through_restarts_in_round_robin_mode() {
    restarts_under_keep_alive("hello-http", Balance::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_keep_alive_loses_nothing_through_restarts() {
    restarts_under_keep_alive("axum-hello", Balance::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_loses_nothing_through_a_scale_down() {
    let watcher = ClusterWatcher::new(program("hello-http", Balance::Shared));
    watcher.start(4).await.unwrap();
    let port = watcher_port(&watcher);
    let load = KeepAliveLoad::start(port, 16, "/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.scale(2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let result = tokio::task::spawn_blocking(move || load.finish())
        .await
        .unwrap();
    assert!(
        result.failed.is_empty(),
        "{:?}",
        &result.failed[..result.failed.len().min(5)]
    );
    // The two scaled away finish their drain and go (their time depends on the machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watcher.workers().len() != 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(watcher.workers().len(), 2);
    watcher.stop().await;
}

/// A client whose request started arriving before the stop and finished after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_around_a_restart_is_answered() {
    let watcher = ClusterWatcher::new(program("hello-http", Balance::Shared));
    watcher.start(1).await.unwrap();
    let port = watcher_port(&watcher);
    let mut client = BufReader::new(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    client
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = response(&mut client, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n");
    client.get_mut().write_all(b"GET / HTTP/1.1\r\nho").unwrap();
    watcher.restart().await.unwrap();
    let second = response(&mut client, b"st: t\r\n\r\n");
    assert!(first.0.starts_with("HTTP/1.1 200") && second.0.starts_with("HTTP/1.1 200"));
    watcher.stop().await;
}

/// A request in flight when the stop comes is finished by the old worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_finishes_on_the_old_worker() {
    let watcher = ClusterWatcher::new(program("hello-http", Balance::Shared));
    watcher.start(1).await.unwrap();
    let port = watcher_port(&watcher);
    let old = watcher.workers()[0].pid;
    let slow = tokio::task::spawn_blocking(move || {
        let mut client = BufReader::new(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        client
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        response(
            &mut client,
            b"GET /sleep?ms=1500 HTTP/1.1\r\nhost: t\r\n\r\n",
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.restart().await.unwrap();
    let (status, pid) = slow.await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(pid, old.to_string());
    watcher.stop().await;
}
