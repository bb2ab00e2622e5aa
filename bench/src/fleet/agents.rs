//! The simulated fleet on the wire: one real gRPC stream per host (each on
//! its own HTTP/2 connection unless told to share), opened with bounded
//! concurrency. Each agent first sends its backlog (`--preload` samples,
//! one second apart in sample time, the newest just before now, in batches
//! of [`BACKLOG_BATCH`] as an agent resending its spool does) and waits for
//! its ack, then samples live at 1 Hz with the sample time set as it is sent.
//!
//! Runs on a thread and runtime of its own, so the agents keep their pace
//! whatever the WebSocket clients on the other runtime are doing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hostpulse_proto::v1::{
    AgentMessage, Batch, Hello, agent_message, aggregator_message, ingest_client::IngestClient,
};
use hostpulse_proto::{Sample, encode_batch};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;

use super::sim::{SimHost, host_name};
use crate::load::now_ms;

/// Samples per backlog batch: the agent's default `batch_max_samples`, as a
/// real agent resends its spool. (Larger batches also cost the aggregator
/// memory for good: each stream's decode buffers keep the capacity of the
/// largest message it received, about 430 KiB per agent at 100 samples.)
const BACKLOG_BATCH: u64 = 10;

/// How the fleet is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetPlan {
    /// Hosts.
    pub(crate) agents: usize,
    /// Backlog samples per host before live sampling.
    pub(crate) preload: u64,
    /// Agents connecting (and sending their backlog) at any moment.
    pub(crate) in_flight: usize,
    /// Agent streams per HTTP/2 connection (1: each its own, as real agents).
    pub(crate) per_connection: usize,
    /// gzip every message, as the real agent does.
    pub(crate) gzip: bool,
}

/// Counters of the fleet, read by the scenario.
#[derive(Debug, Default)]
pub(crate) struct FleetStats {
    /// Agents that got their `Welcome`.
    pub(crate) attached: AtomicU64,
    /// Agents whose backlog is acknowledged (and that now sample live).
    pub(crate) preloaded: AtomicU64,
    /// Samples sent (backlog and live).
    pub(crate) sent: AtomicU64,
    /// Live samples sent.
    pub(crate) live_sent: AtomicU64,
    /// Batches acknowledged.
    pub(crate) acked: AtomicU64,
    /// Acks asking the agent to slow down (the aggregator was overloaded);
    /// the simulated agents keep their pace and only count them.
    pub(crate) overload_acks: AtomicU64,
    /// Streams that failed or ended early.
    pub(crate) failed: AtomicU64,
    /// Live sends that found the previous sample still queued (the stream
    /// could not keep up).
    pub(crate) late: AtomicU64,
}

/// Runs the fleet against `ingest` until `stop`; returns once every agent
/// has ended.
pub(crate) async fn run(
    ingest: SocketAddr,
    plan: FleetPlan,
    stats: Arc<FleetStats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(plan.in_flight.max(1)));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{ingest}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30));
    let now_secs = (now_ms() / 1000) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut shared: Option<tonic::transport::Channel> = None;
    for index in 0..plan.agents {
        let slot = slots.clone().acquire_owned().await?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Lazy: the connection is made by the agent's first request, in its
        // own task, so at most `in_flight` are being set up at once.
        let channel = match &shared {
            Some(c) if index % plan.per_connection.max(1) != 0 => c.clone(),
            _ => endpoint.connect_lazy(),
        };
        shared = Some(channel.clone());
        let (stats, stop) = (stats.clone(), stop.clone());
        tasks.spawn(async move {
            let host = SimHost::new(index, now_secs);
            if let Err(e) = agent(channel, index, host, plan, slot, &stats, &stop).await
                && !stop.load(Ordering::Relaxed)
            {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("agent {index}: {e}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn agent(
    channel: tonic::transport::Channel,
    index: usize,
    mut host: SimHost,
    plan: FleetPlan,
    slot: tokio::sync::OwnedSemaphorePermit,
    stats: &Arc<FleetStats>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut client = IngestClient::new(channel);
    if plan.gzip {
        client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    let (tx, rx) = mpsc::channel(16);
    let name = host_name(index);
    let labels = [
        (
            "role".to_string(),
            ["web", "db", "cache", "batch", "app"][index % 5].to_string(),
        ),
        ("rack".to_string(), format!("r{:03}", index / 40)),
    ];
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: name.clone(),
            hostname: name,
            version: "0.1.0".into(),
            labels: labels.into_iter().collect(),
            epoch: now_ms() as u64,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 1000,
            instance: 0,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await? {
        Some(m) if matches!(m.kind, Some(aggregator_message::Kind::Welcome(_))) => {}
        other => anyhow::bail!("expected Welcome, got {other:?}"),
    }
    stats.attached.fetch_add(1, Ordering::Relaxed);
    // Acks: counted; the backlog's last one releases the live sampling.
    let backlog_batches = plan.preload.div_ceil(BACKLOG_BATCH);
    let (preloaded_tx, preloaded) = tokio::sync::oneshot::channel::<()>();
    let acks = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut preloaded_tx = Some(preloaded_tx);
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(aggregator_message::Kind::Ack(a)) = m.kind {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    if a.min_interval_ms > 0 {
                        stats.overload_acks.fetch_add(1, Ordering::Relaxed);
                    }
                    if a.seq >= backlog_batches
                        && let Some(t) = preloaded_tx.take()
                    {
                        let _ = t.send(());
                    }
                }
            }
        })
    };
    let mut batch_seq = 0u64;
    let mut seq = 0u64;
    let send = |batch_seq: u64, samples: &[Sample]| AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq: batch_seq,
            sample_count: samples.len() as u32,
            samples: encode_batch(samples).into(),
        })),
    };
    if plan.preload > 0 {
        let newest = now_ms() - 1000;
        let first = newest - (plan.preload as i64 - 1) * 1000;
        while seq < plan.preload {
            let n = BACKLOG_BATCH.min(plan.preload - seq);
            let samples: Vec<Sample> = (0..n)
                .map(|_| {
                    seq += 1;
                    host.sample(seq, first + (seq as i64 - 1) * 1000)
                })
                .collect();
            batch_seq += 1;
            tx.send(send(batch_seq, &samples)).await?;
            stats.sent.fetch_add(n, Ordering::Relaxed);
        }
        tokio::select! {
            r = preloaded => r?,
            _ = tokio::time::sleep(Duration::from_secs(300)) => anyhow::bail!("backlog not acked in 300 s"),
        }
    }
    stats.preloaded.fetch_add(1, Ordering::Relaxed);
    drop(slot);
    // Live: one sample a second, the agents spread over the second.
    let offset = super::rng::Rng::with_seed(index as u64).u64(..1000);
    tokio::time::sleep(Duration::from_millis(offset)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        batch_seq += 1;
        let sample = host.sample(seq, now_ms());
        let message = send(batch_seq, std::slice::from_ref(&sample));
        if tx.capacity() < tx.max_capacity() {
            stats.late.fetch_add(1, Ordering::Relaxed);
        }
        if tx.send(message).await.is_err() {
            break;
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.live_sent.fetch_add(1, Ordering::Relaxed);
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    Ok(())
}
