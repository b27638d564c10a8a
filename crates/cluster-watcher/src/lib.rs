//! The supervisor side of a cluster: starts, watches, restarts and talks to worker processes.
//!
//! A documented skeleton for now: the layer is built by its own issue.

#![forbid(unsafe_code)]
