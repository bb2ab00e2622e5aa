//! `/ws`: the WebSocket upgrade and one task per connection.
//!
//! Each connection is one task that `select!`s (biased) between shutdown, its
//! outbox, a batching/throttle timer, the socket and a heartbeat tick. At each
//! wake-up it drains everything due and writes it with one flush (or one
//! `batch.update` frame when the client asked for a batching window), so many
//! updates share one system call. Buffers are sized for thousands of mostly
//! idle connections (tungstenite's 128 KiB defaults would cost that much per
//! connection).
//!
//! Connect-time options, as query parameters: `encoding` (`json`, `msgpack`,
//! `msgpack+deflate`; or the subprotocols in [`crate::encoding::SUBPROTOCOLS`])
//! and `batch_ms` (0 = a frame per update; otherwise updates are gathered for
//! up to that long and sent as one `batch.update` frame).

pub mod frames;
pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{WsConfig, ms};
use crate::encoding::{Encoding, SUBPROTOCOLS};
use crate::hub::{Command, ConnId, HubHandle};
use crate::outbox::{Item, Outbox, OutboxStats};
use protocol::{Request, error_message, pong_message};

/// Close codes used by the server.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Heartbeat lost.
    pub const POLICY: u16 = 1008;
    /// A message larger than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// Client too slow: reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Longest batching window a client may ask for.
pub const MAX_BATCH_MS: u64 = 10_000;

/// Shared state of the WebSocket endpoint.
#[derive(Debug)]
pub struct WsState {
    /// The hub.
    pub hub: HubHandle,
    /// Limits and timers.
    pub config: WsConfig,
    /// Fires once on shutdown.
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for their close handshakes
    /// (upgraded connections are no longer tracked by the HTTP server).
    pub tasks: TaskTracker,
    /// Counters of every connection's outbox.
    pub outbox_stats: Arc<OutboxStats>,
    next_id: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
}

impl WsState {
    /// State for the `/ws` route.
    pub fn new(
        hub: HubHandle,
        config: WsConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub,
            config,
            shutdown,
            tasks,
            outbox_stats: Arc::default(),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
        })
    }
}

/// Read buffer per connection: requests are small, and tungstenite keeps this
/// buffer resident (zero-filled) for every connection, idle or not.
const READ_BUFFER: usize = 1 << 10;
/// Write buffer: frames are gathered up to this size before a write.
const WRITE_BUFFER: usize = 4 << 10;
/// Wait for the peer's close reply at most this long.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Connect-time options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    /// `json`, `msgpack` or `msgpack+deflate`.
    pub encoding: Option<String>,
    /// Batching window in milliseconds.
    pub batch_ms: Option<u64>,
}

/// The `/ws` handler.
pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<WsState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    options: Result<Query<ConnectOptions>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(options) = match options {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let query_encoding = match options.encoding.as_deref().map(Encoding::from_name) {
        None => None,
        Some(Some(e)) => Some(e),
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                "unknown encoding: use json, msgpack or msgpack+deflate\n",
            )
                .into_response();
        }
    };
    let batch = options.batch_ms.unwrap_or(0);
    if batch > MAX_BATCH_MS {
        return (
            StatusCode::BAD_REQUEST,
            format!("batch_ms may be at most {MAX_BATCH_MS}\n"),
        )
            .into_response();
    }
    let max = state.config.max_message_bytes;
    ws.protocols(SUBPROTOCOLS)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + state.config.queue_max_bytes.max(max) * 2)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let encoding = socket
                .protocol()
                .and_then(|p| p.to_str().ok())
                .and_then(Encoding::from_subprotocol)
                .or(query_encoding)
                .unwrap_or_default();
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let tasks = state.tasks.clone();
            let session = Session::new(id, peer, state, encoding, Duration::from_millis(batch));
            tasks.track_future(session.run(socket))
        })
}

struct Session {
    id: ConnId,
    peer: SocketAddr,
    state: Arc<WsState>,
    outbox: Arc<Outbox>,
    subscriptions: Vec<String>,
    encoding: Encoding,
    batch: Duration,
}

/// How a session ends.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// The server closes with this code and reason and waits (bounded) for
    /// the peer's close reply.
    Close(u16, &'static str),
    /// The peer is not keeping up: try to send the close frame for at most
    /// the given time (it may be stuck behind unread data), and go.
    Abandon(u16, &'static str, Duration),
}

/// A client still lagging after the grace period: 1013 with a retry hint.
/// The close frame waits behind what the client has not read yet, so it gets
/// a while to go through.
const TOO_SLOW_END: End = End::Abandon(
    close::TRY_AGAIN_LATER,
    "too slow: fell behind past the grace period; reconnect and resume with since",
    CLOSE_WAIT,
);

impl Session {
    fn new(
        id: ConnId,
        peer: SocketAddr,
        state: Arc<WsState>,
        encoding: Encoding,
        batch: Duration,
    ) -> Self {
        let outbox = Outbox::new(
            state.config.queue_max_bytes,
            ms(state.config.slow_grace_ms),
            state.outbox_stats.clone(),
        );
        Self {
            id,
            peer,
            state,
            outbox,
            subscriptions: Vec::new(),
            encoding,
            batch,
        }
    }

    #[tracing::instrument(name = "ws", skip_all, fields(conn = self.id, peer = %self.peer))]
    async fn run(mut self, mut socket: WebSocket) {
        self.state.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            encoding = self.encoding.name(),
            batch_ms = self.batch.as_millis() as u64,
            "connected"
        );
        let end = self.serve(&mut socket).await;
        match end {
            End::Gone => {}
            End::Close(code, reason) => {
                tracing::debug!(code, reason, "closing");
                close_politely(&mut socket, code, reason, CLOSE_WAIT).await;
            }
            End::Abandon(code, reason, send_wait) => {
                tracing::info!(code, reason, "closing a client that does not keep up");
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ =
                    tokio::time::timeout(send_wait, socket.send(Message::Close(Some(frame)))).await;
            }
        }
        let _ = self
            .state
            .hub
            .send(Command::Disconnect { conn: self.id })
            .await;
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!("disconnected");
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> End {
        let state = self.state.clone();
        let config = &state.config;
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + ms(config.ping_interval_ms),
            ms(config.ping_interval_ms),
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_timeout = ms(config.ping_timeout_ms);
        let mut last_heard = Instant::now();
        let mut items: Vec<Item> = Vec::new();
        // When to drain next: the end of a batching window, or when a
        // throttled update falls due.
        let mut flush_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = state.shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
                _ = self.outbox.doomed() => return TOO_SLOW_END,
                _ = self.outbox.notified() => {
                    let window_end = Instant::now() + self.batch;
                    flush_at = Some(flush_at.map_or(window_end, |f| f.min(window_end)));
                }
                _ = sleep_until_opt(flush_at) => {}
                message = socket.recv() => {
                    last_heard = Instant::now();
                    match message {
                        None => return End::Gone,
                        Some(Err(e)) => {
                            if is_too_big(&e) {
                                tracing::info!(cause = %e, "message over the size limit");
                                return End::Close(close::TOO_BIG, "message too big");
                            }
                            return End::Gone;
                        }
                        Some(Ok(message)) => {
                            if let Some(end) = self.on_message(message).await {
                                return end;
                            }
                        }
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > ping_timeout {
                        tracing::info!(timeout_ms = config.ping_timeout_ms, "no answer to pings; disconnecting");
                        return End::Abandon(close::POLICY, "heartbeat timeout", Duration::from_millis(100));
                    }
                    let ping = socket.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(ms(config.write_timeout_ms), ping).await, Ok(Ok(()))) {
                        return End::Gone;
                    }
                    continue;
                }
            }
            if flush_at.is_some_and(|f| f > Instant::now()) {
                continue;
            }
            flush_at = self.outbox.drain_into(&mut items);
            if !items.is_empty() {
                let write = self.write(socket, &mut items);
                tokio::select! {
                    biased;
                    _ = self.outbox.doomed() => return TOO_SLOW_END,
                    r = tokio::time::timeout(ms(config.write_timeout_ms), write) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::Gone,
                        Err(_) => {
                            tracing::info!("client stopped reading; disconnecting");
                            return End::Gone;
                        }
                    },
                }
            }
            if self.outbox.overflowed() {
                return TOO_SLOW_END;
            }
            if self.outbox.has_queued() {
                // More arrived while writing: go round again at once.
                flush_at =
                    Some(flush_at.map_or(Instant::now(), |f| f.min(Instant::now() + self.batch)));
            }
        }
    }

    /// Writes `items` (one batch frame, or a frame each) and flushes once.
    async fn write(
        &self,
        socket: &mut WebSocket,
        items: &mut Vec<Item>,
    ) -> Result<(), axum::Error> {
        if self.state.config.naive_baseline {
            for item in items.drain(..) {
                let message = match &item {
                    Item::Update(u) if self.encoding == Encoding::Json => {
                        Message::Text(u.encode_json_again().into())
                    }
                    other => frames::single(other, self.encoding),
                };
                socket.send(message).await?;
            }
            return Ok(());
        }
        if self.batch.is_zero() {
            for item in items.drain(..) {
                socket.feed(frames::single(&item, self.encoding)).await?;
            }
        } else {
            let message = frames::batch(items, self.encoding);
            items.clear();
            socket.feed(message).await?;
        }
        socket.flush().await
    }

    async fn on_message(&mut self, message: Message) -> Option<End> {
        match message {
            Message::Text(text) => {
                match protocol::parse(&text) {
                    Ok(request) => return self.on_request(request).await,
                    Err(e) => {
                        tracing::debug!(code = e.code, message = %e.message, "request refused");
                        self.outbox
                            .push_sys(error_message(e.code, &e.message, e.id));
                    }
                }
                None
            }
            Message::Binary(_) => {
                self.outbox.push_sys(error_message(
                    "binary_not_supported",
                    "requests are JSON text frames; binary frames are not accepted",
                    None,
                ));
                None
            }
            // tungstenite answers pings itself; a pong is just a sign of life.
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(End::Gone),
        }
    }

    async fn on_request(&mut self, request: Request) -> Option<End> {
        let hub = &self.state.hub;
        let sent = match request {
            Request::Ping { id } => {
                self.outbox.push_sys(pong_message(id));
                Ok(())
            }
            Request::Subscribe(request) => {
                let max = self.state.config.max_subscriptions;
                if !self.subscriptions.contains(&request.pattern) {
                    if self.subscriptions.len() >= max {
                        self.outbox.push_sys(error_message(
                            "too_many_subscriptions",
                            &format!(
                                "this connection already holds the maximum of {max} subscriptions"
                            ),
                            request.id,
                        ));
                        return None;
                    }
                    self.subscriptions.push(request.pattern.clone());
                }
                hub.send(Command::Subscribe {
                    conn: self.id,
                    outbox: self.outbox.clone(),
                    request,
                })
                .await
            }
            Request::Unsubscribe { topic, id } => {
                if !self.subscriptions.contains(&topic) {
                    self.outbox.push_sys(error_message(
                        "not_subscribed",
                        &format!("no subscription to {topic:?} on this connection"),
                        id,
                    ));
                    return None;
                }
                self.subscriptions.retain(|p| *p != topic);
                hub.send(Command::Unsubscribe {
                    conn: self.id,
                    pattern: topic,
                    id,
                })
                .await
            }
        };
        match sent {
            Ok(()) => None,
            Err(_) => Some(End::Close(close::GOING_AWAY, "server shutting down")),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        source = s.source();
    }
    false
}

/// Sends a close frame and waits up to `reply_wait` for the peer's reply, so
/// the close is actually written before the socket is dropped.
async fn close_politely(
    socket: &mut WebSocket,
    code: u16,
    reason: &'static str,
    reply_wait: Duration,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if tokio::time::timeout(reply_wait, socket.send(Message::Close(Some(frame))))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(reply_wait, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}
