//! QUIC connections that must not notice a restart: each client keeps one connection at a
//! time to the `quic-echo` example, sends a numbered line every period on one stream and
//! checks each reply (`N PID`: its own number, and the same worker for the whole
//! connection), closes it after its lifetime and opens the next. A connection that fails
//! to open, breaks, loses or misorders a reply, or changes worker is counted and the first
//! of each kind kept. Clients spread over several UDP sockets, as real clients come from
//! many ports.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How many client UDP sockets the connections spread over.
const CLIENT_SOCKETS: usize = 16;

/// How long one reply may take before the connection counts as broken.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the connections saw, all clients together.
#[derive(Debug, Clone, Default)]
pub struct QuicSummary {
    /// Connections that lived their lifetime (or to the end of the load) and closed cleanly.
    pub completed: u64,
    /// Connections that could not be opened.
    pub connect_failures: u64,
    /// Connections that broke: an error, a reply that did not come, a wrong reply.
    pub broken: u64,
    /// Connections the server closed gracefully at the end of its drain (application
    /// close, reason `restarting`): they outlived the drain timeout.
    pub closed_by_server: u64,
    /// Replies received and right.
    pub replies: u64,
    /// Connections whose replies came from more than one worker (none can: QUIC state
    /// does not move; a change means the packets went elsewhere and it was re-made).
    pub moved: u64,
    /// The first failure of each kind, as seen.
    pub first_failures: Vec<String>,
    /// Workers that answered.
    pub pids: std::collections::BTreeSet<u32>,
}

impl QuicSummary {
    fn merge(&mut self, other: Self) {
        self.completed += other.completed;
        self.connect_failures += other.connect_failures;
        self.broken += other.broken;
        self.closed_by_server += other.closed_by_server;
        self.replies += other.replies;
        self.moved += other.moved;
        self.pids.extend(other.pids);
        for failure in other.first_failures {
            if self.first_failures.len() < 5 {
                self.first_failures.push(failure);
            }
        }
    }
}

/// Clients against a QUIC echo server, on a runtime of their own. Bounded: at most 300 s.
#[derive(Debug)]
pub struct QuicLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<QuicSummary>,
}

/// What a load is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct QuicPlan {
    /// Connections open at once (one per client).
    pub clients: usize,
    /// A line every `every` on each.
    pub every: Duration,
    /// Each connection lives this long, plus up to the same again (spread over clients).
    pub lifetime: Duration,
}

impl QuicLoad {
    /// Starts `plan` against `server`, trusting the certificate in `cert_pem` (ALPN `echo`,
    /// server name `localhost`).
    ///
    /// # Panics
    /// When the certificate cannot be read.
    pub fn start(server: SocketAddr, cert_pem: &Path, plan: QuicPlan) -> Self {
        crate::raise_fd_limit();
        let config = client_config(cert_pem);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = crate::process::on_runtime_thread(move || run(server, config, plan, flag));
        Self { stop, thread }
    }

    /// Stops the clients (each finishes its connection cleanly); what they saw.
    ///
    /// # Panics
    /// When the load's thread panicked.
    pub fn finish(self) -> QuicSummary {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the QUIC load's thread")
    }
}

fn client_config(cert_pem: &Path) -> quinn::ClientConfig {
    let cert = CertificateDer::pem_file_iter(cert_pem)
        .expect("a PEM file")
        .next()
        .expect("a certificate")
        .expect("a readable certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        cert,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Trusts exactly one certificate (the examples' self-signed one, which is a CA and so
/// cannot be an end entity under webpki's path rules); signatures are checked as usual.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn run(
    server: SocketAddr,
    config: quinn::ClientConfig,
    plan: QuicPlan,
    stop: Arc<AtomicBool>,
) -> QuicSummary {
    let deadline = Instant::now() + Duration::from_secs(300);
    let endpoints: Vec<quinn::Endpoint> = (0..CLIENT_SOCKETS)
        .map(|_| {
            let mut endpoint =
                quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("a client");
            endpoint.set_default_client_config(config.clone());
            endpoint
        })
        .collect();
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            let endpoint = endpoints[i % CLIENT_SOCKETS].clone();
            let share = i as f64 / plan.clients.max(1) as f64;
            let client = Client {
                server,
                plan,
                lifetime: plan.lifetime + plan.lifetime.mul_f64(share),
                phase: plan.every.mul_f64(share),
                stop: stop.clone(),
                deadline,
            };
            tokio::spawn(client.run(endpoint))
        })
        .collect();
    let mut summary = QuicSummary::default();
    for task in tasks {
        summary.merge(task.await.expect("a QUIC client task"));
    }
    for endpoint in endpoints {
        endpoint.wait_idle().await;
    }
    summary
}

struct Client {
    server: SocketAddr,
    plan: QuicPlan,
    lifetime: Duration,
    phase: Duration,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Client {
    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || Instant::now() > self.deadline
    }

    async fn run(self, endpoint: quinn::Endpoint) -> QuicSummary {
        let mut summary = QuicSummary::default();
        tokio::time::sleep(self.phase).await;
        while !self.done() {
            let connection = match connect(&endpoint, self.server).await {
                Ok(connection) => connection,
                Err(failure) => {
                    summary.connect_failures += 1;
                    note(&mut summary, format!("connect: {failure}"));
                    tokio::time::sleep(self.plan.every).await;
                    continue;
                }
            };
            match self.converse(&connection, &mut summary).await {
                Ok(()) => {
                    summary.completed += 1;
                    connection.close(0u32.into(), b"done");
                }
                Err(_) if closed_restarting(&connection) => summary.closed_by_server += 1,
                Err(failure) => {
                    summary.broken += 1;
                    note(&mut summary, failure);
                    connection.close(1u32.into(), b"broken");
                }
            }
        }
        summary
    }

    /// One connection's life: a line every period, each reply checked.
    async fn converse(
        &self,
        connection: &quinn::Connection,
        summary: &mut QuicSummary,
    ) -> Result<(), String> {
        let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(recv).lines();
        let end = Instant::now() + self.lifetime;
        let mut pid = None;
        let mut ticker = tokio::time::interval(self.plan.every);
        for n in 0u64.. {
            ticker.tick().await;
            if Instant::now() >= end || self.done() {
                break;
            }
            send.write_all(format!("{n}\n").as_bytes())
                .await
                .map_err(|e| format!("send {n}: {e}"))?;
            let reply = tokio::time::timeout(REPLY_TIMEOUT, lines.next_line())
                .await
                .map_err(|_| format!("no reply to {n} in {REPLY_TIMEOUT:?}"))?
                .map_err(|e| format!("reply to {n}: {e}"))?
                .ok_or_else(|| format!("the stream ended before the reply to {n}"))?;
            let (number, from) = reply
                .split_once(' ')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or_else(|| format!("a malformed reply {reply:?}"))?;
            if number != n {
                return Err(format!("reply {number} to line {n}"));
            }
            if *pid.get_or_insert(from) != from {
                summary.moved += 1;
                return Err(format!("line {n} answered by {from}, not {pid:?}"));
            }
            summary.pids.insert(from);
            summary.replies += 1;
        }
        send.finish().map_err(|e| e.to_string())?;
        Ok(())
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(server, "localhost")
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "no handshake in 10 s".to_owned())?
        .map_err(|e| e.to_string())
}

/// Whether the server closed `connection` at the end of its drain.
fn closed_restarting(connection: &quinn::Connection) -> bool {
    matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close)) if &close.reason[..] == b"restarting"
    )
}

fn note(summary: &mut QuicSummary, failure: String) {
    if summary.first_failures.len() < 5 {
        summary.first_failures.push(failure);
    }
}
