//! Asking a worker to stop: a program given listeners gets its stop signal (once its own
//! metrics were read), a `cluster-worker` program a drain request on its control channel.

use std::time::Duration;

use cluster_ipc::protocol::WatcherToWorker;

use super::Driver;
use crate::WorkerId;
use crate::balance::Balancer;
use crate::task::spawn_in;

/// How long the stop request to one worker may take to be written.
const STOP_SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl Driver {
    /// No new connections for the worker; the stop request goes out without holding up the
    /// driver (a worker that does not read its control socket cannot block it). A
    /// `cluster-worker` program is asked to drain: goodbyes to its long-lived connections
    /// spread over `drain_spread` (with `spread`), what is left cut at the shutdown timeout.
    pub(super) fn stop(&mut self, id: WorkerId, spread: bool) {
        let Some(process) = self.processes.get(&id) else {
            return;
        };
        self.shared.balancer.remove(id);
        let Some(link) = &process.link else {
            // A program that does not link cluster-worker: the stop signal, to its group,
            // once its metrics were read (at most a scrape's timeout later), then its
            // metrics followed while it drains.
            let signal = rustix::process::Signal::from_named_raw(self.shared.config().stop_signal)
                .unwrap_or(rustix::process::Signal::TERM);
            let (shared, pid) = (self.shared.clone(), process.pid);
            let stop = move || {
                if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process_group(group, signal);
                }
            };
            if !self.shared.app_metrics.ports.has(id) {
                return stop();
            }
            spawn_in(self.shared.span.clone(), async move {
                let timeout = shared.config().shutdown_timeout;
                crate::appmetrics::scrape_one(&shared.app_metrics, id).await;
                stop();
                crate::appmetrics::follow_until_gone(&shared.app_metrics, id, timeout).await;
            });
            return;
        };
        Balancer::close_pipe(&link.clients);
        let control = link.control.clone();
        let config = self.shared.config();
        let drain = WatcherToWorker::Drain {
            spread: if spread {
                config.drain_spread.min(config.shutdown_timeout)
            } else {
                Duration::ZERO
            },
            timeout: config.shutdown_timeout,
        };
        spawn_in(self.shared.span.clone(), async move {
            let _ = tokio::time::timeout(STOP_SEND_TIMEOUT, control.send(&drain)).await;
        });
    }
}
