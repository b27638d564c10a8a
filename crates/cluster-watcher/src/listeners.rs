//! Keeping the shared listening sockets healthy against workers that hold a copy.
//!
//! In `shared` mode every worker accepts on a duplicate of the watcher's listening socket.
//! Duplicates share one *open file description*: flags set with `fcntl(F_SETFL)` and a
//! `shutdown()` apply to all of them. A worker that clears `O_NONBLOCK` makes every other
//! worker's accept block its runtime; one that calls `shutdown()` on its copy (a common way
//! to wake a thread blocked in `accept`) stops the socket listening for the whole cluster,
//! for good. The watcher looks at its sockets every [`CHECK_EVERY`], restores the flag, and
//! replaces a socket that stopped listening with a new one bound to the same address (the
//! workers then get it as they are restarted).

use std::time::Duration;

use cluster_ipc::ServerSocketProvider;
use rustix::fs::OFlags;

/// How often the sockets are checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Checks every socket of `provider`; returns whether one had to be rebound (the workers
/// must be restarted to pick it up).
pub(crate) fn check(provider: &ServerSocketProvider) -> bool {
    let mut rebound = false;
    for (address, options, fd) in provider.sockets_with_options() {
        if let Ok(flags) = rustix::fs::fcntl_getfl(&*fd)
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
        match provider.rebind(&address, &options) {
            Ok(_) => {
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
