//! `cluster reload` and `SIGHUP`: read the settings again (the command line this watcher
//! was started with, its environment, the configuration file and the environment file)
//! and apply every difference.
//!
//! A change the watcher can make in place (the program, its arguments, environment and
//! directory, the worker count, the timeouts, recycling limits and the like) goes through
//! [`ClusterWatcher::reload`]: new workers with the new settings, readiness first, one slot
//! at a time, and the last good configuration back if the new one fails. Anything else (a
//! listen address, the balance mode, the metrics port, the log settings) goes through the
//! self-upgrade path: a new watcher reads the file and takes the sockets over. A bad file
//! changes nothing. Under `Type=notify-reload`, the service manager hears `RELOADING=1`
//! when a reload begins and `READY=1` when it is answered.

use std::collections::BTreeMap;
use std::pin::Pin;

use cluster_watcher::{ClusterWatcher, ReloadError, Reply};

use crate::args::{Loaded, changed, load};

/// What a reload answers: the configuration's generation and the keys that changed, or why
/// not.
pub(crate) type ReloadAnswer = Result<(u64, Vec<String>), String>;

/// The settings a running watcher can change in place; any other change takes an upgrade.
/// (A key missing here is safe: it is applied by the upgrade path.)
const IN_PLACE: &[&str] = &[
    "workers",
    "program",
    "args",
    "cwd",
    "env-file",
    "shutdown-timeout",
    "drain-spread",
    "ready-timeout",
    "heartbeat-interval",
    "heartbeat-timeout",
    "backoff-initial",
    "backoff-max",
    "min-uptime",
    "restart-parallelism",
    "max-memory",
    "max-requests",
    "max-age",
    "recycle-jitter",
    "stop-signal",
    "ready-after",
    "stop-delay",
    "metrics-interval",
    "slow-start",
];

/// How a reload is carried out.
pub(crate) enum Plan {
    /// By the running watcher.
    InPlace(Box<Loaded>, Vec<String>),
    /// By a new watcher, for this key; with the new worker count.
    Upgrade {
        key: String,
        workers: usize,
        changed: Vec<String>,
    },
}

/// Reads the settings again and says how to apply them.
///
/// # Errors
/// The reason, with the file's place when it is the file's: nothing changes then.
pub(crate) fn plan(current: &BTreeMap<String, String>) -> Result<Plan, String> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut loaded = load(&argv).map_err(|e| e.to_string())?;
    loaded.config.program = loaded.resolved_program().map_err(|e| crate::one_line(&e))?;
    let changed = changed(current, &loaded.settings);
    let fixed = changed
        .iter()
        .find(|key| !key.starts_with("env.") && !IN_PLACE.contains(&key.as_str()));
    Ok(match fixed {
        Some(key) => Plan::Upgrade {
            key: key.clone(),
            workers: loaded.workers,
            changed,
        },
        None => Plan::InPlace(Box::new(loaded), changed),
    })
}

/// A reload being applied in place: the watcher's answer to come, the settings it applies,
/// and whom to tell.
pub(crate) struct InPlace {
    outcome: Pin<Box<dyn Future<Output = Result<(), ReloadError>>>>,
    pub(crate) loaded: Box<Loaded>,
    pub(crate) changed: Vec<String>,
    pub(crate) reply: Option<Reply<ReloadAnswer>>,
}

impl InPlace {
    /// Asks `watcher` to apply `loaded`.
    pub(crate) fn begin(
        watcher: &ClusterWatcher,
        loaded: Box<Loaded>,
        changed: Vec<String>,
        reply: Option<Reply<ReloadAnswer>>,
    ) -> Self {
        let outcome = watcher.reload(loaded.config.clone(), loaded.workers, changed.clone());
        Self {
            outcome: Box::pin(outcome),
            loaded,
            changed,
            reply,
        }
    }

    /// The watcher's answer (cancel-safe: the reload goes on if this is dropped, and
    /// polling again resumes waiting).
    pub(crate) async fn outcome(&mut self) -> Result<(), ReloadError> {
        (&mut self.outcome).await
    }
}
