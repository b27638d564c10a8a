use std::io;

/// Why sending or receiving a message failed.
///
/// Every variant that follows a `recvmsg` guarantees that the descriptors which did arrive
/// with the offending packet have already been closed: the caller never has to clean up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying socket call failed (including `EPIPE` when the peer is gone).
    #[error("socket i/o failed")]
    Io(#[from] io::Error),
    /// The caller tried to send more descriptors than one message may carry.
    #[error("{count} file descriptors in one message, at most {max} allowed")]
    TooManyFds {
        /// How many descriptors were offered or announced.
        count: usize,
        /// The limit in force.
        max: usize,
    },
    /// A message's payload is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The payload length offered or announced.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The kernel had more control data (descriptors) than the receive buffer could hold.
    #[error("control data truncated: the peer sent more descriptors than allowed")]
    ControlTruncated,
    /// A packet was larger than any packet this protocol sends.
    #[error("packet truncated: the peer sent a packet larger than {max} bytes")]
    PacketTruncated {
        /// The largest packet accepted.
        max: usize,
    },
    /// The number of descriptors that arrived differs from what the message header declared.
    #[error("message declared {declared} descriptors but carried {received}")]
    FdCountMismatch {
        /// Count written in the header by the sender.
        declared: usize,
        /// Count that actually arrived.
        received: usize,
    },
    /// A control message other than `SCM_RIGHTS` arrived (for example credentials).
    #[error("unexpected control message {kind}")]
    UnexpectedControlMessage {
        /// The control message's name.
        kind: &'static str,
    },
    /// The packet does not follow the framing protocol.
    #[error("malformed packet: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The peer closed the socket after sending only part of a message.
    #[error("peer closed the socket mid-message after {received} of {expected} bytes")]
    ClosedMidMessage {
        /// Payload bytes received so far.
        received: usize,
        /// Payload bytes the header announced.
        expected: usize,
    },
}

/// Why a descriptor could not be turned into the requested socket type.
///
/// The descriptor is closed when this error is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketKindError {
    /// The descriptor is of another kind than requested.
    #[error("expected {expected}, found {found}")]
    Mismatch {
        /// What the caller asked for.
        expected: &'static str,
        /// What the descriptor is.
        found: String,
    },
    /// Inspecting or adopting the descriptor failed (for example: not a socket at all, or no
    /// tokio runtime to register it with).
    #[error("cannot inspect or adopt the descriptor")]
    Io(#[from] io::Error),
}
