//! The inter-process pieces a cluster is made of, each usable on its own.
//!
//! Built on [`fdpass`] message sockets (`AF_UNIX` `SOCK_SEQPACKET`), so every frame keeps its
//! boundaries and any descriptor travels inside the frame it belongs to.
//!
//! # A guided tour
//!
//! * **Connecting processes.** [`IpcHub`] listens in a private directory; the parent calls
//!   [`IpcHub::generate_key`], gives the child the hub's [`path`](IpcHub::path) and the
//!   [`Key`] (as hex, in its environment say), and awaits [`IpcHub::accept`]; the child calls
//!   [`connect`]. Keys are 256-bit, single-use, compared in constant time and never printed.
//!   A parent that spawns its children directly can skip the hub and hand each child one end
//!   of a socket pair ([`fdpass::inherit_fd`]).
//! * **Talking.** [`Channel<S, R>`](Channel) sends `S` and receives `R` as postcard frames,
//!   bounded (16 MiB by default), cancel-safe, and [`split`](Channel::split) into halves. Use one
//!   socket per kind of traffic (control, logs, descriptors) so a slow reader of one never
//!   stalls another.
//! * **Handing over clients.** [`ClientSocketSendPipe`] sends an accepted connection plus a
//!   value (and bytes already read) to a [`ClientSocketReceivePipe`], which yields a
//!   [`TransferredSocket`]. A failed send returns the socket in [`PipeSendError`];
//!   `try_send` does not wait for a full receiver ([`PipeSendError::is_full`]).
//! * **Sharing listeners.** [`ServerSocketFactory`] is the "give me a listener" trait:
//!   [`LocalServerSocketFactory`] binds here, [`ServerSocketPipeFactory`] asks a
//!   [`ServerSocketProvider`] in another process, which binds each
//!   [`ListenAddress`] + [`ListenOptions`] once and hands out duplicates of the same socket.
//!
//! * **The cluster protocol.** [`protocol`] defines what a watcher and its workers say to
//!   each other, and the worker's bootstrap contract ([`protocol::WorkerBootstrap`]: the
//!   environment variables, descriptor order and defaults, written with `to_env` and read
//!   with `from_env`, an unknown value being an error); `cluster-watcher` and
//!   `cluster-worker` both speak it.
//! * **Bounded providers.** A [`ServerSocketProvider`] binds at most 64 distinct sockets by
//!   default, can answer with the bound address only (for a provider that accepts itself),
//!   and can [`release`](ServerSocketProvider::release) or
//!   [`rebind`](ServerSocketProvider::rebind) a socket.
//!
//! Errors: [`HubError`] for connecting, [`ChannelError`] for traffic, [`ServerSocketError`]
//! for listeners.

#![forbid(unsafe_code)]

mod activation;
mod channel;
mod client_pipe;
mod codec;
pub mod control;
mod error;
mod hub;
mod key;
pub mod protocol;
mod server_socket;
pub mod session;
pub mod status;

pub use crate::{
    activation::{ActivatedSocket, activated_sockets},
    channel::{Channel, ChannelReceiver, ChannelSender},
    client_pipe::{
        ClientSocketReceivePipe, ClientSocketSendPipe, PipeSendError, TransferredSocket,
    },
    error::{ChannelError, HubError, ServerSocketError},
    hub::{HubConfig, IpcHub, connect},
    key::{KEY_LEN, Key, KeyParseError},
    server_socket::{
        ListenAddress, ListenOptions, Listener, LocalServerSocketFactory, ReuseportGroup,
        ServerSocketFactory, ServerSocketPipeFactory, ServerSocketProvider, SocketSpec,
        bind_datagram, bind_listener,
    },
};

pub use fdpass;
