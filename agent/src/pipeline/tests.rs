//! Tests of the send loop against an aggregator reduced to the protocol.

use std::net::SocketAddr;
use std::sync::Mutex;

use hostpulse_proto::v1::ingest_server::{Ingest, IngestServer};
use hostpulse_proto::v1::{Ack, AggregatorMessage, Welcome};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use super::*;

/// An aggregator reduced to the protocol: welcomes every stream, acks
/// every batch, and keeps the seqs of the samples it was sent. With a
/// `limit`, larger messages end the stream as tonic ends them
/// (`OUT_OF_RANGE`), and `announce` says the limit in `Welcome`.
#[derive(Clone, Default)]
struct AckingIngest {
    seqs: Arc<Mutex<Vec<u64>>>,
    limit: Option<usize>,
    announce: bool,
    streams: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl Ingest for AckingIngest {
    type StreamStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        *self.streams.lock().expect("lock") += 1;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let said = self.limit.filter(|_| self.announce).unwrap_or(0);
        let welcome = aggregator_message::Kind::Welcome(Welcome {
            last_seq: 0,
            host: "drainer".into(),
            known: false,
            max_message_bytes: said as u64,
            max_samples_per_batch: if said > 0 { 1000 } else { 0 },
        });
        tx.try_send(Ok(AggregatorMessage {
            kind: Some(welcome),
        }))
        .expect("room");
        let seqs = self.seqs.clone();
        tokio::spawn(async move {
            loop {
                let m = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
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
    let addr = serve(ingest.clone(), "127.0.0.1:0").await;
    (ingest, addr)
}

async fn serve(ingest: AckingIngest, at: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(at).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut service = IngestServer::new(ingest.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    if let Some(limit) = ingest.limit {
        service = service.max_decoding_message_size(limit);
    }
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
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
        batch_max_bytes: 1 << 20,
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

/// A sample listing `processes` processes of about 130 bytes each.
fn sized(seq: u64, processes: usize) -> Sample {
    Sample {
        processes: Some(hostpulse_proto::Processes {
            count: processes as u32,
            top_cpu: vec![
                hostpulse_proto::Process {
                    pid: 1,
                    start_time: 1,
                    name: "p".repeat(100),
                    cpu_pct: 0.0,
                    memory_bytes: 0,
                };
                processes
            ],
            top_memory: vec![],
            others: Default::default(),
        }),
        ..sample(seq)
    }
}

/// A backlog gathered while the aggregator was down (a 50-sample batch,
/// then 10 more and one sample that can never fit), delivered to an
/// aggregator whose limit it exceeds: every sample but that one arrives,
/// once and in order, within a bounded time.
async fn backlog_over_the_limit_is_delivered(announce: bool) -> (Arc<AgentStatus>, usize) {
    const LIMIT: usize = 3000;
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let mut s = settings(format!("http://{addr}"), Duration::from_secs(5));
    s.batch_max_samples = 50;
    let (tx, rx) = mpsc::channel(128);
    let status = Arc::new(AgentStatus::default());
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(run(s, rx, status.clone(), shutdown.clone()));
    let huge = 1031;
    for seq in 1001..=1061 {
        // About 160 bytes a sample, 8 KB a full batch; the giant 13 KB.
        let processes = if seq == huge { 100 } else { 1 };
        tx.send(sized(seq, processes))
            .await
            .expect("pipeline running");
    }
    wait_for("a full batch spooled", || {
        status.spooled_batches.load(Ordering::Relaxed) == 1
    })
    .await;

    let ingest = AckingIngest {
        limit: Some(LIMIT),
        announce,
        ..AckingIngest::default()
    };
    serve(ingest.clone(), &addr.to_string()).await;
    let expected: Vec<u64> = (1001..=1061).filter(|s| *s != huge).collect();
    wait_for("every sample that fits delivered", || {
        ingest.seqs.lock().expect("lock").len() >= expected.len()
    })
    .await;
    shutdown.cancel();
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), pipeline)
        .await
        .expect("drained")
        .expect("pipeline task");
    assert_eq!(*ingest.seqs.lock().expect("lock"), expected);
    assert_eq!(status.oversized_samples.load(Ordering::Relaxed), 1);
    assert_eq!(status.dropped_samples.load(Ordering::Relaxed), 0);
    assert!(status.split_batches.load(Ordering::Relaxed) >= 1);
    let streams = *ingest.streams.lock().expect("lock");
    (status, streams)
}

#[tokio::test]
async fn batches_are_cut_to_the_limits_the_aggregator_announces() {
    let (status, streams) = backlog_over_the_limit_is_delivered(true).await;
    assert_eq!(streams, 1, "nothing was refused");
    assert_eq!(status.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_batch_refused_as_too_large_is_split_until_it_fits_and_a_lone_giant_is_given_up() {
    let (status, streams) = backlog_over_the_limit_is_delivered(false).await;
    // Each refusal costs one stream: a few halvings, and the giant once.
    assert!(streams > 1 && streams < 12, "{streams} streams");
    assert_eq!(status.connections.load(Ordering::Relaxed) as usize, streams);
}
