//! Spawning the watcher's tasks.

use tracing::Instrument;

/// Spawns a task of the watcher, inside `span` so its log lines carry the embedding
/// program's context (the `cluster` binary's `--name`, say).
pub(crate) fn spawn_in<F>(span: tracing::Span, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.instrument(span))
}
