//! The load generator: simulated agents on real gRPC streams, and WebSocket
//! subscribers that time every update from its sample's creation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hostpulse_proto::v1::{
    AgentMessage, Batch, Hello, agent_message, aggregator_message, ingest_client::IngestClient,
};
use hostpulse_proto::{Cpu, Load, Memory, Process, ProcessRollup, Processes, Sample, encode_batch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{ClientKind, Conn, THIN_SAMPLE};
use crate::store::sim::SimHost;

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A sample as an agent sends it: `full` adds memory, load and a top-10
/// process list; otherwise CPU only (8 cores, about 250 bytes as JSON).
pub(crate) fn sample(seq: u64, full: bool) -> Sample {
    let process = |pid: u32| Process {
        pid,
        start_time: 1_795_000_000,
        name: format!("worker-{pid}"),
        cpu_pct: 3.5,
        memory_bytes: 50 << 20,
    };
    Sample {
        seq,
        timestamp_ms: now_ms(),
        cpu: Some(Cpu {
            total_pct: 42.5,
            per_core_pct: vec![40.0, 45.5, 38.25, 50.0, 41.0, 39.5, 44.0, 42.0],
        }),
        memory: full.then_some(Memory {
            total_bytes: 16 << 30,
            used_bytes: 6 << 30,
            available_bytes: 10 << 30,
            swap_total_bytes: 2 << 30,
            swap_used_bytes: 0,
        }),
        load: full.then_some(Load {
            one: 1.5,
            five: 1.25,
            fifteen: 1.0,
        }),
        processes: full.then(|| Processes {
            count: 120,
            top_cpu: (1..=10).map(process).collect(),
            top_memory: (11..=20).map(process).collect(),
            others: ProcessRollup {
                count: 100,
                cpu_pct: 5.0,
                memory_bytes: 1 << 30,
            },
        }),
        ..Sample::default()
    }
}

/// Counters shared by publishers.
#[derive(Default)]
pub(crate) struct PublishStats {
    /// Samples sent.
    pub(crate) sent: AtomicU64,
    /// Samples acknowledged.
    pub(crate) acked: AtomicU64,
    /// Acks asking the agent to sample less often (the aggregator's hub or
    /// store queue filling up), which the agents follow as real ones do.
    pub(crate) overload_acks: AtomicU64,
}

/// How each simulated agent sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// Samples per second; 0 sends as fast as acks allow (8 batches in flight).
    pub(crate) rate: f64,
    /// Samples per batch.
    pub(crate) per_batch: usize,
    /// Full samples (CPU, memory, load, top processes) or CPU only.
    pub(crate) full: bool,
    /// Whole hosts' samples instead: every family, 66 numeric values, as
    /// `store-engines` simulates them ([`SimHost`]).
    pub(crate) whole_host: bool,
}

/// Runs `streams` simulated agents over `connections` HTTP/2 connections, each
/// sending at `pace` until `stop`.
pub(crate) async fn publish(
    ingest: SocketAddr,
    first: usize,
    streams: usize,
    connections: usize,
    pace: Pace,
    stats: Arc<PublishStats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{ingest}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let mut tasks = Vec::new();
    for i in first..first + streams {
        let channel = channels[i % channels.len()].clone();
        let (stats, stop) = (stats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let _ = agent(channel, i, pace, stats, stop).await;
        }));
        if i % 200 == 199 {
            // Ramp up without a thundering herd of stream set-ups.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn agent(
    channel: tonic::transport::Channel,
    i: usize,
    Pace {
        rate,
        per_batch,
        full,
        whole_host,
    }: Pace,
    stats: Arc<PublishStats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut client = IngestClient::new(channel);
    let mut host = whole_host.then(|| SimHost::new(i as u64 + 1));
    let (tx, rx) = mpsc::channel(16);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: format!("bench-{i}"),
            hostname: format!("bench-{i:05}"),
            version: "bench".into(),
            labels: Default::default(),
            epoch: 1,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 1000,
            instance: 0,
        })),
    })
    .await?;
    let mut inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?; // Welcome
    let in_flight = Arc::new(tokio::sync::Semaphore::new(8));
    // The interval the latest ack asked for, in ms (0: none).
    let asked = Arc::new(AtomicU64::new(0));
    let acks = {
        let (stats, in_flight, asked) = (stats.clone(), in_flight.clone(), asked.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(aggregator_message::Kind::Ack(a)) = m.kind {
                    if a.min_interval_ms > 0 {
                        stats.overload_acks.fetch_add(1, Ordering::Relaxed);
                    }
                    asked.store(u64::from(a.min_interval_ms), Ordering::Relaxed);
                }
                stats.acked.fetch_add(per_batch as u64, Ordering::Relaxed);
                in_flight.add_permits(1);
            }
        })
    };
    let period = if rate > 0.0 {
        Some(Duration::from_secs_f64(per_batch as f64 / rate))
    } else {
        None
    };
    // Spread the agents over the period so their batches do not coincide.
    if let Some(p) = period {
        tokio::time::sleep(p.mul_f64((i % 1000) as f64 / 1000.0)).await;
    }
    let mut ticks = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut seq = 0u64;
    let mut batch_seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match &mut ticks {
            Some(t) => {
                t.tick().await;
                // Asked to sample less often: as the agent does, no more
                // often than that until an ack asks for nothing.
                let asked = Duration::from_millis(asked.load(Ordering::Relaxed));
                if let Some(longer) = period.and_then(|p| asked.checked_sub(p))
                    && !longer.is_zero()
                {
                    tokio::time::sleep(longer).await;
                }
            }
            None => in_flight.acquire().await?.forget(),
        }
        let samples: Vec<Sample> = (0..per_batch)
            .map(|_| {
                seq += 1;
                match &mut host {
                    Some(host) => Sample {
                        seq,
                        ..host.sample(now_ms())
                    },
                    None => sample(seq, full),
                }
            })
            .collect();
        batch_seq += 1;
        let message = AgentMessage {
            kind: Some(agent_message::Kind::Batch(Batch {
                seq: batch_seq,
                sample_count: per_batch as u32,
                samples: encode_batch(&samples).into(),
            })),
        };
        if tx.send(message).await.is_err() {
            break;
        }
        stats.sent.fetch_add(per_batch as u64, Ordering::Relaxed);
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    Ok(())
}

/// What subscribers measured.
pub(crate) struct Received {
    /// Updates received (inside batch frames too).
    pub(crate) updates: AtomicU64,
    /// Frames received.
    pub(crate) frames: AtomicU64,
    /// Latency from sample creation to receipt, in microseconds.
    pub(crate) latency: std::sync::Mutex<Histogram<u64>>,
    /// Record latencies only once this is set (after warm-up).
    pub(crate) measuring: AtomicBool,
    /// Cluster scenario: updates of hosts `bench-<n>` with `n` in this range
    /// were produced on another aggregator; their latency goes to `cross`.
    pub(crate) remote_hosts: Option<std::ops::Range<usize>>,
    /// Latency of updates that crossed the broker, in microseconds.
    pub(crate) cross: std::sync::Mutex<Histogram<u64>>,
}

impl Received {
    /// Counts cross-aggregator updates apart (see `remote_hosts`).
    pub(crate) fn with_remote_hosts(remote: std::ops::Range<usize>) -> Self {
        Self {
            remote_hosts: Some(remote),
            ..Self::default()
        }
    }

    /// Whether the update in `text` (one per frame) came from a remote host.
    fn is_remote(&self, text: &str) -> bool {
        const KEY: &str = "\"topic\":\"host.bench-";
        let Some(range) = &self.remote_hosts else {
            return false;
        };
        text.find(KEY)
            .and_then(|at| text.get(at + KEY.len()..at + KEY.len() + 5))
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| range.contains(&n))
    }
}

impl Default for Received {
    fn default() -> Self {
        Self {
            updates: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            latency: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            ),
            measuring: AtomicBool::new(false),
            remote_hosts: None,
            cross: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            ),
        }
    }
}

/// Connects `count` subscribers of `kind` to `topic` (with `batch_ms`
/// batching) and returns once every one has its `$sys.subscribed`; they then
/// read until `stop`.
pub(crate) async fn subscribe(
    http: SocketAddr,
    count: usize,
    topic: &str,
    batch_ms: u64,
    kind: ClientKind,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let url = format!("ws://{http}/ws?batch_ms={batch_ms}");
    let mut tasks = Vec::with_capacity(count);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(count.max(1));
    for i in 0..count {
        let mut conn = Conn::connect(&url, kind).await?;
        let request = format!("{{\"action\":\"subscribe\",\"topic\":\"{topic}\"}}");
        conn.send_text(&request).await?;
        let (received, stop, ready) = (received.clone(), stop.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("bounds");
            let mut cross = local.clone();
            let mut ready = Some(ready);
            let mut frames = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(read) = tokio::time::timeout(
                    Duration::from_millis(200),
                    conn.read(|data| {
                        frames += 1;
                        if kind == ClientKind::Thin && ready.is_none() {
                            // One update per frame; one frame in
                            // THIN_SAMPLE is timed.
                            received.updates.fetch_add(1, Ordering::Relaxed);
                            received.frames.fetch_add(1, Ordering::Relaxed);
                            if !frames.is_multiple_of(THIN_SAMPLE)
                                || !received.measuring.load(Ordering::Relaxed)
                            {
                                return;
                            }
                            let text = std::str::from_utf8(data).unwrap_or("");
                            let now = now_ms();
                            for ts in timestamps(text) {
                                let _ = local.record(((now - ts).max(0) as u64) * 1000 + 1);
                            }
                            return;
                        }
                        let text = std::str::from_utf8(data).unwrap_or("");
                        // The reply may come alone or inside a batch frame.
                        if ready.is_some() && text.contains("\"$sys.subscribed\"") {
                            if let Some(r) = ready.take() {
                                let _ = r.try_send(());
                            }
                            return;
                        }
                        let now = now_ms();
                        let measuring = received.measuring.load(Ordering::Relaxed);
                        let mut n = 0;
                        let remote = received.is_remote(text);
                        for ts in timestamps(text) {
                            n += 1;
                            if measuring {
                                let h = if remote { &mut cross } else { &mut local };
                                let _ = h.record(((now - ts).max(0) as u64) * 1000 + 1);
                            }
                        }
                        received.updates.fetch_add(n, Ordering::Relaxed);
                        received.frames.fetch_add(1, Ordering::Relaxed);
                    }),
                )
                .await
                else {
                    continue;
                };
                if !matches!(read, Ok(true)) {
                    break;
                }
            }
            let _ = received.latency.lock().expect("lock").add(&local);
            let _ = received.cross.lock().expect("lock").add(&cross);
        }));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    drop(ready_tx);
    for _ in 0..count {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("subscribers not ready within 30 s"))?;
    }
    Ok(tasks)
}

/// Sample times (Unix ms) of every update in a frame, read from the
/// `"timestamp":"...Z"` fields without parsing the whole JSON.
pub(crate) fn timestamps(text: &str) -> impl Iterator<Item = i64> + '_ {
    const KEY: &str = "\"timestamp\":\"";
    text.match_indices(KEY).filter_map(move |(at, _)| {
        let value = text.get(at + KEY.len()..at + KEY.len() + 24)?;
        parse_rfc3339_ms(value)
    })
}

/// `2026-11-28T12:34:56.123Z` to Unix ms.
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (h, mi, sec, ms) = (n(11, 13)?, n(14, 16)?, n(17, 19)?, n(20, 23)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_ms() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-18T11:06:40.123Z"),
            Some(1_795_000_000_123)
        );
        let frame = r#"{"updates":[{"timestamp":"1970-01-01T00:00:01.500Z"},{"timestamp":"2026-11-18T11:06:40.123Z"}]}"#;
        assert_eq!(
            timestamps(frame).collect::<Vec<_>>(),
            vec![1500, 1_795_000_000_123]
        );
    }
}
