//! A hand-driven agent over a real gRPC stream: sends exactly the messages a
//! test chooses (valid, hostile or at a rate no real agent reaches).

use hostpulse_proto::v1::{
    AgentMessage, AggregatorMessage, Batch, Hello, agent_message, aggregator_message,
    ingest_client::IngestClient,
};
use hostpulse_proto::{
    Load, MAX_NAME_BYTES, MAX_TOP_PROCESSES, Process, ProcessRollup, Processes, Sample,
    encode_batch,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::WAIT;

/// A `Hello` for `host` (agent id `fake-<host>`).
pub fn hello(host: &str, epoch: u64) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: format!("fake-{host}"),
            hostname: host.into(),
            version: "0.0.0-test".into(),
            labels: Default::default(),
            epoch,
            schema_version: hostpulse_proto::SCHEMA_VERSION,
            interval_ms: 50,
            instance: 0,
        })),
    }
}

/// A `Batch` with raw payload bytes and a declared count.
pub fn raw_batch(seq: u64, count: u32, bytes: Vec<u8>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Batch(Batch {
            seq,
            sample_count: count,
            samples: bytes.into(),
        })),
    }
}

/// A valid `Batch` holding `samples`.
pub fn batch(seq: u64, samples: &[Sample]) -> AgentMessage {
    raw_batch(seq, samples.len() as u32, encode_batch(samples))
}

/// A valid sample with a load average and `processes` listed processes
/// (about 100 bytes of JSON each, to make large updates). The payload
/// bounds allow [`MAX_TOP_PROCESSES`] per list: past that, the lists hold
/// that many with names longer by as much as the rest would have taken, up
/// to [`MAX_NAME_BYTES`] (so the update keeps growing, to about 65 KB).
pub fn sample(seq: u64, processes: usize) -> Sample {
    let listed = processes.min(MAX_TOP_PROCESSES);
    let base = "process-000000".len();
    let pad = match processes.checked_sub(listed) {
        Some(rest) if rest > 0 => (rest * 95 / listed).min(MAX_NAME_BYTES - base),
        _ => 0,
    };
    let list: Vec<Process> = (0..listed as u32)
        .map(|pid| Process {
            pid,
            start_time: 1_795_000_000,
            name: format!("process-{pid:06}{}", "x".repeat(pad)),
            cpu_pct: 1.5,
            memory_bytes: 1 << 20,
        })
        .collect();
    Sample {
        seq,
        timestamp_ms: 1_795_000_000_000 + seq as i64,
        cpu: None,
        memory: None,
        load: Some(Load {
            one: 0.5,
            five: 0.25,
            fifteen: 0.125,
        }),
        processes: (processes > 0).then(|| Processes {
            count: processes as u32,
            top_cpu: list.clone(),
            top_memory: list,
            others: ProcessRollup::default(),
        }),
        ..Sample::default()
    }
}

/// An open stream.
pub struct FakeAgent {
    /// Outgoing messages.
    pub tx: mpsc::Sender<AgentMessage>,
    /// Replies.
    pub inbound: tonic::Streaming<AggregatorMessage>,
}

/// Opens a stream to `url` and sends `first` messages; returns the stream,
/// or the status that refused it at once.
pub async fn open(url: &str, first: Vec<AgentMessage>) -> Result<FakeAgent, tonic::Status> {
    open_as(url, None, first).await
}

/// Like [`open`], presenting `token` as a bearer token.
pub async fn open_as(
    url: &str,
    token: Option<&str>,
    first: Vec<AgentMessage>,
) -> Result<FakeAgent, tonic::Status> {
    let mut client = IngestClient::connect(url.to_string())
        .await
        .expect("connect to ingest");
    let (tx, rx) = mpsc::channel(64);
    for m in first {
        tx.send(m).await.expect("queue message");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    let inbound = client.stream(request).await?.into_inner();
    Ok(FakeAgent { tx, inbound })
}

/// The status a stream opened with `token` and `messages` ends with.
pub async fn refusal_of(
    url: &str,
    token: Option<&str>,
    messages: Vec<AgentMessage>,
) -> tonic::Status {
    match open_as(url, token, messages).await {
        Err(status) => status,
        Ok(mut agent) => agent.refusal().await,
    }
}

impl FakeAgent {
    /// Connects as `host` and waits for `Welcome`.
    pub async fn connect(url: &str, host: &str) -> Self {
        let mut agent = open(url, vec![hello(host, 1)])
            .await
            .expect("stream accepted");
        match tokio::time::timeout(WAIT, agent.inbound.message()).await {
            Ok(Ok(Some(AggregatorMessage {
                kind: Some(aggregator_message::Kind::Welcome(_)),
            }))) => agent,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Sends a message.
    pub async fn send(&self, m: AgentMessage) {
        self.tx.send(m).await.expect("stream open");
    }

    /// Waits for the `Ack` of batch `seq` (skipping earlier acks).
    pub async fn acked(&mut self, seq: u64) {
        self.acks_through(seq).await;
    }

    /// Every `Ack` up to the one of batch `seq`, in order.
    pub async fn acks_through(&mut self, seq: u64) -> Vec<hostpulse_proto::v1::Ack> {
        let mut acks = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message()).await {
                Ok(Ok(Some(AggregatorMessage {
                    kind: Some(aggregator_message::Kind::Ack(a)),
                }))) => {
                    let last = a.seq >= seq;
                    acks.push(a);
                    if last {
                        return acks;
                    }
                }
                Ok(Ok(Some(_))) => continue,
                other => panic!("expected Ack {seq}, got {other:?}"),
            }
        }
    }

    /// The status that ends the stream (after any Welcome).
    pub async fn refusal(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("an answer in time")
            {
                Ok(Some(AggregatorMessage {
                    kind: Some(aggregator_message::Kind::Welcome(_)),
                })) => continue,
                Ok(other) => panic!("expected a refusal, got {other:?}"),
                Err(status) => return status,
            }
        }
    }
}
