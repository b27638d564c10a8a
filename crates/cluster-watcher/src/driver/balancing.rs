//! The core's balancing decisions, carried out: slow-start weights for the hand-off and the
//! reuseport program, and live rebalancing's requests to workers.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_ipc::protocol::WatcherToWorker;

use super::Driver;
use crate::WorkerId;
use crate::task::spawn_in;

/// How long a rebalancing request may take to reach a worker.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

impl Driver {
    /// Slow start: the shares of the workers ramping up, to the balancer and the steering.
    pub(super) fn weigh(&mut self, weights: &BTreeMap<WorkerId, u16>) {
        self.shared.balancer.set_weights(weights);
        let by_slot = weights.iter().map(|(id, w)| (id.slot, *w)).collect();
        self.steering.set_weights(by_slot);
        self.steering.update(&self.shared.provider, &self.live);
    }

    /// Live rebalancing: what comes back goes to `wants` first; each worker of `asks` is
    /// asked for its count (without holding up the driver).
    pub(super) fn rebalance(&mut self, wants: Vec<(WorkerId, u32)>, asks: &[(WorkerId, u32)]) {
        tracing::debug!(?wants, ?asks, "rebalancing round");
        self.shared.balancer.prefer(wants);
        for (id, count) in asks {
            let Some(link) = self.processes.get(id).and_then(|p| p.link.as_ref()) else {
                continue;
            };
            let control = link.control.clone();
            let ask = WatcherToWorker::Rebalance { count: *count };
            tracing::debug!(worker = %id, count, "asked for keep-alive connections back");
            spawn_in(self.shared.span.clone(), async move {
                let _ = tokio::time::timeout(ASK_TIMEOUT, control.send(&ask)).await;
            });
        }
    }
}
