//! The worker side of a cluster: what a server program calls. The same program runs
//! unchanged under a `cluster-watcher` (or the `cluster` binary) and on its own.
//!
//! # A guided tour
//!
//! * **Who am I.** [`is_worker`], [`id`] (the slot, from 1, stable across restarts),
//!   [`generation`] (how many times the slot was started), [`pid`].
//! * **Serving.** [`listen`] returns a [`Listener`] of TCP connections. In `shared` mode it
//!   accepts on a duplicate of the watcher's listening socket; in `round-robin` mode the
//!   watcher accepts and sends connections over, and `accept` reads them straight off the
//!   pipe, so a worker that stops accepting stops taking connections and the watcher passes
//!   it over once a few are queued (as does a worker near its descriptor limit, which leaves
//!   connections queued rather than lose them); standalone it binds here. Connections get
//!   `TCP_NODELAY`. With the `axum` feature, [`Listener`] implements `axum::serve::Listener`,
//!   so `axum::serve(cluster_worker::listen(addr).await?, router)` is the whole change.
//!   [`server_socket_factory`] gives raw listeners (TCP or Unix) for other servers.
//! * **Datagrams.** [`udp_socket`] gives the UDP socket of a `cluster --listen udp://…` or
//!   `quic://…` (or binds one standalone); [`notify_ready`] says `READY=1` for a program
//!   given sockets. With feature `quic`, [`quic::endpoint`] makes a quinn endpoint whose
//!   connection IDs carry this process's steering prefix, so its connections stay with it
//!   through rolling restarts; [`quic::drain`] is its stop.
//! * **Readiness and liveness.** The first successful [`listen`] tells the watcher the worker
//!   is ready ([`defer_ready`] + [`ready`] to control it). A heartbeat goes out from the
//!   program's own tokio runtime, so a blocked runtime is noticed and the worker replaced.
//! * **Stopping.** [`await_termination`] resolves on SIGTERM, SIGINT, SIGQUIT, SIGHUP or the
//!   watcher's stop request, and says which ([`Termination`]); [`shutdown`] asks the watcher for
//!   a graceful stop. If the watcher dies, the worker sees end of file (and `SIGTERM` from the
//!   kernel as a backstop) and exits.
//! * **Live sessions.** With feature `ws`, a WebSocket made with [`ws::Upgrade`] is a
//!   [`ws::Session`] that moves to the next generation at a restart, state and all, without
//!   its client noticing; the next generation picks it up in [`ws::resume`]'s handler.
//! * **Messages.** [`channel`] gives a typed [`WorkerChannel`] to the watcher; its `recv`
//!   returns `None` as soon as the watcher asks this worker to stop.
//! * **The environment.** A worker reads the watcher's bootstrap contract
//!   (`cluster_ipc::protocol::WorkerBootstrap`); a broken one is an error
//!   ([`WorkerError::Bootstrap`]), never a silent fallback to binding its own port.
//! * **Metrics.** Register application metrics in [`metrics::registry`]: the watcher's
//!   `/metrics` shows them per worker and merged over every worker the cluster ran, so
//!   counters never reset at a restart.
//! * **Logs.** [`init_tracing`] forwards `tracing` events to the watcher in a cluster
//!   ([`ForwardingLayer`]) and prints them standalone.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! cluster_worker::init_tracing();
//! let listener = cluster_worker::listen("127.0.0.1:8080").await?;
//! tracing::info!("listening on {}", listener.local_addr());
//! loop {
//!     tokio::select! {
//!         accepted = listener.accept() => { let (_stream, _peer) = accepted?; /* serve */ }
//!         why = cluster_worker::await_termination() => {
//!             tracing::info!(?why, "stopping");
//!             return Ok(());
//!         }
//!     }
//! }
//! # }
//! ```

#![forbid(unsafe_code)]

mod activation;
mod api;
mod datagram;
mod drain;
mod env;
mod error;
mod handoff;
mod link;
mod listener;
mod log;
pub mod metrics;
#[cfg(feature = "quic")]
pub mod quic;
mod rebalance;
mod resume;
#[cfg(feature = "http")]
mod serve;
mod stream;
#[cfg(feature = "ws")]
pub mod ws;

pub use crate::{
    api::{
        Termination, WorkerChannel, WorkerSocketFactory, await_termination, channel, defer_ready,
        generation, id, is_worker, pid, ready, server_socket_factory, shutdown,
    },
    datagram::{notify_ready, udp_socket},
    drain::{DrainNotice, drained},
    error::WorkerError,
    listener::{Listener, listen, listen_with},
    log::{ForwardingLayer, init_tracing},
    stream::ClientStream,
};

#[cfg(feature = "http")]
pub use crate::serve::{Accept, HANDSHAKE_TIMEOUT, Negotiated, serve_http, serve_http_with};
#[cfg(all(feature = "http", feature = "axum"))]
pub use crate::serve::{serve_axum, serve_axum_with};

pub use cluster_ipc::{ListenAddress, ListenOptions};
