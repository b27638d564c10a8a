//! `slow_start`: a worker that has just become ready gets a share of new connections that
//! ramps from a tenth of a full share to all of it over the window (Envoy's and YARP's slow
//! start), so a cold worker (a JIT still compiling, empty caches, a pool still connecting)
//! is not handed its full load the instant it is ready.
//!
//! The core publishes the weights of the workers still in their window
//! ([`Action::Weights`], in thousandths; a worker not listed has a full share) every
//! [`STEP`] while any is, and once more, empty, when the last leaves it. The balancer applies
//! them to its picks (round-robin, least-conn) and reuseport to its kernel program; `hash`
//! mode keeps every key where it belongs and ignores them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::timers::Timer;
use super::{Action, Phase, Supervisor};
use crate::WorkerId;

/// How often the weights are recomputed while a worker is in its window.
pub(crate) const STEP: Duration = Duration::from_millis(250);

/// A full share, in thousandths.
pub(crate) const FULL: u16 = 1000;

/// The share at the start of the window.
const FIRST: u16 = 100;

/// The weight of a worker ready for `since` out of a `window`: from [`FIRST`] to [`FULL`],
/// linearly.
pub(crate) fn weight(since: Duration, window: Duration) -> u16 {
    if window.is_zero() || since >= window {
        return FULL;
    }
    let ramp = f64::from(FULL - FIRST) * since.as_secs_f64() / window.as_secs_f64();
    // At most FULL - FIRST: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ramp = ramp as u16;
    FIRST + ramp
}

/// The weights last published.
#[derive(Debug, Default)]
pub(super) struct SlowStart {
    published: BTreeMap<WorkerId, u16>,
}

impl Supervisor {
    /// Recomputes the weights of the ready workers still in their window, publishes them
    /// when they changed, and looks again in [`STEP`] while any worker is in its window.
    pub(super) fn slow_start_due(&mut self, now: Instant) {
        let window = self.config.slow_start;
        let weights: BTreeMap<WorkerId, u16> = self
            .workers
            .iter()
            .filter(|(_, w)| w.phase == Phase::Ready)
            .filter_map(|(id, w)| {
                let since = now.saturating_duration_since(w.ready_at?);
                (since < window).then(|| (*id, weight(since, window)))
            })
            .collect();
        if weights != self.slow_start.published {
            self.slow_start.published.clone_from(&weights);
            self.actions.push_back(Action::Weights(weights.clone()));
        }
        if weights.is_empty() {
            self.timers.stop(Timer::SlowStart);
        } else {
            self.timers.set(Timer::SlowStart, now + STEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_ramps_from_a_tenth_to_full_over_the_window() {
        let window = Duration::from_secs(5);
        assert_eq!(weight(Duration::ZERO, window), 100);
        assert_eq!(weight(Duration::from_millis(2500), window), 550);
        assert_eq!(weight(Duration::from_secs(5), window), FULL);
        assert_eq!(weight(Duration::from_secs(9), window), FULL);
        assert_eq!(weight(Duration::ZERO, Duration::ZERO), FULL);
    }
}
