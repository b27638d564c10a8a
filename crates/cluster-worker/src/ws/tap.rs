//! [`Tap`]: the stream a handed-over-capable WebSocket reads through. It reads the socket
//! into a buffer of its own and gives the WebSocket codec at most up to the end of the
//! current frame, following frame headers as they pass, so it knows at every moment whether
//! the codec holds a partial frame or a partial message. At a boundary (no frame begun, no
//! fragmented message open) the codec holds nothing: the session can leave with the socket
//! and the bytes the tap read ahead, which is everything the client sent and nobody used.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much the tap reads from the socket at once.
pub(super) const CHUNK: usize = 16 * 1024;

/// A frame header: 2 bytes, then 0, 2 or 8 of length, then 4 of mask (client frames).
#[derive(Debug, Default, Clone, Copy)]
struct Header {
    bytes: [u8; 14],
    seen: usize,
}

impl Header {
    /// Its whole length, once the first two bytes are known.
    fn length(&self) -> Option<usize> {
        (self.seen >= 2).then(|| {
            let extended = match self.bytes[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.bytes[1] & 0x80 != 0 { 4 } else { 0 };
            2 + extended + mask
        })
    }

    /// The payload's length (the header is whole).
    fn payload(&self) -> u64 {
        match self.bytes[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.bytes[2], self.bytes[3]])),
            127 => u64::from_be_bytes(self.bytes[2..10].try_into().expect("8 bytes")),
            short => u64::from(short),
        }
    }
}

/// A stream whose reads stop at frame ends (see the module docs).
#[derive(Debug)]
pub(crate) struct Tap<S> {
    inner: Option<S>,
    /// Read from the socket, not yet given to the codec: `buffer[given..]`.
    buffer: Vec<u8>,
    given: usize,
    header: Header,
    /// Payload bytes of the current frame still to give.
    payload_left: u64,
    /// A data frame without FIN was given: the message goes on in continuation frames.
    fragmented: bool,
}

impl<S> Tap<S> {
    /// A tap on `inner`, with `unread` (bytes already read from it) first. Starts at a
    /// boundary: a session is only ever made or resumed between two messages.
    pub(crate) fn new(inner: S, unread: Vec<u8>) -> Self {
        Self {
            inner: Some(inner),
            buffer: unread,
            given: 0,
            header: Header::default(),
            payload_left: 0,
            fragmented: false,
        }
    }

    /// Whether the codec holds nothing of a frame or message: the stream can leave now.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header.seen == 0 && self.payload_left == 0 && !self.fragmented
    }

    /// The socket, and what was read from it but not given to the codec (`None` once taken).
    pub(crate) fn take_stream(&mut self) -> Option<(S, Vec<u8>)> {
        let inner = self.inner.take()?;
        let unread = self.buffer.split_off(self.given);
        self.buffer.clear();
        self.given = 0;
        Some((inner, unread))
    }

    /// How many of the `available` bytes may go to the codec now: the rest of the header
    /// (the first two bytes alone until its length is known), or of the payload.
    fn may_give(&self, available: usize) -> usize {
        let want = if self.payload_left > 0 {
            usize::try_from(self.payload_left).unwrap_or(usize::MAX)
        } else {
            match self.header.length() {
                Some(length) => length - self.header.seen,
                None => 2 - self.header.seen,
            }
        };
        available.min(want)
    }

    /// Follows `buffer[from..to]`, just given to the codec.
    fn follow(&mut self, from: usize, to: usize) {
        if self.payload_left > 0 {
            self.payload_left -= (to - from) as u64;
        } else {
            let at = self.header.seen;
            self.header.bytes[at..at + to - from].copy_from_slice(&self.buffer[from..to]);
            self.header.seen += to - from;
            if self.header.length() != Some(self.header.seen) {
                return;
            }
            self.payload_left = self.header.payload();
        }
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    /// A whole frame went to the codec: a message may have ended.
    fn frame_done(&mut self) {
        let (first, opcode) = (self.header.bytes[0], self.header.bytes[0] & 0x0f);
        let fin = first & 0x80 != 0;
        match opcode {
            // Continuation: the message ends with its FIN.
            0 => self.fragmented &= !fin,
            // Text or binary: a message begins, and ends here if FIN.
            1 | 2 => self.fragmented = !fin,
            // Control frames come between a message's frames and change nothing.
            _ => {}
        }
        self.header = Header::default();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if this.given == this.buffer.len() {
            this.buffer.clear();
            this.buffer.resize(CHUNK, 0);
            this.given = 0;
            let mut read = ReadBuf::new(&mut this.buffer);
            let polled = Pin::new(inner).poll_read(cx, &mut read);
            let filled = read.filled().len();
            this.buffer.truncate(filled);
            ready!(polled)?;
            if filled == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let give = this.may_give((this.buffer.len() - this.given).min(out.remaining()));
        let (from, to) = (this.given, this.given + give);
        out.put_slice(&this.buffer[from..to]);
        this.given = to;
        this.follow(from, to);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::ws::testing::masked as frame;

    #[tokio::test]
    async fn reads_stop_at_frame_ends_and_the_boundary_follows_messages() {
        let big = vec![7u8; 70_000];
        let mut wire = frame(0x81, b"hello"); // a whole text message
        wire.extend(frame(0x02, &big)); // a binary message begins (no FIN)
        wire.extend(frame(0x89, b"ping")); // a ping in between
        wire.extend(frame(0x80, b"end")); // its last frame
        wire.extend(&frame(0x81, b"next")[..3]); // the start of another
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::io::AsyncWriteExt::write_all(&mut client, &wire)
            .await
            .unwrap();
        let mut tap = Tap::new(server, Vec::new());
        async fn read_frame(tap: &mut Tap<tokio::io::DuplexStream>, length: usize) {
            let mut got = vec![0u8; length];
            tap.read_exact(&mut got).await.unwrap();
        }
        assert!(tap.at_boundary());
        read_frame(&mut tap, 2 + 4 + 5).await;
        assert!(tap.at_boundary(), "after a whole message");
        read_frame(&mut tap, 2 + 8 + 4 + 70_000).await;
        assert!(!tap.at_boundary(), "inside a fragmented message");
        read_frame(&mut tap, 2 + 4 + 4).await;
        assert!(!tap.at_boundary(), "a ping changes nothing");
        read_frame(&mut tap, 2 + 4 + 3).await;
        assert!(tap.at_boundary(), "the message ended");
        // A read never goes past a frame's end: the next frame's start is still in the tap
        // (or in the socket, not yet read).
        drop(client);
        let (mut socket, mut unread) = tap.take_stream().unwrap();
        socket.read_to_end(&mut unread).await.unwrap();
        assert_eq!(unread, &frame(0x81, b"next")[..3]);
    }
}
