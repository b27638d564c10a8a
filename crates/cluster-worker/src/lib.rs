//! The worker side of a cluster: the API a server program calls, in a cluster or standalone.
//!
//! A documented skeleton for now: the layer is built by its own issue.

#![forbid(unsafe_code)]
