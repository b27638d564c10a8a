//! [`LogFeed`]: the cluster's log lines for `cluster logs`: the last ones kept for late
//! joiners, new ones broadcast to whoever follows, each with the slot of the worker it is
//! about (so `cluster logs --worker N` filters on data, not on text).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Lines kept for a reader that joins late.
const RECENT: usize = 1000;
/// Lines a following reader may fall behind before it is dropped.
const LAG: usize = 4096;

/// One line, and the slot of the worker it is about (if any).
pub type FeedLine = (Option<u32>, Arc<str>);

/// A bounded feed of log lines: the embedding program pushes each line it writes (the
/// `cluster` binary tees its log output into one), the control socket serves them. Pushing
/// never waits: a reader that falls behind misses lines and is told so.
#[derive(Debug, Clone)]
pub struct LogFeed {
    recent: Arc<Mutex<VecDeque<FeedLine>>>,
    live: broadcast::Sender<FeedLine>,
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

    /// Adds one line (without its line break), about the worker in slot `worker` if any.
    pub fn push(&self, line: &str, worker: Option<u32>) {
        let entry: FeedLine = (worker, Arc::from(line));
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
        }
        let _ = self.live.send(entry);
    }

    /// The last lines, oldest first.
    pub fn recent(&self) -> Vec<FeedLine> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Lines from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedLine> {
        self.live.subscribe()
    }
}
