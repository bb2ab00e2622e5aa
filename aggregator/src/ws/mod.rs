//! `/ws`: the WebSocket upgrade and one task per connection.
//!
//! Each connection is one task that `select!`s (biased) between shutdown, its
//! outbox, the socket and a heartbeat tick. At every wake-up it feeds every
//! queued frame and flushes once, so many updates share one system call.
//! Buffers are sized for thousands of mostly idle connections (tungstenite's
//! 128 KiB defaults would cost that much per connection).

pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{WsConfig, ms};
use crate::hub::{Command, ConnId, HubHandle};
use crate::outbox::{Frame, Outbox};
use protocol::{Request, error_message, pong_message};

/// Close codes used by the server.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A message larger than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// Client too slow: reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Heartbeat lost.
    pub const POLICY: u16 = 1008;
}

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
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
        })
    }
}

/// Read buffer per connection: requests are small.
const READ_BUFFER: usize = 4 << 10;
/// Write buffer: frames are gathered up to this size before a write.
const WRITE_BUFFER: usize = 4 << 10;
/// Wait for the peer's close reply at most this long.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The `/ws` handler.
pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<WsState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let max = state.config.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + state.config.queue_max_bytes.max(max))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let tasks = state.tasks.clone();
            tasks.track_future(Session::new(id, peer, state).run(socket))
        })
}

struct Session {
    id: ConnId,
    peer: SocketAddr,
    state: Arc<WsState>,
    outbox: Arc<Outbox>,
    subscriptions: Vec<String>,
}

/// How a session ends.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// The server closes with this code and reason and waits (bounded) for
    /// the peer's close reply.
    Close(u16, &'static str),
    /// The peer is not reading: send the close frame if it fits, and go.
    Abandon(u16, &'static str),
}

impl Session {
    fn new(id: ConnId, peer: SocketAddr, state: Arc<WsState>) -> Self {
        let outbox = Outbox::new(state.config.queue_max_bytes);
        Self {
            id,
            peer,
            state,
            outbox,
            subscriptions: Vec::new(),
        }
    }

    #[tracing::instrument(name = "ws", skip_all, fields(conn = self.id, peer = %self.peer))]
    async fn run(mut self, mut socket: WebSocket) {
        self.state.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("connected");
        let end = self.serve(&mut socket).await;
        match end {
            End::Gone => {}
            End::Close(code, reason) => {
                tracing::debug!(code, reason, "closing");
                close_politely(&mut socket, code, reason, CLOSE_WAIT).await;
            }
            End::Abandon(code, reason) => {
                tracing::debug!(code, reason, "abandoning");
                close_politely(&mut socket, code, reason, Duration::ZERO).await;
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
        let shutdown = self.state.shutdown.clone();
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + ms(config.ping_interval_ms),
            ms(config.ping_interval_ms),
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_timeout = ms(config.ping_timeout_ms);
        let write_timeout = ms(config.write_timeout_ms);
        let mut last_heard = Instant::now();
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
                _ = self.outbox.notified() => {
                    self.outbox.drain_into(&mut frames);
                    match tokio::time::timeout(write_timeout, write_all(socket, &mut frames)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::Gone,
                        Err(_) => {
                            tracing::info!("client stopped reading; disconnecting");
                            return End::Gone;
                        }
                    }
                    if self.outbox.overflowed() {
                        tracing::info!(max_bytes = config.queue_max_bytes, "client fell too far behind");
                        return End::Abandon(close::TRY_AGAIN_LATER, "too slow: queue limit reached; reconnect and resume with since");
                    }
                }
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
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > ping_timeout {
                        tracing::info!(timeout_ms = config.ping_timeout_ms, "no answer to pings; disconnecting");
                        return End::Abandon(close::POLICY, "heartbeat timeout");
                    }
                    let ping = socket.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(write_timeout, ping).await, Ok(Ok(()))) {
                        return End::Gone;
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Option<End> {
        match message {
            Message::Text(text) => {
                match protocol::parse(&text) {
                    Ok(request) => return self.on_request(request).await,
                    Err(e) => {
                        tracing::debug!(code = e.code, message = %e.message, "request refused");
                        self.outbox
                            .push(Frame::Sys(error_message(e.code, &e.message, e.id)));
                    }
                }
                None
            }
            Message::Binary(_) => {
                self.outbox.push(Frame::Sys(error_message(
                    "binary_not_supported",
                    "requests are JSON text frames; binary frames are not accepted",
                    None,
                )));
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
                self.outbox.push(Frame::Sys(pong_message(id)));
                Ok(())
            }
            Request::Subscribe(request) => {
                let max = self.state.config.max_subscriptions;
                if !self.subscriptions.contains(&request.pattern) {
                    if self.subscriptions.len() >= max {
                        self.outbox.push(Frame::Sys(error_message(
                            "too_many_subscriptions",
                            &format!(
                                "this connection already holds the maximum of {max} subscriptions"
                            ),
                            request.id,
                        )));
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
                    self.outbox.push(Frame::Sys(error_message(
                        "not_subscribed",
                        &format!("no subscription to {topic:?} on this connection"),
                        id,
                    )));
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

/// Feeds every frame, then flushes once.
async fn write_all(socket: &mut WebSocket, frames: &mut Vec<Frame>) -> Result<(), axum::Error> {
    use futures_util::SinkExt;
    for frame in frames.drain(..) {
        socket.feed(Message::Text(frame.text())).await?;
    }
    socket.flush().await
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
    let send_wait = CLOSE_WAIT.min(reply_wait.max(Duration::from_millis(100)));
    if tokio::time::timeout(send_wait, socket.send(Message::Close(Some(frame))))
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
