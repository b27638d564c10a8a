//! Authenticated IPC hub, typed channels, client-socket pipes and server-socket sharing on top of `fdpass`.
//!
//! A documented skeleton for now: the layer is built by its own issue.

#![forbid(unsafe_code)]
