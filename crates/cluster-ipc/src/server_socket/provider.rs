//! [`ServerSocketProvider`]: binds each address once (or once per slot) and keeps the
//! sockets for its whole life.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use rustix::net::sockopt;
use serde::{Deserialize, Serialize};

use crate::{ListenAddress, ListenOptions, ServerSocketError, bind_listener};

/// Which socket a request gets: equal address and options share one socket, except that a
/// per-slot provider binds one socket per slot (`Some(slot)`) for TCP addresses.
type SocketKey = (ListenAddress, ListenOptions, Option<u32>);

/// Listening sockets by what was asked for.
type SocketTable = HashMap<SocketKey, Arc<OwnedFd>>;

/// What a listening socket was bound for, as a successor needs to know to take it over
/// ([`ServerSocketProvider::export`], [`ServerSocketProvider::import`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketSpec {
    /// The address as asked for (port 0 included: the socket knows its real port).
    pub address: ListenAddress,
    /// The options as asked for.
    pub options: ListenOptions,
    /// The slot of a per-slot socket.
    pub slot: Option<u32>,
}

/// A `SO_REUSEPORT` group of per-slot sockets: the slots in the kernel's order (the order of
/// `listen()`, with the last member moved into the place of one that closed).
#[derive(Debug, Clone)]
pub struct ReuseportGroup {
    /// The address as asked for.
    pub address: ListenAddress,
    /// Each member's slot and socket, in the kernel's order: a steering program returns
    /// positions in this list.
    pub members: Vec<(u32, Arc<OwnedFd>)>,
}

#[derive(Debug, Default)]
struct Table {
    sockets: SocketTable,
    /// Per-slot mode: each group's slots in the kernel's order.
    order: HashMap<(ListenAddress, ListenOptions), Vec<u32>>,
}

impl Table {
    /// Distinct addresses (with options) bound: what the socket limit counts.
    fn distinct(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.sockets
            .keys()
            .filter(|(address, options, _)| seen.insert((address, options)))
            .count()
    }

    /// A per-slot socket joined its group (called `listen()`): it takes the last place.
    fn join_group(&mut self, address: &ListenAddress, options: &ListenOptions, slot: u32) {
        let order = self
            .order
            .entry((address.clone(), options.clone()))
            .or_default();
        if !order.contains(&slot) {
            order.push(slot);
        }
    }

    /// Forgets a per-slot socket's place in its group, as the kernel does when it closes: the
    /// last member takes its place.
    fn leave_group(&mut self, address: &ListenAddress, options: &ListenOptions, slot: u32) {
        let key = (address.clone(), options.clone());
        if let Some(order) = self.order.get_mut(&key)
            && let Some(position) = order.iter().position(|&s| s == slot)
        {
            order.swap_remove(position);
            if order.is_empty() {
                self.order.remove(&key);
            }
        }
    }
}

/// Binds each requested address once and hands every requester a duplicate of the same
/// listening socket (amphp's `ServerSocketPipeProvider`), or, per slot
/// ([`per_slot`](Self::per_slot)), one `SO_REUSEPORT` socket for each slot.
///
/// The provider owns the sockets for its whole life, so workers come and go without the
/// listening socket ever closing: connections wait in the kernel's backlog meanwhile. Port 0
/// is bound once, so every worker shares the same ephemeral port.
#[derive(Debug, Clone)]
pub struct ServerSocketProvider {
    table: Arc<Mutex<Table>>,
    /// Listening sockets this process inherited (socket activation), not asked for yet.
    adopted: Arc<Mutex<Vec<(ListenAddress, OwnedFd)>>>,
    max_sockets: usize,
    pub(super) descriptors: bool,
    per_slot: bool,
}

impl Default for ServerSocketProvider {
    fn default() -> Self {
        Self {
            table: Arc::default(),
            adopted: Arc::default(),
            max_sockets: Self::DEFAULT_MAX_SOCKETS,
            descriptors: true,
            per_slot: false,
        }
    }
}

impl ServerSocketProvider {
    /// How many distinct listening addresses a provider binds at most by default:
    /// requesters cannot make it hold descriptors and ports without bound.
    pub const DEFAULT_MAX_SOCKETS: usize = 64;

    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds at most `max` distinct addresses; further requests fail (default
    /// [`DEFAULT_MAX_SOCKETS`](Self::DEFAULT_MAX_SOCKETS)).
    #[must_use]
    pub fn with_max_sockets(mut self, max: usize) -> Self {
        self.max_sockets = max;
        self
    }

    /// Answers requests with the bound address only, never a descriptor: for a provider
    /// that accepts on the sockets itself and hands connections over, so no requester can
    /// change the socket it accepts on (clear `O_NONBLOCK`, `shutdown` it). The sockets it
    /// binds are blocking, for a thread that waits in `accept`; inherited ones
    /// ([`adopt`](Self::adopt), [`import`](Self::import)) keep their flags.
    #[must_use]
    pub fn without_descriptors(mut self) -> Self {
        self.descriptors = false;
        self
    }

    /// Binds one `SO_REUSEPORT` socket per slot for each TCP address
    /// ([`socket_in_slot`](Self::socket_in_slot), [`serve_slot`](Self::serve_slot)): the
    /// kernel spreads new connections over the slots' sockets, and each socket's queue
    /// belongs to one slot. Unix addresses still get one socket for all.
    #[must_use]
    pub fn per_slot(mut self) -> Self {
        self.per_slot = true;
        self
    }

    fn table(&self) -> parking_lot::MutexGuard<'_, Table> {
        self.table.lock()
    }

    /// Takes over a listening socket this process inherited (socket activation: systemd,
    /// `systemd-socket-activate`): a request for its address (or for port 0 on its IP) gets
    /// it instead of a new bind, so the socket, and the connections waiting on it, outlive
    /// this process's restarts. Returns the address it listens on.
    ///
    /// # Errors
    /// When it is not a listening socket.
    pub fn adopt(&self, fd: OwnedFd) -> io::Result<ListenAddress> {
        if !sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an inherited descriptor that is not a listening socket",
            ));
        }
        rustix::fs::fcntl_setfl(
            &fd,
            rustix::fs::fcntl_getfl(&fd)? | rustix::fs::OFlags::NONBLOCK,
        )?;
        let address = ListenAddress::of(&fd)?;
        self.adopted.lock().push((address.clone(), fd));
        Ok(address)
    }

    /// Inherited sockets no request has asked for (yet).
    pub fn unused_adopted(&self) -> Vec<ListenAddress> {
        let adopted = self.adopted.lock();
        adopted.iter().map(|(address, _)| address.clone()).collect()
    }

    /// The inherited socket for `address`, taken out of the adopted list.
    fn take_adopted(&self, address: &ListenAddress) -> Option<OwnedFd> {
        let mut adopted = self.adopted.lock();
        let index = adopted
            .iter()
            .position(|(local, _)| local.serves(address))?;
        Some(adopted.remove(index).1)
    }

    /// Forgets (and closes, once nobody else holds it) every socket bound for `address`.
    pub fn release(&self, address: &ListenAddress) -> bool {
        let mut table = self.table();
        let before = table.sockets.len();
        table.sockets.retain(|(a, _, _), _| a != address);
        table.order.retain(|(a, _), _| a != address);
        table.sockets.len() != before
    }

    /// Forgets (and closes, once nobody else holds them) the per-slot sockets of `slot`;
    /// the other slots' sockets move in their groups as the kernel moves them. Returns the
    /// addresses they were bound for.
    pub fn release_slot(&self, slot: u32) -> Vec<ListenAddress> {
        let mut table = self.table();
        let keys: Vec<SocketKey> = table
            .sockets
            .keys()
            .filter(|(_, _, s)| *s == Some(slot))
            .cloned()
            .collect();
        for (address, options, _) in &keys {
            table.leave_group(address, options, slot);
        }
        for key in &keys {
            table.sockets.remove(key);
        }
        keys.into_iter().map(|(address, _, _)| address).collect()
    }

    /// Binds `address` anew (in `slot`, for a per-slot socket), replacing the socket held
    /// for it (one that a requester broke, say); requests from then on get the new socket.
    /// The new socket takes the old one's actual address, so port 0 keeps the port it was
    /// given.
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`]; the old socket stays.
    pub fn rebind(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
        slot: Option<u32>,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        let key = (address.clone(), options.clone(), slot);
        let mut table = self.table();
        let actual = table
            .sockets
            .get(&key)
            .and_then(|old| ListenAddress::of(&**old).ok())
            .unwrap_or_else(|| address.clone());
        let mut bind_options = options.clone();
        if let Some(slot) = slot {
            bind_options.reuse_port = true;
            table.leave_group(address, options, slot);
        }
        // A socket that stopped listening has left its group already (the kernel removes
        // it at `shutdown`), so it leaves the order whether or not the new bind works.
        let fd = Arc::new(bind_listener(&actual, &bind_options)?);
        if let Some(slot) = slot {
            table.join_group(address, options, slot);
        }
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    /// The listening socket for `address` and `options`, bound on first use.
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`] with the OS error; the next call tries again.
    pub fn socket(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        let mut table = self.table();
        let key = (address.clone(), options.clone(), None);
        if let Some(fd) = table.sockets.get(&key) {
            return Ok(fd.clone());
        }
        if let Some(fd) = self.take_adopted(address) {
            let fd = Arc::new(fd);
            table.sockets.insert(key, fd.clone());
            return Ok(fd);
        }
        self.check_room(&table, address)?;
        let fd = bind_listener(address, options)?;
        if !self.descriptors {
            // No requester ever holds it: its owner accepts on it, in a thread that blocks
            // in `accept` (one system call a connection instead of a wait and an `accept`).
            rustix::io::ioctl_fionbio(&fd, false).map_err(|e| ServerSocketError::Bind {
                address: address.to_string(),
                source: e.into(),
            })?;
        }
        let fd = Arc::new(fd);
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    /// Slot `slot`'s `SO_REUSEPORT` socket for `address` and `options`, bound on first use
    /// (on the port the group's first socket got, for port 0). A per-slot provider only, and
    /// TCP only; otherwise the one socket for everyone ([`socket`](Self::socket)).
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`] with the OS error; the next call tries again.
    pub fn socket_in_slot(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
        slot: u32,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        if !self.per_slot || !matches!(address, ListenAddress::Tcp(_)) {
            return self.socket(address, options);
        }
        let mut table = self.table();
        let key = (address.clone(), options.clone(), Some(slot));
        if let Some(fd) = table.sockets.get(&key) {
            return Ok(fd.clone());
        }
        // A sibling's actual address: port 0 resolves once for the whole group.
        let sibling = table
            .sockets
            .iter()
            .find(|((a, o, s), _)| a == address && o == options && s.is_some())
            .and_then(|(_, fd)| ListenAddress::of(&**fd).ok());
        if sibling.is_none() {
            self.check_room(&table, address)?;
        }
        let mut bind_options = options.clone();
        bind_options.reuse_port = true;
        let fd = Arc::new(bind_listener(
            sibling.as_ref().unwrap_or(address),
            &bind_options,
        )?);
        table.join_group(address, options, slot);
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    fn check_room(&self, table: &Table, address: &ListenAddress) -> Result<(), ServerSocketError> {
        if table.distinct() >= self.max_sockets {
            return Err(ServerSocketError::Bind {
                address: address.to_string(),
                source: io::Error::other(format!(
                    "this provider binds at most {} sockets",
                    self.max_sockets
                )),
            });
        }
        Ok(())
    }

    /// Every socket bound so far, for a successor process to [`import`](Self::import):
    /// what each was asked for, with the socket. Per-slot sockets come in their group's
    /// kernel order, so importing them in this order keeps the order.
    pub fn export(&self) -> Vec<(SocketSpec, Arc<OwnedFd>)> {
        let table = self.table();
        let mut exported: Vec<(SocketSpec, Arc<OwnedFd>)> = table
            .sockets
            .iter()
            .filter(|((_, _, slot), _)| slot.is_none())
            .map(|((address, options, _), fd)| {
                let spec = SocketSpec {
                    address: address.clone(),
                    options: options.clone(),
                    slot: None,
                };
                (spec, fd.clone())
            })
            .collect();
        for ((address, options), order) in &table.order {
            for &slot in order {
                let key = (address.clone(), options.clone(), Some(slot));
                if let Some(fd) = table.sockets.get(&key) {
                    let spec = SocketSpec {
                        address: address.clone(),
                        options: options.clone(),
                        slot: Some(slot),
                    };
                    exported.push((spec, fd.clone()));
                }
            }
        }
        exported
    }

    /// Takes a socket a predecessor [`export`](Self::export)ed: requests for `spec` get it
    /// from now on, as if this provider had bound it.
    ///
    /// # Errors
    /// When it is not a listening socket.
    pub fn import(&self, spec: SocketSpec, fd: OwnedFd) -> io::Result<()> {
        if !sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a handed-over descriptor that is not a listening socket",
            ));
        }
        let mut table = self.table();
        if let Some(slot) = spec.slot {
            table.join_group(&spec.address, &spec.options, slot);
        }
        table
            .sockets
            .insert((spec.address, spec.options, spec.slot), Arc::new(fd));
        Ok(())
    }

    /// Per-slot mode: every group of per-slot sockets, members in the kernel's order.
    pub fn reuseport_groups(&self) -> Vec<ReuseportGroup> {
        let table = self.table();
        table
            .order
            .iter()
            .map(|((address, options), order)| ReuseportGroup {
                address: address.clone(),
                members: order
                    .iter()
                    .filter_map(|&slot| {
                        let key = (address.clone(), options.clone(), Some(slot));
                        table.sockets.get(&key).map(|fd| (slot, fd.clone()))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every socket bound so far, with its address as asked for.
    pub fn sockets(&self) -> Vec<(ListenAddress, Arc<OwnedFd>)> {
        self.sockets_with_options()
            .into_iter()
            .map(|(address, _, _, fd)| (address, fd))
            .collect()
    }

    /// Every socket bound so far, with its address and options as asked for, and its slot
    /// for a per-slot socket.
    pub fn sockets_with_options(
        &self,
    ) -> Vec<(ListenAddress, ListenOptions, Option<u32>, Arc<OwnedFd>)> {
        let table = self.table();
        table
            .sockets
            .iter()
            .map(|((address, options, slot), fd)| {
                (address.clone(), options.clone(), *slot, fd.clone())
            })
            .collect()
    }
}
