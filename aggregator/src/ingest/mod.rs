//! The gRPC ingest service: one task per agent stream.
//!
//! A stream must open with `Hello` (within `hello_timeout_ms`); the agent is
//! registered and answered with `Welcome`. Each `Batch` is checked against
//! what is already held (duplicates are acknowledged, not republished),
//! decoded and validated, turned into topic updates, published to the hub and
//! acknowledged. A bad batch ends that stream with `INVALID_ARGUMENT` naming
//! what was wrong; other agents are not touched. On shutdown every stream ends
//! with `UNAVAILABLE`, which agents treat as "reconnect".

mod config;
pub mod forget;
pub mod registry;

pub use config::IngestConfig;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use hostpulse_proto::v1::{
    Ack, AgentMessage, AggregatorMessage, Hello, Welcome, agent_message, aggregator_message,
    ingest_server::Ingest,
};
use hostpulse_proto::{SCHEMA_VERSION, Sample, decode_batch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{AgentGrant, Auth, bearer};
use crate::hub::{Command, HubHandle};
use crate::ingest::registry::{Registry, Verdict};
use crate::topic::host_topic;
use crate::update::{Payload, Update, from_unix_ms};

/// Replies queued towards one agent.
const REPLY_QUEUE: usize = 64;

/// Longest accepted agent id or host name.
const MAX_NAME_LEN: usize = 253;

/// Ingest limits.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Most samples per batch.
    pub max_samples_per_batch: usize,
    /// Deadline for `Hello`.
    pub hello_timeout: Duration,
    /// A connected agent silent this long is announced offline.
    pub offline_after: Duration,
    /// Interval asked of agents while overloaded (zero: never ask).
    pub overload_interval: Duration,
    /// Overloaded when the hub queue is at least this fraction full.
    pub overload_queue_fraction: f64,
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
    registry: Arc<Registry>,
    settings: IngestSettings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl IngestService {
    /// A service publishing into `hub`.
    pub fn new(
        hub: HubHandle,
        registry: Arc<Registry>,
        settings: IngestSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            hub,
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
            .attach(&hello)
            .map_err(|e| refused(Status::already_exists(e.to_string())))?;
        tracing::info!(?peer, agent_id = %hello.agent_id, host = %attached.host, epoch = hello.epoch, last_seq = attached.last_seq, "agent attached");
        publish_event(&self.hub, &event).await;

        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        tx.try_send(Ok(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(Welcome {
                last_seq: attached.last_seq,
                host: attached.host.clone(),
                known: attached.known,
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

/// The topic names of one host, built once per stream.
struct Topics {
    cpu: Arc<str>,
    memory: Arc<str>,
    load: Arc<str>,
    processes: Arc<str>,
    network: Arc<str>,
    disk: Arc<str>,
    filesystems: Arc<str>,
    system: Arc<str>,
    temperatures: Arc<str>,
}

impl Topics {
    fn new(host: &str) -> Self {
        let topic = |metric| -> Arc<str> { host_topic(host, metric).into() };
        Self {
            cpu: topic("cpu"),
            memory: topic("memory"),
            load: topic("load"),
            processes: topic("processes"),
            network: topic("network"),
            disk: topic("disk"),
            filesystems: topic("filesystems"),
            system: topic("system"),
            temperatures: topic("temperatures"),
        }
    }

    /// One update per metric family present in the sample.
    fn updates(&self, sample: Sample, received: SystemTime, out: &mut Vec<Update>) {
        let taken = from_unix_ms(sample.timestamp_ms);
        let seq = sample.seq;
        let mut add = |topic: &Arc<str>, payload| {
            out.push(Update::new(topic.clone(), seq, taken, received, payload));
        };
        if let Some(cpu) = sample.cpu {
            add(&self.cpu, Payload::Cpu(cpu));
        }
        if let Some(m) = sample.memory {
            add(&self.memory, Payload::Memory(m));
        }
        if let Some(l) = sample.load {
            add(&self.load, Payload::Load(l));
        }
        if let Some(p) = sample.processes {
            add(&self.processes, Payload::Processes(p));
        }
        if let Some(n) = sample.network {
            add(&self.network, Payload::Network(n));
        }
        if let Some(d) = sample.disk {
            add(&self.disk, Payload::Disk(d));
        }
        if let Some(f) = sample.filesystems {
            add(&self.filesystems, Payload::Filesystems(f));
        }
        if let Some(s) = sample.system {
            add(&self.system, Payload::System(s));
        }
        if let Some(t) = sample.temperatures {
            add(&self.temperatures, Payload::Temperatures(t));
        }
    }
}

struct AgentSession {
    peer: Option<SocketAddr>,
    /// Batches this stream may still send now; an empty bucket is waited
    /// out (the agent is slowed through gRPC flow control, not refused).
    budget: crate::limit::TokenBucket,
    silence: Duration,
    topics: Topics,
    agent_id: String,
    generation: u64,
    hub: HubHandle,
    registry: Arc<Registry>,
    settings: IngestSettings,
}

impl AgentSession {
    async fn run(
        mut self,
        mut inbound: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<AggregatorMessage, Status>>,
        shutdown: CancellationToken,
    ) {
        let mut heard = Instant::now();
        let mut silent = false;
        let end = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break Some(Status::unavailable("aggregator shutting down; reconnect")),
                _ = tx.closed() => break None,
                _ = tokio::time::sleep_until(heard + self.silence), if !silent => {
                    silent = true;
                    self.announce(false).await;
                    continue;
                }
                m = inbound.message() => m,
            };
            heard = Instant::now();
            if silent {
                silent = false;
                self.announce(true).await;
            }
            match message {
                Ok(Some(AgentMessage {
                    kind: Some(agent_message::Kind::Batch(batch)),
                })) => match self.paced(batch).await {
                    Ok(ack) => {
                        if tx.send(Ok(ack)).await.is_err() {
                            break None;
                        }
                    }
                    Err(status) => {
                        self.registry.stats.refused.fetch_add(1, Ordering::Relaxed);
                        break Some(refuse(self.peer, status));
                    }
                },
                Ok(Some(_)) => {
                    break Some(refuse(
                        self.peer,
                        Status::invalid_argument("only Batch may follow Hello on a stream"),
                    ));
                }
                Ok(None) => break None,
                Err(status) => {
                    // A vanished agent shows as Cancelled/Unknown/Unavailable;
                    // anything else (a message over the size limit, bad
                    // compression) is the agent's error and is told to it.
                    use tonic::Code::{Cancelled, Unavailable, Unknown};
                    if matches!(status.code(), Cancelled | Unknown | Unavailable) {
                        tracing::debug!(peer = ?self.peer, %status, "agent stream broke");
                        break None;
                    }
                    break Some(refuse(self.peer, status));
                }
            }
        };
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        if let Some(event) = self.registry.detach(&self.agent_id, self.generation) {
            tracing::info!(peer = ?self.peer, agent_id = %self.agent_id, host = %event.host, "agent detached");
            publish_event(&self.hub, &event).await;
        }
    }

    /// Waits for the rate budget, then handles the batch.
    async fn paced(
        &mut self,
        batch: hostpulse_proto::v1::Batch,
    ) -> Result<AggregatorMessage, Status> {
        if let Some(wait) = self.budget.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        self.handle_batch(batch).await
    }

    /// Publishes a presence change, if it is one.
    async fn announce(&self, online: bool) {
        if let Some(event) = self
            .registry
            .presence(&self.agent_id, self.generation, online)
        {
            tracing::info!(peer = ?self.peer, host = %event.host, event = %event.event, silence_ms = self.silence.as_millis() as u64, "agent presence");
            publish_event(&self.hub, &event).await;
        }
    }

    async fn handle_batch(
        &self,
        batch: hostpulse_proto::v1::Batch,
    ) -> Result<AggregatorMessage, Status> {
        // Ask agents to slow down while the hub falls behind.
        let overloaded = self.hub.queue_fill() >= self.settings.overload_queue_fraction;
        let min_interval_ms = if overloaded {
            self.settings
                .overload_interval
                .as_millis()
                .min(u32::MAX as u128) as u32
        } else {
            0
        };
        let ack = AggregatorMessage {
            kind: Some(aggregator_message::Kind::Ack(Ack {
                seq: batch.seq,
                min_interval_ms,
            })),
        };
        match self
            .registry
            .check(&self.agent_id, self.generation, batch.seq)
        {
            Verdict::Duplicate => {
                self.registry
                    .stats
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(ack);
            }
            Verdict::Superseded => {
                return Err(Status::aborted(
                    "superseded by a newer stream of this agent",
                ));
            }
            Verdict::New => {}
        }
        let samples = decode_batch(
            &batch.samples,
            batch.sample_count,
            self.settings.max_samples_per_batch,
        )
        .map_err(|e| Status::invalid_argument(format!("batch {}: {e}", batch.seq)))?;
        let latest = crate::update::unix_ms_now() + self.settings.max_future.as_millis() as i64;
        if let Some(s) = samples.iter().find(|s| s.timestamp_ms > latest) {
            return Err(Status::invalid_argument(format!(
                "batch {}: sample seq {} is timestamped {} ms in the future, more than the {} ms allowed",
                batch.seq,
                s.seq,
                s.timestamp_ms - crate::update::unix_ms_now(),
                self.settings.max_future.as_millis()
            )));
        }
        let received = SystemTime::now();
        let mut updates = Vec::with_capacity(samples.len() * 9);
        for sample in samples {
            self.topics.updates(sample, received, &mut updates);
        }
        self.hub
            .send(Command::Publish(updates))
            .await
            .map_err(|_| Status::unavailable("aggregator shutting down; reconnect"))?;
        self.registry
            .commit(&self.agent_id, self.generation, batch.seq);
        self.registry.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.registry
            .stats
            .samples
            .fetch_add(u64::from(batch.sample_count), Ordering::Relaxed);
        Ok(ack)
    }
}
