//! What every worker's command gets, whatever the program.

/// What every worker's command gets, whatever the program: the user it runs as and the CPUs
/// of its slot, from `config`.
pub(crate) fn prepare(
    command: &mut tokio::process::Command,
    config: &crate::WatcherConfig,
    id: crate::WorkerId,
) {
    // What systemd or a socket activator gave the watcher is not for its workers.
    for name in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        command.env_remove(name);
    }
    command
        .stdin(std::process::Stdio::null())
        // Re-emitted line by line in the watcher's log stream, tagged with the worker.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A group of its own: a terminal's Ctrl-C reaches only the watcher, and the watcher
        // can kill the worker together with whatever it forked.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cpus) = config.cpus_of(id.slot) {
        fdpass::pin_to_cpus(command.as_std_mut(), &cpus);
    }
    // Before the parent-death signal, which a change of credentials clears.
    if let Some(credentials) = config.run_as {
        fdpass::run_as(command.as_std_mut(), credentials);
    }
    // A watcher killed with SIGKILL must not leave workers behind, even ones that never got
    // as far as connecting (a cluster-worker program then picks SIGTERM for itself).
    fdpass::kill_with_parent(command.as_std_mut());
}
