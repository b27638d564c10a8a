//! Program mode: running a server that does not link `cluster-worker`, as systemd's socket
//! activation would run it.
//!
//! The worker gets the cluster's listening sockets as descriptors 3, 4, … (in
//! [`WatcherConfig::listen`](crate::WatcherConfig::listen) order, not close-on-exec) with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`, and the watcher's `NOTIFY_SOCKET` (with
//! `WATCHDOG_USEC` from the heartbeat timeout). `LISTEN_PID` must be the pid of the process
//! that runs the server, known only after the fork; `std::process::Command` builds the
//! environment before it. The program is therefore started through `/bin/sh -c 'LISTEN_PID=$$
//! … exec "$@"'`: `$$` is the shell's pid, which `exec` keeps for the server. (A wrong
//! `LISTEN_PID` is silent: gunicorn then ignores the sockets and binds 127.0.0.1:8000.)

use std::io;
use std::sync::Arc;

use cluster_ipc::ListenAddress;

use crate::StartError;
use crate::shared::Shared;

/// Sets `LISTEN_PID` and `WATCHDOG_PID` to the shell's pid, which the program keeps.
const SHIM: &str = "LISTEN_PID=$$; WATCHDOG_PID=$$; export LISTEN_PID WATCHDOG_PID; exec \"$@\"";

/// The command that runs the program with the cluster's listeners (sockets bound already).
pub(crate) fn command(
    shared: &Arc<Shared>,
    id: crate::WorkerId,
) -> io::Result<tokio::process::Command> {
    let config = &shared.config;
    let mut fds = Vec::with_capacity(config.listen.len());
    for listener in &config.listen {
        // Per slot in reuseport mode (the provider binds one socket per slot); else shared.
        let socket = shared
            .provider
            .socket_in_slot(
                &listener.address,
                &cluster_ipc::ListenOptions::default(),
                id.slot,
            )
            .map_err(io::Error::other)?;
        set_nodelay(&socket);
        fds.push(rustix::io::fcntl_dupfd_cloexec(&*socket, 0)?);
    }
    let names: Vec<&str> = config.listen.iter().map(|l| l.name.as_str()).collect();
    let mut command = tokio::process::Command::new("/bin/sh");
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
    super::command::prepare(&mut command);
    command
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(
            "WATCHDOG_USEC",
            config.heartbeat_timeout.as_micros().to_string(),
        );
    if let Some(notify) = shared.notify_path() {
        command.env("NOTIFY_SOCKET", notify);
    }
    // Last of the pre-exec hooks: the listeners land on 3, 4, …
    fdpass::inherit_fds_at(command.as_std_mut(), fds, 3);
    Ok(command)
}

/// Program mode: binds every listener (once; port 0 resolved here for good) and the
/// notify socket.
pub(crate) fn prepare_program_mode(shared: &Shared) -> Result<(), StartError> {
    for listener in &shared.config.listen {
        let options = cluster_ipc::ListenOptions::default();
        let fresh = !shared
            .provider
            .sockets()
            .iter()
            .any(|(address, _)| *address == listener.address);
        // Reuseport: slot 1's socket now (port 0 resolved for the group), the others'
        // as their workers start.
        let socket = shared
            .provider
            .socket_in_slot(&listener.address, &options, 1)?;
        set_nodelay(&socket);
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
        let socket = crate::notify::NotifySocket::bind()?;
        let _ = shared.notify.set(socket);
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
