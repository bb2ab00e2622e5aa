//! The agent's send loop: batches samples into the spool, keeps one stream to
//! an aggregator, sends what is unacknowledged, and reconnects with backoff.
//!
//! One task owns the spool and the link, so there is no shared state to lock:
//! samples arrive over a bounded channel from the sampler, acks arrive on the
//! link, and timers drive flushing, reconnects and the shutdown drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hostpulse_proto::v1::{AgentMessage, Batch, Hello, agent_message, aggregator_message};
use hostpulse_proto::{Sample, encode_batch};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::link::{self, Link, LinkError, LinkSettings};
use crate::spool::{Spool, SpooledBatch};

/// Live counters of a running agent, readable from other tasks and tests.
#[derive(Debug, Default)]
pub struct AgentStatus {
    /// Seq of the last sample taken.
    pub last_sample_seq: AtomicU64,
    /// Samples taken since start.
    pub samples_taken: AtomicU64,
    /// Seq of the last batch the aggregator acknowledged.
    pub acked_batch_seq: AtomicU64,
    /// Batches awaiting acknowledgement.
    pub spooled_batches: AtomicU64,
    /// Payload bytes currently in the spool (retained acknowledged batches included).
    pub spooled_bytes: AtomicU64,
    /// Batches that never reached an aggregator: evicted from the full
    /// spool before they were sent, refused, or sent and evicted but missing
    /// from the aggregator that knows this run.
    pub dropped_batches: AtomicU64,
    /// Samples in those batches.
    pub dropped_samples: AtomicU64,
    /// Batches evicted from the full spool after they were sent, whose ack
    /// never came and whose aggregator was replaced by one that does not know
    /// this run: perhaps delivered, perhaps not. Not counted as dropped.
    pub unconfirmed_batches: AtomicU64,
    /// Samples in those batches.
    pub unconfirmed_samples: AtomicU64,
    /// Whether a stream is established.
    pub connected: AtomicBool,
    /// Streams established since start.
    pub connections: AtomicU64,
    /// Connection attempts that failed (unreachable, refused, timed out).
    pub failed_connects: AtomicU64,
    /// Why the last connection attempt failed or the last stream ended.
    pub last_link_error: Mutex<String>,
    /// Shortest sampling interval the aggregator currently asks for (0: none).
    pub interval_hint_ms: AtomicU64,
    /// The sampling interval in force, in milliseconds.
    pub interval_ms: AtomicU64,
}

/// What the pipeline needs to know.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Aggregator addresses, tried in order.
    pub aggregators: Vec<String>,
    /// The `Hello` sent on every stream.
    pub hello: Hello,
    /// Most samples per batch.
    pub batch_max_samples: usize,
    /// Longest a sample waits for company; zero sends at once.
    pub flush_interval: Duration,
    /// Spool bound in bytes.
    pub spool_max_bytes: usize,
    /// Acknowledged samples kept for resending to a fresh aggregator.
    pub retain_acked_samples: u64,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Transport settings.
    pub link: LinkSettings,
    /// Bounded wait for acks on shutdown.
    pub drain_timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Link, LinkError>> + Send>>;

/// Polls `f` if there is one; otherwise never completes.
async fn maybe<F: Future>(f: Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Runs until `shutdown` fires (or the sample channel closes) and the drain
/// ends: the sample channel closed and every batch acknowledged, or the
/// drain timeout.
pub async fn run(
    mut settings: PipelineSettings,
    mut samples: mpsc::Receiver<Sample>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) {
    let mut spool = Spool::new(settings.spool_max_bytes, settings.retain_acked_samples);
    let mut pending: Vec<Sample> = Vec::with_capacity(settings.batch_max_samples);
    let mut flush_at: Option<Instant> = None;
    let mut next_batch_seq: u64 = 1;

    let mut address_index = 0usize;
    let mut link_tx: Option<mpsc::Sender<AgentMessage>> = None;
    let mut link_rx: Option<tonic::Streaming<hostpulse_proto::v1::AggregatorMessage>> = None;
    let mut link_address = String::new();
    let mut connecting: Option<Connecting> = None;
    let mut retry_at: Option<Instant> = Some(Instant::now());
    let mut drain_deadline: Option<Instant> = None;
    let mut samples_open = true;

    loop {
        // Shutting down ends once the sampler has stopped (its channel is
        // closed, so a sample it was taking when the signal came is in) and
        // the aggregator has acknowledged everything, or at the drain deadline.
        if drain_deadline.is_some() && !samples_open && pending.is_empty() && spool.unacked() == 0 {
            tracing::info!(
                last_sample_seq = status.last_sample_seq.load(Ordering::Relaxed),
                samples_taken = status.samples_taken.load(Ordering::Relaxed),
                "every batch acknowledged; exiting"
            );
            break;
        }
        let sending = link_tx.is_some() && spool.has_unsent();
        tokio::select! {
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + settings.drain_timeout);
                cut_batch(&mut pending, &mut next_batch_seq, &mut spool, &status);
                flush_at = None;
                tracing::info!(batches = spool.unacked(), "shutting down: sending what is pending");
            }
            _ = maybe(drain_deadline.map(sleep_until)) => {
                tracing::warn!(
                    unacknowledged = spool.unacked(),
                    last_sample_seq = status.last_sample_seq.load(Ordering::Relaxed),
                    samples_taken = status.samples_taken.load(Ordering::Relaxed),
                    "drain timeout; exiting with batches unacknowledged"
                );
                break;
            }
            sample = samples.recv(), if samples_open => match sample {
                Some(sample) => {
                    status.last_sample_seq.store(sample.seq, Ordering::Relaxed);
                    status.samples_taken.fetch_add(1, Ordering::Relaxed);
                    pending.push(sample);
                    if pending.len() >= settings.batch_max_samples || settings.flush_interval.is_zero() {
                        // While disconnected, let samples gather into full batches.
                        if link_tx.is_some() || pending.len() >= settings.batch_max_samples {
                            cut_batch(&mut pending, &mut next_batch_seq, &mut spool, &status);
                            flush_at = None;
                        }
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + settings.flush_interval);
                    }
                }
                None => {
                    samples_open = false;
                    cut_batch(&mut pending, &mut next_batch_seq, &mut spool, &status);
                    if drain_deadline.is_none() {
                        drain_deadline = Some(Instant::now() + settings.drain_timeout);
                    }
                }
            },
            _ = maybe(flush_at.map(sleep_until)) => {
                flush_at = None;
                cut_batch(&mut pending, &mut next_batch_seq, &mut spool, &status);
            }
            _ = maybe(retry_at.map(sleep_until)), if connecting.is_none() && link_tx.is_none() => {
                retry_at = None;
                let address = settings.aggregators[address_index % settings.aggregators.len()].clone();
                tracing::debug!(%address, "connecting");
                connecting = Some(Box::pin(link::connect(address, settings.hello.clone(), settings.link.clone())));
            }
            result = maybe(connecting.as_mut()) => {
                connecting = None;
                match result {
                    Ok(link) => {
                        let welcome = &link.welcome;
                        tracing::info!(address = %link.address, host = %welcome.host, last_seq = welcome.last_seq, known = welcome.known, "connected");
                        // A fresh aggregator (not `known`) is given the recent past too.
                        spool.start_stream(welcome.known.then_some(welcome.last_seq));
                        settings.backoff.reset();
                        link_address = link.address;
                        link_tx = Some(link.tx);
                        link_rx = Some(link.inbound);
                        status.connected.store(true, Ordering::Relaxed);
                        status.connections.fetch_add(1, Ordering::Relaxed);
                        // Samples that gathered while disconnected go out now.
                        cut_batch(&mut pending, &mut next_batch_seq, &mut spool, &status);
                    }
                    Err(e) => {
                        let delay = settings.backoff.next_delay();
                        tracing::warn!(cause = %e, retry_in_ms = delay.as_millis() as u64, "aggregator unreachable");
                        status.failed_connects.fetch_add(1, Ordering::Relaxed);
                        set_last_error(&status, e.to_string());
                        address_index += 1;
                        retry_at = Some(Instant::now() + delay);
                    }
                }
            }
            permit = maybe(link_tx.clone().filter(|_| sending).map(|tx| tx.reserve_owned())) => {
                match (permit, spool.next_unsent()) {
                    (Ok(permit), Some(b)) => {
                        permit.send(AgentMessage { kind: Some(agent_message::Kind::Batch(Batch {
                            seq: b.seq,
                            sample_count: b.sample_count,
                            samples: b.payload,
                        }))});
                    }
                    (Ok(_), None) => {}
                    (Err(_), _) => {
                        // The request stream is gone; the inbound side reports why.
                        link_tx = None;
                    }
                }
            }
            message = maybe(link_rx.as_mut().map(|rx| rx.message())) => {
                match message {
                    Ok(Some(hostpulse_proto::v1::AggregatorMessage { kind: Some(aggregator_message::Kind::Ack(ack)) })) => {
                        spool.ack_through(ack.seq);
                        status.acked_batch_seq.store(ack.seq, Ordering::Relaxed);
                        let hint = u64::from(ack.min_interval_ms);
                        if status.interval_hint_ms.swap(hint, Ordering::Relaxed) != hint {
                            tracing::info!(min_interval_ms = hint, "aggregator asks for a sampling interval of at least this (0: back to normal)");
                        }
                    }
                    Ok(Some(other)) => tracing::debug!(?other, "ignoring unexpected message"),
                    Ok(None) | Err(_) => {
                        match &message {
                            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                                // Kept, the refused batch would be resent forever.
                                tracing::error!(address = %link_address, cause = %s.message(), "aggregator refused a batch; dropping it");
                                if let Some(seq) = spool.discard_refused() {
                                    tracing::warn!(seq, "refused batch given up");
                                }
                            }
                            Err(s) => tracing::warn!(address = %link_address, status = %s, "stream ended"),
                            _ => tracing::warn!(address = %link_address, "aggregator closed the stream"),
                        }
                        set_last_error(&status, match &message {
                            Err(s) => format!("{link_address}: stream ended: {s}"),
                            _ => format!("{link_address}: aggregator closed the stream"),
                        });
                        spool.end_stream();
                        link_tx = None;
                        link_rx = None;
                        status.connected.store(false, Ordering::Relaxed);
                        address_index += 1;
                        retry_at = Some(Instant::now() + settings.backoff.next_delay());
                    }
                }
            }
        }
        status
            .spooled_batches
            .store(spool.unacked() as u64, Ordering::Relaxed);
        status
            .spooled_bytes
            .store(spool.bytes() as u64, Ordering::Relaxed);
        status
            .dropped_batches
            .store(spool.dropped_batches, Ordering::Relaxed);
        status
            .dropped_samples
            .store(spool.dropped_samples, Ordering::Relaxed);
        status
            .unconfirmed_batches
            .store(spool.unconfirmed_batches, Ordering::Relaxed);
        status
            .unconfirmed_samples
            .store(spool.unconfirmed_samples, Ordering::Relaxed);
    }
    status.connected.store(false, Ordering::Relaxed);
}

fn set_last_error(status: &AgentStatus, cause: String) {
    *status.last_link_error.lock().expect("status lock") = cause;
}

/// Moves pending samples into a new batch at the end of the spool.
fn cut_batch(
    pending: &mut Vec<Sample>,
    next_batch_seq: &mut u64,
    spool: &mut Spool,
    status: &AgentStatus,
) {
    if pending.is_empty() {
        return;
    }
    let seq = *next_batch_seq;
    *next_batch_seq += 1;
    spool.push(SpooledBatch {
        seq,
        sample_count: pending.len() as u32,
        payload: Bytes::from(encode_batch(pending)),
    });
    pending.clear();
    status
        .spooled_batches
        .store(spool.unacked() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use hostpulse_proto::v1::ingest_server::{Ingest, IngestServer};
    use hostpulse_proto::v1::{Ack, AggregatorMessage, Welcome};
    use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
    use tonic::codec::CompressionEncoding;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// An aggregator reduced to the protocol: welcomes every stream, acks
    /// every batch, and keeps the seqs of the samples it was sent.
    #[derive(Clone, Default)]
    struct AckingIngest {
        seqs: Arc<Mutex<Vec<u64>>>,
    }

    #[tonic::async_trait]
    impl Ingest for AckingIngest {
        type StreamStream = ReceiverStream<Result<AggregatorMessage, Status>>;

        async fn stream(
            &self,
            request: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Self::StreamStream>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let welcome = aggregator_message::Kind::Welcome(Welcome {
                last_seq: 0,
                host: "drainer".into(),
                known: false,
            });
            tx.try_send(Ok(AggregatorMessage {
                kind: Some(welcome),
            }))
            .expect("room");
            let seqs = self.seqs.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    let Some(agent_message::Kind::Batch(b)) = m.kind else {
                        continue;
                    };
                    let samples = hostpulse_proto::decode_batch(&b.samples, b.sample_count, 1000)
                        .expect("a valid batch");
                    seqs.lock()
                        .expect("lock")
                        .extend(samples.iter().map(|s| s.seq));
                    let ack = aggregator_message::Kind::Ack(Ack {
                        seq: b.seq,
                        min_interval_ms: 0,
                    });
                    if tx
                        .send(Ok(AggregatorMessage { kind: Some(ack) }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    async fn start_ingest() -> (AckingIngest, SocketAddr) {
        let ingest = AckingIngest::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = IngestServer::new(ingest.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (ingest, addr)
    }

    fn settings(address: String, drain_timeout: Duration) -> PipelineSettings {
        PipelineSettings {
            aggregators: vec![address],
            hello: Hello {
                agent_id: "drainer".into(),
                hostname: "drainer".into(),
                schema_version: hostpulse_proto::SCHEMA_VERSION,
                interval_ms: 1000,
                epoch: 1,
                ..Hello::default()
            },
            batch_max_samples: 10,
            flush_interval: Duration::ZERO,
            spool_max_bytes: 1 << 20,
            retain_acked_samples: 0,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
            link: LinkSettings {
                connect_timeout: Duration::from_secs(5),
                keepalive_interval: Duration::from_secs(5),
                keepalive_timeout: Duration::from_secs(5),
                token: None,
                ca_pem: None,
                tls_domain: None,
            },
            drain_timeout,
        }
    }

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            timestamp_ms: 1_700_000_000_000 + seq as i64,
            ..Sample::default()
        }
    }

    async fn wait_for(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM can come while the sampler is taking a sample: with everything
    /// before it acknowledged, the pipeline must still wait for that sample
    /// (until the sampler closes its channel) and deliver it before exiting,
    /// well before the drain timeout.
    #[tokio::test]
    async fn a_sample_taken_as_shutdown_begins_is_delivered_before_exiting() {
        let (ingest, addr) = start_ingest().await;
        let drain_timeout = Duration::from_secs(10);
        let (tx, rx) = mpsc::channel(4);
        let status = Arc::new(AgentStatus::default());
        let shutdown = CancellationToken::new();
        let pipeline = tokio::spawn(run(
            settings(format!("http://{addr}"), drain_timeout),
            rx,
            status.clone(),
            shutdown.clone(),
        ));
        wait_for("a connection", || status.connected.load(Ordering::Relaxed)).await;
        tx.send(sample(101)).await.expect("pipeline running");
        wait_for("the first batch acknowledged", || {
            status.acked_batch_seq.load(Ordering::Relaxed) == 1
        })
        .await;

        // The signal: nothing pending, nothing unacknowledged.
        let started = Instant::now();
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The sampler finishes the sample it was taking, then stops.
        let late = tx.send(sample(102)).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), pipeline)
            .await
            .expect("the pipeline exits once the last sample is acknowledged")
            .expect("pipeline task");

        assert!(
            late.is_ok(),
            "the pipeline exited before the sampler stopped"
        );
        assert_eq!(*ingest.seqs.lock().expect("lock"), vec![101, 102]);
        assert_eq!(status.samples_taken.load(Ordering::Relaxed), 2);
        assert_eq!(status.spooled_batches.load(Ordering::Relaxed), 0);
        assert!(
            started.elapsed() < drain_timeout / 2,
            "waited for the drain timeout"
        );
    }
}
