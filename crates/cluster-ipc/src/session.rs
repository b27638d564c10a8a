//! A live session moving between generations: what a stopping worker hands back with a
//! connection that is in the middle of a long-lived protocol (a WebSocket between two
//! messages), for a worker of the next generation to resume it where it was.
//!
//! It travels in front of the connection's unread bytes, in the prefix the client pipe
//! already carries ([`ClientSocketSendPipe::send_with_prefix`](crate::ClientSocketSendPipe)):
//! the watcher passes prefixes on untouched, so a session moves wherever an idle connection
//! can (restarts, scale-down, recycling, the watcher's own upgrade, every balance mode)
//! without the watcher knowing sessions exist. A prefix is a session when it starts with
//! [`SESSION_MAGIC`], which begins with a NUL byte: the first byte of an HTTP request, or of
//! HTTP/2's preface, never is.
//!
//! Layout: `SESSION_MAGIC`, the length of the record (4 bytes, big-endian), the record
//! ([`SessionHandover`], postcard), then the bytes read from the client and not consumed.

use serde::{Deserialize, Serialize};

use crate::ChannelError;
use crate::codec::{decode, encode};

/// The first bytes of a prefix that carries a session.
pub const SESSION_MAGIC: &[u8; 8] = b"\0cluster";

/// The largest record (the application's state included) a session may carry.
pub const MAX_SESSION_RECORD: usize = 1 << 20;

/// What a resumed session needs besides its socket and unread bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHandover {
    /// The protocol and its negotiated parameters.
    pub kind: SessionKind,
    /// The application's state, in its own encoding.
    pub state: Vec<u8>,
}

/// The protocol a session speaks, with what was negotiated at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SessionKind {
    /// A server-side WebSocket (RFC 6455), stopped between two messages.
    WebSocket {
        /// The subprotocol agreed on (`Sec-WebSocket-Protocol`).
        protocol: Option<String>,
        /// The largest message the server accepts.
        max_message_size: Option<u64>,
        /// The largest frame the server accepts.
        max_frame_size: Option<u64>,
    },
}

/// Why a prefix that says it carries a session cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The record's length is past the end of the prefix, or over [`MAX_SESSION_RECORD`].
    #[error("session record of {0} bytes does not fit")]
    Length(usize),
    /// The record is not a [`SessionHandover`].
    #[error("undecodable session record")]
    Record(#[source] ChannelError),
}

impl SessionHandover {
    /// The prefix that carries this session, then `unread`.
    ///
    /// # Errors
    /// [`SessionError::Length`] for a record over [`MAX_SESSION_RECORD`];
    /// [`SessionError::Record`] when it cannot be encoded.
    pub fn to_prefix(&self, unread: &[u8]) -> Result<Vec<u8>, SessionError> {
        let record = encode(self).map_err(SessionError::Record)?;
        if record.len() > MAX_SESSION_RECORD {
            return Err(SessionError::Length(record.len()));
        }
        let length = u32::try_from(record.len()).map_err(|_| SessionError::Length(record.len()))?;
        let mut prefix = Vec::with_capacity(SESSION_MAGIC.len() + 4 + record.len() + unread.len());
        prefix.extend_from_slice(SESSION_MAGIC);
        prefix.extend_from_slice(&length.to_be_bytes());
        prefix.extend_from_slice(&record);
        prefix.extend_from_slice(unread);
        Ok(prefix)
    }

    /// The session a prefix carries and the client's unread bytes after it; `None` when the
    /// prefix is not a session's (a plain connection's first bytes).
    ///
    /// # Errors
    /// A prefix that starts like a session's but is not one.
    pub fn from_prefix(prefix: &[u8]) -> Option<Result<(Self, &[u8]), SessionError>> {
        let rest = prefix.strip_prefix(SESSION_MAGIC.as_slice())?;
        Some(Self::split(rest))
    }

    fn split(rest: &[u8]) -> Result<(Self, &[u8]), SessionError> {
        let (length, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(SessionError::Length(rest.len()))?;
        let length = u32::from_be_bytes(*length) as usize;
        if length > MAX_SESSION_RECORD || length > rest.len() {
            return Err(SessionError::Length(length));
        }
        let (record, unread) = rest.split_at(length);
        let handover = decode(record).map_err(SessionError::Record)?;
        Ok((handover, unread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover() -> SessionHandover {
        SessionHandover {
            kind: SessionKind::WebSocket {
                protocol: Some("chat".into()),
                max_message_size: Some(1 << 20),
                max_frame_size: None,
            },
            state: b"user=7 room=lobby".to_vec(),
        }
    }

    #[test]
    fn a_session_and_its_unread_bytes_come_back_as_they_went() {
        let prefix = handover().to_prefix(b"\x81\x85partial").unwrap();
        let (back, unread) = SessionHandover::from_prefix(&prefix).unwrap().unwrap();
        assert_eq!(back, handover());
        assert_eq!(unread, b"\x81\x85partial");
    }

    #[test]
    fn plain_prefixes_are_not_sessions_and_broken_ones_are_errors() {
        assert!(SessionHandover::from_prefix(b"GET / HTTP/1.1\r\n").is_none());
        assert!(SessionHandover::from_prefix(b"PRI * HTTP/2.0\r\n").is_none());
        assert!(SessionHandover::from_prefix(b"").is_none());
        let prefix = handover().to_prefix(b"").unwrap();
        for cut in SESSION_MAGIC.len()..prefix.len() {
            assert!(
                matches!(SessionHandover::from_prefix(&prefix[..cut]), Some(Err(_))),
                "cut at {cut}"
            );
        }
        let mut huge = SESSION_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            SessionHandover::from_prefix(&huge),
            Some(Err(SessionError::Length(_)))
        ));
    }
}
