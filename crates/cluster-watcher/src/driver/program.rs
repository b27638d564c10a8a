//! Program mode: running a server that does not link `cluster-worker`, as systemd's socket
//! activation would run it.
//!
//! The worker gets the cluster's listening sockets as descriptors 3, 4, … (in
//! [`WatcherConfig::listen`](crate::WatcherConfig::listen) order, not close-on-exec) with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`, blocking as systemd passes them, and a
//! `NOTIFY_SOCKET` of its own (with `WATCHDOG_USEC` from the heartbeat timeout);
//! `CLUSTER_DRAIN_TIMEOUT_MS` says how long it has from its stop signal to `SIGKILL`, and
//! under `quic://` `CLUSTER_QUIC_CID_PREFIX` its connection-ID prefix. `LISTEN_PID` must be the pid of the process
//! that runs the server, known only after the fork; `std::process::Command` builds the
//! environment before it. The program is therefore started through `/bin/sh -c 'LISTEN_PID=$$
//! … exec "$@"'`: `$$` is the shell's pid, which `exec` keeps for the server. (A wrong
//! `LISTEN_PID` is silent: gunicorn then ignores the sockets and binds 127.0.0.1:8000.)

use std::io;
use std::sync::Arc;

use cluster_ipc::ListenAddress;

use super::containment::Containment;
use crate::StartError;
use crate::notify::NotifySocket;
use crate::shared::Shared;

/// Sets `LISTEN_PID` and `WATCHDOG_PID` to the shell's pid, which the program keeps.
const SHIM: &str = "LISTEN_PID=$$; WATCHDOG_PID=$$; export LISTEN_PID WATCHDOG_PID; exec \"$@\"";

/// The command that runs the program with the cluster's listeners (sockets bound already),
/// and the worker's notify socket.
pub(crate) fn command(
    shared: &Arc<Shared>,
    id: crate::WorkerId,
    containment: &Containment,
) -> io::Result<(tokio::process::Command, Option<NotifySocket>)> {
    let config = shared.config();
    let mut fds = Vec::with_capacity(config.listen.len());
    let mut cid_prefix = None;
    for listener in &config.listen {
        let socket = if listener.address.is_datagram() {
            let granted = shared.datagrams.grant(&listener.address, id)?;
            cid_prefix = cid_prefix.or(granted.cid_prefix);
            granted.socket
        } else {
            listener_socket(shared, &listener.address, id.slot)?
        };
        fds.push(rustix::io::fcntl_dupfd_cloexec(&*socket, 0)?);
    }
    let names: Vec<&str> = config.listen.iter().map(|l| l.name.as_str()).collect();
    let mut command = tokio::process::Command::new("/bin/sh");
    containment.prepare(command.as_std_mut(), id);
    command
        .arg("-c")
        .arg(SHIM)
        .arg("sh")
        .arg(&config.program)
        .args(&config.args)
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    super::command::prepare(&mut command, &config, id);
    command
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(
            "WATCHDOG_USEC",
            config.heartbeat_timeout.as_micros().to_string(),
        )
        // From the stop signal to SIGKILL: what a server that drains long-lived
        // connections (QUIC, WebSockets) has to close them gracefully.
        .env(
            "CLUSTER_DRAIN_TIMEOUT_MS",
            config.shutdown_timeout.as_millis().to_string(),
        );
    if let Some(prefix) = cid_prefix {
        command.env("CLUSTER_QUIC_CID_PREFIX", super::datagrams::hex(&prefix));
    }
    if config.app_metrics_ports {
        let port = shared.app_metrics.ports.assign(id)?;
        command
            .env("CLUSTER_METRICS_PORT", port.to_string())
            .env("CLUSTER_METRICS_ADDR", format!("127.0.0.1:{port}"));
    }
    let notify = match shared.notify.get() {
        Some(dir) => {
            let name = format!("{}-{}.sock", id.slot, id.generation);
            let owner = config.run_as.map(|c| c.uid);
            let socket = NotifySocket::bind(dir, &name, owner)?;
            command.env("NOTIFY_SOCKET", socket.path());
            Some(socket)
        }
        None => None,
    };
    // Last of the pre-exec hooks: the listeners land on 3, 4, …
    fdpass::inherit_fds_at(command.as_std_mut(), fds, 3);
    Ok((command, notify))
}

/// The socket for `address` in `slot` (per slot in reuseport mode, where the provider binds
/// one socket per slot; else the one shared socket). A socket bound here and now is made
/// blocking and gets `TCP_NODELAY`; one that workers already hold is left as they made it.
fn listener_socket(
    shared: &Shared,
    address: &ListenAddress,
    slot: u32,
) -> io::Result<Arc<std::os::fd::OwnedFd>> {
    let options = cluster_ipc::ListenOptions::default();
    let held = shared.provider.sockets_with_options();
    let fresh = !held
        .iter()
        .any(|(a, _, s, _)| a == address && s.is_none_or(|s| s == slot));
    let socket = shared
        .provider
        .socket_in_slot(address, &options, slot)
        .map_err(io::Error::other)?;
    if fresh {
        set_nodelay(&socket);
        set_blocking(&socket)?;
    }
    Ok(socket)
}

/// Clears `O_NONBLOCK`, once, on a socket no worker holds yet: systemd hands out
/// listening sockets blocking, and a plain `accept()` server expects that. A program that
/// wants them non-blocking (asyncio, Node) sets the flag itself; it is shared by every copy,
/// and all workers run the same program, so it is never touched again.
pub(crate) fn set_blocking(socket: &std::os::fd::OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(socket)?;
    if flags.contains(rustix::fs::OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(socket, flags - rustix::fs::OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Program mode: binds every listener (once; port 0 resolved here for good) and makes the
/// notify sockets' directory.
pub(crate) fn prepare_program_mode(shared: &Shared) -> Result<(), StartError> {
    for listener in &shared.config().listen {
        if listener.address.is_datagram() {
            if let (bound, true) = shared.datagrams.prepare(&listener.address)? {
                tracing::info!(name = %listener.name, address = %listener.address, "listening on {bound}");
            }
            continue;
        }
        let fresh = !shared
            .provider
            .sockets()
            .iter()
            .any(|(address, _)| *address == listener.address);
        // Reuseport: slot 1's socket now (port 0 resolved for the group), the others'
        // as their workers start.
        let socket = listener_socket(shared, &listener.address, 1)?;
        if let (ListenAddress::Unix(path), Some(mode)) = (&listener.address, listener.mode) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if fresh {
            let actual = ListenAddress::of(&*socket)
                .map_or_else(|_| listener.address.to_string(), |a| a.to_string());
            tracing::info!(name = %listener.name, address = %actual, "listening on {actual}");
        }
    }
    if shared.notify.get().is_none() {
        let dir = crate::notify::NotifyDir::create()?;
        let _ = shared.notify.set(dir);
    }
    Ok(())
}

/// Program mode: `TCP_NODELAY` on a listener, which accepted connections inherit: a server
/// that writes a response in two parts (head, body) would otherwise wait 40 ms for the
/// delayed ACK on every keep-alive request. gunicorn sets it on its listeners too.
pub(crate) fn set_nodelay(socket: &std::os::fd::OwnedFd) {
    if let Ok(ListenAddress::Tcp(_)) = ListenAddress::of(socket) {
        let _ = rustix::net::sockopt::set_tcp_nodelay(socket, true);
    }
}
