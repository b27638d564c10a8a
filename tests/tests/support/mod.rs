//! Helpers of the integration tests that only they need; what tests and benchmarks share
//! lives in `cluster-testkit`, re-exported here.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod long_lived;

pub use cluster_testkit::{
    Load, LoadResult, ServerProcess, ServerProcess as ClusterProcess, children_of, fd_count,
    free_port, http_get, http_get_at, process_exists, process_running, rss_kib, signal,
    workspace_bin,
};

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};

/// An empty directory of the calling test's own: `<prefix>-<pid>-<name>` in the temporary
/// directory (emptied first if a run before left it).
pub fn scratch_dir(prefix: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The pid a pid file names (0 while it is missing or unreadable).
pub fn pid_in(file: &std::path::Path) -> u32 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (at most `limit`) until `pid_file` names another process than `old`, and `old` is
/// gone: a watcher's upgrade is over; the new watcher's pid.
pub fn wait_new_watcher(
    cluster: &ClusterProcess,
    pid_file: &std::path::Path,
    old: u32,
    limit: std::time::Duration,
) -> u32 {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = pid_in(pid_file);
        if now != 0 && now != old && !process_running(old) {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What `/proc/self/fd/N` points at, e.g. `pipe:[1234]` or `socket:[5678]`.
pub fn link_of(fd: &impl AsRawFd) -> String {
    link_of_number(fd.as_raw_fd()).expect("descriptor is open")
}

fn link_of_number(fd: RawFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// How many descriptors of this process refer to `target` (a `link_of` value). Unlike a plain
/// descriptor count, this stays exact while other tests in the same process open files.
pub fn refs_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy() == target)
                .unwrap_or(false)
        })
        .count()
}

/// Spawns a helper of this package with one end of a fresh socket pair inherited as
/// `FDPASS_FD`; returns our end (blocking mode) and the child.
pub fn spawn_peer(bin: &str, args: &[&str]) -> (fdpass::FdSocket, std::process::Child) {
    let (ours, theirs) = fdpass::FdSocket::pair().expect("socket pair");
    let mut command = std::process::Command::new(workspace_bin(bin));
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    command
        .args(args)
        .env("FDPASS_FD", number.to_string())
        .stdout(std::process::Stdio::piped());
    let child = command.spawn().expect("spawn helper");
    (ours, child)
}

/// Waits for a child, at most `limit`; kills it and panics past that.
pub fn wait_for(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// [`http_get`] from async test code, on a blocking thread so the runtime keeps running.
pub async fn http_get_async(port: u16) -> Result<String, String> {
    tokio::task::spawn_blocking(move || http_get(port))
        .await
        .expect("the request thread panicked")
}

/// A watcher configuration running the `test-worker` helper with short timeouts.
pub fn test_worker(args: &[&str]) -> cluster_watcher::WatcherConfig {
    let mut config = cluster_watcher::WatcherConfig::new(workspace_bin("test-worker"))
        .args(args.iter().copied());
    config.shutdown_timeout = std::time::Duration::from_secs(5);
    config.ready_timeout = std::time::Duration::from_secs(10);
    config.heartbeat_interval = std::time::Duration::from_millis(100);
    config.heartbeat_timeout = std::time::Duration::from_millis(1000);
    config
}

/// The port of the (single) TCP socket the watcher's workers listen on.
pub fn watcher_port(watcher: &cluster_watcher::ClusterWatcher) -> u16 {
    for (_, fd) in watcher.server_sockets().sockets() {
        let listener = fd.try_clone().map(std::net::TcpListener::from);
        if let Ok(addr) = listener.and_then(|l| l.local_addr()) {
            return addr.port();
        }
    }
    panic!("no TCP listener in the watcher");
}

/// Waits for an event matching `pick`, at most `limit`.
pub async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<cluster_watcher::Event>,
    limit: std::time::Duration,
    mut pick: impl FnMut(&cluster_watcher::Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream ended: {e}"),
            Err(_) => panic!("no matching event within {limit:?}"),
        }
    }
}

/// Captures this process's `tracing` output (installed once per process); returns the text
/// logged so far each time it is read.
pub fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct CaptureWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log text.
pub fn log_text(logs: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
}

/// Writes `request`, reads one response; returns its status line and `x-cluster-pid`.
pub fn response(client: &mut BufReader<std::net::TcpStream>, request: &[u8]) -> (String, String) {
    client.get_mut().write_all(request).unwrap();
    let mut status = String::new();
    client.read_line(&mut status).unwrap();
    let (mut length, mut pid) = (0, String::new());
    loop {
        let mut line = String::new();
        client.read_line(&mut line).unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if let Some(v) = line.strip_prefix("x-cluster-pid:") {
            pid = v.trim().to_owned();
        }
    }
    let mut body = vec![0; length];
    std::io::Read::read_exact(client, &mut body).unwrap();
    (status, pid)
}

/// Taken by every test of a binary whose tests count this process's descriptors or
/// children, or start clusters side by side that must not meet: under plain `cargo test`
/// the tests of one binary run on threads of one process, and a descriptor or child another
/// test made meanwhile would look like a leak. One lock for sync and async tests alike.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// [`SERIAL`] for a plain `#[test]` (outside any runtime).
pub fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.blocking_lock()
}

/// [`SERIAL`] for an async test.
pub async fn serial_async() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The pids of each slot's current worker, from `cluster status --json`.
pub fn current_pids(status: &serde_json::Value) -> Vec<u64> {
    status["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["workers"].as_array().into_iter().flatten())
        .filter(|w| w["current"] == true)
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

/// `cluster ARGS hello-http 127.0.0.1:PORT` on a free port, once every worker is ready; the
/// cluster and its port.
pub fn hello_cluster(args: &[&str]) -> (ClusterProcess, u16) {
    let port = free_port();
    let hello = workspace_bin("hello-http");
    let address = format!("127.0.0.1:{port}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([hello.to_str().expect("a UTF-8 path"), &address]);
    let cluster = ClusterProcess::start(&all);
    cluster.wait_for("all workers ready", std::time::Duration::from_secs(30));
    (cluster, port)
}
