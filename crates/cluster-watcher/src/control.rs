//! The control socket: a Unix stream socket that `cluster status`, `cluster restart`,
//! `cluster scale`, `cluster stop` and `cluster logs` (or `socat`, or any language) talk to.
//!
//! # Protocol
//!
//! One JSON object per line each way. Requests, at most 4 KiB each:
//!
//! | request | answer |
//! |---|---|
//! | `{"cmd":"status"}` | `{"ok":true,"status":{…}}` (see [`status_json`]) |
//! | `{"cmd":"restart"}` | when the rolling restart has finished: `{"ok":true}` or `{"ok":false,"error":"…"}` |
//! | `{"cmd":"scale","workers":N}` or `{"cmd":"scale","delta":±N}` | `{"ok":true,"workers":N}` |
//! | `{"cmd":"stop"}` | `{"ok":true}`; the embedding program is told ([`ControlServer::stop_requested`]) |
//! | `{"cmd":"upgrade"}` | when the embedding program has handed over to a new watcher: `{"ok":true,"pid":P}`, or `{"ok":false,"error":"…"}` ([`ControlServer::upgrade_requested`]) |
//! | `{"cmd":"logs","follow":BOOL,"worker":N}` | recent lines, then (with `follow`) new ones as they come: `{"line":"…"}` each |
//!
//! A bad request gets `{"ok":false,"error":"…"}` and the connection stays usable.
//!
//! # Who may connect
//!
//! The socket is created with mode 0600 in a directory of mode 0700 that this user owns, and
//! every connection is checked with `SO_PEERCRED`: only this user and root get an answer. At
//! most 64 connections are served at once (more are closed at once), a request must arrive
//! within 30 s, and a slow `logs` reader is dropped, never waited for.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::JoinHandle;

use crate::logfeed::LogFeed;
use crate::remote::Remote;
use crate::status::ClusterStatus;

const MAX_REQUEST: usize = 4096;
const MAX_CONNECTIONS: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The default control socket of a cluster named `name`: `$XDG_RUNTIME_DIR/cluster/NAME.sock`,
/// else `/run/cluster/NAME.sock` for root, else `/tmp/cluster-UID/NAME.sock`.
pub fn default_control_path(name: &str) -> PathBuf {
    let file = format!("{name}.sock");
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir()) {
        return PathBuf::from(runtime).join("cluster").join(file);
    }
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/cluster").join(file);
    }
    std::env::temp_dir()
        .join(format!("cluster-{}", uid.as_raw()))
        .join(file)
}

/// A running control socket; dropping it closes the socket and removes its file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
    stop: Arc<Notify>,
    upgrades: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<UpgradeRequest>>,
}

/// A client's `upgrade` request, waiting for its outcome.
#[derive(Debug)]
pub struct UpgradeRequest {
    reply: tokio::sync::oneshot::Sender<Result<u32, String>>,
}

impl UpgradeRequest {
    /// Answers the client: the new watcher's pid, or why the upgrade failed.
    pub fn reply(self, outcome: Result<u32, String>) {
        let _ = self.reply.send(outcome);
    }
}

/// How long an `upgrade` request waits for its outcome.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves when a client asked the cluster to stop (`cluster stop`).
    pub async fn stop_requested(&self) {
        self.stop.notified().await;
    }

    /// Resolves when a client asks for an upgrade of the watcher (`cluster upgrade`); the
    /// embedding program does it and [`reply`](UpgradeRequest::reply)s. One request waits at
    /// a time; a second one is refused meanwhile.
    pub async fn upgrade_requested(&self) -> UpgradeRequest {
        match self.upgrades.lock().await.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes `dir` (0700, ours, no symlink) if it does not exist, and checks it if it does.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    if !meta.is_dir() || !ours || meta.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory of this user that no one else can write to",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Binds the control socket at `path` and serves it.
pub(crate) fn serve(
    remote: Remote,
    path: &Path,
    logs: Option<LogFeed>,
) -> io::Result<ControlServer> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if path.exists() {
        // A live cluster answers; a dead one left its file behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a cluster already answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(Notify::new());
    let (upgrades_tx, upgrades) = tokio::sync::mpsc::channel(1);
    let span = remote.span();
    let context = Arc::new(Context {
        remote,
        logs,
        upgrades: upgrades_tx,
        stop: stop.clone(),
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    });
    let task = crate::driver::spawn_in(span.clone(), async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = context.connections.clone().try_acquire_owned() else {
                continue; // too many: closed at once
            };
            let context = context.clone();
            crate::driver::spawn_in(span.clone(), async move {
                let _permit = permit;
                if let Err(e) = context.connection(stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    });
    Ok(ControlServer {
        path: path.to_owned(),
        task,
        stop,
        upgrades: tokio::sync::Mutex::new(upgrades),
    })
}

struct Context {
    remote: Remote,
    logs: Option<LogFeed>,
    upgrades: tokio::sync::mpsc::Sender<UpgradeRequest>,
    stop: Arc<Notify>,
    connections: Arc<Semaphore>,
}

impl Context {
    async fn connection(&self, stream: UnixStream) -> io::Result<()> {
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        let me = rustix::process::geteuid();
        if peer.uid != me && !peer.uid.is_root() {
            tracing::warn!(
                uid = peer.uid.as_raw(),
                pid = peer.pid.as_raw_nonzero().get(),
                "control socket: refused another user"
            );
            return Ok(());
        }
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut line = Vec::new();
            let mut limited = tokio::io::AsyncReadExt::take(&mut read, MAX_REQUEST as u64 + 1);
            let reading = limited.read_until(b'\n', &mut line);
            let n = match tokio::time::timeout(REQUEST_TIMEOUT, reading).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_REQUEST {
                reply(
                    &mut write,
                    &json!({"ok": false, "error": "request over 4 KiB"}),
                )
                .await?;
                return Ok(());
            }
            let request: Value = match serde_json::from_slice(&line) {
                Ok(request) => request,
                Err(e) => {
                    reply(
                        &mut write,
                        &json!({"ok": false, "error": format!("not JSON: {e}")}),
                    )
                    .await?;
                    continue;
                }
            };
            if request["cmd"] == "logs" {
                return self.logs(&request, &mut write).await;
            }
            let answer = self.answer(&request).await;
            reply(&mut write, &answer).await?;
        }
    }

    async fn answer(&self, request: &Value) -> Value {
        match request["cmd"].as_str() {
            Some("status") => {
                let mut status = status_json(&self.remote.status().await);
                let about = self.remote.about();
                if let Value::Object(fields) = &mut status {
                    fields.extend(about);
                }
                json!({"ok": true, "status": status})
            }
            Some("restart") => match self.remote.restart().await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": error_chain(&e)}),
            },
            Some("scale") => {
                let current = self.remote.status().await.wanted_workers() as i64;
                let target = match (request["workers"].as_i64(), request["delta"].as_i64()) {
                    (Some(n), _) => n,
                    (None, Some(delta)) => current + delta,
                    _ => {
                        return json!({"ok": false, "error": "scale needs \"workers\" or \"delta\""});
                    }
                };
                if !(1..=4096).contains(&target) {
                    return json!({"ok": false, "error": format!("{target} workers: between 1 and 4096")});
                }
                match self.remote.scale(target as usize).await {
                    Ok(()) => json!({"ok": true, "workers": target}),
                    Err(e) => json!({"ok": false, "error": error_chain(&e)}),
                }
            }
            Some("upgrade") => {
                let (reply, outcome) = tokio::sync::oneshot::channel();
                if self.upgrades.try_send(UpgradeRequest { reply }).is_err() {
                    return json!({"ok": false, "error": "an upgrade is already under way"});
                }
                match tokio::time::timeout(UPGRADE_TIMEOUT, outcome).await {
                    Ok(Ok(Ok(pid))) => json!({"ok": true, "pid": pid}),
                    Ok(Ok(Err(error))) => json!({"ok": false, "error": error}),
                    Ok(Err(_)) => {
                        json!({"ok": false, "error": "this watcher does not upgrade itself"})
                    }
                    Err(_) => json!({"ok": false, "error": "no outcome within 5 minutes"}),
                }
            }
            Some("stop") => {
                self.stop.notify_waiters();
                self.stop.notify_one();
                json!({"ok": true})
            }
            Some(other) => json!({"ok": false, "error": format!("unknown command {other:?}")}),
            None => {
                json!({"ok": false, "error": "a request is {\"cmd\": \"status\"|\"restart\"|\"scale\"|\"stop\"|\"logs\"}"})
            }
        }
    }

    async fn logs(
        &self,
        request: &Value,
        write: &mut tokio::net::unix::OwnedWriteHalf,
    ) -> io::Result<()> {
        let Some(feed) = &self.logs else {
            return reply(
                write,
                &json!({"ok": false, "error": "this cluster keeps no log feed"}),
            )
            .await;
        };
        let worker = request["worker"].as_u64();
        let wanted = |line: &str| {
            worker.is_none_or(|w| {
                line.contains(&format!("worker={w} "))
                    || line.ends_with(&format!("worker={w}"))
                    || line.contains(&format!("\"worker\":{w},"))
                    || line.contains(&format!("\"worker\":{w}}}"))
            })
        };
        let mut live = feed.subscribe();
        for line in feed.recent() {
            if wanted(&line) {
                reply(write, &json!({"line": &*line})).await?;
            }
        }
        if request["follow"] != true {
            return Ok(());
        }
        loop {
            match live.recv().await {
                Ok(line) if wanted(&line) => reply(write, &json!({"line": &*line})).await?,
                Ok(_) => {}
                // A reader that falls behind is dropped: the cluster never waits for it.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let _ = reply(
                        write,
                        &json!({"ok": false, "error": format!("too slow: {missed} lines missed")}),
                    )
                    .await;
                    return Ok(());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

async fn reply(write: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    // A client that does not read cannot hold the task for ever.
    match tokio::time::timeout(Duration::from_secs(10), write.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client does not read",
        )),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The status as the control protocol and `cluster status --json` show it. Times are in
/// seconds; `rss_bytes` and `cpu_seconds` are of the worker's whole process tree.
pub fn status_json(status: &ClusterStatus) -> Value {
    let tree = crate::proc::ProcessTable::read();
    let slots: Vec<Value> = status
        .slots
        .iter()
        .map(|slot| {
            let workers: Vec<Value> = slot
                .workers
                .iter()
                .map(|w| {
                    let (rss, cpu) = tree.tree_usage(w.pid);
                    json!({
                        "pid": w.pid,
                        "generation": w.id.generation,
                        "state": w.phase.as_str(),
                        "current": w.current,
                        "uptime": w.uptime.as_secs_f64(),
                        "heartbeat_age": w.heartbeat_age.map(|d| d.as_secs_f64()),
                        "accepted": w.accepted,
                        "open_connections": w.open_connections,
                        "rss_bytes": rss,
                        "cpu_seconds": cpu,
                    })
                })
                .collect();
            let exit = slot.last_exit.map(|e| {
                json!({
                    "pid": e.pid,
                    "status": e.status.to_string(),
                    "stopped": e.stopped.map(|c| format!("{c:?}").to_lowercase()),
                    "killed": e.killed.map(|r| r.to_string()),
                })
            });
            json!({
                "slot": slot.slot,
                "wanted": slot.wanted,
                "generation": slot.generation,
                "backing_off": slot.backing_off.map(|d| d.as_secs_f64()),
                "queued": slot.queued,
                "restarts": {
                    "crashed": slot.restarts.crashed,
                    "hung": slot.restarts.hung,
                    "rolling": slot.restarts.rolling,
                    "requested": slot.restarts.requested,
                    "recycled": slot.restarts.recycled,
                },
                "last_exit": exit,
                "workers": workers,
            })
        })
        .collect();
    json!({
        "running": status.running,
        "ready_workers": status.ready_workers(),
        "wanted_workers": status.wanted_workers(),
        "rolling_restart": status.rolling_restart.map(|(done, total)| json!({"done": done, "total": total})),
        "rolling_restarts_completed": status.rolling_restarts_completed,
        "rolling_restarts_failed": status.rolling_restarts_failed,
        "slots": slots,
    })
}
