//! Program mode's UDP and QUIC listeners (`udp://`, `quic://`): `SO_REUSEPORT` groups of
//! datagram sockets the watcher binds and holds, handed to workers as descriptors.
//!
//! * **`udp://`: one socket per slot.** The kernel hashes each flow (addresses and ports) to
//!   a member. A slot's socket outlives its processes: a respawned or restarted worker gets
//!   it back, so its flows keep their member, and datagrams that arrive while no process
//!   reads wait in the socket's buffer. Both generations of a rolling restart read the same
//!   socket for a moment; the old one leaves at its stop signal. A slot scaled away closes
//!   its socket once its last process is gone, and the group rehashes.
//! * **`quic://`: one socket per process**, steered by connection ID
//!   ([`fdpass::steer_quic`]). A worker gets a member of its own and its prefix in
//!   `CLUSTER_QUIC_CID_PREFIX` (hex), to put first in every connection ID it issues. Its
//!   connections' packets reach it until it exits, however many generations came after;
//!   new connections go to the members of ready workers that were not asked to stop
//!   ([`admit`](Datagrams::admit), [`retire`](Datagrams::retire)). Members never leave the
//!   group while the watcher runs (positions are what the program returns): a member whose
//!   process ended is emptied of stale datagrams and given to the next process.
//!
//! Which workers are ready or stopping is the core's decision (its `Admit` and `Stop`
//! actions); this module only keeps the sockets and the program in step with it.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use cluster_ipc::ListenAddress;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::WorkerId;

/// Who reads a member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// `udp://`: every process of this slot.
    Slot(u32),
    /// `quic://`: this process.
    Worker(WorkerId),
    /// `quic://`: nobody; the next process gets it.
    Free,
    /// `quic://`: a worker of the watcher this one took over from (taking new connections
    /// when it was handed over), until that watcher is gone.
    Predecessor { accepting: bool },
}

/// A member as a successor watcher takes it over (its socket travels beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DatagramMember {
    /// The address as asked for (`--listen`).
    pub(crate) address: ListenAddress,
    /// `udp://`: the slot it belongs to.
    pub(crate) slot: Option<u32>,
    /// `quic://`: a process reads it (its connections must keep reaching it).
    pub(crate) held: bool,
    /// `quic://`: that process takes new connections (until the successor's own do).
    pub(crate) accepting: bool,
}

#[derive(Debug)]
struct Member {
    socket: Arc<OwnedFd>,
    holder: Holder,
}

/// One address's group, members in the kernel's order.
#[derive(Debug)]
struct Group {
    /// As asked for (`--listen`).
    asked: ListenAddress,
    /// Bound, with port 0 resolved.
    bound: SocketAddr,
    members: Vec<Member>,
}

/// What a worker gets for one datagram listener.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) socket: Arc<OwnedFd>,
    /// `quic://`: the connection-ID prefix of its member.
    pub(crate) cid_prefix: Option<[u8; fdpass::QUIC_CID_PREFIX_LEN]>,
}

/// Every datagram group of the cluster, and the QUIC workers taking new connections.
#[derive(Debug, Default)]
pub(crate) struct Datagrams {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    groups: Vec<Group>,
    accepting: BTreeSet<WorkerId>,
    /// Asked to stop: no new connections, even when nobody else takes them.
    retired: BTreeSet<WorkerId>,
    /// A successor watcher took the groups: it steers them.
    handed_over: bool,
}

impl Datagrams {
    /// Binds `address`'s first socket (port 0 resolved for good) and returns where it
    /// listens, and whether it was bound now; an address bound already is left as it is.
    pub(crate) fn prepare(&self, address: &ListenAddress) -> io::Result<(SocketAddr, bool)> {
        let mut state = self.state.lock();
        if let Some(group) = state.groups.iter().find(|g| g.asked == *address) {
            return Ok((group.bound, false));
        }
        let (ListenAddress::Udp(asked) | ListenAddress::Quic(asked)) = address else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a datagram address",
            ));
        };
        let socket = Arc::new(bind(*asked)?);
        let bound = match ListenAddress::of(&*socket)? {
            ListenAddress::Udp(bound) => bound,
            _ => *asked,
        };
        state.groups.push(Group {
            asked: address.clone(),
            bound,
            members: vec![Member {
                socket,
                holder: Holder::Free,
            }],
        });
        Ok((bound, true))
    }

    /// The socket worker `id` reads for `address`: its slot's (`udp://`) or a member of its
    /// own (`quic://`), bound when none is free.
    pub(crate) fn grant(&self, address: &ListenAddress, id: WorkerId) -> io::Result<Granted> {
        self.prepare(address)?;
        let mut state = self.state.lock();
        let quic = matches!(address, ListenAddress::Quic(_));
        if quic && state.handed_over {
            // Its members are the successor's to give now.
            return Err(io::Error::other(format!(
                "{address}: the sockets were handed to a successor watcher"
            )));
        }
        let handed_over = state.handed_over;
        let group = state
            .groups
            .iter_mut()
            .find(|g| g.asked == *address)
            .expect("prepared above");
        let position = if quic {
            group.take_free(Holder::Worker(id))?
        } else {
            group.slot_member(id.slot, handed_over)?
        };
        let socket = group.members[position].socket.clone();
        let cid_prefix = if quic {
            // `take_free` keeps positions below MAX_QUIC_MEMBERS.
            u8::try_from(position).ok().map(fdpass::quic_cid_prefix)
        } else {
            None
        };
        if quic {
            state.steer();
        }
        Ok(Granted { socket, cid_prefix })
    }

    /// `id` is ready: new QUIC connections may go to it.
    pub(crate) fn admit(&self, id: WorkerId) {
        let mut state = self.state.lock();
        if state.accepting.insert(id) {
            state.steer();
        }
    }

    /// `id` was asked to stop: it keeps its QUIC connections but gets no new ones.
    pub(crate) fn retire(&self, id: WorkerId) {
        let mut state = self.state.lock();
        state.retired.insert(id);
        state.accepting.remove(&id);
        state.steer();
    }

    /// `id`'s process is gone (or could not be started): its QUIC members are free for the
    /// next process.
    pub(crate) fn exited(&self, id: WorkerId) {
        let mut state = self.state.lock();
        state.accepting.remove(&id);
        state.retired.remove(&id);
        for group in &mut state.groups {
            for member in &mut group.members {
                if member.holder == Holder::Worker(id) {
                    member.holder = Holder::Free;
                }
            }
        }
        state.steer();
    }

    /// Every member in its group's order, for a successor watcher ([`import`](Self::import)).
    /// From now on the successor steers the groups: this watcher no longer does.
    pub(crate) fn export(&self) -> Vec<(DatagramMember, Arc<OwnedFd>)> {
        let mut state = self.state.lock();
        state.handed_over = true;
        let mut exported = Vec::new();
        for group in &state.groups {
            for member in &group.members {
                let (slot, held, accepting) = match member.holder {
                    Holder::Slot(slot) => (Some(slot), true, false),
                    Holder::Worker(id) => (None, true, state.accepting.contains(&id)),
                    Holder::Predecessor { accepting } => (None, true, accepting),
                    Holder::Free => (None, false, false),
                };
                let spec = DatagramMember {
                    address: group.asked.clone(),
                    slot,
                    held,
                    accepting,
                };
                exported.push((spec, member.socket.clone()));
            }
        }
        exported
    }

    /// An upgrade did not happen after all: this watcher steers its groups again.
    pub(crate) fn take_back(&self) {
        let mut state = self.state.lock();
        state.handed_over = false;
        state.steer();
    }

    /// Takes a member a predecessor [`export`](Self::export)ed, in order: it keeps its
    /// place in the group (the kernel's, which the steering program counts on).
    ///
    /// # Errors
    /// A socket that is not a UDP socket, or an address that is not a datagram one.
    pub(crate) fn import(&self, member: DatagramMember, socket: OwnedFd) -> io::Result<()> {
        let bound = match ListenAddress::of(&socket)? {
            ListenAddress::Udp(bound) if member.address.is_datagram() => bound,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a handed-over datagram member that is not a UDP socket",
                ));
            }
        };
        let holder = match (member.slot, member.held) {
            (Some(slot), _) => Holder::Slot(slot),
            (None, true) => Holder::Predecessor {
                accepting: member.accepting,
            },
            (None, false) => Holder::Free,
        };
        let mut state = self.state.lock();
        let member_socket = Member {
            socket: Arc::new(socket),
            holder,
        };
        match state.groups.iter_mut().find(|g| g.asked == member.address) {
            Some(group) => group.members.push(member_socket),
            None => state.groups.push(Group {
                asked: member.address,
                bound,
                members: vec![member_socket],
            }),
        }
        Ok(())
    }

    /// The predecessor watcher is gone, and its workers with it: their members are free.
    pub(crate) fn predecessor_gone(&self) {
        let mut state = self.state.lock();
        for group in &mut state.groups {
            for member in &mut group.members {
                if matches!(member.holder, Holder::Predecessor { .. }) {
                    member.holder = Holder::Free;
                }
            }
        }
    }

    /// `slot` is gone for good: its `udp://` sockets close (the group rehashes).
    pub(crate) fn release_slot(&self, slot: u32) {
        let mut state = self.state.lock();
        for group in &mut state.groups {
            group.members.retain(|m| m.holder != Holder::Slot(slot));
        }
    }
}

impl Group {
    /// `udp://`: the member of `slot`, bound on first use.
    fn slot_member(&mut self, slot: u32, handed_over: bool) -> io::Result<usize> {
        if let Some(position) = self
            .members
            .iter()
            .position(|m| m.holder == Holder::Slot(slot))
        {
            return Ok(position);
        }
        // The socket bound by `prepare` goes to the first slot that asks.
        if let Some(first) = self.members.iter_mut().find(|m| m.holder == Holder::Free) {
            first.holder = Holder::Slot(slot);
        } else if handed_over {
            // A member bound now would be missing from what the successor was given.
            return Err(io::Error::other(format!(
                "{}: the sockets were handed to a successor watcher",
                self.asked
            )));
        } else {
            self.bind_member(Holder::Slot(slot))?;
        }
        Ok(self
            .members
            .iter()
            .position(|m| m.holder == Holder::Slot(slot))
            .expect("just given"))
    }

    /// `quic://`: a free member (emptied of what its last process left unread), or a new
    /// one.
    fn take_free(&mut self, holder: Holder) -> io::Result<usize> {
        if let Some(position) = self.members.iter().position(|m| m.holder == Holder::Free) {
            let socket = &self.members[position].socket;
            discard_queued(socket);
            super::program::set_blocking(socket)?;
            self.members[position].holder = holder;
            return Ok(position);
        }
        if self.members.len() >= fdpass::MAX_QUIC_MEMBERS {
            return Err(io::Error::other(format!(
                "{}: at most {} worker processes at once (a position is one byte of the connection ID)",
                self.asked,
                fdpass::MAX_QUIC_MEMBERS
            )));
        }
        self.bind_member(holder)?;
        Ok(self.members.len() - 1)
    }

    /// A new member on the group's port: it joins the group last.
    fn bind_member(&mut self, holder: Holder) -> io::Result<()> {
        let socket = Arc::new(bind(self.bound)?);
        self.members.push(Member { socket, holder });
        Ok(())
    }
}

impl State {
    /// Attaches each QUIC group's program: connection IDs to their members, new
    /// connections to the accepting workers' members (see below for when none is).
    fn steer(&self) {
        if self.handed_over {
            return;
        }
        for group in &self.groups {
            if !matches!(group.asked, ListenAddress::Quic(_)) {
                continue;
            }
            let positions = |take: &dyn Fn(Holder) -> bool| -> Vec<u32> {
                (0u32..)
                    .zip(&group.members)
                    .filter(|(_, m)| take(m.holder))
                    .map(|(position, _)| position)
                    .collect()
            };
            // Ready workers not asked to stop; else (an upgrade under way) the predecessor's
            // that were; else workers still starting, which read them once they run.
            let mut accepting =
                positions(&|h| matches!(h, Holder::Worker(id) if self.accepting.contains(&id)));
            if accepting.is_empty() {
                accepting = positions(&|h| matches!(h, Holder::Predecessor { accepting: true }));
            }
            if accepting.is_empty() {
                accepting =
                    positions(&|h| matches!(h, Holder::Worker(id) if !self.retired.contains(&id)));
            }
            if accepting.is_empty() {
                continue;
            }
            let size = u32::try_from(group.members.len()).unwrap_or(u32::MAX);
            if let Err(error) = fdpass::steer_quic(&*group.members[0].socket, size, &accepting) {
                tracing::error!(address = %group.asked, %error, "cannot steer the QUIC sockets by connection ID");
            }
        }
    }
}

/// A member's socket, blocking as systemd hands sockets out (a program that wants it
/// non-blocking sets the flag itself).
fn bind(address: SocketAddr) -> io::Result<OwnedFd> {
    let socket = cluster_ipc::bind_datagram(address)?;
    super::program::set_blocking(&socket)?;
    Ok(socket)
}

/// Reads and drops the datagrams waiting on `socket` (for a process that is gone): at most
/// a receive buffer's worth, so a flood cannot hold the driver.
fn discard_queued(socket: &OwnedFd) {
    let mut buffer = [0u8; 2048];
    for _ in 0..4096 {
        if rustix::net::recv(socket, &mut buffer, rustix::net::RecvFlags::DONTWAIT).is_err() {
            return;
        }
    }
}

/// `CLUSTER_QUIC_CID_PREFIX`'s value: the prefix in lower-case hex.
pub(crate) fn hex(prefix: &[u8]) -> String {
    prefix.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quic() -> ListenAddress {
        "quic://127.0.0.1:0".parse().unwrap()
    }

    fn id(slot: u32, generation: u32) -> WorkerId {
        WorkerId { slot, generation }
    }

    fn prefix_of(datagrams: &Datagrams, worker: WorkerId) -> u8 {
        let granted = datagrams.grant(&quic(), worker).unwrap();
        granted.cid_prefix.unwrap()[0]
    }

    #[test]
    fn each_process_gets_a_member_of_its_own_and_a_gone_one_s_member_is_reused() {
        let datagrams = Datagrams::default();
        assert_eq!(prefix_of(&datagrams, id(1, 1)), 0);
        assert_eq!(
            prefix_of(&datagrams, id(1, 2)),
            1,
            "both generations at once"
        );
        datagrams.exited(id(1, 1));
        assert_eq!(
            prefix_of(&datagrams, id(1, 3)),
            0,
            "position 0 was free again"
        );
        // A process that could not be started gives its member back the same way.
        assert_eq!(prefix_of(&datagrams, id(2, 1)), 2);
        datagrams.exited(id(2, 1));
        assert_eq!(prefix_of(&datagrams, id(2, 2)), 2);
    }

    #[test]
    fn a_successor_gets_every_member_in_order_and_the_predecessor_gives_none_after() {
        let old = Datagrams::default();
        for slot in 1..=3 {
            prefix_of(&old, id(slot, 1));
            old.admit(id(slot, 1));
        }
        old.exited(id(2, 1));
        let exported = old.export();
        assert_eq!(exported.len(), 3);
        assert_eq!(
            exported
                .iter()
                .map(|(m, _)| (m.held, m.accepting))
                .collect::<Vec<_>>(),
            vec![(true, true), (false, false), (true, true)]
        );
        assert!(old.grant(&quic(), id(2, 2)).is_err(), "handed over");

        let new = Datagrams::default();
        for (member, socket) in exported {
            let socket = rustix::io::fcntl_dupfd_cloexec(&*socket, 0).unwrap();
            new.import(member, socket).unwrap();
        }
        // The free member first, then new ones: the predecessor's stay theirs until it is gone.
        assert_eq!(prefix_of(&new, id(1, 1)), 1);
        assert_eq!(prefix_of(&new, id(2, 1)), 3);
        new.predecessor_gone();
        assert_eq!(prefix_of(&new, id(3, 1)), 0);
    }
}
