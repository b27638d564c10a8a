//! Keeping the shared listening sockets healthy against workers that hold a copy.
//!
//! In `shared` mode every worker accepts on a duplicate of the watcher's listening socket.
//! Duplicates share one *open file description*: flags set with `fcntl(F_SETFL)` and a
//! `shutdown()` apply to all of them. A worker that clears `O_NONBLOCK` makes every other
//! worker's accept block its runtime; one that calls `shutdown()` on its copy (a common way
//! to wake a thread blocked in `accept`) stops the socket listening for the whole cluster,
//! for good. The watcher looks at its sockets every 2 s (when the core asks), restores the flag, and
//! replaces a socket that stopped listening with a new one bound to the same address (the
//! workers then get it as they are restarted).

use cluster_ipc::ServerSocketProvider;
use rustix::fs::OFlags;

/// Checks every socket of `provider`; returns whether one had to be rebound (the workers
/// must be restarted to pick it up). With `nonblocking`, a socket some worker made blocking
/// is made non-blocking again (programs given listeners get them blocking, as systemd
/// gives them, and may set the flag as they like: all workers run the same program).
pub(crate) fn check(provider: &ServerSocketProvider, nonblocking: bool) -> bool {
    let mut rebound = false;
    for (address, options, slot, fd) in provider.sockets_with_options() {
        if let Ok(flags) = rustix::fs::fcntl_getfl(&*fd)
            && nonblocking
            && !flags.contains(OFlags::NONBLOCK)
        {
            tracing::warn!(
                %address,
                "a worker cleared O_NONBLOCK on its copy of the shared listening socket (all copies share it); restored"
            );
            let _ = rustix::fs::fcntl_setfl(&*fd, flags | OFlags::NONBLOCK);
        }
        let listening = rustix::net::sockopt::socket_acceptconn(&*fd).unwrap_or(true);
        if listening {
            continue;
        }
        match provider.rebind(&address, &options, slot) {
            Ok(fd) => {
                if !nonblocking {
                    let _ = super::program::set_blocking(&fd);
                }
                tracing::error!(
                    %address,
                    "the shared listening socket stopped listening: a worker called shutdown() on its copy, which shuts it for every worker; bound a new socket, restarting the workers onto it"
                );
                rebound = true;
            }
            Err(e) => tracing::error!(
                %address,
                error = %e,
                "the shared listening socket stopped listening and cannot be bound again"
            ),
        }
    }
    rebound
}

/// Closes every listening socket that none of the `current` workers asked for (the new
/// generation listens elsewhere), so clients are refused instead of waiting on a socket
/// nobody will ever accept on. Program mode's `--listen` sockets are the cluster's for its
/// whole life: workers get them at exec and never ask.
pub(crate) fn release_unused(shared: &crate::shared::Shared, current: &[crate::WorkerId]) {
    let mut held: std::collections::HashSet<cluster_ipc::ListenAddress> = {
        let listens = shared.listens();
        current
            .iter()
            .filter_map(|id| listens.get(id))
            .flatten()
            .cloned()
            .collect()
    };
    held.extend(shared.config().listen.iter().map(|l| l.address.clone()));
    for (address, _) in shared.provider.sockets() {
        if !held.contains(&address) {
            tracing::info!(%address, "no current worker listens here any more; closing the socket");
            shared.balancer.release(&address);
            shared.provider.release(&address);
        }
    }
}

/// Program mode, shared sockets (reuseport watches each slot in `slots.rs`): listeners whose
/// accept queue did not shrink between two checks although workers are ready. A program that ignores descriptor 3 and binds a port of its own
/// reports ready all the same, while clients wait on the cluster's socket for ever: this is
/// how the user hears of it.
#[derive(Debug, Default)]
pub(crate) struct QueueWatch {
    last: std::collections::HashMap<String, u64>,
    /// Said already, until the queue empties again.
    warned: std::collections::HashSet<String>,
}

impl QueueWatch {
    /// Reads each listener's accept queue and warns about one whose connections waited a
    /// whole check interval.
    pub(crate) fn check(&mut self, provider: &ServerSocketProvider) {
        for (address, fd) in provider.sockets() {
            let Ok(queue) = fdpass::listen_queue(&*fd) else {
                continue; // a Unix socket: the kernel reports no queue for it
            };
            let queued = u64::from(queue.queued);
            let key = address.to_string();
            let before = self.last.insert(key.clone(), queued).unwrap_or(0);
            if queued == 0 {
                self.warned.remove(&key);
            }
            // Waiting for one check interval and not fewer since: nobody accepts.
            if before > 0 && queued >= before && self.warned.insert(key.clone()) {
                tracing::warn!(
                    listener = %key,
                    queued,
                    "connections waited a whole check interval in the cluster's listener queue while workers were ready: is the program ignoring the inherited descriptor (LISTEN_FDS, --fd 3) and binding its own port, or overloaded, or stuck?"
                );
            }
        }
    }
}
