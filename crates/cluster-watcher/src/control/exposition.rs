//! The supervisor's own series in the Prometheus (OpenMetrics) text format, from one
//! [`ClusterStatus`]: names prefixed `cluster_`, per-worker series labelled by slot.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{ClusterStatus, SlotStatus, WorkerPhase, WorkerStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    slot: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    slot: u32,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type FloatGauge = Family<SlotLabel, Gauge<f64, AtomicU64>>;

/// Every family, registered.
#[derive(Default)]
struct Families {
    workers: Family<StateLabel, Gauge>,
    wanted: Gauge<i64>,
    restarts: Family<RestartLabels, Counter>,
    uptime: FloatGauge,
    rss: Family<SlotLabel, Gauge>,
    cpu: Family<SlotLabel, Counter<f64, AtomicU64>>,
    heartbeat: FloatGauge,
    backoff: FloatGauge,
    queued: Family<SlotLabel, Gauge>,
    open: Family<SlotLabel, Gauge>,
    draining_open: Family<SlotLabel, Gauge>,
    rolling: Family<OutcomeLabel, Counter>,
    log_dropped: Counter,
}

impl Families {
    fn register(&self, r: &mut Registry) {
        r.register("workers", "Worker processes by state", self.workers.clone());
        r.register(
            "log_lines_dropped",
            "Log lines dropped because the log output did not keep up",
            self.log_dropped.clone(),
        );
        r.register(
            "workers_wanted",
            "Slots the cluster runs",
            self.wanted.clone(),
        );
        let help = "Replacements of a slot's worker, by cause";
        r.register("restarts", help, self.restarts.clone());
        let help = "Age of the slot's current worker";
        r.register("worker_uptime_seconds", help, self.uptime.clone());
        let help = "Resident memory of the worker's process tree";
        r.register("worker_rss_bytes", help, self.rss.clone());
        let help = "CPU time of the worker's process tree";
        r.register("worker_cpu_seconds", help, self.cpu.clone());
        let help = "Time since the worker's last heartbeat";
        r.register("worker_heartbeat_age_seconds", help, self.heartbeat.clone());
        let help = "Time left before a backing-off slot starts again";
        r.register("backoff_seconds", help, self.backoff.clone());
        let help = "Connections waiting in the accept queues of the slot's sockets (reuseport)";
        r.register("listen_queue", help, self.queued.clone());
        let help = "Connections handed to the worker and not yet closed (least-conn)";
        r.register("worker_open_connections", help, self.open.clone());
        let help = "Connections still open in the slot's stopping workers (a drain's progress)";
        r.register(
            "stopping_open_connections",
            help,
            self.draining_open.clone(),
        );
        r.register(
            "rolling_restarts",
            "Rolling restarts by outcome",
            self.rolling.clone(),
        );
    }

    fn slot(&self, slot: &SlotStatus) {
        let label = SlotLabel { slot: slot.slot };
        let r = &slot.restarts;
        for (cause, count) in [
            ("crashed", r.crashed),
            ("hung", r.hung),
            ("rolling", r.rolling),
            ("requested", r.requested),
            ("recycled", r.recycled),
        ] {
            let labels = RestartLabels {
                slot: slot.slot,
                cause,
            };
            self.restarts.get_or_create(&labels).inc_by(count);
        }
        if let Some(left) = slot.backing_off {
            self.backoff.get_or_create(&label).set(left.as_secs_f64());
        }
        if let Some(waiting) = slot.queued {
            self.queued.get_or_create(&label).set(i64::from(waiting));
        }
        for worker in slot.workers.iter().filter(|w| w.current) {
            self.current_worker(&label, worker);
        }
        let stopping = slot.workers.iter().filter(|w| !w.current);
        let open: Option<u64> = stopping
            .filter_map(|w| w.open_connections)
            .reduce(|a, b| a + b);
        if let Some(open) = open {
            let open = i64::try_from(open).unwrap_or(i64::MAX);
            self.draining_open.get_or_create(&label).set(open);
        }
    }

    fn current_worker(&self, label: &SlotLabel, worker: &WorkerStatus) {
        self.uptime
            .get_or_create(label)
            .set(worker.uptime.as_secs_f64());
        if let Some(count) = worker.open_connections {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.open.get_or_create(label).set(count);
        }
        if let Some(bytes) = worker.rss {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.rss.get_or_create(label).set(bytes);
        }
        if let Some(used) = worker.cpu {
            self.cpu.get_or_create(label).inc_by(used.as_secs_f64());
        }
        if let Some(age) = worker.heartbeat_age
            && worker.phase == WorkerPhase::Ready
        {
            self.heartbeat.get_or_create(label).set(age.as_secs_f64());
        }
    }

    fn totals(&self, status: &ClusterStatus) {
        for phase in [
            WorkerPhase::Starting,
            WorkerPhase::Ready,
            WorkerPhase::Stopping,
            WorkerPhase::Killed,
        ] {
            let count = status.workers().filter(|w| w.phase == phase).count();
            let state = phase.as_str();
            self.workers
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.wanted.set(status.wanted_workers() as i64);
        self.log_dropped
            .inc_by(status.log_lines_dropped.unwrap_or(0));
        for (outcome, count) in [
            ("completed", status.rolling_restarts_completed),
            ("failed", status.rolling_restarts_failed),
        ] {
            self.rolling
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(count);
        }
    }
}

/// The Prometheus (OpenMetrics) text for one snapshot; names prefixed `cluster_`,
/// per-worker series labelled by slot.
pub fn exposition(status: &ClusterStatus) -> String {
    let mut registry = Registry::with_prefix("cluster");
    let families = Families::default();
    families.register(&mut registry);
    for slot in &status.slots {
        families.slot(slot);
    }
    families.totals(status);
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::WorkerId;

    fn worker(generation: u32, current: bool, open: u64) -> WorkerStatus {
        let id = WorkerId {
            slot: 1,
            generation,
        };
        let mut worker = WorkerStatus::new(
            id,
            100 + generation,
            WorkerPhase::Ready,
            current,
            Duration::ZERO,
        );
        worker.open_connections = Some(open);
        worker
    }

    #[test]
    fn a_draining_workers_open_connections_are_shown_apart_from_the_current_ones() {
        let workers = vec![worker(1, false, 7), worker(2, true, 3)];
        let slot = SlotStatus::new(1, true, 2, workers, None, Default::default(), None);
        let text = exposition(&ClusterStatus::new(true, vec![slot]));
        assert!(
            text.contains("cluster_worker_open_connections{slot=\"1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cluster_stopping_open_connections{slot=\"1\"} 7"),
            "{text}"
        );
    }
}
