//! Shares of the hand-off that change over time: slow start (a ramping worker is passed
//! over by its weight) and live rebalancing (connections handed back go to the newcomer
//! first).

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use cluster_ipc::protocol::ClientMeta;
use parking_lot::Mutex;

use super::handoff::{Balancer, Route};
use super::pick;
use crate::WorkerId;

impl Balancer {
    /// The shares of new connections of the workers in their slow start (thousandths; a
    /// worker not listed has a full one).
    pub(crate) fn set_weights(&self, weights: &std::collections::BTreeMap<WorkerId, u16>) {
        self.each_route(|route| {
            for target in &mut route.targets {
                target.weight = weights.get(&target.id).copied().unwrap_or(pick::FULL);
            }
        });
    }

    /// Live rebalancing: the next connections handed back go to the workers of `wants`,
    /// that many each (when they are ready and have room), replacing an earlier preference.
    pub(crate) fn prefer(&self, wants: Vec<(WorkerId, u32)>) {
        *self.preferred.lock() = wants;
    }

    /// Sends a handed-back connection to a worker that wants more, if one on this route is
    /// ready and has room; gives the socket back otherwise.
    pub(super) fn to_preferred(
        &self,
        route: &Mutex<Route>,
        socket: OwnedFd,
        meta: &ClientMeta,
        prefix: &[u8],
    ) -> Result<(), OwnedFd> {
        let mut preferred = self.preferred.lock();
        preferred.retain(|(_, left)| *left > 0);
        for (to, left) in preferred.iter_mut() {
            let target = route
                .lock()
                .targets
                .iter()
                .find(|t| t.id == *to && t.ready)
                .map(|t| (t.pipe.clone(), t.load.clone()));
            let Some((pipe, load)) = target else {
                continue;
            };
            if pipe.try_send_with_prefix(&socket, meta, prefix).is_ok() {
                load.sent.fetch_add(1, Ordering::Relaxed);
                *left -= 1;
                return Ok(());
            }
        }
        Err(socket)
    }

    /// A random number below [`pick::FULL`] (xorshift: quality enough to spread shares).
    pub(super) fn roll(&self) -> u16 {
        let mut x = self.dice.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.store(x, Ordering::Relaxed);
        u16::try_from(x % u64::from(pick::FULL)).unwrap_or(0)
    }
}
