//! The gRPC ingest service: one task per agent stream.
//!
//! A stream must open with `Hello` (within `hello_timeout_ms`); the agent is
//! registered and answered with `Welcome`, which also tells it the message
//! and batch limits so it never sends what would be refused. Each `Batch` is checked against
//! what is already held (duplicates are acknowledged, not republished),
//! decoded and validated, turned into topic updates, published to the hub,
//! handed to the store (when `[storage]` is on; a bounded queue that ingest
//! waits for) and acknowledged; an ack asks the agent to slow down while a
//! queue stays behind (`overload.rs`). A bad batch ends that stream with `INVALID_ARGUMENT` naming
//! what was wrong; other agents are not touched. On shutdown every stream ends
//! with `UNAVAILABLE`, which agents treat as "reconnect".
//!
//! Files: this one is the service (authentication, `Hello`, `Welcome`);
//! `session.rs` is a stream's task after it; `overload.rs` when acks ask
//! agents to slow down; [`registry`] the attached agents
//! and the `hosts` events; [`forget`] the departed hosts' end; `config.rs` the
//! `[ingest]` section.

mod config;
pub mod forget;
mod overload;
pub mod registry;
mod session;

pub use config::IngestConfig;
pub use overload::Overload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostpulse_proto::SCHEMA_VERSION;
use hostpulse_proto::v1::{
    AgentMessage, AggregatorMessage, Hello, Welcome, agent_message, aggregator_message,
    ingest_server::Ingest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AgentGrant, Auth, bearer};
use crate::hub::{Command, HubHandle};
use crate::ingest::registry::Registry;
use crate::store::StoreHandle;
use session::{AgentSession, Topics};

/// Replies queued towards one agent.
const REPLY_QUEUE: usize = 64;

/// Longest accepted agent id or host name.
const MAX_NAME_LEN: usize = 253;

/// Ingest limits.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Largest message accepted (the gRPC decoder's limit), told to agents.
    pub max_message_bytes: usize,
    /// Most samples per batch.
    pub max_samples_per_batch: usize,
    /// Deadline for `Hello`.
    pub hello_timeout: Duration,
    /// A connected agent silent this long is announced offline.
    pub offline_after: Duration,
    /// When acks ask agents to slow down (shared by every session).
    pub overload: Arc<Overload>,
    /// Sustained batches per second per stream.
    pub max_batches_per_sec: u32,
    /// How far in the future a sample's timestamp may be (clock skew).
    pub max_future: Duration,
}

/// The interceptor that checks an agent's token before the stream is read,
/// and hands what it grants to the service as a request extension.
pub fn authenticate(
    auth: Arc<Auth>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match auth.agent(presented) {
            Ok(grant) => {
                request.extensions_mut().insert(grant);
                Ok(request)
            }
            Err(refusal) => Err(refuse(
                request.remote_addr(),
                Status::unauthenticated(format!("agent token refused: {refusal}")),
            )),
        }
    }
}

/// The `hostpulse.v1.Ingest` implementation.
pub struct IngestService {
    hub: HubHandle,
    alerts: Arc<crate::alert::eval::Engine>,
    store: Option<StoreHandle>,
    registry: Arc<Registry>,
    settings: IngestSettings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl IngestService {
    /// A service publishing into `hub`, and handing samples to `store`
    /// (when `[storage]` is on).
    pub fn new(
        hub: HubHandle,
        registry: Arc<Registry>,
        settings: IngestSettings,
        store: Option<StoreHandle>,
        alerts: Arc<crate::alert::eval::Engine>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            hub,
            alerts,
            store,
            registry,
            settings,
            shutdown,
            tasks,
        }
    }
}

type ReplyStream = ReceiverStream<Result<AggregatorMessage, Status>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let peer = request.remote_addr();
        let grant = request
            .extensions()
            .get::<AgentGrant>()
            .cloned()
            .ok_or_else(|| Status::internal("stream reached the service without authentication"))?;
        // Refusals before the session starts are logged and counted like
        // those after it (`hostpulse_ingest_refused_streams_total`).
        let refused = |status: Status| {
            self.registry.stats.refused.fetch_add(1, Ordering::Relaxed);
            refuse(peer, status)
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.settings.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                refused(Status::deadline_exceeded(format!(
                    "no Hello within {:?} of opening the stream",
                    self.settings.hello_timeout
                )))
            })??;
        let hello = match first {
            Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(refused(Status::invalid_argument(
                    "the first message of a stream must be Hello",
                )));
            }
        };
        check_hello(&hello).map_err(refused)?;
        if !grant.may_publish(&hello.hostname) {
            return Err(refused(Status::permission_denied(format!(
                "token {:?} may not publish for host {:?}",
                grant.name, hello.hostname
            ))));
        }
        let (attached, event) = self
            .registry
            .attach(&hello, peer)
            .map_err(|e| refused(Status::already_exists(e.to_string())))?;
        tracing::info!(?peer, agent_id = %hello.agent_id, host = %attached.host, epoch = hello.epoch, last_seq = attached.last_seq, "agent attached");
        publish_event(&self.hub, &event).await;

        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        tx.try_send(Ok(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(Welcome {
                last_seq: attached.last_seq,
                host: attached.host.clone(),
                known: attached.known,
                max_message_bytes: self.settings.max_message_bytes as u64,
                max_samples_per_batch: self
                    .settings
                    .max_samples_per_batch
                    .try_into()
                    .unwrap_or(u32::MAX),
            })),
        }))
        .expect("a new channel has room");
        // Silence is judged against the agent's own pace: a slow sampler is
        // not offline just because it samples less often than the limit.
        let silence = self
            .settings
            .offline_after
            .max(Duration::from_millis(u64::from(hello.interval_ms)) * 3);
        let session = AgentSession {
            peer,
            budget: crate::limit::TokenBucket::new(
                f64::from(self.settings.max_batches_per_sec),
                f64::from(self.settings.max_batches_per_sec) * 5.0,
            ),
            silence,
            topics: Topics::new(&attached.host),
            store: self
                .store
                .clone()
                .map(|s| (s, Arc::from(attached.host.as_str()))),
            alerts: self.alerts.attach(
                &attached.host,
                &hello
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            agent_id: hello.agent_id,
            generation: attached.generation,
            hub: self.hub.clone(),
            registry: self.registry.clone(),
            settings: self.settings.clone(),
        };
        self.tasks
            .spawn(session.run(inbound, tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn check_hello(hello: &Hello) -> Result<(), Status> {
    if hello.agent_id.is_empty() || hello.agent_id.len() > MAX_NAME_LEN {
        return Err(Status::invalid_argument(format!(
            "Hello.agent_id must be 1..={MAX_NAME_LEN} bytes"
        )));
    }
    if hello.hostname.is_empty() || hello.hostname.len() > MAX_NAME_LEN {
        return Err(Status::invalid_argument(format!(
            "Hello.hostname must be 1..={MAX_NAME_LEN} bytes"
        )));
    }
    if hello.schema_version != SCHEMA_VERSION {
        return Err(Status::failed_precondition(format!(
            "sample schema version {} is not supported (this aggregator speaks {SCHEMA_VERSION})",
            hello.schema_version
        )));
    }
    Ok(())
}

/// Logs a refusal once, with the peer, and passes the status on.
fn refuse(peer: Option<SocketAddr>, status: Status) -> Status {
    tracing::warn!(?peer, code = ?status.code(), reason = %status.message(), "agent stream refused");
    status
}

/// Hands a `hosts` event to the hub, which numbers it as it arrives.
async fn publish_event(hub: &HubHandle, event: &crate::update::HostEvent) {
    let _ = hub
        .send(Command::PublishNext(vec![crate::update::hosts_update(
            event,
        )]))
        .await;
}
