//! Live rebalancing: after a scale-up or a respawn, the new worker has none of the
//! long-lived keep-alive connections, which stay where they were for as long as their
//! clients keep them (Envoy's and Istio's users' complaint; the only remedy they get is to
//! close connections). A `cluster-worker` program can hand idle connections back, as it does
//! at every stop, so the watcher asks the busiest workers for their excess and gives it to
//! the newcomer, round by round, until the shares are level.
//!
//! Each round reads the open connections the workers last reported (with their heartbeats),
//! computes the fair share (the total over the ready workers), and asks every worker above
//! it for its excess, at most [`MAX_ASK`] each ([`Action::Rebalance`]); the connections come
//! back at their next idle moment (never with a request in flight) and the balancer gives
//! them first to the workers under a fair share, up to a fair share each. Rounds are
//! [`ROUND`] apart (a heartbeat: fresh counts; a worker that has not reported since the last
//! round is counted with what that round moved), at most [`ROUNDS`] after the last
//! newcomer, and stop once every worker is within an eighth of a fair share. Not for
//! programs given listeners (they cannot hand a connection back) nor in `hash` modes (a key
//! must not move).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::timers::Timer;
use super::{Action, Phase, Supervisor};
use crate::WorkerId;

/// Between two rounds: the heartbeat that brings fresh counts.
pub(crate) const ROUND: Duration = Duration::from_secs(1);

/// Rounds at most for one newcomer.
const ROUNDS: u8 = 4;

/// The most connections asked of one worker in one round.
pub(crate) const MAX_ASK: u64 = 256;

/// A rebalancing under way.
#[derive(Debug, Clone, Default)]
pub(super) struct Rebalancing {
    rounds_left: u8,
    /// When the last round asked, and what it expected to move (negative: asked to hand
    /// back; positive: to be given): a worker that has not reported since is counted with
    /// its move, so a stale count does not make the next round ask twice.
    last_round: Option<(Instant, BTreeMap<WorkerId, i64>)>,
}

impl Supervisor {
    /// A worker became ready after a scale-up or a respawn: level the connections. During a
    /// rebalancing already under way, its next round (counts a heartbeat fresher) includes
    /// the newcomer, and the rounds start over.
    pub(super) fn rebalance_for_newcomer(&mut self, now: Instant) {
        if self.config.program_mode() || self.config.sticky_key().is_some() {
            return;
        }
        match &mut self.rebalancing {
            Some(under_way) => under_way.rounds_left = ROUNDS,
            None => {
                self.rebalancing = Some(Rebalancing {
                    rounds_left: ROUNDS,
                    last_round: None,
                });
                self.rebalance_round(now);
            }
        }
    }

    /// Each ready current worker's open connections: as it last reported, plus what the
    /// last round moved if it has not reported since.
    fn estimated_open(
        &self,
        last_round: Option<&(Instant, BTreeMap<WorkerId, i64>)>,
    ) -> Vec<(WorkerId, u64)> {
        self.current_workers()
            .filter(|(_, w)| w.phase == Phase::Ready)
            .map(|(id, w)| {
                let open = w.open.unwrap_or(0);
                let moved = match last_round {
                    Some((at, moves)) if w.open_at.is_none_or(|t| t <= *at) => {
                        moves.get(&id).copied().unwrap_or(0)
                    }
                    _ => 0,
                };
                (id, open.saturating_add_signed(moved))
            })
            .collect()
    }

    /// One round: the workers under a fair share want the difference, the workers above it
    /// are asked for their excess; or the end, once every worker is within an eighth of a
    /// fair share (or one connection).
    pub(super) fn rebalance_round(&mut self, now: Instant) {
        let Some(rebalancing) = self.rebalancing.take() else {
            return;
        };
        let ready = self.estimated_open(rebalancing.last_round.as_ref());
        let total: u64 = ready.iter().map(|(_, open)| open).sum();
        let fair = total / ready.len().max(1) as u64;
        let slack = (fair / 8).max(1);
        let level = ready.iter().all(|(_, open)| open.abs_diff(fair) <= slack);
        if ready.len() < 2 || fair == 0 || level {
            return;
        }
        let count = |n: u64| u32::try_from(n.min(MAX_ASK)).unwrap_or(0);
        let wants: Vec<(WorkerId, u32)> = ready
            .iter()
            .filter(|(_, open)| *open < fair)
            .map(|(id, open)| (*id, count(fair - open)))
            .collect();
        let asks: Vec<(WorkerId, u32)> = ready
            .iter()
            .filter(|(_, open)| *open > fair)
            .map(|(id, open)| (*id, count(open - fair)))
            .collect();
        let moves = wants
            .iter()
            .map(|(id, n)| (*id, i64::from(*n)))
            .chain(asks.iter().map(|(id, n)| (*id, -i64::from(*n))))
            .collect();
        self.actions.push_back(Action::Rebalance { wants, asks });
        if rebalancing.rounds_left > 1 {
            self.rebalancing = Some(Rebalancing {
                rounds_left: rebalancing.rounds_left - 1,
                last_round: Some((now, moves)),
            });
            self.timers.set(Timer::Rebalance, now + ROUND);
        }
    }
}
