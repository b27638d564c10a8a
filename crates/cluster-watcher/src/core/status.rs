//! The snapshots the supervisor gives out: [`ClusterStatus`] and the live workers.

use std::time::Instant;

use super::{Phase, Supervisor, Timer};
use crate::{
    ClusterStatus, ConfigurationStatus, FailedReload, SlotStatus, WorkerInfo, WorkerPhase,
    WorkerStatus,
};

impl Supervisor {
    /// A snapshot for `ClusterWatcher::status`: every slot that is wanted or still has a
    /// process.
    pub(crate) fn status(&self, now: Instant) -> ClusterStatus {
        let slots = self
            .slots
            .iter()
            .filter(|(number, s)| s.wanted || self.workers.keys().any(|id| id.slot == *number))
            .map(|(number, s)| {
                let workers = self
                    .workers
                    .iter()
                    .filter(|(id, _)| id.slot == number)
                    .map(|(id, w)| {
                        let mut status = WorkerStatus::new(
                            *id,
                            w.pid,
                            public_phase(w.phase, w.stop.is_some()),
                            s.current == Some(*id),
                            now.saturating_duration_since(w.started),
                        );
                        status.heartbeat_age =
                            w.last_heartbeat.map(|t| now.saturating_duration_since(t));
                        status.accepted = w.accepted;
                        status.requests = w.requests;
                        status.open_connections = w.open;
                        status
                    })
                    .collect();
                let backing_off = self
                    .timers
                    .get(Timer::Respawn(number))
                    .map(|at| at.saturating_duration_since(now));
                SlotStatus::new(
                    number,
                    s.wanted,
                    s.generation,
                    workers,
                    backing_off,
                    s.restarts,
                    s.last_exit,
                )
            })
            .collect();
        let mut status = ClusterStatus::new(self.running, slots);
        status.rolling_restart = self.rolling.progress();
        status.rolling_restarts_completed = self.rolling_done.0;
        status.rolling_restarts_failed = self.rolling_done.1;
        status.configuration = self.configuration_status(now);
        status
    }

    /// Which configuration runs, and the last reload rolled back.
    fn configuration_status(&self, now: Instant) -> ConfigurationStatus {
        let reloads = &self.reloads;
        let mut status = ConfigurationStatus::default();
        status.source = self.config.source.clone();
        status.generation = reloads.generation;
        status.age = reloads.loaded.map_or(std::time::Duration::ZERO, |at| {
            now.saturating_duration_since(at)
        });
        status.changed = reloads.changed.clone();
        status.reloading = reloads.trying();
        status.failed = reloads.last_failed.as_ref().map(|failed| {
            FailedReload::new(
                failed.generation,
                failed.changed.clone(),
                failed
                    .failure
                    .clone()
                    .into_error(&failed.program)
                    .to_string(),
                now.saturating_duration_since(failed.at),
            )
        });
        status
    }

    /// Every live worker, as [`ClusterWatcher::workers`](crate::ClusterWatcher::workers)
    /// shows them, and whether each is its slot's current one.
    pub(crate) fn live_workers(&self) -> Vec<(WorkerInfo, bool)> {
        self.workers
            .iter()
            .map(|(id, w)| {
                let info = WorkerInfo {
                    id: *id,
                    pid: w.pid,
                    ready: w.phase == Phase::Ready,
                    stopping: matches!(w.phase, Phase::Stopping | Phase::Killed),
                };
                let current =
                    self.slots.contains(id.slot) && self.slots[id.slot].current == Some(*id);
                (info, current)
            })
            .collect()
    }
}

/// The phase as the status shows it: a killed worker that was being stopped is stopping.
fn public_phase(phase: Phase, stopped: bool) -> WorkerPhase {
    match (phase, stopped) {
        (Phase::Starting, _) => WorkerPhase::Starting,
        (Phase::Ready, _) => WorkerPhase::Ready,
        (Phase::Stopping, _) | (Phase::Killed, true) => WorkerPhase::Stopping,
        (Phase::Killed, false) => WorkerPhase::Killed,
    }
}
