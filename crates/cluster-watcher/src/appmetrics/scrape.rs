//! Programs that do not link `cluster-worker` (`--listen`): each worker gets a port of its
//! own for its metrics (`CLUSTER_METRICS_PORT`, and `CLUSTER_METRICS_ADDR` as `127.0.0.1:PORT`;
//! one line of the application serves its registry there, e.g. Python's
//! `prometheus_client.start_http_server(int(os.environ["CLUSTER_METRICS_PORT"]))`), and the
//! watcher reads it: at every scrape of `/metrics`, every `--metrics-interval` in between (what
//! a crash loses), once more just before the worker is asked to stop, and every
//! [`FOLLOW_EVERY`] while it drains until it is gone (requests it answers after its last read
//! are not counted: the one loss of a planned stop here, a few milliseconds' worth, which
//! `cluster-worker` programs do not have).
//!
//! A read that ends after its worker exited is dropped ([`record`]): the exit has already
//! moved the worker's counts to the retired sums, and keeping the late read would count them
//! twice.
//!
//! Bounded: each read has [`SCRAPE_TIMEOUT`] and [`MAX_BODY`], every worker is read at
//! once, and a scrape waits [`SCRAPE_PATIENCE`] at most; a worker that kept a scrape waiting
//! is read in the background from then on, not waited for, until it answers within the
//! patience again. So one that never answers delays one scrape by the patience, and nothing
//! after: its series keep their previous values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Collection;
use crate::WorkerId;

/// How long one worker's metrics may take to read.
pub(crate) const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// The largest response read from a worker.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// How long a scrape of `/metrics` waits for the workers' reads.
pub(crate) const SCRAPE_PATIENCE: Duration = Duration::from_millis(20);

/// How often a stopping worker's metrics are read while it drains.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(25);

/// The ports given to workers for their metrics.
#[derive(Debug, Default)]
pub(crate) struct MetricsPorts(parking_lot::Mutex<HashMap<WorkerId, u16>>);

impl MetricsPorts {
    /// A free port for `id` (the kernel picks one; it is `id`'s until it exits).
    pub(crate) fn assign(&self, id: WorkerId) -> std::io::Result<u16> {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        self.0.lock().insert(id, port);
        Ok(port)
    }

    pub(crate) fn forget(&self, id: WorkerId) {
        self.0.lock().remove(&id);
    }

    fn all(&self) -> Vec<(WorkerId, u16)> {
        self.0
            .lock()
            .iter()
            .map(|(id, port)| (*id, *port))
            .collect()
    }

    /// Whether `id` was given a port.
    pub(crate) fn has(&self, id: WorkerId) -> bool {
        self.0.lock().contains_key(&id)
    }

    fn of(&self, id: WorkerId) -> Option<u16> {
        self.0.lock().get(&id).copied()
    }
}

/// Reads every worker's metrics at once into the store, waiting at most `patience`: reads
/// still going then finish in the background (a worker that never answers delays a scrape
/// by `patience`, not by [`SCRAPE_TIMEOUT`]), and the scrape shows their previous values.
pub(crate) async fn scrape_all(collection: &Arc<Collection>, patience: Duration) {
    let mut reads = tokio::task::JoinSet::new();
    let mut waited = Vec::new();
    let ports = collection.ports.all();
    collection
        .slow
        .lock()
        .retain(|id| ports.iter().any(|(known, _)| known == id));
    for (id, port) in ports {
        let read_one = {
            let collection = collection.clone();
            async move {
                if let Ok(text) = read(port).await {
                    record(&collection, id, &text);
                }
            }
        };
        if collection.slow.lock().contains(&id) {
            // Not waited for; quick again once it answers within the patience.
            let collection = collection.clone();
            tokio::spawn(async move {
                let began = tokio::time::Instant::now();
                read_one.await;
                if began.elapsed() <= patience {
                    collection.slow.lock().remove(&id);
                }
            });
            continue;
        }
        waited.push(id);
        reads.spawn(async move {
            read_one.await;
            id
        });
    }
    let all = async {
        while let Some(done) = reads.join_next().await {
            if let Ok(id) = done {
                waited.retain(|w| *w != id);
            }
        }
    };
    if tokio::time::timeout(patience, all).await.is_err() {
        reads.detach_all();
        collection.slow.lock().extend(waited);
    }
}

/// Reads one worker's metrics into the store (before it is asked to stop).
pub(crate) async fn scrape_one(collection: &Collection, id: WorkerId) {
    let Some(port) = collection.ports.of(id) else {
        return;
    };
    if let Ok(text) = read(port).await {
        record(collection, id, &text);
    }
}

/// Reads a stopping worker's metrics every [`FOLLOW_EVERY`] until it has exited (its port is
/// forgotten then), so what it answers while it drains is counted too; no longer than its
/// shutdown timeout and a second (a watcher dropped meanwhile never sees the exit).
pub(crate) async fn follow_until_gone(
    collection: &Collection,
    id: WorkerId,
    shutdown_timeout: Duration,
) {
    let until = tokio::time::Instant::now() + shutdown_timeout + Duration::from_secs(1);
    while collection.ports.has(id) && tokio::time::Instant::now() < until {
        tokio::time::sleep(FOLLOW_EVERY).await;
        scrape_one(collection, id).await;
    }
}

/// Keeps what `id` reported, unless it has exited meanwhile. Checked under the store's lock,
/// and the driver forgets a worker's port before it retires its counts, so a read either
/// lands before the retirement or not at all.
fn record(collection: &Collection, id: WorkerId, text: &str) {
    let mut store = collection.store.lock();
    if collection.ports.has(id) {
        let _ = store.update(id, text);
    }
}

/// Reads the workers every `interval()` (the configuration in force: a reload may change
/// it), for as long as the watcher lives (`interval` says `None` once it is gone).
pub(crate) async fn keep_reading(
    collection: std::sync::Weak<Collection>,
    interval: impl Fn() -> Option<Duration>,
) {
    loop {
        let Some(every) = interval() else {
            return;
        };
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
        let Some(collection) = collection.upgrade() else {
            return;
        };
        scrape_all(&collection, SCRAPE_TIMEOUT).await;
    }
}

/// `GET /metrics` on 127.0.0.1:`port` (HTTP/1.0: no chunked body), its body.
async fn read(port: u16) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let mut limited = (&mut stream).take(MAX_BODY as u64 + 1);
        limited
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        if response.len() > MAX_BODY {
            return Err(format!("over {MAX_BODY} bytes"));
        }
        let response = String::from_utf8(response).map_err(|_| "not UTF-8".to_owned())?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or("not an HTTP response")?;
        if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
            return Err(format!("{:.40}", head.lines().next().unwrap_or_default()));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .map_err(|_| "no answer in time".to_owned())?
}
