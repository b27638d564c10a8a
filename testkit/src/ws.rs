//! WebSocket clients that check every echo and record how each session ended: the load the
//! long-lived tests and benchmarks put on a cluster (tokio-tungstenite, on a runtime of its
//! own).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How one WebSocket connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// The server closed it with this code.
    Closed(u16),
    /// It ended without a Close from the server (a reset, end of file: 1006), and why.
    Abnormal(String),
    /// The client closed it (the load was stopped).
    Finished,
}

/// What one session saw over its connections.
#[derive(Debug, Clone, Default)]
pub struct WsSession {
    /// Messages echoed back correctly.
    pub echoed: u64,
    /// Echoes that did not match what was sent, or never came.
    pub lost: u64,
    /// Each connection's end, and when.
    pub ends: Vec<(Instant, WsEnd)>,
    /// The longest time between two echoes.
    pub longest_gap: Duration,
}

/// WebSocket sessions against a URL, each sending a numbered text message every `every`
/// and checking its echo; a session closed by the server reconnects, as a client does.
/// Bounded: at most 120 s.
#[derive(Debug)]
pub struct WsLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<WsSession>>,
}

impl WsLoad {
    /// Starts `sessions` sessions against `url` (`ws://127.0.0.1:PORT/ws`), on two threads.
    pub fn start(url: &str, sessions: usize, every: Duration) -> Self {
        crate::raise_fd_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let url = url.to_owned();
        let flag = stop.clone();
        let thread = crate::process::on_runtime_thread(move || async move {
            let tasks: Vec<_> = (0..sessions)
                .map(|_| tokio::spawn(session(url.clone(), every, flag.clone())))
                .collect();
            let mut results = Vec::with_capacity(sessions);
            for task in tasks {
                results.push(task.await.unwrap_or_default());
            }
            results
        });
        Self { stop, thread }
    }

    /// Stops the sessions (each closes normally); what each saw.
    pub fn finish(self) -> Vec<WsSession> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the load's thread")
    }
}

/// One session: connections one after another until stopped.
async fn session(url: String, every: Duration, stop: Arc<AtomicBool>) -> WsSession {
    let mut seen = WsSession::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let end = connection(&url, every, &stop, &mut next, &mut seen).await;
        seen.ends.push((Instant::now(), end));
    }
    seen
}

/// One connection of a session, until the server closes it or the load stops.
async fn connection(
    url: &str,
    every: Duration,
    stop: &AtomicBool,
    next: &mut u64,
    seen: &mut WsSession,
) -> WsEnd {
    let (mut socket, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(connected) => connected,
        Err(e) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return WsEnd::Abnormal(format!("connect: {e}"));
        }
    };
    let mut last_echo = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            let _ = socket.close(None).await;
            return WsEnd::Finished;
        }
        let text = next.to_string();
        if let Err(e) = socket.send(Message::text(text.clone())).await {
            return WsEnd::Abnormal(format!("send: {e}"));
        }
        // The echo, or the server's Close.
        let answer = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
        match answer {
            Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => {
                seen.echoed += 1;
                *next += 1;
                seen.longest_gap = seen.longest_gap.max(last_echo.elapsed());
                last_echo = Instant::now();
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                seen.lost += 1; // the message in flight was not answered
                let code = frame.map_or(1005, |f| u16::from(f.code));
                // The close handshake: tungstenite answers the server's Close for us.
                let _ = socket.next().await;
                return WsEnd::Closed(code);
            }
            Ok(Some(Ok(other))) => {
                seen.lost += 1;
                return WsEnd::Abnormal(format!("unexpected {other:?}"));
            }
            Ok(Some(Err(e))) => return WsEnd::Abnormal(format!("read: {e}")),
            Ok(None) => return WsEnd::Abnormal("end of stream without a Close".into()),
            Err(_) => return WsEnd::Abnormal("no echo within 10 s".into()),
        }
        tokio::time::sleep(every).await;
    }
}

/// The close code of a normal close, for comparing with [`WsEnd::Closed`].
pub fn normal_close() -> u16 {
    u16::from(CloseCode::Normal)
}
