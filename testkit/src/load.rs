//! Client threads sending requests in a loop, bounded in time and count.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http_get;

/// Successful requests, failures (with their reasons), distinct response bodies.
pub type LoadResult = (u64, Vec<String>, HashSet<String>);

/// Client threads, each sending one request per new connection until stopped, for at most
/// 60 s or 200,000 requests.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadResult>>,
}

impl Load {
    /// Starts `threads` client threads against 127.0.0.1:`port`.
    pub fn start(port: u16, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut seen) = (0u64, Vec::new(), HashSet::new());
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && ok < 200_000
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
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, Vec::new(), HashSet::new());
        for thread in self.threads {
            let (ok, failed, seen) = thread.join().expect("client thread");
            total.0 += ok;
            total.1.extend(failed);
            total.2.extend(seen);
        }
        total
    }
}

/// What a [`KeepAliveLoad`] saw.
#[derive(Debug, Default, Clone)]
pub struct KeepAliveResult {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed, and why (end of file before the response, reset, timeout, a
    /// status other than 200).
    pub failed: Vec<String>,
    /// Connections opened (one per client, plus one after each `Connection: close` or
    /// failure).
    pub connections: u64,
    /// Distinct values of the `x-cluster-pid` response header (the workers that answered).
    pub pids: HashSet<String>,
    /// Requests answered per tenth of a second since the load began, by `x-cluster-pid`:
    /// how the shares moved over time.
    pub timeline: std::collections::HashMap<(u64, String), u64>,
}

impl KeepAliveResult {
    /// Each worker's requests between `from` and `to` after the load began.
    pub fn shares_between(
        &self,
        from: Duration,
        to: Duration,
    ) -> std::collections::HashMap<String, u64> {
        let (from, to) = (tenths(from), tenths(to));
        let mut shares = std::collections::HashMap::new();
        for ((tenth, pid), count) in &self.timeline {
            if (from..to).contains(tenth) {
                *shares.entry(pid.clone()).or_default() += count;
            }
        }
        shares
    }
}

fn tenths(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis() / 100).unwrap_or(u64::MAX)
}

/// Client threads that each keep one HTTP/1.1 connection open and send requests on it one
/// after the other, as a reverse proxy's keep-alive pool does; a connection the server ends
/// with `Connection: close` is replaced without counting a failure. Bounded: 60 s or
/// 500,000 requests per thread.
#[derive(Debug)]
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<KeepAliveResult>>,
    began: Instant,
}

impl KeepAliveLoad {
    /// Starts `connections` client threads against 127.0.0.1:`port`, each requesting `path`.
    pub fn start(port: u16, connections: usize, path: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                std::thread::spawn(move || keep_alive_client(port, &path, &stop, began))
            })
            .collect();
        Self {
            stop,
            threads,
            began,
        }
    }

    /// When the clients started: [`KeepAliveResult::timeline`] counts from here.
    pub fn began(&self) -> Instant {
        self.began
    }

    /// Stops the clients (each finishes its request in flight) and adds up what they saw.
    pub fn finish(self) -> KeepAliveResult {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = KeepAliveResult::default();
        for thread in self.threads {
            let result = thread.join().expect("client thread");
            total.ok += result.ok;
            total.failed.extend(result.failed);
            total.connections += result.connections;
            total.pids.extend(result.pids);
            for (key, count) in result.timeline {
                *total.timeline.entry(key).or_default() += count;
            }
        }
        total
    }
}

fn keep_alive_client(port: u16, path: &str, stop: &AtomicBool, began: Instant) -> KeepAliveResult {
    let mut result = KeepAliveResult::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connection: Option<std::io::BufReader<std::net::TcpStream>> = None;
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && result.ok < 500_000 {
        let reader = match connection.as_mut() {
            Some(reader) => reader,
            None => match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = stream.set_nodelay(true);
                    result.connections += 1;
                    connection.insert(std::io::BufReader::new(stream))
                }
                Err(e) => {
                    result.failed.push(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match exchange(reader, request.as_bytes()) {
            Ok(response) => {
                result.ok += 1;
                if let Some(pid) = &response.pid {
                    let tenth = tenths(began.elapsed());
                    *result.timeline.entry((tenth, pid.clone())).or_default() += 1;
                }
                result.pids.extend(response.pid);
                if response.close {
                    connection = None;
                }
            }
            Err(e) => {
                result.failed.push(e);
                connection = None;
            }
        }
    }
    result
}

struct Answer {
    close: bool,
    pid: Option<String>,
}

/// One request and its response on a kept-alive connection.
fn exchange(
    reader: &mut std::io::BufReader<std::net::TcpStream>,
    request: &[u8],
) -> Result<Answer, String> {
    use std::io::{BufRead, Read, Write};
    reader
        .get_mut()
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    match reader.read_line(&mut status) {
        Ok(0) => return Err("end of file instead of a response".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {:?}", status.trim_end()));
    }
    let (mut length, mut close, mut pid) = (0usize, false, None);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("end of file in the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "x-cluster-pid" => pid = Some(value.to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(Answer { close, pid })
}
