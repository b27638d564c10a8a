//! Speaking systemd's service protocol from the watcher: `sd_notify` datagrams (readiness,
//! status, reloads, stopping, the watchdog) when systemd (or anything else) set
//! `NOTIFY_SOCKET`, and taking over the listening sockets of socket activation
//! (`LISTEN_FDS`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use cluster_watcher::{ClusterWatcher, Event};

/// The `NOTIFY_SOCKET` the service manager gave us, if any.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// `WATCHDOG_USEC` for this process: the manager expects `WATCHDOG=1` at least this often.
    pub(crate) watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours only if
    /// `WATCHDOG_PID` is unset or our pid). An abstract socket is written `@name`.
    pub(crate) fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            let socket = UnixDatagram::unbound().ok()?;
            socket.set_nonblocking(true).ok()?;
            Some((socket, address))
        });
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| {
            pid.parse::<u32>().ok() == Some(std::process::id())
        });
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// Sends one notification; never waits (a full or absent manager loses it).
    pub(crate) fn notify(&self, text: &str) {
        if let Some((socket, address)) = &self.socket {
            let _ = socket.send_to_addr(text.as_bytes(), address);
        }
    }

    /// `RELOADING=1` (with the `MONOTONIC_USEC=` that `Type=notify-reload` wants) and a
    /// status.
    pub(crate) fn reloading(&self, status: &str) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}",
            monotonic_usec()
        ));
    }

    /// `READY=1` and a status: serving (again, after a reload).
    pub(crate) fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub(crate) fn is_active(&self) -> bool {
        self.socket.is_some()
    }
}

/// `MONOTONIC_USEC=` now, as `RELOADING=1` wants it.
fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000
}

/// Keeps the manager told: `STATUS=` as workers come and go, `RELOADING=1` then `READY=1`
/// around every rolling restart, and `WATCHDOG=1` while the supervision loop answers.
pub(crate) async fn follow(notifier: &Notifier, watcher: &ClusterWatcher) {
    if !notifier.is_active() {
        return std::future::pending().await;
    }
    let mut events = watcher.events();
    let watchdog = async {
        let Some(limit) = notifier.watchdog else {
            return std::future::pending().await;
        };
        let mut ticks = tokio::time::interval(limit / 2);
        loop {
            ticks.tick().await;
            // From the supervision loop itself: a blocked driver does not answer in time.
            if tokio::time::timeout(limit / 2, watcher.status())
                .await
                .is_ok()
            {
                notifier.notify("WATCHDOG=1");
            }
        }
    };
    let statuses = async {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            match event {
                // A reload tells the manager itself, around the whole reload.
                Event::RestartStarted { .. } | Event::RestartFinished { .. }
                    if watcher.status().await.configuration.reloading.is_some() => {}
                Event::RestartStarted { workers } => notifier.notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=rolling restart of {workers} workers",
                    monotonic_usec()
                )),
                Event::RestartFinished { replaced, failed } => {
                    let status = watcher.status().await;
                    notifier.notify(&format!(
                        "READY=1\nSTATUS={}/{} workers ready; rolling restart: {replaced} replaced, {failed} failed",
                        status.ready_workers(),
                        status.wanted_workers()
                    ));
                }
                Event::Respawning { id, delay } if !delay.is_zero() => notifier.notify(&format!(
                    "STATUS=slot {} backing off {:.1} s",
                    id.slot,
                    delay.as_secs_f64()
                )),
                Event::Ready { .. } | Event::Exited(_) => {
                    let status = watcher.status().await;
                    if status.rolling_restart.is_none() {
                        notifier.notify(&format!(
                            "STATUS={}/{} workers ready",
                            status.ready_workers(),
                            status.wanted_workers()
                        ));
                    }
                }
                _ => {}
            }
        }
    };
    tokio::join!(watchdog, statuses);
}
