//! The control protocol: what `cluster status`, `restart`, `scale`, `stop`, `upgrade` and
//! `logs` (or `socat`, or any language) say to a running cluster, and its answers.
//!
//! One JSON object per line each way, each [`Request`] answered by one [`Response`] (`logs`
//! by many). Both sides read through [`read_line`] or [`ControlClient`], which refuse a line
//! over its bound ([`MAX_REQUEST`], [`MAX_RESPONSE`]), and write with [`encode_line`]: no
//! JSON is built by hand anywhere, and a new command is one [`Request`] variant that the
//! compiler walks you through on both sides.
//!
//! | request | answer |
//! |---|---|
//! | `{"cmd":"status"}` | `{"ok":true,"status":{…}}` ([`ClusterStatus`]) |
//! | `{"cmd":"restart"}` | when the rolling restart has finished: `{"ok":true}` or `{"ok":false,"error":"…"}` |
//! | `{"cmd":"scale","workers":N}` or `{"cmd":"scale","delta":±N}` | `{"ok":true,"workers":N}` |
//! | `{"cmd":"stop"}` | `{"ok":true}` once the program serving the cluster took the request |
//! | `{"cmd":"upgrade"}` | once a new watcher took over: `{"ok":true,"pid":P}`, or `{"ok":false,"error":"…"}` |
//! | `{"cmd":"reload"}` | once the configuration file's new contents are kept: `{"ok":true,"generation":G,"changed":[…]}`, or `{"ok":false,"error":"…"}` (refused, or rolled back) |
//! | `{"cmd":"reopen-logs"}` | once the log file was opened again (logrotate): `{"ok":true}` |
//! | `{"cmd":"logs","follow":BOOL,"worker":N}` | recent lines, then (with `follow`) new ones: `{"line":"…","worker":N}` each |
//!
//! A request that is not understood gets `{"ok":false,"error":"…"}` and the connection stays
//! usable.
//!
//! # Who may talk to whom
//!
//! The socket lives in a directory that only its owner can write to, or a sticky one
//! ([`check_socket_path`])
//! and every connection is checked with `SO_PEERCRED` both ways ([`check_peer`]): the server
//! answers only its own user and root, and a client believes only a server run by its own
//! user or root, so a socket planted by another local user is refused, not trusted.

mod client;
mod trust;

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::status::ClusterStatus;

pub use self::client::ControlClient;
pub use self::trust::{check_peer, check_socket_path};

/// The longest request line a server reads; a longer one is refused and the connection
/// closed.
pub const MAX_REQUEST: usize = 4096;

/// The longest answer line a client reads (a status of thousands of workers fits easily).
pub const MAX_RESPONSE: usize = 16 << 20;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// A snapshot of every worker.
    Status,
    /// A rolling restart; answered when it has finished.
    Restart,
    /// Run this many workers.
    Scale {
        /// An absolute count or a change.
        #[serde(flatten)]
        to: ScaleTo,
    },
    /// Stop the cluster gracefully.
    Stop,
    /// Replace the watcher itself; answered once the new one took over.
    Upgrade,
    /// Read the configuration again and apply what changed; answered once it is kept or
    /// rolled back.
    Reload,
    /// Open the log file again (logrotate renamed it).
    ReopenLogs,
    /// The log stream.
    Logs {
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
        /// Only this slot's lines.
        #[serde(default)]
        worker: Option<u32>,
    },
}

/// The worker count a [`Request::Scale`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleTo {
    /// Exactly this many.
    Workers(i64),
    /// This many more (or fewer, negative).
    Delta(i64),
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", try_from = "Wire")]
#[non_exhaustive]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(Box<ClusterStatus>),
    /// Done (restart, stop).
    Done,
    /// The cluster now runs this many workers.
    Scaled {
        /// The worker count asked for.
        workers: u32,
    },
    /// A new watcher took over.
    Upgraded {
        /// Its pid.
        pid: u32,
    },
    /// A reload was kept.
    Reloaded {
        /// The configuration's generation now.
        generation: u64,
        /// The keys it changed.
        changed: Vec<String>,
    },
    /// One log line.
    Line {
        /// The line, as the log shows it.
        line: String,
        /// The slot whose line it is, if a worker's.
        worker: Option<u32>,
    },
    /// The request failed, and why.
    Failed(String),
}

impl Response {
    /// A failure with this reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed(reason.into())
    }
}

/// The JSON shape of a [`Response`]: `ok` says whether it succeeded, the other keys carry
/// what it answers (a log line has no `ok`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Box<ClusterStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for Wire {
    fn from(response: Response) -> Self {
        let ok = Some(true);
        match response {
            Response::Status(status) => Self {
                ok,
                status: Some(status),
                ..Self::default()
            },
            Response::Done => Self {
                ok,
                ..Self::default()
            },
            Response::Scaled { workers } => Self {
                ok,
                workers: Some(workers),
                ..Self::default()
            },
            Response::Upgraded { pid } => Self {
                ok,
                pid: Some(pid),
                ..Self::default()
            },
            Response::Reloaded {
                generation,
                changed,
            } => Self {
                ok,
                generation: Some(generation),
                changed: Some(changed),
                ..Self::default()
            },
            Response::Line { line, worker } => Self {
                line: Some(line),
                worker,
                ..Self::default()
            },
            Response::Failed(error) => Self {
                ok: Some(false),
                error: Some(error),
                ..Self::default()
            },
        }
    }
}

impl TryFrom<Wire> for Response {
    type Error = String;

    fn try_from(wire: Wire) -> Result<Self, String> {
        Ok(match wire {
            Wire {
                ok: Some(false),
                error,
                ..
            } => Self::Failed(error.unwrap_or_else(|| "failed".to_owned())),
            Wire {
                line: Some(line),
                worker,
                ..
            } => Self::Line { line, worker },
            Wire {
                ok: Some(true),
                status: Some(status),
                ..
            } => Self::Status(status),
            Wire {
                ok: Some(true),
                workers: Some(workers),
                ..
            } => Self::Scaled { workers },
            Wire {
                ok: Some(true),
                pid: Some(pid),
                ..
            } => Self::Upgraded { pid },
            Wire {
                ok: Some(true),
                generation: Some(generation),
                changed,
                ..
            } => Self::Reloaded {
                generation,
                changed: changed.unwrap_or_default(),
            },
            Wire { ok: Some(true), .. } => Self::Done,
            Wire { ok: None, .. } => return Err("an answer without \"ok\"".to_owned()),
        })
    }
}

/// What can go wrong on the control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// A line longer than the protocol allows.
    #[error("a line over {0} bytes")]
    TooLong(usize),
    /// A line that is not a message of the protocol.
    #[error("not a message of the control protocol: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The other side closed the connection.
    #[error("the connection closed before an answer")]
    Closed,
    /// No line within the time allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The socket, its directory or the process answering belongs to someone else.
    #[error("{0}")]
    NotTrusted(String),
}

/// `message` as one line of JSON, line break included.
///
/// # Errors
/// When `message` cannot be serialized (never for this protocol's types).
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, ControlError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

/// One line (without its line break) as a `T`.
///
/// # Errors
/// [`ControlError::Malformed`].
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, ControlError> {
    Ok(serde_json::from_slice(line)?)
}

/// Reads one line of at most `max` bytes; `None` at end of file. A longer line is
/// [`ControlError::TooLong`], read no further than `max + 1` bytes.
///
/// # Errors
/// [`ControlError::Io`], [`ControlError::TooLong`].
pub async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> Result<Option<Vec<u8>>, ControlError> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(reader, max as u64 + 1);
    let read = limited.read_until(b'\n', &mut line).await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(ControlError::TooLong(max));
    }
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(response: Response) -> String {
        String::from_utf8(encode_line(&response).unwrap()).unwrap()
    }

    #[test]
    fn requests_read_as_the_documented_json() {
        let read = |text: &str| decode_line::<Request>(text.as_bytes()).unwrap();
        assert_eq!(read(r#"{"cmd":"status"}"#), Request::Status);
        assert_eq!(read(r#"{"cmd":"reload"}"#), Request::Reload);
        assert_eq!(read(r#"{"cmd":"reopen-logs"}"#), Request::ReopenLogs);
        assert_eq!(
            read(r#"{"cmd":"scale","workers":3}"#),
            Request::Scale {
                to: ScaleTo::Workers(3)
            }
        );
        assert_eq!(
            read(r#"{"cmd":"scale","delta":-1}"#),
            Request::Scale {
                to: ScaleTo::Delta(-1)
            }
        );
        assert_eq!(
            read(r#"{"cmd":"logs","follow":true}"#),
            Request::Logs {
                follow: true,
                worker: None
            }
        );
        assert!(decode_line::<Request>(br#"{"cmd":"explode"}"#).is_err());
        assert!(decode_line::<Request>(br#"{"cmd":"scale"}"#).is_err());
    }

    #[test]
    fn responses_keep_their_json_shape_and_read_back() {
        assert_eq!(wire(Response::Done), "{\"ok\":true}\n");
        assert_eq!(
            wire(Response::failed("no")),
            "{\"ok\":false,\"error\":\"no\"}\n"
        );
        assert_eq!(
            wire(Response::Scaled { workers: 4 }),
            "{\"ok\":true,\"workers\":4}\n"
        );
        for response in [
            Response::Done,
            Response::failed("why"),
            Response::Scaled { workers: 2 },
            Response::Upgraded { pid: 7 },
            Response::Reloaded {
                generation: 3,
                changed: vec!["workers".into()],
            },
            Response::Line {
                line: "x".into(),
                worker: Some(2),
            },
            Response::Status(Box::default()),
        ] {
            let line = encode_line(&response).unwrap();
            let back: Response = decode_line(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, response);
        }
    }

    #[tokio::test]
    async fn a_line_over_the_bound_is_refused() {
        let long = vec![b'x'; MAX_REQUEST + 10];
        let mut reader = tokio::io::BufReader::new(&long[..]);
        assert!(matches!(
            read_line(&mut reader, MAX_REQUEST).await,
            Err(ControlError::TooLong(_))
        ));
        let mut ok = tokio::io::BufReader::new(&b"{}\nrest"[..]);
        assert_eq!(
            read_line(&mut ok, MAX_REQUEST).await.unwrap(),
            Some(b"{}".to_vec())
        );
    }
}
