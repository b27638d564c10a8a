//! Server-socket sharing: one process binds, every worker listens on a duplicate.
//!
//! * `address.rs`: where to listen ([`ListenAddress`]) and how ([`ListenOptions`]).
//! * `bind.rs`: binding here ([`bind_listener`], [`Listener`], the [`ServerSocketFactory`]
//!   trait, [`LocalServerSocketFactory`]).
//! * `provider.rs`: [`ServerSocketProvider`], the one owner of a cluster's sockets.
//! * `pipe.rs`: the provider's answers over a message socket and the
//!   [`ServerSocketPipeFactory`] that asks it from another process.

mod address;
mod bind;
mod pipe;
mod provider;

pub use self::{
    address::{ListenAddress, ListenOptions},
    bind::{Listener, LocalServerSocketFactory, ServerSocketFactory, bind_datagram, bind_listener},
    pipe::ServerSocketPipeFactory,
    provider::{ReuseportGroup, ServerSocketProvider, SocketSpec},
};
