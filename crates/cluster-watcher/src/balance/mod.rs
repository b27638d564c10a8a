//! How connections reach workers: the seam of every balance mode.
//!
//! What a [`Balance`] mode means is answered by one `match`, `Balance::traits` in
//! `cluster-ipc` (both the watcher and its workers ask it); [`Mode`] turns those traits
//! into what the watcher does:
//!
//! * which listening sockets exist and who gets them ([`Mode::provider`]): a duplicate for
//!   every worker (shared), the address only (the watcher accepts), or one `SO_REUSEPORT`
//!   socket per slot;
//! * whether the watcher accepts (a thread per address blocked in `accept`,
//!   `accept_thread.rs`) and hands connections over (`handoff.rs`, the [`Balancer`]), and
//!   by which [`Rule`] it picks the worker (`pick.rs`, a pure function
//!   with its own tests; `hash.rs` for the sticky modes' key and slot);
//! * whether slots are steered and drained (`steering.rs` attaches the programs; the policy
//!   is the core's, `core/reuseport.rs`).
//!
//! Adding a mode is a variant of `Balance` and its line in `Balance::traits`; if it picks
//! workers by a rule of its own, that rule is one more arm of [`Rule`] in `pick.rs`, tested
//! there.

mod accept;
mod accept_thread;
mod handoff;
mod hash;
mod pick;
mod shares;
mod steering;

use cluster_ipc::ServerSocketProvider;
use cluster_ipc::protocol::{Balance, BalanceTraits};

pub(crate) use self::accept::vouch_for;
pub(crate) use self::handoff::{Balancer, ClientPipe, bound_handoff_queue};
pub use self::hash::{HashKey, HashKeyError};
pub(crate) use self::pick::Rule;
pub(crate) use self::steering::{SteerBy, Steering, queued_by_slot};

/// What the watcher does for a balance mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    traits: BalanceTraits,
}

impl Mode {
    pub(crate) fn of(balance: Balance) -> Self {
        Self {
            traits: balance.traits(),
        }
    }

    /// The provider that owns the cluster's listening sockets.
    pub(crate) fn provider(self) -> ServerSocketProvider {
        if self.traits.watcher_accepts {
            // Workers get the address, never the socket.
            ServerSocketProvider::new().without_descriptors()
        } else if self.traits.socket_per_slot {
            ServerSocketProvider::new().per_slot()
        } else {
            ServerSocketProvider::new()
        }
    }

    /// Whether the watcher accepts and hands each connection to a worker.
    pub(crate) fn accepts(self) -> bool {
        self.traits.watcher_accepts
    }

    /// How the watcher picks the worker for a connection.
    pub(crate) fn rule(self) -> Rule {
        if self.traits.hashed {
            Rule::Rendezvous
        } else if self.traits.least_loaded {
            Rule::LeastLoaded
        } else {
            Rule::InTurn
        }
    }

    /// Whether the watcher counts each worker's open connections.
    pub(crate) fn counts_open(self) -> bool {
        self.traits.least_loaded
    }

    /// Whether each slot has sockets of its own, whose accept queues the watcher reads.
    pub(crate) fn per_slot(self) -> bool {
        self.traits.socket_per_slot
    }
}
