//! Application metrics the watcher merges across workers: register them in [`registry`]
//! (a `prometheus_client` registry), and the watcher's `/metrics` shows each series per
//! worker (`worker="N"`) and summed over every worker the cluster ever ran
//! (`worker="all"`), so a counter never goes back at a restart, a recycling or a
//! scale-down.
//!
//! The registry is sent to the watcher with the heartbeats when it changed (once a second
//! by default), and once more after the last request when the worker drains
//! ([`flush`]; the serve loops call it): a worker stopped on purpose loses nothing; one that
//! crashes loses what it counted since its last heartbeat. Standalone, nothing is sent;
//! serve the registry yourself if you want it.
//!
//! ```no_run
//! use prometheus_client::metrics::counter::Counter;
//! let requests: Counter = Counter::default();
//! cluster_worker::metrics::registry().register("requests", "Requests answered", requests.clone());
//! requests.inc();
//! ```

use std::sync::OnceLock;

use cluster_ipc::ChannelSender;
use cluster_ipc::protocol::WorkerToWatcher;
use parking_lot::{Mutex, MutexGuard};
use prometheus_client::registry::Registry;

use crate::WorkerError;

/// The largest exposition sent (a registry that grows past it is not sent, and says so
/// once): bounded, so a label explosion cannot flood the watcher.
pub const MAX_EXPOSITION: usize = 1 << 20;

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// The registry whose metrics the watcher merges. Hold the guard only to register.
pub fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(|| Mutex::new(Registry::default()))
        .lock()
}

/// The registry in the OpenMetrics text format, if anything is registered and it fits.
pub(crate) fn exposition() -> Option<String> {
    let registry = REGISTRY.get()?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry.lock()).ok()?;
    if text.trim() == "# EOF" {
        return None;
    }
    if text.len() > MAX_EXPOSITION {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                bytes = text.len(),
                limit = MAX_EXPOSITION,
                "application metrics too large to send to the watcher"
            )
        });
        return None;
    }
    Some(text)
}

/// Where [`flush`] sends: the control channel, given by the link to the watcher when it is
/// set up (this module depends on nothing above it).
static SINK: OnceLock<ChannelSender<WorkerToWatcher>> = OnceLock::new();

/// Gives [`flush`] the channel to the watcher (the link calls it once, as it connects).
pub(crate) fn attach(control: ChannelSender<WorkerToWatcher>) {
    let _ = SINK.set(control);
}

/// Sends the metrics to the watcher now: their final values, after the last request of a
/// worker that drains. The serve loops call it; call it yourself before exiting if you
/// serve without them. Nothing to do standalone, with nothing registered, or before the
/// worker's link to the watcher is up (its first `listen`).
///
/// # Errors
/// When the watcher's channel failed.
pub async fn flush() -> Result<(), WorkerError> {
    let Some(text) = exposition() else {
        return Ok(());
    };
    match SINK.get() {
        Some(control) => Ok(control.send(&WorkerToWatcher::Metrics(text)).await?),
        None => Ok(()),
    }
}
