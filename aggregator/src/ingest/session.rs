//! One agent stream after `Welcome`: each batch checked against what is
//! held, rate-limited, decoded and validated, checked against the alert
//! rules selecting the host, turned into topic updates,
//! published to the hub, queued for the store and acknowledged; silence announced offline; the
//! stream ended on shutdown or when a newer stream of the agent supersedes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use hostpulse_proto::v1::{
    Ack, AgentMessage, AggregatorMessage, agent_message, aggregator_message,
};
use hostpulse_proto::{Sample, decode_batch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{IngestSettings, publish_event, refuse};
use crate::hub::{Command, HubHandle};
use crate::ingest::registry::{Registry, Verdict};
use crate::topic::host_topic;
use crate::update::{Payload, Update, from_unix_ms};

/// The topic names of one host, built once per stream.
pub(super) struct Topics {
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
    pub(super) fn new(host: &str) -> Self {
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

/// What ends a stream while the aggregator shuts down (the agent keeps what
/// was not acknowledged, and reconnects).
fn shutting_down() -> Status {
    Status::unavailable("aggregator shutting down; reconnect")
}

pub(super) struct AgentSession {
    pub(super) peer: Option<SocketAddr>,
    /// Batches this stream may still send now; an empty bucket is waited
    /// out (the agent is slowed through gRPC flow control, not refused).
    pub(super) budget: crate::limit::TokenBucket,
    pub(super) silence: Duration,
    pub(super) topics: Topics,
    /// The store and this host's name in it, when `[storage]` is on.
    pub(super) store: Option<(crate::store::StoreHandle, Arc<str>)>,
    /// The alert rules selecting this host, when any do.
    pub(super) alerts: Option<crate::alert::eval::HostAlerts>,
    pub(super) agent_id: String,
    pub(super) generation: u64,
    pub(super) hub: HubHandle,
    pub(super) registry: Arc<Registry>,
    pub(super) settings: IngestSettings,
}

impl AgentSession {
    pub(super) async fn run(
        mut self,
        mut inbound: Streaming<AgentMessage>,
        tx: mpsc::Sender<Result<AggregatorMessage, Status>>,
        shutdown: CancellationToken,
    ) {
        let mut heard = Instant::now();
        let mut silent = false;
        let end = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break Some(shutting_down()),
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
        // Ask agents to slow down while the hub or the store stays behind.
        let min_interval_ms = self.settings.overload.min_interval_ms(
            self.hub.queue_fill(),
            self.store
                .as_ref()
                .is_some_and(|(store, _)| store.overloaded()),
            &self.registry.stats,
        );
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
        // The store's copy, queued once the live path has the batch.
        let stored = self
            .store
            .as_ref()
            .map(|(store, host)| (store, host.clone(), samples.clone()));
        if let Some(alerts) = &self.alerts {
            // Synchronous and short: transitions go to the alert task
            // through a bounded queue, never waited on.
            alerts.observe(&samples);
        }
        let received = SystemTime::now();
        let mut updates = Vec::with_capacity(samples.len() * 9);
        for sample in samples {
            self.topics.updates(sample, received, &mut updates);
        }
        self.hub
            .send(Command::Publish(updates))
            .await
            .map_err(|_| shutting_down())?;
        if let Some((store, host, samples)) = stored {
            // Waits while the store's queue is full: the batch is
            // acknowledged once the store has it (the agent keeps it until
            // then), so a store behind ingest slows ingest, not loses it.
            store
                .put(host, samples, batch.samples.len())
                .await
                .map_err(|_| shutting_down())?;
        }
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
