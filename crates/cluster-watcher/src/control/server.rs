//! The control socket: a Unix stream socket that `cluster status`, `restart`, `scale`,
//! `stop`, `upgrade` and `logs` (or `socat`, or any language) talk to, in the protocol of
//! [`cluster_ipc::control`].
//!
//! Requests the watcher answers itself (status, restart, scale, logs) are answered here.
//! Those that only the program embedding the watcher can carry out (stop, with its stop
//! delay; upgrade, which starts a new process) reach it as one typed stream,
//! [`ControlServer::next_request`], each with its [`Reply`].
//!
//! # Who may connect
//!
//! The socket is created with mode 0600 in a directory of mode 0700 that this user owns, or
//! a sticky one like `/tmp` (a directory someone else could write to, or a socket someone
//! else made, is refused, loudly), and every connection is checked with
//! `SO_PEERCRED`: only this user and root get an answer; others get one line saying why,
//! and at most one warning a minute is logged about them. At most 64 connections are
//! served at once (more get a line saying so), a request must arrive within 30 s, a
//! follower of `logs` that goes away is noticed at once, and a slow one is dropped, never
//! waited for.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_ipc::control::{
    ControlError, MAX_REQUEST, Request, Response, ScaleTo, check_peer, check_socket_path,
    decode_line, encode_line, read_line,
};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::logfeed::LogFeed;
use super::remote::Remote;
use crate::task::spawn_in;

const MAX_CONNECTIONS: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an answer may take to be written to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `upgrade` or `reload` request waits for its outcome.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a log reopen may take to be answered.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `stop` request waits for the embedding program to take it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What only the program embedding the watcher can do, asked over the control socket.
#[derive(Debug)]
pub enum ProgramRequest {
    /// `cluster stop`: stop the cluster (the client is answered once this is taken).
    Stop(Reply<()>),
    /// `cluster upgrade`: hand over to a new watcher; answer with its pid once it took
    /// over, or why it failed.
    Upgrade(Reply<Result<u32, String>>),
    /// `cluster reload`: read the configuration again and apply it; answer with the new
    /// generation and what changed once it is kept, or why it was refused or rolled back.
    Reload(Reply<Result<(u64, Vec<String>), String>>),
    /// `cluster logs --reopen`: open the log file again; answer once done, or why not.
    ReopenLogs(Reply<Result<(), String>>),
}

/// The answer a [`ProgramRequest`] waits for.
#[derive(Debug)]
pub struct Reply<T>(oneshot::Sender<T>);

impl<T> Reply<T> {
    /// Answers the client (who may have gone: nothing happens then).
    pub fn send(self, outcome: T) {
        let _ = self.0.send(outcome);
    }
}

/// A running control socket; dropping it closes the socket and removes its file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
    requests: tokio::sync::Mutex<mpsc::Receiver<ProgramRequest>>,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request for the embedding program (stop, upgrade). Cancel-safe: a request
    /// not taken waits for the next call.
    pub async fn next_request(&self) -> ProgramRequest {
        match self.requests.lock().await.recv().await {
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

/// Makes the socket's directory (0700, ours) if it does not exist; an existing one must be
/// ours and private, or sticky, and a socket already there ours.
fn private_place(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Made here if missing; an existing one is checked below, whoever made it.
        let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    }
    check_socket_path(path, false).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))
}

/// Binds the control socket at `path` and serves it.
pub(crate) fn serve(
    remote: Remote,
    path: &Path,
    logs: Option<LogFeed>,
) -> io::Result<ControlServer> {
    private_place(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket left behind by a dead cluster is removed; anything else is refused.
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
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
    let (requests_tx, requests) = mpsc::channel(4);
    let span = remote.span();
    let context = Arc::new(Context {
        remote,
        logs,
        requests: requests_tx,
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        refused: Mutex::new(Refusals::default()),
    });
    let task = spawn_in(span.clone(), async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let context = context.clone();
            spawn_in(span.clone(), async move { context.admit(stream).await });
        }
    });
    Ok(ControlServer {
        path: path.to_owned(),
        task,
        requests: tokio::sync::Mutex::new(requests),
    })
}

/// Refused connections, so that a flood of them logs one warning a minute, not one each.
#[derive(Debug, Default)]
struct Refusals {
    count: u64,
    last_warning: Option<Instant>,
}

struct Context {
    remote: Remote,
    logs: Option<LogFeed>,
    requests: mpsc::Sender<ProgramRequest>,
    connections: Arc<Semaphore>,
    refused: Mutex<Refusals>,
}

impl Context {
    /// Passes a request to the program serving the cluster and waits (at most `limit`) for
    /// its answer; the reason it failed otherwise (`cannot`: what a program that drops the
    /// request does not do).
    async fn ask_program<T>(
        &self,
        make: impl FnOnce(Reply<Result<T, String>>) -> ProgramRequest,
        limit: Duration,
        cannot: &str,
    ) -> Result<T, String> {
        let (reply, outcome) = oneshot::channel();
        if self.requests.try_send(make(Reply(reply))).is_err() {
            return Err("too many requests under way: try again".into());
        }
        match tokio::time::timeout(limit, outcome).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("this watcher does not {cannot}")),
            Err(_) => Err(format!("no outcome within {} s", limit.as_secs())),
        }
    }

    /// Serves one connection if there is room and the peer may talk to us; tells it why
    /// not otherwise.
    async fn admit(&self, stream: UnixStream) {
        let (whom, reason) = match (
            check_peer(&stream),
            self.connections.clone().try_acquire_owned(),
        ) {
            (Err(e), _) => ("another user", e.to_string()),
            (Ok(()), Err(_)) => (
                "a connection over the limit",
                format!("{MAX_CONNECTIONS} control connections are open already; try again"),
            ),
            (Ok(()), Ok(permit)) => {
                if let Err(e) = self.connection(stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
                drop(permit);
                return;
            }
        };
        self.note_refusal(whom, &reason);
        let (_, mut write) = stream.into_split();
        let _ = reply(&mut write, &Response::failed(reason)).await;
    }

    fn note_refusal(&self, whom: &str, reason: &str) {
        let mut refused = self.refused.lock();
        refused.count += 1;
        let now = Instant::now();
        if refused
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            refused.last_warning = Some(now);
            tracing::warn!(
                refused = refused.count,
                reason,
                "control socket: refused {whom} (at most one such warning a minute)"
            );
        }
    }

    async fn connection(&self, stream: UnixStream) -> Result<(), ControlError> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let line = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                read_line(&mut read, MAX_REQUEST),
            )
            .await
            {
                Err(_) | Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(line))) => line,
                Ok(Err(ControlError::TooLong(max))) => {
                    let answer = Response::failed(format!("request over {} KiB", max / 1024));
                    return reply(&mut write, &answer).await;
                }
                Ok(Err(e)) => return Err(e),
            };
            let request = match decode_line::<Request>(&line) {
                Ok(request) => request,
                Err(e) => {
                    reply(&mut write, &Response::failed(e.to_string())).await?;
                    continue;
                }
            };
            if let Request::Logs { follow, worker } = request {
                return self.logs(follow, worker, read, write).await;
            }
            let answer = self.answer(request).await;
            reply(&mut write, &answer).await?;
        }
    }

    async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                let mut status = self.remote.status(true).await;
                status.about = Some(self.remote.about());
                Response::Status(Box::new(status))
            }
            Request::Restart => match self.remote.restart().await {
                Ok(()) => Response::Done,
                Err(e) => Response::failed(error_chain(&e)),
            },
            Request::Scale { to } => self.scale(to).await,
            Request::Upgrade => {
                let outcome = self
                    .ask_program(ProgramRequest::Upgrade, UPGRADE_TIMEOUT, "upgrade itself")
                    .await;
                match outcome {
                    Ok(pid) => Response::Upgraded { pid },
                    Err(why) => Response::Failed(why),
                }
            }
            Request::ReopenLogs => {
                let outcome = self
                    .ask_program(
                        ProgramRequest::ReopenLogs,
                        REOPEN_TIMEOUT,
                        "have a log file to reopen",
                    )
                    .await;
                match outcome {
                    Ok(()) => Response::Done,
                    Err(why) => Response::Failed(why),
                }
            }
            Request::Reload => {
                let outcome = self
                    .ask_program(
                        ProgramRequest::Reload,
                        UPGRADE_TIMEOUT,
                        "have a configuration to reload",
                    )
                    .await;
                match outcome {
                    Ok((generation, changed)) => Response::Reloaded {
                        generation,
                        changed,
                    },
                    Err(why) => Response::Failed(why),
                }
            }
            Request::Stop => {
                let (reply, taken) = oneshot::channel();
                if self
                    .requests
                    .try_send(ProgramRequest::Stop(Reply(reply)))
                    .is_err()
                {
                    return Response::failed("busy: try again");
                }
                match tokio::time::timeout(STOP_TIMEOUT, taken).await {
                    Ok(Ok(())) => Response::Done,
                    _ => Response::failed("the program serving the cluster did not take the stop"),
                }
            }
            // Answered by `connection` before it gets here.
            Request::Logs { .. } => Response::failed("logs"),
        }
    }

    async fn scale(&self, to: ScaleTo) -> Response {
        let target = match to {
            ScaleTo::Workers(n) => n,
            ScaleTo::Delta(delta) => {
                let current = self.remote.status(false).await.wanted_workers() as i64;
                current.saturating_add(delta)
            }
        };
        if !(1..=4096).contains(&target) {
            return Response::failed(format!("{target} workers: between 1 and 4096"));
        }
        match self.remote.scale(target as usize).await {
            Ok(()) => Response::Scaled {
                workers: target as u32,
            },
            Err(e) => Response::failed(error_chain(&e)),
        }
    }

    /// Sends the recent lines (of one worker), then with `follow` the new ones, until the
    /// client goes away (noticed at once, not at the next line) or falls behind.
    async fn logs(
        &self,
        follow: bool,
        worker: Option<u32>,
        mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut write: OwnedWriteHalf,
    ) -> Result<(), ControlError> {
        let Some(feed) = &self.logs else {
            return reply(
                &mut write,
                &Response::failed("this cluster keeps no log feed"),
            )
            .await;
        };
        let wanted = |line_worker: Option<u32>| worker.is_none_or(|w| line_worker == Some(w));
        let mut live = feed.subscribe();
        for (line_worker, line) in feed.recent() {
            if wanted(line_worker) {
                reply(&mut write, &line_response(&line, line_worker)).await?;
            }
        }
        if !follow {
            return Ok(());
        }
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                // Anything read, or the end of it, means the client is done.
                _ = read_line(&mut read, MAX_REQUEST) => return Ok(()),
            };
            match next {
                Ok((line_worker, line)) if wanted(line_worker) => {
                    reply(&mut write, &line_response(&line, line_worker)).await?;
                }
                Ok(_) => {}
                // A reader that falls behind is dropped: the cluster never waits for it.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    let answer = Response::failed(format!("too slow: {missed} lines missed"));
                    let _ = reply(&mut write, &answer).await;
                    return Ok(());
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

fn line_response(line: &str, worker: Option<u32>) -> Response {
    Response::Line {
        line: line.to_owned(),
        worker,
    }
}

async fn reply(write: &mut OwnedWriteHalf, response: &Response) -> Result<(), ControlError> {
    let line = encode_line(response)?;
    // A client that does not read cannot hold the task for ever.
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&line)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ControlError::Timeout(WRITE_TIMEOUT)),
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
