//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

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

/// A program built by this workspace: a helper of this package or a binary of another.
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up, examples beside.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>");
    for candidate in [
        profile_dir.join(name),
        profile_dir.join("examples").join(name),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "{name} is not built in {}: run `cargo build --workspace --all-targets`",
        profile_dir.display()
    );
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

/// One HTTP/1.1 request on a new connection to 127.0.0.1:`port`; the body, or why it failed.
pub fn http_get(port: u16) -> Result<String, String> {
    http_get_at(std::net::Ipv4Addr::LOCALHOST.into(), port)
}

/// [`http_get`] from async test code, on a blocking thread so the runtime keeps running.
pub async fn http_get_async(port: u16) -> Result<String, String> {
    tokio::task::spawn_blocking(move || http_get(port))
        .await
        .expect("the request thread panicked")
}

/// [`http_get`] to another local address (`127.0.0.2`, say).
pub fn http_get_at(ip: std::net::IpAddr, port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect((ip, port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("bad response {response:?}"));
    }
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// Whether a process exists (a zombie counts as existing: it was not reaped).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process exists and is not a zombie (killed, but its parent, possibly an init
/// that does not reap, has not reaped it).
pub fn process_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Successful requests, failures (with their reasons), distinct response bodies.
pub type LoadResult = (u64, Vec<String>, std::collections::HashSet<String>);

/// Client threads sending requests in a loop until told to stop; returns (ok, failed,
/// distinct bodies seen) when joined.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadResult>>,
}

impl Load {
    /// Starts `threads` client threads against `port`.
    pub fn start(port: u16, threads: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut seen) =
                        (0u64, Vec::new(), std::collections::HashSet::new());
                    // Bounded: at most 60 s or 200,000 requests per thread.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst)
                        && std::time::Instant::now() < deadline
                        && ok < 200_000
                    {
                        match http_get(port) {
                            Ok(body) => {
                                ok += 1;
                                seen.insert(body);
                            }
                            Err(e) => failed.push(e),
                        }
                    }
                    (ok, failed, seen)
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; returns (successful requests, failures, distinct bodies).
    pub fn finish(self) -> LoadResult {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut total = (0, Vec::new(), std::collections::HashSet::new());
        for t in self.threads {
            let (ok, failed, seen) = t.join().expect("client thread");
            total.0 += ok;
            total.1.extend(failed);
            total.2.extend(seen);
        }
        total
    }
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

impl std::io::Write for CaptureWriter {
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

/// A running `cluster` binary with its output collected.
pub struct ClusterProcess {
    pub child: std::process::Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl ClusterProcess {
    /// Starts `cluster ARGS` (the workspace's binary).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts `cluster ARGS` with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(workspace_bin("cluster"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cluster");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        Self {
            child,
            output,
            readers,
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a line contains `needle`; returns that line.
    pub fn wait_for(&self, needle: &str, limit: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line with {needle:?} within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.output().lines().filter(|l| l.contains(needle)).count()
    }

    /// The port from the first `listening on 127.0.0.1:PORT` line.
    pub fn port(&self) -> u16 {
        let line = self.wait_for(
            "listening on 127.0.0.1:",
            std::time::Duration::from_secs(20),
        );
        let tail = line.split("listening on 127.0.0.1:").nth(1).unwrap();
        tail.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// The pids of this process's children (its workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.child.id())
    }

    /// Sends a signal to the cluster process (only the process this test started).
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            signal,
        )
        .unwrap();
    }

    /// Waits for exit, at most `limit`, then (at most 2 s more) for the last of its output.
    pub fn wait(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let status = wait_for(&mut self.child, limit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        status
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let workers = self.worker_pids();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in workers {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

/// Pids whose parent is `parent`, from /proc/*/stat.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) && state != "Z" {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}
