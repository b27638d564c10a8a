//! QUIC endpoints that keep their connections through rolling restarts (feature `quic`).
//!
//! Under `cluster --listen quic://HOST:PORT` every worker process reads a UDP socket of its
//! own in a `SO_REUSEPORT` group, and the watcher steers each packet by its destination
//! connection ID. This process's connection IDs must therefore start with the prefix the
//! watcher gave it (`CLUSTER_QUIC_CID_PREFIX`, hex): [`ConnectionIds`] does that for quinn,
//! and [`endpoint`] builds an endpoint with it on the socket from
//! [`udp_socket`](crate::udp_socket). The old generation keeps its connections until they
//! end (or until the watcher's shutdown timeout); new connections go to processes that are
//! ready and were not asked to stop. [`drain`] is the stop: wait for the connections to
//! end, then close what is left (with reason `restarting`) before the watcher's kill
//! ([`drain_limit`]).
//!
//! Other QUIC stacks do the same: read `CLUSTER_QUIC_CID_PREFIX`, and make every server
//! connection ID at least 4 bytes long, starting with those bytes, the rest random.
//! Standalone (no variable) the IDs are wholly random.
//!
//! ```no_run
//! # async fn serve(server: quinn::ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let socket = cluster_worker::udp_socket("quic://127.0.0.1:4433", None)?;
//! let endpoint = cluster_worker::quic::endpoint(socket, server)?;
//! cluster_worker::notify_ready()?;
//! tokio::select! {
//!     _ = async { while let Some(incoming) = endpoint.accept().await { /* serve */ } } => {}
//!     _ = cluster_worker::await_termination() => {}
//! }
//! cluster_worker::quic::drain(&endpoint, cluster_worker::quic::drain_limit()).await;
//! # Ok(()) }
//! ```

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, ServerConfig};

/// The environment variable with this process's connection-ID prefix, in hex.
pub const CID_PREFIX_VAR: &str = "CLUSTER_QUIC_CID_PREFIX";

/// The length of the connection IDs [`ConnectionIds`] issues: the prefix and five random
/// bytes.
pub const CID_LEN: usize = 8;

/// The longest prefix taken from the environment (the rest of an ID must stay random).
const MAX_PREFIX: usize = 4;

/// A quinn connection-ID generator whose IDs start with this process's steering prefix.
#[derive(Debug, Clone)]
pub struct ConnectionIds {
    prefix: Vec<u8>,
}

impl ConnectionIds {
    /// The prefix the watcher gave this process, or none standalone (or when the variable
    /// is malformed, which is logged).
    pub fn from_env() -> Self {
        let prefix = std::env::var(CID_PREFIX_VAR)
            .ok()
            .and_then(|hex| {
                let parsed = parse_hex(&hex);
                if parsed.is_none() {
                    tracing::warn!(
                        value = hex,
                        "{CID_PREFIX_VAR} is not 1 to 4 bytes of hex; issuing random connection IDs"
                    );
                }
                parsed
            })
            .unwrap_or_default();
        Self { prefix }
    }

    /// IDs starting with `prefix` (at most 4 bytes).
    pub fn with_prefix(prefix: &[u8]) -> Self {
        Self {
            prefix: prefix[..prefix.len().min(MAX_PREFIX)].to_vec(),
        }
    }

    /// The prefix every ID starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl ConnectionIdGenerator for ConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        let random = &mut bytes[self.prefix.len()..];
        // The kernel's generator does not fail for a few bytes; if it ever did, the ID is
        // still unique enough with the time mixed in.
        if rustix::rand::getrandom(&mut *random, rustix::rand::GetRandomFlags::empty()).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            for (byte, value) in random.iter_mut().zip(nanos.to_le_bytes()) {
                *byte = value;
            }
        }
        bytes[..self.prefix.len()].copy_from_slice(&self.prefix);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || hex.len() > MAX_PREFIX * 2 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An [`EndpointConfig`] whose connection IDs carry this process's prefix.
pub fn endpoint_config() -> EndpointConfig {
    let ids = ConnectionIds::from_env();
    let mut config = EndpointConfig::default();
    config.cid_generator(move || Box::new(ids.clone()));
    config
}

/// A server endpoint on `socket` (from [`udp_socket`](crate::udp_socket)) with
/// [`endpoint_config`], on the current tokio runtime.
///
/// # Errors
/// The socket's.
pub fn endpoint(socket: UdpSocket, server: ServerConfig) -> std::io::Result<Endpoint> {
    Endpoint::new(
        endpoint_config(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// How long [`drain`] should wait at a stop: nine tenths of the time the watcher gives a
/// program between its stop signal and `SIGKILL` (`CLUSTER_DRAIN_TIMEOUT_MS`), so what is
/// left is closed gracefully rather than cut; 30 s standalone.
pub fn drain_limit() -> Duration {
    std::env::var("CLUSTER_DRAIN_TIMEOUT_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), |ms| {
            Duration::from_millis(ms).mul_f64(0.9)
        })
}

/// The stop of a QUIC server: waits until every connection has ended (clients close them
/// as they finish) or `limit` passed, then closes what is left with application error 0
/// and reason `restarting`, and waits (briefly) for the closes to be sent.
///
/// New connections keep being accepted meanwhile if the caller still polls `accept`; under
/// `quic://` the watcher stops sending new ones as soon as this process is asked to stop.
pub async fn drain(endpoint: &Endpoint, limit: Duration) {
    if tokio::time::timeout(limit, endpoint.wait_idle())
        .await
        .is_err()
    {
        tracing::info!(
            open = endpoint.open_connections(),
            "closing the QUIC connections left after the drain"
        );
        endpoint.close(0u32.into(), b"restarting");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_with_the_prefix_and_the_watcher_reads_their_member_back() {
        let prefix = fdpass::quic_cid_prefix(7);
        let mut ids = ConnectionIds::with_prefix(&prefix);
        let a = ids.generate_cid();
        let b = ids.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(&a[..3], &prefix);
        assert_eq!(fdpass::quic_cid_member(&a), Some(7));
        assert_ne!(a, b, "the rest is random");
    }

    #[test]
    fn the_variable_is_hex_of_one_to_four_bytes() {
        assert_eq!(parse_hex("07c05d"), Some(vec![0x07, 0xc0, 0x5d]));
        assert_eq!(parse_hex(""), None);
        assert_eq!(parse_hex("7"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex("0102030405"), None);
    }
}
