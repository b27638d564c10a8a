//! A QUIC echo server (quinn) whose connections survive rolling restarts: under
//! `cluster --listen quic://…` each worker reads a UDP socket of its own, its connection IDs
//! carry the prefix the watcher steers by (`cluster_worker::quic`), and at its stop it keeps
//! serving its connections until they end.
//!
//! ```sh
//! cluster -w 4 --listen quic://127.0.0.1:4433 target/release/examples/quic-echo
//! ```
//!
//! A client opens a bidirectional stream and sends lines; each comes back with a space and
//! the worker's pid appended. ALPN `echo`; the certificate is `examples/tls/` (for
//! `localhost` and 127.0.0.1, self-signed, for trying it out only). Arguments: `[ADDRESS
//! [CERT.pem KEY.pem]]` (default `quic://127.0.0.1:4433`). At its stop it waits for its
//! connections to end, and closes those left (reason `restarting`) just before the
//! watcher's shutdown timeout.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let mut args = std::env::args().skip(1);
    let address = args
        .next()
        .unwrap_or_else(|| "quic://127.0.0.1:4433".to_owned());
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/tls");
    let cert = args.next().unwrap_or_else(|| format!("{bundled}/cert.pem"));
    let key = args.next().unwrap_or_else(|| format!("{bundled}/key.pem"));
    let socket = cluster_worker::udp_socket(&address, None)?;
    tracing::info!("listening on {}", socket.local_addr()?);
    let endpoint = cluster_worker::quic::endpoint(socket, server_config(&cert, &key)?)?;
    cluster_worker::notify_ready()?;
    let why = tokio::select! {
        () = accept_all(&endpoint) => None,
        why = cluster_worker::await_termination() => Some(why),
    };
    tracing::info!(
        ?why,
        open = endpoint.open_connections(),
        "stopping: draining"
    );
    cluster_worker::quic::drain(&endpoint, cluster_worker::quic::drain_limit()).await;
    Ok(())
}

/// TLS 1.3 (QUIC's only version) with ALPN `echo`, ring as the provider.
fn server_config(cert: &str, key: &str) -> Result<quinn::ServerConfig, Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

async fn accept_all(endpoint: &quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve(connection).await,
                Err(error) => tracing::debug!(%error, "handshake failed"),
            }
        });
    }
}

/// Echoes every line of every bidirectional stream of `connection`.
async fn serve(connection: quinn::Connection) {
    let suffix = format!(" {}\n", std::process::id());
    while let Ok((mut send, recv)) = connection.accept_bi().await {
        let suffix = suffix.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(recv).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if send
                    .write_all(format!("{line}{suffix}").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = send.finish();
        });
    }
}
