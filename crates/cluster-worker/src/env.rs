//! What the watcher put in this process's environment (the [`WorkerBootstrap`] contract):
//! identity, settings and the four inherited sockets, each taken exactly once.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use parking_lot::Mutex;
use std::time::Duration;

use cluster_ipc::protocol::{Balance, BootstrapError, WorkerBootstrap};

/// Which inherited socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Control = 0,
    Log = 1,
    Listen = 2,
    Clients = 3,
}

#[derive(Debug)]
pub(crate) struct WorkerEnv {
    pub(crate) id: u32,
    pub(crate) generation: u32,
    pub(crate) balance: Balance,
    pub(crate) heartbeat: Duration,
    /// The watcher vouches for the sockets it sends: taken unchecked.
    pub(crate) clients_vouched: bool,
    fds: Mutex<[Option<OwnedFd>; 4]>,
}

impl WorkerEnv {
    /// Takes an inherited socket; `None` if already taken.
    pub(crate) fn take(&self, endpoint: Endpoint) -> Option<OwnedFd> {
        self.fds.lock()[endpoint as usize].take()
    }
}

static ENV: OnceLock<Result<Option<WorkerEnv>, BootstrapError>> = OnceLock::new();

fn env() -> &'static Result<Option<WorkerEnv>, BootstrapError> {
    ENV.get_or_init(read)
}

/// The worker environment, or `None` when this program runs standalone (or the
/// environment is broken: see [`bootstrap_error`]).
pub(crate) fn worker_env() -> Option<&'static WorkerEnv> {
    env().as_ref().ok().and_then(Option::as_ref)
}

/// Why a watcher's environment could not be read: a worker never guesses (say, falls back to
/// binding its own port) when the contract is broken.
pub(crate) fn bootstrap_error() -> Option<&'static BootstrapError> {
    env().as_ref().err()
}

fn read() -> Result<Option<WorkerEnv>, BootstrapError> {
    let Some(bootstrap) = WorkerBootstrap::from_env()? else {
        return Ok(None);
    };
    let numbers = bootstrap.fds;
    let fds = [
        numbers.control,
        numbers.log,
        numbers.listen,
        numbers.clients,
    ]
    .map(|n| fdpass::adopt_inherited_fd(n).ok());
    // If the watcher dies, the kernel sends SIGTERM: a backstop to the end of file on the
    // control socket.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    Ok(Some(WorkerEnv {
        id: bootstrap.id,
        generation: bootstrap.generation,
        balance: bootstrap.balance,
        heartbeat: bootstrap.heartbeat,
        clients_vouched: bootstrap.clients_vouched,
        fds: Mutex::new(fds),
    }))
}
