//! `reuseport` mode: keeping new connections away from slots that cannot take them.
//!
//! The watcher binds one `SO_REUSEPORT` socket per slot and address (in the provider) and
//! keeps each for its whole life, so a worker's crash or exit never resets a connection
//! queued on its slot's socket: the replacement accepts it. While a slot has no ready worker
//! (starting, crashed, backing off) or is being scaled away, a classic-BPF program steers
//! the group's new connections at random onto the live slots only; when every slot is live
//! again, the program goes and the kernel's hash spreads them.
//!
//! Where eBPF is allowed (`CAP_BPF`, root), the program is instead an exact round-robin over
//! the live slots (a counter in a BPF map): the hash is even only on average, so a few dozen
//! long-lived connections (keep-alive, WebSockets) can land 50 % more on one worker than on
//! another; in turn they land within one of each other. The kernel numbers a group's
//! sockets in `listen()` order and fills the hole left by a closed one with the last, so the
//! program is rebuilt from the provider's record of that order whenever it changes.
//!
//! With `hash=ip` (sticky sessions for programs given listeners) the program is always
//! there, live slots or not: it sends every connection from one client address to the live
//! slot that address hashes to (`fdpass::steer_reuseport_by_source`, rendezvous hashing, the
//! same choice as `hash` mode's in the watcher), so a slot's replacement gets its clients
//! back and only the clients of a slot that is down go elsewhere meanwhile.
//!
//! With `--cpu-affinity` the program is always there too: a connection goes to a live slot
//! pinned to the CPU the kernel processes it on (`fdpass::steer_reuseport_by_cpu`), so its
//! packets and its worker share a CPU; a CPU without a live slot sends to any live one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::OwnedFd;

use cluster_ipc::{ListenAddress, ServerSocketProvider};

/// What was last attached to each group.
#[derive(Debug, Default)]
pub(crate) struct Steering {
    /// Per group: its member slots in kernel order, and the positions steered to (`None`:
    /// no program, the kernel's hash).
    applied: HashMap<ListenAddress, (Vec<u32>, Option<Vec<u32>>)>,
    /// The exact round-robin, once tried: `None` inside when eBPF is not allowed here.
    round_robin: Option<Option<fdpass::RoundRobinSteering>>,
    /// What the program steers by.
    by: SteerBy,
    /// Slow start: the slots ramping up and their shares in thousandths.
    weights: BTreeMap<u32, u16>,
}

/// What a group's program steers by.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum SteerBy {
    /// Nothing but liveness: spread over the live slots (in turn where eBPF is allowed).
    #[default]
    Spread,
    /// The client's address (`hash=ip`).
    Source,
    /// The CPU a connection arrives on: slot `i` is pinned to `cpus[(i - 1) % len]`
    /// (`--cpu-affinity`, as `WatcherConfig::cpus_of` says).
    Cpu(Vec<u32>),
}

impl SteerBy {
    /// Steering by the client's address in sticky mode, else by CPU when slots are pinned
    /// to `cpus`, else spreading.
    pub(crate) fn new(by_source: bool, cpus: &[usize]) -> Self {
        let cpus: Vec<u32> = cpus.iter().filter_map(|&c| u32::try_from(c).ok()).collect();
        match (by_source, cpus.is_empty()) {
            (true, _) => Self::Source,
            (false, true) => Self::Spread,
            (false, false) => Self::Cpu(cpus),
        }
    }

    /// The CPU `slot` is pinned to, when steering by CPU.
    fn cpu_of(&self, slot: u32) -> Option<u32> {
        match self {
            Self::Cpu(cpus) => cpus.get((slot.max(1) as usize - 1) % cpus.len()).copied(),
            _ => None,
        }
    }
}

impl Steering {
    /// Steering by `by`.
    pub(crate) fn new(by: SteerBy) -> Self {
        Self {
            by,
            ..Self::default()
        }
    }

    /// Slow start: the slots ramping up, and their shares in thousandths (applied at the
    /// next [`update`](Self::update)).
    pub(crate) fn set_weights(&mut self, weights: BTreeMap<u32, u16>) {
        self.weights = weights;
    }

    /// Steers every group of `provider` onto the sockets of the slots in `live`. With no
    /// live slot at all (the cluster starting, every worker down) nothing is steered:
    /// connections wait on their slot's socket for its worker.
    pub(crate) fn update(&mut self, provider: &ServerSocketProvider, live: &BTreeSet<u32>) {
        let groups = provider.reuseport_groups();
        if groups.is_empty() {
            return;
        }
        if self.by == SteerBy::Spread {
            self.round_robin.get_or_insert_with(|| {
                match fdpass::RoundRobinSteering::new() {
                    Ok(steering) => {
                        tracing::info!("reuseport: new connections go to the slots in strict turn (eBPF)");
                        Some(steering)
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "reuseport: exact round-robin needs eBPF (CAP_BPF); new connections are spread by the kernel's hash");
                        None
                    }
                }
            });
        }
        self.applied
            .retain(|address, _| groups.iter().any(|g| g.address == *address));
        for group in groups {
            let Some((_, first)) = group.members.first() else {
                continue;
            };
            let (order, positions) = live_positions(&group, live);
            let wanted = self.wanted(&order, positions);
            if self.applied.get(&group.address) == Some(&(order.clone(), wanted.clone())) {
                continue;
            }
            match self.apply(first, &order, wanted.as_deref()) {
                Ok(()) => {
                    let steered: BTreeSet<u32> = wanted
                        .iter()
                        .flatten()
                        .map(|&p| order[p as usize])
                        .collect();
                    if wanted.is_some() {
                        tracing::debug!(address = %group.address, slots = ?steered, by = ?self.by, "new connections steered to the live slots");
                    } else {
                        tracing::debug!(address = %group.address, "new connections spread over every slot");
                    }
                    self.applied.insert(group.address, (order, wanted));
                }
                Err(e) => {
                    tracing::warn!(address = %group.address, error = %e, "cannot steer new connections away from slots without a ready worker");
                }
            }
        }
    }

    /// The positions a group of members `order`, whose live ones are at `positions`, is
    /// steered to (`None`: no program, the kernel's hash).
    fn wanted(&self, order: &[u32], positions: Vec<u32>) -> Option<Vec<u32>> {
        let every = || (0u32..).take(order.len()).collect();
        if self.by != SteerBy::Spread {
            // By address or CPU over the live slots; over all of them while none is live.
            return Some(if positions.is_empty() {
                every()
            } else {
                positions
            });
        }
        let ramping = positions
            .iter()
            .any(|p| self.weights.contains_key(&order[*p as usize]));
        match self.round_robin.as_ref().and_then(Option::as_ref) {
            // In turn over the live slots; over all of them while none is live.
            Some(_) if positions.is_empty() => Some(every()),
            _ if ramping => Some(weighted(&positions, order, &self.weights)),
            Some(_) => Some(positions),
            None if positions.is_empty() || positions.len() == order.len() => None,
            None => Some(positions),
        }
    }

    /// Attaches the program that steers to `wanted` (positions; `None`: removes it).
    fn apply(&self, first: &OwnedFd, order: &[u32], wanted: Option<&[u32]>) -> std::io::Result<()> {
        let Some(positions) = wanted else {
            return fdpass::unsteer_reuseport(first);
        };
        match &self.by {
            SteerBy::Source => {
                let members: Vec<(u32, u32)> =
                    positions.iter().map(|&p| (order[p as usize], p)).collect();
                return fdpass::steer_reuseport_by_source(first, &members);
            }
            SteerBy::Cpu(_) => {
                let by_cpu: Vec<(u32, u32)> = positions
                    .iter()
                    .filter_map(|&p| self.by.cpu_of(order[p as usize]).map(|cpu| (cpu, p)))
                    .collect();
                return fdpass::steer_reuseport_by_cpu(first, &by_cpu, positions);
            }
            SteerBy::Spread => {}
        }
        match self.round_robin.as_ref().and_then(Option::as_ref) {
            Some(rr) => rr.steer(first, positions),
            None => fdpass::steer_reuseport(first, positions),
        }
    }
}

/// A group's member slots in kernel order, and the positions of those in `live`.
fn live_positions(
    group: &cluster_ipc::ReuseportGroup,
    live: &BTreeSet<u32>,
) -> (Vec<u32>, Vec<u32>) {
    let order: Vec<u32> = group.members.iter().map(|(slot, _)| *slot).collect();
    let positions = (0u32..)
        .zip(&order)
        .filter(|(_, slot)| live.contains(slot))
        .map(|(position, _)| position)
        .collect();
    (order, positions)
}

/// Slow start: each position repeated by its slot's share (ten times for a full share, at
/// least once), in rounds so the repetitions interleave; the kernel program picks among the
/// list at random (or in turn), so each slot gets its share. Unweighted past what a program
/// holds.
fn weighted(positions: &[u32], order: &[u32], weights: &BTreeMap<u32, u16>) -> Vec<u32> {
    let repeats = |p: u32| {
        let weight = weights.get(&order[p as usize]).copied().unwrap_or(1000);
        (weight / 100).clamp(1, 10)
    };
    if positions.len() * 10 > fdpass::MAX_STEERED {
        return positions.to_vec();
    }
    (0..10)
        .flat_map(|round| {
            positions
                .iter()
                .copied()
                .filter(move |p| repeats(*p) > round)
        })
        .collect()
}

/// Connections waiting in the accept queues of each slot's sockets, all addresses together.
pub(crate) fn queued_by_slot(provider: &ServerSocketProvider) -> HashMap<u32, u32> {
    let mut queued: HashMap<u32, u32> = HashMap::new();
    for group in provider.reuseport_groups() {
        for (slot, fd) in &group.members {
            let waiting = fdpass::listen_queue(&**fd).map_or(0, |q| q.queued);
            *queued.entry(*slot).or_default() += waiting;
        }
    }
    queued
}
