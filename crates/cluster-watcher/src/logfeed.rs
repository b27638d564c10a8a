//! [`LogFeed`]: the cluster's log lines for `cluster logs`: the last ones kept for late
//! joiners, new ones broadcast to whoever follows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

/// Lines kept for a reader that joins late.
const RECENT: usize = 1000;
/// Lines a following reader may fall behind before it is dropped.
const LAG: usize = 4096;

/// A bounded feed of log lines: the embedding program pushes each line it writes (the
/// `cluster` binary tees its log output into one), the control socket serves them. Pushing
/// never waits: a reader that falls behind misses lines and is told so.
#[derive(Debug, Clone)]
pub struct LogFeed {
    recent: Arc<Mutex<VecDeque<Arc<str>>>>,
    live: broadcast::Sender<Arc<str>>,
}

impl Default for LogFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl LogFeed {
    /// An empty feed.
    pub fn new() -> Self {
        Self {
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
            live: broadcast::channel(LAG).0,
        }
    }

    /// Adds one line (without its line break).
    pub fn push(&self, line: &str) {
        let line: Arc<str> = Arc::from(line);
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }

    /// The last lines, oldest first.
    pub fn recent(&self) -> Vec<Arc<str>> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().cloned().collect()
    }

    /// Lines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.live.subscribe()
    }
}
