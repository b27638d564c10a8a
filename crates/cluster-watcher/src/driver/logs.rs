//! The watcher's log lines: one per [`Event`], and the workers' forwarded records, made safe
//! to print (no forged lines, no unbounded lines).

use cluster_ipc::Channel;
use cluster_ipc::protocol::LogRecord;
use fdpass::AsyncFdSocket;

use crate::sanitize::{MAX_LINE, sanitize};
use crate::{Event, WorkerId};

/// Re-emits a worker's record through this process's subscriber.
pub(crate) fn emit_record(record: &LogRecord, id: WorkerId, pid: u32) {
    let mut message = String::from(sanitize(&record.message, MAX_LINE));
    for (key, value) in &record.fields {
        if message.len() >= MAX_LINE {
            break;
        }
        message.push(' ');
        message.push_str(&sanitize(key, 256));
        message.push('=');
        message.push_str(&sanitize(value, MAX_LINE - message.len().min(MAX_LINE)));
    }
    let origin = sanitize(&record.target, 256);
    let origin = origin.as_ref();
    match record.level {
        0 => tracing::trace!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        1 => tracing::debug!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        2 => tracing::info!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        3 => tracing::warn!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        _ => tracing::error!(target: "worker", worker = id.slot, pid, origin, "{message}"),
    }
}

/// The log lines of events, with repeats of one failure thinned out: a cluster scaled past
/// the system's process limit fails to start thousands of workers, and says so once, then
/// at the 10th, 100th, 1000th… time, until a start succeeds.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    spawn_failures: std::collections::HashMap<String, u64>,
}

impl EventLog {
    pub(crate) fn log(&mut self, event: &Event) {
        match event {
            Event::Started { .. } => self.spawn_failures.clear(),
            Event::SpawnFailed { id, error } => {
                let count = self.spawn_failures.entry(error.clone()).or_default();
                *count += 1;
                if power_of_ten(*count) {
                    tracing::error!(worker = id.slot, %error, times = *count, "cannot start worker");
                }
                return;
            }
            _ => {}
        }
        log_event(event);
    }
}

/// Whether a count is 1, 10, 100, …
fn power_of_ten(count: u64) -> bool {
    let mut n = count;
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

/// The log line for an event.
fn log_event(event: &Event) {
    match event {
        Event::Started { id, pid } => {
            tracing::info!(
                worker = id.slot,
                pid,
                generation = id.generation,
                "worker started"
            )
        }
        Event::Ready { id, pid } => tracing::info!(worker = id.slot, pid, "worker ready"),
        Event::ReadyByTimer { id, after } => tracing::info!(
            worker = id.slot,
            ?after,
            "worker counted ready by --ready-after: it was not seen waiting on its listener nor said READY=1"
        ),
        Event::Stopping { id, pid, cause } => {
            tracing::info!(
                worker = id.slot,
                pid,
                ?cause,
                "worker stopping: draining its connections"
            )
        }
        Event::Killed { id, pid, reason } => {
            tracing::warn!(worker = id.slot, pid, %reason, "watcher kills worker (SIGKILL to its process group)")
        }
        Event::Exited(exit) => match (exit.stopped, exit.killed) {
            (_, Some(reason)) => {
                tracing::warn!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, %reason, "worker killed by the watcher and reaped")
            }
            (Some(cause), None) => {
                tracing::info!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, ?cause, "worker stopped")
            }
            (None, None) => {
                tracing::error!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, "worker exited unexpectedly")
            }
        },
        Event::Respawning { id, delay } => {
            tracing::info!(worker = id.slot, ?delay, "respawning worker")
        }
        Event::SpawnFailed { id, error } => {
            tracing::error!(worker = id.slot, %error, "cannot start worker")
        }
        Event::WatcherStalled { duration } => tracing::warn!(
            ?duration,
            "the watcher did not run for a while (stopped, paused or starved); deadlines moved, no worker blamed"
        ),
        Event::Recycling { id, reason } => {
            tracing::info!(worker = id.slot, %reason, "recycling worker: its replacement starts")
        }
        Event::MemoryLimitUnmet {
            slot,
            rss,
            limit,
            backoff,
        } => tracing::error!(
            worker = slot,
            rss_mib = rss >> 20,
            limit_mib = limit >> 20,
            ?backoff,
            "the memory limit cannot be met: three workers in a row went over it within 10 s of starting; recycling this slot backs off"
        ),
        Event::RestartStarted { workers } => tracing::info!(workers, "rolling restart started"),
        Event::RestartFinished { replaced, failed } => match failed {
            0 => tracing::info!(replaced, "rolling restart complete"),
            _ => tracing::error!(
                replaced,
                failed,
                "rolling restart incomplete; old workers kept where replacements failed"
            ),
        },
        Event::Reloading {
            generation,
            changed,
        } => tracing::info!(
            generation,
            changed = %changed.join(", "),
            "reload: starting workers with the new configuration"
        ),
        Event::Reloaded { generation } => tracing::info!(
            generation,
            "reload complete: every worker runs the new configuration"
        ),
        Event::RollingBack {
            generation,
            back_to,
            reason,
        } => tracing::error!(
            generation,
            back_to,
            reason,
            "reload failed: rolling back to the last good configuration"
        ),
        Event::Abandoned { pids } => tracing::error!(
            ?pids,
            "processes still alive after SIGKILL; the stop does not wait for them"
        ),
    }
}

/// Re-emits a worker's log records until it closes its log socket.
pub(crate) async fn forward_logs(log: AsyncFdSocket, id: WorkerId, pid: u32) {
    let channel = Channel::<(), LogRecord>::new(log);
    let mut skipped_in_a_row = 0u32;
    loop {
        match channel.recv().await {
            Ok(Some(record)) => {
                skipped_in_a_row = 0;
                emit_record(&record, id, pid);
            }
            Ok(None) => return,
            Err(e) if e.io_error().is_some() => {
                tracing::warn!(worker = id.slot, pid, error = %e, "log socket failed; ignoring the worker's logs");
                return;
            }
            Err(e) => {
                // An oversize or malformed record costs only itself (and the packets that
                // continue it); a worker that sends nothing else is ignored for good.
                if skipped_in_a_row == 0 {
                    tracing::warn!(worker = id.slot, pid, error = %e, "unreadable log record from worker; skipped");
                }
                skipped_in_a_row += 1;
                if skipped_in_a_row > 10_000 {
                    tracing::warn!(
                        worker = id.slot,
                        pid,
                        "no readable log record in 10000; ignoring the worker's logs"
                    );
                    return;
                }
            }
        }
    }
}
