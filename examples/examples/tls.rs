//! HTTPS on the cluster's serve loop: tokio-rustls (ring) with ALPN offering `h2` and
//! `http/1.1`, served by `cluster_worker::serve_axum_with`: HTTP/2 connections drain with
//! GOAWAY at a restart, HTTP/1.1 ones close when idle (a TLS session cannot move to another
//! process), requests in flight are answered.
//!
//! ```sh
//! cluster -w 4 target/release/examples/tls 127.0.0.1:8443
//! curl -k --http2 https://127.0.0.1:8443/
//! ```
//!
//! Arguments: `ADDRESS [CERT.pem KEY.pem]`; the default certificate (`examples/tls/`, for
//! `localhost` and 127.0.0.1, self-signed) is for trying it out only.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/tls");
    let cert = args.next().unwrap_or_else(|| format!("{bundled}/cert.pem"));
    let key = args.next().unwrap_or_else(|| format!("{bundled}/key.pem"));
    let acceptor = acceptor(&cert, &key)?;
    let app = Router::new().route("/", get(hello));
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());
    let why = cluster_worker::serve_axum_with(listener, acceptor, app).await;
    tracing::info!(?why, "stopped");
    Ok(())
}

/// A TLS acceptor for the certificate chain and key in these PEM files, offering HTTP/2
/// and HTTP/1.1.
fn acceptor(
    cert: &str,
    key: &str,
) -> Result<tokio_rustls::TlsAcceptor, Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn hello(request: axum::extract::Request) -> impl IntoResponse {
    let worker = cluster_worker::id().map_or_else(|| "standalone".to_owned(), |id| id.to_string());
    (
        [("x-cluster-worker", worker.clone())],
        format!("Hello over {:?} from worker {worker}\n", request.version()),
    )
}
