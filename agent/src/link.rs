//! One connection to an aggregator: channel set-up, `Hello`, `Welcome`.
//!
//! A [`Link`] is the agent's end of one `Ingest/Stream` call: a bounded
//! sender for outgoing messages and the inbound stream of acks. The pipeline
//! treats any error on either side as the end of the link and reconnects.

use std::time::Duration;

use hostpulse_proto::v1::{
    AgentMessage, AggregatorMessage, Hello, Welcome, agent_message, aggregator_message,
    ingest_client::IngestClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Messages queued towards the aggregator before the pipeline waits.
const OUTBOUND_QUEUE: usize = 32;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP / HTTP/2 / TLS set-up failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The aggregator address.
        address: String,
        /// Transport error.
        source: tonic::transport::Error,
    },
    /// The aggregator refused the stream or ended it with a status.
    #[error("{address} refused the stream: {status}")]
    Refused {
        /// The aggregator address.
        address: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The aggregator answered something other than `Welcome` first.
    #[error("{address} did not answer Hello with Welcome")]
    NoWelcome {
        /// The aggregator address.
        address: String,
    },
    /// Nothing within the connect timeout.
    #[error("{address} did not answer within {timeout:?}")]
    Timeout {
        /// The aggregator address.
        address: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Transport settings for a connection.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Limit for the whole set-up, up to `Welcome`.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// Unanswered keepalive tolerance.
    pub keepalive_timeout: Duration,
    /// Bearer token sent in the `authorization` metadata.
    pub token: Option<String>,
    /// PEM of the CA to verify `https://` aggregators against.
    pub ca_pem: Option<Vec<u8>>,
    /// Name to verify instead of the address's host.
    pub tls_domain: Option<String>,
}

/// An established stream.
#[derive(Debug)]
pub struct Link {
    /// The aggregator's address.
    pub address: String,
    /// Outgoing messages (the request stream).
    pub tx: mpsc::Sender<AgentMessage>,
    /// Incoming acks.
    pub inbound: tonic::Streaming<AggregatorMessage>,
    /// What the aggregator said first.
    pub welcome: Welcome,
}

/// Connects to `address`, sends `hello` and waits for `Welcome`.
pub async fn connect(
    address: String,
    hello: Hello,
    settings: LinkSettings,
) -> Result<Link, LinkError> {
    let timeout = settings.connect_timeout;
    match tokio::time::timeout(timeout, connect_inner(address.clone(), hello, settings)).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::Timeout { address, timeout }),
    }
}

async fn connect_inner(
    address: String,
    hello: Hello,
    settings: LinkSettings,
) -> Result<Link, LinkError> {
    let connect_err = |source| LinkError::Connect {
        address: address.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(address.clone()).map_err(connect_err)?;
    if address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &settings.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(domain) = &settings.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(connect_err)?;
    }
    let endpoint = endpoint
        .connect_timeout(settings.connect_timeout)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(connect_err)?;
    let mut client = IngestClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);

    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    tx.try_send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(hello)),
    })
    .expect("a new channel has room");
    let refused = |status| LinkError::Refused {
        address: address.clone(),
        status,
    };
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &settings.token {
        let value = format!("Bearer {token}").parse().map_err(|_| {
            refused(tonic::Status::invalid_argument(
                "token is not a valid header value",
            ))
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client.stream(request).await.map_err(refused)?.into_inner();
    match inbound.message().await.map_err(refused)? {
        Some(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(welcome)),
        }) => Ok(Link {
            address,
            tx,
            inbound,
            welcome,
        }),
        _ => Err(LinkError::NoWelcome { address }),
    }
}
