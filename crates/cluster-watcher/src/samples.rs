//! What the driver reads from the system for the core and for status: each worker's memory
//! (`max_memory` recycling), and the figures only the balancing layer knows (the reuseport
//! slots' accept queues, the least-conn workers' open connections).

use std::collections::HashMap;
use std::time::Duration;

use cluster_ipc::protocol::Balance;

use crate::core::Recycle;
use crate::shared::Shared;
use crate::{ClusterStatus, WorkerId, WorkerPhase};

/// What a worker's memory calls for.
#[derive(Debug)]
pub(crate) enum MemoryVerdict {
    /// Over its limit (plus its share of a tenth more): replace it, replacement first.
    Recycle(WorkerId, Recycle),
    /// Over 1.5 times the limit: kill it now.
    Ceiling(WorkerId),
}

/// The RSS of each ready current worker's process tree against `limit` bytes.
pub(crate) fn memory_verdicts(limit: u64, status: &ClusterStatus) -> Vec<MemoryVerdict> {
    let table = crate::proc::ProcessTable::read();
    let mut verdicts = Vec::new();
    for worker in status.slots.iter().flat_map(|s| &s.workers) {
        if !worker.current || worker.phase != WorkerPhase::Ready {
            continue;
        }
        let (rss, _) = table.tree_usage(worker.pid);
        let spread = crate::core::jitter(worker.id, Duration::from_nanos(limit / 10));
        let own_limit = limit + spread.as_nanos() as u64;
        if rss >= limit + limit / 2 {
            verdicts.push(MemoryVerdict::Ceiling(worker.id));
        } else if rss >= own_limit {
            let why = Recycle::Memory {
                rss,
                limit: own_limit,
            };
            verdicts.push(MemoryVerdict::Recycle(worker.id, why));
        }
    }
    verdicts
}

/// Adds the slots' accept queues (reuseport) and the workers' open connections (least-conn)
/// to the core's status.
pub(crate) fn add_balancing(status: &mut ClusterStatus, shared: &Shared) {
    let balance = shared.config.balance;
    let open = if balance == Balance::LeastConn {
        shared.balancer.open_connections()
    } else {
        HashMap::new()
    };
    let queued =
        (balance == Balance::Reuseport).then(|| crate::steering::queued_by_slot(&shared.provider));
    for slot in &mut status.slots {
        if let Some(queued) = &queued {
            slot.queued = Some(queued.get(&slot.slot).copied().unwrap_or(0));
        }
        for worker in &mut slot.workers {
            worker.open_connections = open.get(&worker.id).copied();
        }
    }
}
