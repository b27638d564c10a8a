//! What the integration tests (`tests/`) and the benchmarks (`bench/`) both need, once:
//! real processes, real sockets, nothing mocked.
//!
//! # A guided tour
//!
//! * [`ServerProcess`]: a server (the `cluster` binary or any other) in a process group of
//!   its own, its output collected, signalled by pid, stopped group-wide on drop.
//! * [`workspace_bin`]: the path of a binary or example this workspace built.
//! * Process readings from `/proc`: [`children_of`], [`process_exists`],
//!   [`process_running`], [`rss_kib`], [`fd_count`], [`cpu_ticks`], [`context_switches`].
//! * HTTP on 127.0.0.1: [`free_port`], [`http_get`], [`http_get_at`], [`http_ok`].
//! * Load: [`Load`] runs client threads (a new connection per request), [`KeepAliveLoad`]
//!   clients that keep their connection open as a proxy's pool does; both bounded in time
//!   and count, both say how many requests succeeded and why the others failed;
//!   [`WsLoad`] WebSocket sessions that check every echo and say how each connection ended;
//!   [`SessionLoad`] sessions that must not notice a restart at all (numbered messages, the
//!   server's state checked in every reply, no reconnect); [`QuicLoad`] QUIC connections to
//!   `quic-echo` that must keep their worker and every reply through restarts; [`UdpLoad`]
//!   numbered datagrams against a UDP echo server, each answered or counted lost.

mod http;
mod load;
mod process;
mod quic;
mod server;
mod sessions;
mod udp;
mod ws;

pub use crate::{
    http::{
        free_port, header_of, http_get, http_get_at, http_get_from, http_ok, http_request_from,
    },
    load::{KeepAliveLoad, KeepAliveResult, Load, LoadResult},
    process::{
        StopOnDrop, children_of, context_switches, cpu_ticks, fd_count, process_exists,
        process_running, raise_fd_limit, rss_kib, signal,
    },
    quic::{QuicLoad, QuicPlan, QuicSummary},
    server::{Output, ServerProcess, workspace_bin},
    sessions::{SessionLoad, SessionRecord},
    udp::{UdpLoad, UdpSummary},
    ws::{WsEnd, WsLoad, WsSession, normal_close},
};
