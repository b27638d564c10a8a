//! [`Inflate`]: permessage-deflate (RFC 7692) for what the client sends, under the codec.
//! Only when the application asked for it ([`Upgrade::deflate`](super::Upgrade::deflate))
//! and the client offered it: a compressed message (RSV1 on its first frame) is gathered,
//! inflated with the session's running window (the client keeps its context from one
//! message to the next) and given to the codec as one plain frame; every other frame passes
//! as it came. The server sends its own messages uncompressed, which the extension allows.
//! That window lives in this process only, so a session with it cannot move: at a stop it
//! is closed with 1012 and counted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The tail every compressed message had before the sender stripped it (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Decompresses what the client sends (see the module docs).
pub(crate) struct Inflate<S> {
    inner: S,
    /// Read from the socket, not yet a whole frame.
    input: Vec<u8>,
    /// Ready for the codec: `output[given..]`.
    output: Vec<u8>,
    given: usize,
    /// A compressed message being gathered: its opcode and payload so far.
    gathering: Option<(u8, Vec<u8>)>,
    window: Decompress,
    /// The largest message inflated (the codec's own limit, so a bomb stops here).
    max_message: usize,
    eof: bool,
}

impl<S> Inflate<S> {
    pub(crate) fn new(inner: S, read: Vec<u8>, max_message: usize) -> Self {
        Self {
            inner,
            input: read,
            output: Vec::new(),
            given: 0,
            gathering: None,
            window: Decompress::new(false),
            max_message,
            eof: false,
        }
    }

    /// Turns every whole frame in `input` into what the codec reads.
    fn process(&mut self) -> io::Result<()> {
        while let Some((frame, length)) = parse(&self.input) {
            let bytes: Vec<u8> = self.input.drain(..length).collect();
            self.frame(frame, &bytes)?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame, bytes: &[u8]) -> io::Result<()> {
        let payload = frame.payload(bytes);
        match (frame.opcode, self.gathering.as_mut()) {
            // A compressed message begins.
            (1 | 2, None) if frame.rsv1 => self.gathering = Some((frame.opcode, payload)),
            // Its next frame.
            (0, Some((_, gathered))) => gathered.extend_from_slice(&payload),
            // Control frames, and messages sent plain: as they came.
            _ => {
                self.output.extend_from_slice(bytes);
                return Ok(());
            }
        }
        if frame.fin
            && let Some((opcode, gathered)) = self.gathering.take()
        {
            let plain = self.inflate(&gathered)?;
            self.output.extend_from_slice(&plain_frame(opcode, &plain));
        }
        Ok(())
    }

    /// One message, inflated with the running window.
    fn inflate(&mut self, compressed: &[u8]) -> io::Result<Vec<u8>> {
        let mut input = compressed.to_vec();
        input.extend_from_slice(&TAIL);
        let mut plain = Vec::with_capacity(input.len() * 3);
        let mut at = 0;
        loop {
            if plain.len() == plain.capacity() {
                plain.reserve(plain.capacity().max(4096));
            }
            let before = self.window.total_in();
            let status = self
                .window
                .decompress_vec(&input[at..], &mut plain, FlushDecompress::Sync)
                .map_err(io::Error::other)?;
            at += usize::try_from(self.window.total_in() - before).unwrap_or(usize::MAX);
            if plain.len() > self.max_message {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "inflated message over the size limit",
                ));
            }
            if at >= input.len() && plain.len() < plain.capacity() || status == Status::StreamEnd {
                return Ok(plain);
            }
        }
    }
}

/// A frame header, parsed.
#[derive(Debug, Clone, Copy)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    header: usize,
    mask: Option<[u8; 4]>,
}

impl Frame {
    /// The payload of this frame's `bytes`, unmasked.
    fn payload(&self, bytes: &[u8]) -> Vec<u8> {
        let mut payload = bytes[self.header..].to_vec();
        if let Some(mask) = self.mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[i % 4];
            }
        }
        payload
    }
}

/// The first whole frame of `bytes`, and its length; `None` until it is all there.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    let [first, second, ..] = *bytes else {
        return None;
    };
    let (length, mut header) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    let mask = if second & 0x80 != 0 {
        let mask: [u8; 4] = bytes.get(header..header + 4)?.try_into().ok()?;
        header += 4;
        Some(mask)
    } else {
        None
    };
    let total = header.checked_add(usize::try_from(length).ok()?)?;
    (bytes.len() >= total).then_some((
        Frame {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            header,
            mask,
        },
        total,
    ))
}

/// A final, unmasked frame holding `payload` (the codec takes unmasked frames from it).
fn plain_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n < 65536 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.given == this.output.len() {
            this.output.clear();
            this.given = 0;
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                // What is left cannot become a frame: the codec sees the end.
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
        let give = (this.output.len() - this.given).min(out.remaining());
        out.put_slice(&this.output[this.given..this.given + give]);
        this.given += give;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ws::testing::masked;

    /// One message compressed with the client's running window, its tail stripped.
    fn compress(window: &mut Compress, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        window
            .compress_vec(text, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    #[tokio::test]
    async fn compressed_messages_reach_the_codec_plain_and_the_rest_as_they_came() {
        let mut window = Compress::new(Compression::default(), false);
        let first = compress(&mut window, b"hello hello hello");
        // The second message leans on the first's window (context takeover).
        let second = compress(&mut window, b"hello hello hello again");
        let (third_a, third_b) = second.split_at(second.len() / 2);
        let mut wire = masked(0xc1, &first); // FIN | RSV1 | text
        wire.extend(masked(0x89, b"ping")); // a control frame, as it came
        wire.extend(masked(0x41, third_a)); // RSV1 | text, no FIN
        wire.extend(masked(0x80, third_b)); // FIN | continuation
        wire.extend(masked(0x82, b"plain")); // a message sent uncompressed
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&wire).await.unwrap();
        drop(client);
        let mut inflate = Inflate::new(server, Vec::new(), 1 << 20);
        let mut seen = Vec::new();
        inflate.read_to_end(&mut seen).await.unwrap();
        let mut expected = plain_frame(1, b"hello hello hello");
        expected.extend(masked(0x89, b"ping"));
        expected.extend(plain_frame(1, b"hello hello hello again"));
        expected.extend(masked(0x82, b"plain"));
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_message_that_inflates_past_the_limit_is_an_error() {
        let mut window = Compress::new(Compression::default(), false);
        let bomb = compress(&mut window, &vec![b'a'; 60_000]);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&masked(0xc2, &bomb)).await.unwrap();
        let mut inflate = Inflate::new(server, Vec::new(), 1000);
        let mut seen = [0u8; 64];
        assert!(inflate.read(&mut seen).await.is_err());
    }
}
