//! The connections (and live sessions) a stopping worker hands back: read off its hand-off
//! pipe and passed to the other workers, or to the successor of an upgrade. Part of the
//! worker's exit: its exit is reported only once they were all read.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::ClientSocketReceivePipe;
use cluster_ipc::protocol::ClientMeta;

use crate::WorkerId;
use crate::shared::Shared;

/// Once a worker exited, how long its hand-back pipe may stay empty before everything it
/// sent counts as read (it is all queued already; this only rides out the scheduler).
const LAST_HAND_BACK_WAIT: Duration = Duration::from_millis(20);

/// Passes the connections a stopping worker hands back to the other workers. One at a time:
/// a worker that floods hand-backs waits on its own pipe. Only TCP sockets are accepted (the
/// receive checks the descriptor's kind), so a worker cannot pass anything else on. Once the
/// worker has exited (`exited`), everything it sent is already queued here: that is read, and
/// the reader ends (it does not wait for end of file, which a duplicate of the worker's end
/// held for round-robin's read-back would delay).
pub(super) async fn read_hand_backs(
    shared: Arc<Shared>,
    pipe: ClientSocketReceivePipe<ClientMeta>,
    id: WorkerId,
    pid: u32,
    mut exited: tokio::sync::watch::Receiver<bool>,
) {
    let mut handed = 0u64;
    let mut gone = false;
    loop {
        let received = if gone {
            match tokio::time::timeout(LAST_HAND_BACK_WAIT, pipe.receive()).await {
                Ok(received) => received,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                received = pipe.receive() => received,
                _ = exited.wait_for(|exited| *exited) => {
                    gone = true;
                    continue;
                }
            }
        };
        match received {
            Ok(Some(client)) => {
                let Ok(socket) = client.socket.into_std().map(OwnedFd::from) else {
                    continue;
                };
                shared
                    .balancer
                    .hand_over(socket, &client.data, &client.prefix)
                    .await;
                handed += 1;
            }
            Ok(None) => break,
            Err(e) if e.io_error().is_some() => break,
            Err(e) => {
                tracing::warn!(worker = id.slot, pid, error = %e, "bad hand-back from worker; skipped");
            }
        }
    }
    if handed > 0 {
        tracing::info!(
            worker = id.slot,
            pid,
            connections = handed,
            "idle keep-alive connections handed to the next generation"
        );
    }
}
