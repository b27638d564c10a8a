//! Counting every delivery of a signal. A runtime's signal stream wakes its reader once for
//! any number of deliveries since the last read (tokio coalesces them), which is right for
//! "stop" and wrong for "add a worker": a burst of SIGTTIN read late would add one. The
//! counter here is incremented by the signal handler itself, beside the runtime's own
//! handler, so the reader can take the exact number at each wake-up.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A count of the deliveries of one signal since the last [`take`](Self::take).
#[derive(Debug, Clone)]
pub struct SignalCount(Arc<AtomicU64>);

impl SignalCount {
    /// The deliveries since the last call.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::SeqCst)
    }
}

/// Counts every delivery of `signal` from now on, besides whatever else handles it (other
/// handlers, a tokio signal stream, keep working).
///
/// # Errors
/// A signal that cannot be handled (`SIGKILL`, `SIGSTOP`, or not a signal).
pub fn count_signal(signal: i32) -> io::Result<SignalCount> {
    let count = Arc::new(AtomicU64::new(0));
    let in_handler = count.clone();
    // SAFETY: the action runs in the signal handler and only increments an atomic, which is
    // async-signal-safe (no lock, no allocation, no system call).
    #[allow(unsafe_code)]
    unsafe {
        signal_hook_registry::register(signal, move || {
            in_handler.fetch_add(1, Ordering::SeqCst);
        })?;
    }
    Ok(SignalCount(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_delivery_is_counted() {
        let count = count_signal(libc::SIGWINCH).unwrap();
        // One at a time: the kernel may run the handler on another thread of this process, a
        // moment later, and merges a signal sent again before that (no counter can see it).
        let mut seen = 0;
        for sent in 1..=5 {
            rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::WINCH,
            )
            .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while seen < sent && std::time::Instant::now() < deadline {
                seen += count.take();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(seen, 5);
        assert_eq!(count.take(), 0);
    }
}
