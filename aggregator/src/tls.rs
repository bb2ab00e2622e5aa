//! TLS for both listeners (rustls, ring provider): the certificate and key
//! from `[tls]`, a tonic server identity for gRPC ingest, and a TLS listener
//! for the HTTP/WebSocket server whose handshakes run concurrently (bounded,
//! with a deadline) so a slow or silent client cannot stall accepting others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// `[tls]`: when both files are set, gRPC ingest and HTTP/WebSocket are
/// served over TLS only.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of the two files was given.
    #[error("tls.cert_file and tls.key_file go together")]
    Incomplete,
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair.
    #[error("certificate and key do not form a usable identity: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loaded certificate material.
#[derive(Debug, Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    server: Arc<rustls::ServerConfig>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    hostpulse_common::config::read_bounded(path, 1 << 20).map_err(|e| TlsError::File {
        path: path.into(),
        reason: e.to_string(),
    })
}

impl Tls {
    /// Loads the configured files; `Ok(None)` when TLS is off.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (cert_path, key_path) = match (&config.cert_file, &config.key_file) {
            (None, None) => return Ok(None),
            (Some(c), Some(k)) => (c, k),
            _ => return Err(TlsError::Incomplete),
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let bad = |path: &PathBuf, e: rustls::pki_types::pem::Error| TlsError::File {
            path: path.clone(),
            reason: format!("not PEM: {e}"),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert_path, e))?;
        if certs.is_empty() {
            return Err(TlsError::File {
                path: cert_path.clone(),
                reason: "no certificate in it".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(key_path, e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Self {
            cert_pem,
            key_pem,
            server: Arc::new(server),
        }))
    }

    /// The identity for tonic's server.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// A listener that yields connections once their TLS handshake is done.
    pub fn listener(&self, tcp: TcpListener, shutdown: CancellationToken) -> TlsListener {
        let local = tcp.local_addr();
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(self.server.clone());
        tokio::spawn(handshakes(tcp, acceptor, tx, shutdown));
        TlsListener { rx, local }
    }
}

/// Handshakes in flight at once.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn handshakes(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%peer, cause = %e, "TLS handshake failed"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}

/// Connections that completed their TLS handshake, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
