//! The benchmark's own WebSocket servers, to measure the aggregator's
//! fan-out against:
//!
//! * the naive baseline (`--baseline`), written the straightforward way:
//!   every client's own loop encodes each update to JSON again for itself
//!   and flushes one frame per update;
//! * the tuned reference (`--reference`), a minimal axum 0.8 server done
//!   well: each update encoded once and shared, one task per connection that
//!   feeds everything it has then flushes once, 4 KiB buffers.
//!
//! Both take the same agent streams as the aggregator (gRPC `Hello` then
//! `Welcome`, each `Batch` then its `Ack`) and turn each sample's CPU into a
//! `host.<h>.cpu` update. Nothing else: no history, batching, conflation,
//! limits or auth. Each runs as a process of its own (`hostpulse-bench
//! --naive-server` or `--reference-server`, started by the benchmark), so
//! its CPU and memory are measured as the aggregator's are.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures_util::SinkExt;
use hostpulse_proto::v1::ingest_server::{Ingest, IngestServer};
use hostpulse_proto::v1::{
    Ack, AgentMessage, AggregatorMessage, Welcome, agent_message, aggregator_message,
};
use hostpulse_proto::{Cpu, decode_batch};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Updates a client may fall behind before it misses some.
const BACKLOG: usize = 4096;

/// One update, serialised by every client for itself (naive), or once
/// (`json`, tuned).
#[derive(Debug, Serialize)]
struct Update {
    topic: String,
    seq: u64,
    timestamp: String,
    received: String,
    payload: Cpu,
    #[serde(skip)]
    json: Option<Utf8Bytes>,
}

type Updates = broadcast::Sender<Arc<Update>>;

/// Serves until killed; prints the line the benchmark waits for. `tuned`:
/// the reference server rather than the naive one.
pub(crate) fn run(tuned: bool) -> anyhow::Result<()> {
    // Worker threads: TOKIO_WORKER_THREADS, as for the aggregator.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (updates, _) = broadcast::channel::<Arc<Update>>(BACKLOG);
        let ingest = TcpListener::bind("127.0.0.1:0").await?;
        let http = TcpListener::bind("127.0.0.1:0").await?;
        eprintln!(
            "aggregator listening ingest_addr={} http_addr={} (naive baseline)",
            ingest.local_addr()?,
            http.local_addr()?
        );
        let grpc = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(IngestServer::new(Naive {
                updates: updates.clone(),
                tuned,
            }))
            .serve_with_incoming(TcpListenerStream::new(ingest));
        let app = if tuned {
            Router::new().route("/ws", get(upgrade_tuned))
        } else {
            Router::new().route("/ws", get(upgrade))
        }
        .with_state(updates);
        let http = http.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::try_join!(async { grpc.await.map_err(anyhow::Error::from) }, async {
            axum::serve(http, app).await.map_err(anyhow::Error::from)
        },)?;
        Ok(())
    })
}

/// The gRPC side: agents' samples become updates.
struct Naive {
    updates: Updates,
    /// Encode each update once, here.
    tuned: bool,
}

#[tonic::async_trait]
impl Ingest for Naive {
    type StreamStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(AgentMessage {
            kind: Some(agent_message::Kind::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let host: String = hello
            .hostname
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' | '_' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        let (tx, rx) = mpsc::channel(16);
        let welcome = Welcome {
            last_seq: 0,
            host: host.clone(),
            known: true,
            ..Welcome::default()
        };
        let _ = tx.try_send(Ok(AggregatorMessage {
            kind: Some(aggregator_message::Kind::Welcome(welcome)),
        }));
        let updates = self.updates.clone();
        let tuned = self.tuned;
        tokio::spawn(async move {
            let topic = format!("host.{host}.cpu");
            while let Ok(Some(message)) = inbound.message().await {
                let Some(agent_message::Kind::Batch(batch)) = message.kind else {
                    continue;
                };
                let Ok(samples) = decode_batch(&batch.samples, batch.sample_count, usize::MAX)
                else {
                    break;
                };
                let received = rfc3339(SystemTime::now());
                for s in samples {
                    let Some(cpu) = s.cpu else { continue };
                    let at = UNIX_EPOCH + Duration::from_millis(s.timestamp_ms.max(0) as u64);
                    let mut update = Update {
                        topic: topic.clone(),
                        seq: s.seq,
                        timestamp: rfc3339(at),
                        received: received.clone(),
                        payload: cpu,
                        json: None,
                    };
                    if tuned {
                        update.json = serde_json::to_string(&update).ok().map(Utf8Bytes::from);
                    }
                    let _ = updates.send(Arc::new(update));
                }
                let ack = Ack {
                    seq: batch.seq,
                    min_interval_ms: 0,
                };
                let ack = AggregatorMessage {
                    kind: Some(aggregator_message::Kind::Ack(ack)),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn upgrade(ws: WebSocketUpgrade, State(updates): State<Updates>) -> axum::response::Response {
    ws.on_upgrade(move |socket| client(socket, updates.subscribe()))
}

async fn upgrade_tuned(
    ws: WebSocketUpgrade,
    State(updates): State<Updates>,
) -> axum::response::Response {
    ws.read_buffer_size(4 << 10)
        .write_buffer_size(4 << 10)
        .on_upgrade(move |socket| client_tuned(socket, updates.subscribe()))
}

/// The client's first message: the topic or pattern it follows (answered).
async fn subscription(socket: &mut WebSocket) -> Option<String> {
    let pattern = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => {
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) => break v["topic"].as_str().unwrap_or_default().to_string(),
                    Err(_) => return None,
                }
            }
            Some(Ok(_)) => continue,
            _ => return None,
        }
    };
    let reply = serde_json::json!({"topic": "$sys.subscribed", "payload": {"pattern": pattern}});
    socket
        .send(Message::Text(reply.to_string().into()))
        .await
        .ok()?;
    Some(pattern)
}

/// A tuned client: every update it has is fed (the shared JSON, a
/// reference-count bump), then one flush.
async fn client_tuned(mut socket: WebSocket, mut updates: broadcast::Receiver<Arc<Update>>) {
    let Some(pattern) = subscription(&mut socket).await else {
        return;
    };
    loop {
        tokio::select! {
            update = updates.recv() => {
                let mut next = update;
                loop {
                    match next {
                        Ok(u) if matches(&pattern, &u.topic) => {
                            let Some(json) = u.json.clone() else { return };
                            if socket.feed(Message::Text(json)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = match updates.try_recv() {
                        Ok(u) => Ok(u),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(_) => break,
                    };
                }
                if socket.flush().await.is_err() {
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// One client: its first message names the topic or pattern; then every
/// matching update is serialised again and written with a flush of its own.
async fn client(mut socket: WebSocket, mut updates: broadcast::Receiver<Arc<Update>>) {
    let Some(pattern) = subscription(&mut socket).await else {
        return;
    };
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(u) if matches(&pattern, &u.topic) => {
                    let Ok(text) = serde_json::to_string(&*u) else { continue };
                    // `send` flushes: one write per update per client.
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `*` matches one segment, `>` the rest.
fn matches(pattern: &str, topic: &str) -> bool {
    let (mut p, mut t) = (pattern.split('.'), topic.split('.'));
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_the_aggregator_s() {
        assert!(matches("host.*.cpu", "host.a.cpu"));
        assert!(matches("host.>", "host.a.cpu"));
        assert!(!matches("host.*.cpu", "host.a.memory"));
        assert!(!matches("host.*", "host.a.cpu"));
        assert!(matches("host.idle.cpu", "host.idle.cpu"));
    }
}
