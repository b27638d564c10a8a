//! Hostile input on every endpoint the project creates, and other users: each bad peer is
//! turned away with a logged reason, nothing leaks, and the cluster keeps serving.

mod support;

use std::time::Duration;

use cluster_ipc::{HubError, IpcHub, connect};
use cluster_watcher::{ClusterWatcher, Event, ExitKind};
use support::{
    captured_logs, http_get_async, log_text, next_event, test_worker, watcher_port, workspace_bin,
};

const LIMIT: Duration = Duration::from_secs(10);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn hostile_worker_on(endpoint: &str) {
    let _serial = support::serial_async().await;
    let logs = captured_logs();
    // One healthy cluster, one whose only worker attacks its watcher.
    let healthy = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    healthy.start(1).await.unwrap();
    let port = watcher_port(&healthy);
    let before = open_fds();
    let mut config = test_worker(&["hostile", endpoint]);
    config.ready_timeout = Duration::from_secs(2);
    let hostile = ClusterWatcher::new(config);
    let mut events = hostile.events();
    assert!(
        hostile.start(1).await.is_err(),
        "a worker that never says ready does not start"
    );
    let exit = next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    assert!(
        matches!(exit.status, ExitKind::Code(9) | ExitKind::Signal(9)),
        "{exit:?}"
    );
    drop(hostile);
    // The watcher's tasks close their sockets as they wind down; give them a moment.
    // (The count that ends the wait is the one judged: the healthy watcher may hold a
    // descriptor for an instant at any moment.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut now = open_fds();
    while now != before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = open_fds();
    }
    assert_eq!(now, before, "no descriptor leaked in the watcher");
    let text = log_text(&logs);
    let expected = match endpoint {
        "control" => "bad control traffic",
        "log" => "unreadable log record",
        _ => "bad server-socket request",
    };
    assert!(
        text.contains(expected),
        "the watcher logs why ({expected}):\n{text}"
    );
    http_get_async(port).await.unwrap();
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_socket_is_refused_and_logged() {
    hostile_worker_on("control").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_log_socket_is_refused_and_logged() {
    hostile_worker_on("log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_listen_socket_is_refused_and_logged() {
    hostile_worker_on("listen").await;
}

/// Runs `ipc-peer connect-as-nobody PATH KEY`; returns its one-line verdict.
fn connect_as_nobody(path: &std::path::Path, key: &cluster_ipc::Key) -> String {
    let out = std::process::Command::new(workspace_bin("ipc-peer"))
        .args(["connect-as-nobody", path.to_str().unwrap(), &key.to_hex()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_can_neither_reach_nor_hijack_the_hub() {
    let _serial = support::serial_async().await;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let hub = IpcHub::new().unwrap();
    let key = hub.generate_key();
    // The private directory stops another user before the socket is even reached.
    assert_eq!(connect_as_nobody(hub.path(), &key), "denied: io");
    // Even with the directory and socket opened up by mistake, SO_PEERCRED turns them away.
    let dir = hub.path().parent().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(hub.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(connect_as_nobody(hub.path(), &key), "denied: rejected");
    // The key was not spent by the intruder: the rightful child still connects.
    let (client, server) = tokio::join!(connect(hub.path(), &key), hub.accept(&key));
    client.unwrap();
    server.unwrap();
    assert!(matches!(
        connect(hub.path(), &key).await,
        Err(HubError::Rejected)
    ));
}
