//! Raw clients of the long-lived tests: an event stream read to its end, and the hostile
//! clients a drain must survive (a WebSocket that never answers the Close, an HTTP/2 client
//! that keeps opening streams after GOAWAY, a reader that stops reading). Written on plain
//! sockets so that they do exactly what a misbehaving client does, and nothing polite.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an event stream ended.
#[derive(Debug)]
pub struct StreamEnd {
    /// `data:` lines received.
    pub events: usize,
    /// Whether the body ended with HTTP/1.1's last chunk (`0\r\n\r\n`): a clean end.
    pub clean: bool,
    /// When the end (or the failure) came.
    pub at: Instant,
    /// The error, when the stream did not end cleanly.
    pub error: Option<String>,
}

/// Reads `GET path` on 127.0.0.1:`port` as an event stream until the server ends it (at
/// most `limit`).
pub fn read_event_stream(port: u16, path: &str, limit: Duration) -> StreamEnd {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let error = (|| -> std::io::Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")?;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline && !seen.ends_with(b"\r\n0\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })()
    .err()
    .map(|e| e.to_string());
    let text = String::from_utf8_lossy(&seen);
    StreamEnd {
        events: text.matches("data:").count(),
        clean: error.is_none() && seen.ends_with(b"\r\n0\r\n\r\n"),
        at: Instant::now(),
        error,
    }
}

/// A WebSocket client that completes the handshake on `/ws`, then never reads again: it
/// never answers the server's Close.
pub fn deaf_websocket(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("the handshake's answer"), 1);
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A client that asks for a fast event stream and never reads it: the server's send
/// buffer fills and its writes block.
pub fn stalled_event_stream(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // A small receive buffer fills sooner.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&stream, 4096);
    stream
        .write_all(b"GET /events?every=1 HTTP/1.1\r\nhost: test\r\n\r\n")
        .unwrap();
    stream
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HTTP/2 client (h2c, prior knowledge) that opens a new stream (`GET /`) every 5 ms
/// whatever the server says, GOAWAY included. Its thread returns when the server ended the
/// connection (at most 30 s).
pub fn pushy_http2(port: u16) -> JoinHandle<Option<Instant>> {
    let mut writer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut reader = writer.try_clone().unwrap();
    let ended = Arc::new(AtomicBool::new(false));
    let seen_end = ended.clone();
    let read = std::thread::spawn(move || {
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 16384];
        let end = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Some(Instant::now()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break None,
                Err(_) => break Some(Instant::now()),
            }
        };
        seen_end.store(true, Ordering::SeqCst);
        end
    });
    std::thread::spawn(move || {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(4, 0, 0, &[])); // SETTINGS
        let _ = writer.write_all(&hello);
        // HPACK: :method GET, :scheme http, :path /, :authority "x" (not indexed).
        let headers = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
        let started = Instant::now();
        let mut stream = 1u32;
        while !ended.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
            // END_STREAM | END_HEADERS.
            if writer.write_all(&frame(1, 0x5, stream, &headers)).is_err() {
                break;
            }
            stream += 2;
            std::thread::sleep(Duration::from_millis(5));
        }
        read.join().expect("the reader")
    })
}

/// h2load's per-request log (`--log-file`): (succeeded, failed after being sent, never
/// sent). A row's start time is taken when its HEADERS frame is about to be written; a
/// request h2load queued but nghttp2 refused to send, because the server's GOAWAY arrived
/// first (RFC 9113 §6.8: no new stream after a GOAWAY), has none and status -1: it never
/// reached a server, and h2load counts it failed rather than retrying it elsewhere.
pub fn h2load_rows(log: &str) -> (u64, u64, u64) {
    let (mut ok, mut failed, mut unsent) = (0, 0, 0);
    for row in log.lines() {
        let columns: Vec<&str> = row.split('\t').collect();
        match (columns.first(), columns.get(1)) {
            (Some(_), Some(&"200")) => ok += 1,
            (Some(&"0"), Some(_)) => unsent += 1,
            _ => failed += 1,
        }
    }
    (ok, failed, unsent)
}

/// A GOAWAY frame as received: the last stream the server will process, and the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream: u32,
    pub code: u32,
}

/// A polite HTTP/2 client (h2c, prior knowledge) that makes one request (`GET /`, stream 1),
/// then stays idle, acknowledging the server's SETTINGS and PINGs, and records every GOAWAY
/// until the server closes the connection (at most 30 s). `connected` is sent once the
/// answer to its request arrived.
pub fn goaway_listener(
    port: u16,
    connected: std::sync::mpsc::Sender<()>,
) -> JoinHandle<Vec<GoAway>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(4, 0, 0, &[])); // SETTINGS
        // HPACK: :method GET, :scheme http, :path /, :authority "x"; END_STREAM | END_HEADERS.
        hello.extend(frame(1, 0x5, 1, &[0x82, 0x86, 0x84, 0x01, 0x01, b'x']));
        stream.write_all(&hello).unwrap();
        let mut goaways = Vec::new();
        let mut header = [0u8; 9];
        while stream.read_exact(&mut header).is_ok() {
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let (kind, flags) = (header[3], header[4]);
            let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & !(1 << 31);
            let mut payload = vec![0u8; length];
            if stream.read_exact(&mut payload).is_err() {
                break;
            }
            let reply = match kind {
                // SETTINGS (not an ACK): acknowledged.
                4 if flags & 1 == 0 => Some(frame(4, 1, 0, &[])),
                // PING (not an ACK): answered, which lets the server send its final GOAWAY.
                6 if flags & 1 == 0 => Some(frame(6, 1, 0, &payload)),
                7 if payload.len() >= 8 => {
                    goaways.push(GoAway {
                        last_stream: u32::from_be_bytes(payload[..4].try_into().unwrap())
                            & !(1 << 31),
                        code: u32::from_be_bytes(payload[4..8].try_into().unwrap()),
                    });
                    None
                }
                // The end of the answer to stream 1 (END_STREAM on DATA or HEADERS).
                0 | 1 if id == 1 && flags & 1 == 1 => {
                    let _ = connected.send(());
                    None
                }
                _ => None,
            };
            if let Some(reply) = reply
                && stream.write_all(&reply).is_err()
            {
                break;
            }
        }
        goaways
    })
}
