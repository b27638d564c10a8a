//! Client threads sending requests in a loop, bounded in time and count.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http_get;

/// Successful requests, failures (with their reasons), distinct response bodies.
pub type LoadResult = (u64, Vec<String>, HashSet<String>);

/// Client threads, each sending one request per new connection until stopped, for at most
/// 60 s or 200,000 requests.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadResult>>,
}

impl Load {
    /// Starts `threads` client threads against 127.0.0.1:`port`.
    pub fn start(port: u16, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut failed, mut seen) = (0u64, Vec::new(), HashSet::new());
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && ok < 200_000
                    {
                        match http_get(port) {
                            Ok(body) => {
                                ok += 1;
                                seen.insert(body);
                            }
                            Err(e) => failed.push(e),
                        }
                    }
                    (ok, failed, seen)
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; returns (successful requests, failures, distinct bodies).
    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, Vec::new(), HashSet::new());
        for thread in self.threads {
            let (ok, failed, seen) = thread.join().expect("client thread");
            total.0 += ok;
            total.1.extend(failed);
            total.2.extend(seen);
        }
        total
    }
}
