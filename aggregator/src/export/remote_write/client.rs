//! The HTTP side of remote-write: one HTTP/1.1 connection to the endpoint
//! (plain TCP or rustls), kept between requests and opened again after a
//! failure; a request with the remote-write headers and a deadline; and
//! the answer sorted into delivered, worth retrying, or refused.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::config::{Endpoint, Settings};

/// Most of an answer read (a longer one is not read, and its connection
/// not reused).
const ERROR_BODY_READ: usize = 64 << 10;

/// Most characters of an error answer kept for the log.
const ERROR_BODY_SHOWN: usize = 512;

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// Worth retrying: the endpoint is unreachable, slow, overloaded (429)
    /// or failing (5xx).
    #[error("{0}")]
    Retry(String),
    /// The endpoint refused the data itself (4xx other than 429: e.g.
    /// out-of-order samples, bad auth); sending it again cannot help.
    #[error("{0}")]
    Refused(String),
}

/// A client of one endpoint.
pub(super) struct Client {
    endpoint: Endpoint,
    authorization: Option<HeaderValue>,
    tls: Option<TlsConnector>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for `settings`' endpoint (nothing is connected yet).
    pub(super) fn new(settings: &Settings) -> Result<Self, String> {
        let tls = match settings.endpoint.tls {
            true => Some(tls_connector(settings.ca_pem.as_deref())?),
            false => None,
        };
        Ok(Self {
            endpoint: settings.endpoint.clone(),
            authorization: settings.authorization.clone(),
            tls,
            timeout: settings.timeout,
            conn: None,
        })
    }

    /// Sends one compressed `WriteRequest`, within the timeout. On any
    /// failure the connection is dropped (the next request opens another).
    pub(super) async fn send(&mut self, body: Bytes) -> Result<(), SendError> {
        let r = match tokio::time::timeout(self.timeout, self.try_send(body)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Retry(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn try_send(&mut self, body: Bytes) -> Result<(), SendError> {
        let request = self.request(body.clone())?;
        let (conn, fresh) = self.connection().await?;
        let response = match conn.send_request(request).await {
            Ok(r) => r,
            // A kept connection the endpoint closed while idle: once more
            // on a new one before it counts as a failure.
            Err(_) if !fresh => {
                self.conn = None;
                let request = self.request(body)?;
                let (conn, _) = self.connection().await?;
                conn.send_request(request)
                    .await
                    .map_err(|e| SendError::Retry(format!("request failed: {e}")))?
            }
            Err(e) => return Err(SendError::Retry(format!("request failed: {e}"))),
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), ERROR_BODY_READ)
            .collect()
            .await
            .map(|b| {
                let text = String::from_utf8_lossy(&b.to_bytes()).trim().to_string();
                match text.char_indices().nth(ERROR_BODY_SHOWN) {
                    Some((cut, _)) => format!("{}...", &text[..cut]),
                    None => text,
                }
            });
        let body = match body {
            Ok(text) => text,
            Err(_) => {
                // Unread or too long: this connection cannot carry the next one.
                self.conn = None;
                String::new()
            }
        };
        match status {
            s if s.is_success() => Ok(()),
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                Err(SendError::Retry(format!("{s}: {body}")))
            }
            s => Err(SendError::Refused(format!("{s}: {body}"))),
        }
    }

    /// A `WriteRequest` post of `body` with the remote-write headers.
    fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, SendError> {
        let e = &self.endpoint;
        let mut request = Request::post(e.path.as_str())
            .header(header::HOST, e.authority.as_str())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                header::USER_AGENT,
                concat!("hostpulse-aggregator/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| SendError::Refused(format!("cannot build the request: {e}")))?;
        if let Some(auth) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        Ok(request)
    }

    /// The open connection, or a new one (then `true`).
    async fn connection(&mut self) -> Result<(&mut SendRequest<Full<Bytes>>, bool), SendError> {
        if let Some(c) = &mut self.conn {
            if c.ready().await.is_ok() {
                return Ok((self.conn.as_mut().expect("checked above"), false));
            }
            self.conn = None;
        }
        let e = &self.endpoint;
        let tcp = TcpStream::connect((e.host.as_str(), e.port))
            .await
            .map_err(|err| SendError::Retry(format!("cannot connect to {}: {err}", e.authority)))?;
        let _ = tcp.set_nodelay(true);
        let handshake_failed =
            |err: hyper::Error| SendError::Retry(format!("HTTP handshake: {err}"));
        let sender = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(e.host.clone())
                    .map_err(|err| SendError::Refused(format!("TLS server name: {err}")))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|err| SendError::Retry(format!("TLS handshake: {err}")))?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(conn);
                sender
            }
            None => {
                let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(handshake_failed)?;
                // Ends when the sender is dropped or the peer closes.
                tokio::spawn(conn);
                sender
            }
        };
        Ok((self.conn.insert(sender), true))
    }
}

/// rustls with `ca_pem`'s certificates, or the system's roots.
fn tls_connector(ca_pem: Option<&[u8]>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
                roots.add(cert).map_err(|e| format!("ca_file: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the endpoint against".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
