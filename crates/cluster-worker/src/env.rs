//! What the watcher put in this process's environment: identity, settings and the four
//! inherited sockets, each taken exactly once.

use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cluster_ipc::protocol::{
    Balance, ENV_BALANCE, ENV_HEARTBEAT_MS, ENV_WORKER_FDS, ENV_WORKER_GENERATION, ENV_WORKER_ID,
};

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
    fds: Mutex<[Option<OwnedFd>; 4]>,
}

impl WorkerEnv {
    /// Takes an inherited socket; `None` if already taken.
    pub(crate) fn take(&self, endpoint: Endpoint) -> Option<OwnedFd> {
        self.fds.lock().unwrap_or_else(PoisonError::into_inner)[endpoint as usize].take()
    }
}

static ENV: OnceLock<Option<WorkerEnv>> = OnceLock::new();

/// The worker environment, or `None` when this program runs standalone.
pub(crate) fn worker_env() -> Option<&'static WorkerEnv> {
    ENV.get_or_init(read).as_ref()
}

fn read() -> Option<WorkerEnv> {
    let id = std::env::var(ENV_WORKER_ID).ok()?.parse().ok()?;
    let generation = std::env::var(ENV_WORKER_GENERATION)
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1);
    let balance = std::env::var(ENV_BALANCE)
        .ok()
        .and_then(|b| Balance::parse(&b))
        .unwrap_or_default();
    let heartbeat = std::env::var(ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(1000);
    let numbers: Vec<RawFd> = std::env::var(ENV_WORKER_FDS)
        .ok()?
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let [control, log, listen, clients] = numbers.as_slice() else {
        return None;
    };
    let fds = [*control, *log, *listen, *clients].map(|n| fdpass::adopt_inherited_fd(n).ok());
    // If the watcher dies, the kernel sends SIGTERM: a backstop to the end of file on the
    // control socket.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    Some(WorkerEnv {
        id,
        generation,
        balance,
        heartbeat: Duration::from_millis(heartbeat),
        fds: Mutex::new(fds),
    })
}
