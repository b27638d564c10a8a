//! Sessions that must never notice a restart: each sends a numbered text message every
//! 100 ms on one WebSocket and checks the reply of `ws-echo` (`N COUNT PID`: its own number,
//! how many messages the session has received so far, which worker answered), so a message
//! lost, repeated or reordered, a state that did not move with the session, a close of any
//! kind, and the longest pause are all seen. Nothing reconnects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// What one session saw.
#[derive(Debug, Clone, Default)]
pub struct SessionRecord {
    /// Replies that matched (right number, right count).
    pub replies: u64,
    /// The first reply that did not (lost, repeated or reordered message, or a state that
    /// did not move), as received.
    pub wrong: Option<String>,
    /// How the session ended before the load stopped, if it did (a close, an error).
    pub ended: Option<String>,
    /// The code of the server's Close, when that is how it ended.
    pub closed_with: Option<u16>,
    /// The longest time between two replies.
    pub longest_gap: Duration,
    /// The workers that answered.
    pub pids: BTreeSet<u32>,
}

/// Sessions against `ws://…` (see the module docs), on a runtime of their own. Bounded: at
/// most 300 s.
#[derive(Debug)]
pub struct SessionLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<SessionRecord>>,
}

impl SessionLoad {
    /// Starts `sessions` sessions against `url`, a message every `every` each; returns once
    /// all are connected (or failed to).
    pub fn start(url: &str, sessions: usize, every: Duration) -> Self {
        crate::raise_fd_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (url.to_owned(), stop.clone());
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let thread = crate::process::on_runtime_thread(move || async move {
            // Each session's messages start at its own phase of the period: not all at once.
            let tasks: Vec<_> = (0..sessions)
                .map(|i| {
                    let ready = connected_tx.clone();
                    let phase = every.mul_f64(i as f64 / sessions as f64);
                    tokio::spawn(session(url.clone(), every, phase, flag.clone(), ready))
                })
                .collect();
            let mut records = Vec::with_capacity(sessions);
            for task in tasks {
                records.push(task.await.unwrap_or_default());
            }
            records
        });
        for _ in 0..sessions {
            let _ = connected.recv_timeout(Duration::from_secs(30));
        }
        Self { stop, thread }
    }

    /// Stops the sessions (each closes normally); what each saw.
    pub fn finish(self) -> Vec<SessionRecord> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the load's thread")
    }
}

/// One session, until stopped or ended.
async fn session(
    url: String,
    every: Duration,
    phase: Duration,
    stop: Arc<AtomicBool>,
    connected: std::sync::mpsc::Sender<()>,
) -> SessionRecord {
    let mut record = SessionRecord::default();
    let connecting = tokio_tungstenite::connect_async(url.as_str()).await;
    let _ = connected.send(());
    let mut socket = match connecting {
        Ok((socket, _)) => socket,
        Err(e) => {
            record.ended = Some(format!("connect: {e}"));
            return record;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None::<Instant>;
    for number in 0u64.. {
        tick.tick().await;
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            let _ = socket.close(None).await;
            break;
        }
        if let Err(e) = socket.send(Message::text(number.to_string())).await {
            record.ended = Some(format!("send: {e}"));
            break;
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
        let text = match reply {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                record.closed_with = Some(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
                record.ended = Some(format!("closed by the server: {frame:?}"));
                // The close handshake: tungstenite answers the server's Close for us.
                let _ = socket.next().await;
                break;
            }
            other => {
                record.ended = Some(format!("{other:?}"));
                break;
            }
        };
        let fields: Vec<u64> = text.split(' ').filter_map(|f| f.parse().ok()).collect();
        match fields.as_slice() {
            [n, count, pid] if *n == number && *count == number + 1 => {
                record.replies += 1;
                record.pids.insert(u32::try_from(*pid).unwrap_or(0));
                if let Some(last) = last {
                    record.longest_gap = record.longest_gap.max(last.elapsed());
                }
                last = Some(Instant::now());
            }
            _ => {
                record
                    .wrong
                    .get_or_insert_with(|| format!("sent {number}, got {text:?}"));
            }
        }
    }
    record
}
