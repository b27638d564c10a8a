//! Datagrams against a UDP echo server that appends its pid (`tests/peers/udp_echo.py`,
//! `N` → `N PID`): client threads, each on a socket of its own, send a numbered datagram
//! and wait for its answer before the next, so every datagram is either answered or lost.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an answer may take before its datagram counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the clients saw.
#[derive(Debug, Clone, Default)]
pub struct UdpSummary {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams answered with their own number.
    pub answered: u64,
    /// Sent and never answered (within 2 s).
    pub lost: u64,
    /// Workers that answered.
    pub pids: BTreeSet<u32>,
}

/// UDP echo clients (see the module docs). Bounded: at most 300 s.
#[derive(Debug)]
pub struct UdpLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<UdpSummary>>,
}

impl UdpLoad {
    /// Starts `clients` clients against `server`, a datagram every `every` each.
    pub fn start(server: SocketAddr, clients: usize, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || client(server, every, &stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; what they saw.
    ///
    /// # Panics
    /// When a client thread panicked.
    pub fn finish(self) -> UdpSummary {
        self.stop.store(true, Ordering::SeqCst);
        let mut summary = UdpSummary::default();
        for thread in self.threads {
            let one = thread.join().expect("a UDP client thread");
            summary.sent += one.sent;
            summary.answered += one.answered;
            summary.lost += one.lost;
            summary.pids.extend(one.pids);
        }
        summary
    }
}

fn client(server: SocketAddr, every: Duration, stop: &AtomicBool) -> UdpSummary {
    let mut summary = UdpSummary::default();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a client socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("a timeout");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buffer = [0u8; 256];
    for n in 0u64.. {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let sent_at = Instant::now();
        if socket.send_to(n.to_string().as_bytes(), server).is_err() {
            summary.lost += 1;
            std::thread::sleep(every);
            continue;
        }
        summary.sent += 1;
        let answer = loop {
            match socket.recv(&mut buffer) {
                Ok(len) => {
                    let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                    let parsed = text.split_once(' ').and_then(|(number, pid)| {
                        Some((number.parse::<u64>().ok()?, pid.parse::<u32>().ok()?))
                    });
                    match parsed {
                        // An answer to an earlier datagram, late: it was counted lost.
                        Some((number, _)) if number != n => {}
                        other => break other,
                    }
                }
                Err(_) if sent_at.elapsed() < ANSWER_TIMEOUT => {}
                Err(_) => break None,
            }
        };
        match answer {
            Some((_, pid)) => {
                summary.answered += 1;
                summary.pids.insert(pid);
            }
            None => summary.lost += 1,
        }
        std::thread::sleep(every.saturating_sub(sent_at.elapsed()));
    }
    summary
}
