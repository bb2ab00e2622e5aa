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
//! Writing: batch frames are split at `ws.max_frame_bytes` (see [`frames`]);
//! frames needing more than [`frames::DEFLATE_INLINE_MAX`] bytes of deflate
//! are compressed on tokio's blocking pool (`spawn_blocking`, awaited before
//! the next frame, so order is kept). A frame that cannot be written (larger
//! than the write buffer limit, or a socket error) closes the connection with
//! 1011 and a log line naming the connection and the reason.
//!
//! Connect-time options, as query parameters: `encoding` (`json`, `msgpack`,
//! `msgpack+deflate`; or the subprotocols in [`crate::ws::encoding::SUBPROTOCOLS`])
//! and `batch_ms` (0 = a frame per update; otherwise updates are gathered for
//! up to that long and sent as one `batch.update` frame).

mod config;
pub mod encoding;
pub mod frames;
pub mod outbox;
pub mod protocol;
pub mod replay;

pub use config::{MAX_FRAME_BYTES, MIN_FRAME_BYTES, WsConfig};

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Grant, bearer};
use crate::hub::{Command, ConnId, HubClosed, HubHandle, SubscribeRequest};
use crate::limit::TokenBucket;
use crate::update::SysMessage;
use crate::ws::encoding::{Encoding, SUBPROTOCOLS};
use crate::ws::outbox::{Item, Outbox, OutboxStats};
use protocol::{Request, error_message, pong_message};
use replay::Replaying;

/// Requests waiting behind a connection's replay before it refuses more.
const MAX_DEFERRED: usize = 64;

/// Most bytes of replay in a connection's outbox at once: the replay goes on
/// when they have been written, at the pace of the socket. Small, as a chunk
/// is read, framed and written under a server-wide permit.
const REPLAY_CHUNK: usize = 64 << 10;

/// A request for the hub, sent in the order the client made them.
#[derive(Debug)]
enum HubRequest {
    Subscribe(SubscribeRequest),
    Unsubscribe {
        pattern: String,
        id: Option<serde_json::Value>,
    },
}

/// Close codes used by the server.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Heartbeat lost.
    pub const POLICY: u16 = 1008;
    /// A message larger than allowed.
    pub const TOO_BIG: u16 = 1009;
    /// The server could not write a frame to this connection (larger than
    /// its write buffer limit, or a socket error); reconnect and resume with
    /// `since`.
    pub const INTERNAL: u16 = 1011;
    /// Client too slow: reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Control messages refused for rate after which a connection is closed (1008).
pub const FLOOD_CLOSE: u64 = 1000;

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
    /// Tokens and grants.
    pub auth: Arc<Auth>,
    next_id: AtomicU64,
    /// Open connections.
    pub connections: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused at the limits.
    pub refused: AtomicU64,
    /// Replays moving at once, server-wide: a chunk is read and written only
    /// with a permit, so however many clients replay at once, live updates
    /// (and ingest, on the same workers) wait behind a few chunks at most.
    replay_permits: Arc<tokio::sync::Semaphore>,
}

impl WsState {
    /// State for the `/ws` route.
    pub fn new(
        hub: HubHandle,
        config: WsConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        auth: Arc<Auth>,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub,
            config,
            shutdown,
            tasks,
            outbox_stats: Arc::default(),
            auth,
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            per_ip: Mutex::default(),
            refused: AtomicU64::new(0),
            // Half the cores at most: the rest stay for live updates.
            replay_permits: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
        })
    }

    /// Counts a new connection from `ip` against the limits; the slot is
    /// given back when the returned guard drops.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, (StatusCode, String)> {
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        let total: usize = per_ip.values().sum();
        let refuse = |status: StatusCode, message: String| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%ip, %message, "connection refused");
            Err((status, message))
        };
        if total >= self.config.max_connections {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "server at its limit of {} connections",
                    self.config.max_connections
                ),
            );
        }
        let mine = per_ip.entry(ip).or_default();
        if *mine >= self.config.max_connections_per_ip {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{ip} already holds the limit of {} connections",
                    self.config.max_connections_per_ip
                ),
            );
        }
        *mine += 1;
        Ok(Slot {
            state: self.clone(),
            ip,
        })
    }
}

/// A connection's place under the connection limits.
struct Slot {
    state: Arc<WsState>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.state.per_ip.lock().expect("per-ip lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Read buffer per connection: requests are small (a larger one is read in
/// more calls), and tungstenite keeps this buffer resident (zero-filled) for
/// every connection, idle or not.
const READ_BUFFER: usize = 512;
/// Write buffer: frames are gathered up to this size before a write.
const WRITE_BUFFER: usize = 4 << 10;
/// Wait for the peer's close reply at most this long.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Most bytes tungstenite may hold unwritten for one connection: room for
/// any split batch frame, a full queue or a client-sized message, twice. A
/// frame larger than this cannot be written and closes its connection (1011).
pub fn write_buffer_limit(config: &WsConfig) -> usize {
    WRITE_BUFFER
        + config
            .queue_max_bytes
            .max(config.max_message_bytes)
            .max(config.max_frame_bytes)
            * 2
}

/// Why a write failed.
#[derive(Debug)]
enum WriteError {
    /// The frame is larger than the connection's write buffer limit.
    TooBig {
        /// Its size, bytes.
        bytes: usize,
    },
    /// The socket failed (or compression on the blocking pool did).
    Socket(String),
}

impl From<axum::Error> for WriteError {
    fn from(e: axum::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(tungstenite::Error::WriteBufferFull(message)) =
                s.downcast_ref::<tungstenite::Error>()
            {
                return WriteError::TooBig {
                    bytes: message.len(),
                };
            }
            source = s.source();
        }
        WriteError::Socket(e.to_string())
    }
}

/// Connect-time options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    /// `json`, `msgpack` or `msgpack+deflate`.
    pub encoding: Option<String>,
    /// Batching window in milliseconds.
    pub batch_ms: Option<u64>,
    /// Access token, for clients that cannot set an `Authorization` header.
    pub token: Option<String>,
}

/// The `/ws` handler.
pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<Arc<WsState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    options: Result<Query<ConnectOptions>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(options) = match options {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or(options.token.as_deref());
    let grant = match state.auth.client(presented) {
        Ok(g) => g,
        Err(refusal) => {
            tracing::warn!(%peer, reason = %refusal, "WebSocket client refused");
            return (
                StatusCode::UNAUTHORIZED,
                format!("client token refused: {refusal}\n"),
            )
                .into_response();
        }
    };
    let slot = match state.admit(peer.ip()) {
        Ok(slot) => slot,
        Err((status, message)) => {
            return (status, [("retry-after", "5")], format!("{message}\n")).into_response();
        }
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
        .max_write_buffer_size(write_buffer_limit(&state.config))
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
            let mut session = Session::new(id, peer, state, encoding, Duration::from_millis(batch));
            session.grant = grant;
            tasks.track_future(async move {
                session.run(socket).await;
                drop(slot);
            })
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
    /// What this connection may watch; `None` until it authenticates.
    grant: Option<Grant>,
    /// Control messages it may still send now.
    control: TokenBucket,
    /// Control messages refused for rate, and when the last refusal was told.
    refused_control: u64,
    told_rate_limited: Option<Instant>,
    /// Replays to run, the first one running.
    replays: VecDeque<Replaying>,
    /// Requests made during a replay, sent to the hub once it has joined, so
    /// they take effect in the order the client made them.
    deferred: VecDeque<HubRequest>,
    /// Held from reading a replay chunk until it is written.
    replay_permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How a session ends.
enum End {
    /// The peer vanished.
    Gone,
    /// The peer sent a close frame: tungstenite has queued the reply, which
    /// is written the next time the socket is polled.
    PeerClosed,
    /// The server closes with this code and reason and waits (bounded) for
    /// the peer's close reply.
    Close(u16, &'static str),
    /// Like `Close`, but nothing queued is written first: a frame could not
    /// be written, and what follows it would reach the client with a gap.
    Fail(u16, &'static str),
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

/// The hub has stopped: the aggregator is shutting down.
const SHUTTING_DOWN: End = End::Close(close::GOING_AWAY, "server shutting down");

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
            Duration::from_millis(state.config.slow_grace_ms),
            state.outbox_stats.clone(),
        );
        let rate = f64::from(state.config.control_per_sec);
        Self {
            id,
            peer,
            state,
            outbox,
            subscriptions: Vec::new(),
            encoding,
            batch,
            grant: None,
            control: TokenBucket::new(rate, rate * 2.0),
            refused_control: 0,
            told_rate_limited: None,
            replays: VecDeque::new(),
            deferred: VecDeque::new(),
            replay_permit: None,
        }
    }

    #[tracing::instrument(name = "ws", skip_all, fields(conn = self.id, peer = %self.peer))]
    async fn run(self, socket: WebSocket) {
        // The session's state lives on the heap once, not inline in the
        // task next to the serve loop's futures.
        Box::pin(self.run_inner(socket)).await
    }

    async fn run_inner(mut self, mut socket: WebSocket) {
        self.state.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            encoding = self.encoding.name(),
            batch_ms = self.batch.as_millis() as u64,
            "connected"
        );
        let end = self.serve(&mut socket).await;
        match end {
            End::Gone => {}
            End::PeerClosed => {
                // Reading again writes the queued close reply (a socket
                // dropped now would leave the client without one), then
                // reports the end; bounded, as the peer may have stopped
                // reading.
                let _ = tokio::time::timeout(CLOSE_WAIT, async {
                    while let Some(Ok(_)) = socket.recv().await {}
                })
                .await;
            }
            End::Close(code, reason) => {
                tracing::debug!(code, reason, "closing");
                // What is queued (an error explaining the close, say) goes first.
                let mut items = Vec::new();
                self.outbox.drain_into(&mut items);
                if !items.is_empty() {
                    match tokio::time::timeout(CLOSE_WAIT, self.write(&mut socket, &mut items))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::info!(error = ?e, "last frames before the close not written")
                        }
                        Err(_) => {
                            tracing::info!("last frames before the close not written in time")
                        }
                    }
                }
                close_politely(&mut socket, code, reason, CLOSE_WAIT).await;
            }
            End::Fail(code, reason) => {
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
            Instant::now() + Duration::from_millis(config.ping_interval_ms),
            Duration::from_millis(config.ping_interval_ms),
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ping_timeout = Duration::from_millis(config.ping_timeout_ms);
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
                    // A replay goes at the pace of the socket, not of the
                    // batching window.
                    let window = if self.replays.is_empty() { self.batch } else { Duration::ZERO };
                    let window_end = Instant::now() + window;
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
                            // Boxed: requests are rare next to updates, and
                            // their future would otherwise enlarge every
                            // idle connection's task.
                            if let Some(end) = Box::pin(self.on_message(message)).await {
                                return end;
                            }
                            if self.advance_replay().await.is_err() {
                                return SHUTTING_DOWN;
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
                    match tokio::time::timeout(Duration::from_millis(config.write_timeout_ms), ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return self.write_failed(e.into()),
                        Err(_) => {
                            tracing::info!("client stopped reading (ping not written); disconnecting");
                            return End::Gone;
                        }
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
                    r = tokio::time::timeout(Duration::from_millis(config.write_timeout_ms), write) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return self.write_failed(e),
                        Err(_) => {
                            tracing::info!("client stopped reading; disconnecting");
                            return End::Gone;
                        }
                    },
                }
            }
            // The chunk written (or nothing was): another replay may go, and
            // this one queues behind whatever else is ready to run.
            if self.replay_permit.take().is_some() {
                tokio::task::yield_now().await;
            }
            if self.outbox.overflowed() {
                return TOO_SLOW_END;
            }
            if self.advance_replay().await.is_err() {
                return SHUTTING_DOWN;
            }
            if self.outbox.has_queued() {
                // More arrived while writing: go round again at once.
                flush_at =
                    Some(flush_at.map_or(Instant::now(), |f| f.min(Instant::now() + self.batch)));
            }
        }
    }

    /// Writes `items` (batch frames split at `ws.max_frame_bytes`, or a
    /// frame each) and flushes once.
    async fn write(&self, socket: &mut WebSocket, items: &mut Vec<Item>) -> Result<(), WriteError> {
        if self.state.config.naive_baseline {
            for item in items.drain(..) {
                let message = match &item {
                    Item::Update(u) if self.encoding == Encoding::Json => {
                        Message::Text(u.encode_json_again().into())
                    }
                    other => frames::single(other, self.encoding).finish(),
                };
                socket.send(message).await?;
            }
            return Ok(());
        }
        if self.batch.is_zero() {
            for item in items.drain(..) {
                let message = finish(frames::single(&item, self.encoding)).await?;
                socket.feed(message).await?;
            }
        } else {
            let batches = frames::batches(items, self.encoding, self.state.config.max_frame_bytes);
            items.clear();
            for frame in batches {
                let message = finish(frame).await?;
                socket.feed(message).await?;
            }
        }
        Ok(socket.flush().await?)
    }

    /// How a failed write ends the session: logged (the session's span names
    /// the connection and peer) and closed with 1011.
    fn write_failed(&self, e: WriteError) -> End {
        match e {
            WriteError::TooBig { bytes } => {
                let limit = write_buffer_limit(&self.state.config);
                tracing::warn!(
                    bytes,
                    limit,
                    "frame larger than the write buffer limit cannot be written; closing with 1011"
                );
                End::Fail(
                    close::INTERNAL,
                    "a frame larger than the write buffer limit could not be written",
                )
            }
            WriteError::Socket(cause) => {
                tracing::info!(%cause, "write failed; closing with 1011");
                // Bounded like any close: a broken socket fails both the
                // close frame and the wait for its reply at once.
                End::Fail(close::INTERNAL, "write failed")
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Option<End> {
        match message {
            Message::Text(text) => {
                let now = Instant::now();
                if !self.control.try_take(now) {
                    self.refused_control += 1;
                    let limit = self.state.config.control_per_sec;
                    // Refusals are told at most once a second: a flood must
                    // not turn into a flood of errors.
                    if self
                        .told_rate_limited
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.told_rate_limited = Some(now);
                        self.outbox.push_sys(error_message(
                            "rate_limited",
                            &format!("more than {limit} control messages per second; this one was dropped"),
                            None,
                        ));
                    }
                    if self.refused_control > FLOOD_CLOSE {
                        tracing::info!(
                            limit,
                            refused = self.refused_control,
                            "control message flood"
                        );
                        return Some(End::Close(close::POLICY, "too many requests"));
                    }
                    return None;
                }
                let limits = protocol::Limits {
                    max_topic_bytes: self.state.config.max_topic_bytes,
                    max_topic_segments: self.state.config.max_topic_segments,
                };
                match protocol::parse_with(&text, limits) {
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
            Message::Close(_) => Some(End::PeerClosed),
        }
    }

    async fn on_request(&mut self, request: Request) -> Option<End> {
        let sent = match request {
            Request::Ping { id } => {
                self.outbox.push_sys(pong_message(id));
                Ok(())
            }
            Request::Auth { token, id } => match self.state.auth.client(Some(&token)) {
                Ok(grant) => {
                    let name = grant.as_ref().map(|g| g.name.to_string());
                    self.grant = grant;
                    self.outbox.push_sys(SysMessage::new(
                        "$sys.authenticated",
                        &serde_json::json!({"id": id, "token": name}),
                    ));
                    Ok(())
                }
                Err(refusal) => {
                    tracing::warn!(reason = %refusal, "WebSocket client refused");
                    self.outbox.push_sys(error_message(
                        "unauthorized",
                        &format!("client token refused: {refusal}"),
                        id,
                    ));
                    return Some(End::Close(close::POLICY, "unauthorized"));
                }
            },
            Request::Subscribe(mut request) => {
                let Some(grant) = &self.grant else {
                    self.outbox.push_sys(error_message(
                        "unauthorized",
                        "authenticate first: connect with a token, or send {\"action\":\"auth\",\"token\":...}",
                        request.id,
                    ));
                    return None;
                };
                if !grant.overlaps(&request.pattern) {
                    self.outbox.push_sys(error_message(
                        "forbidden",
                        &format!(
                            "token {:?} grants no topic matching {:?}",
                            grant.name, request.pattern
                        ),
                        request.id,
                    ));
                    return None;
                }
                request.grant = Some(grant.clone());
                if self.busy(&request.id, &request.pattern) {
                    return None;
                }
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
                self.ask_hub(HubRequest::Subscribe(request)).await
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
                if self.busy(&id, &topic) {
                    return None;
                }
                self.subscriptions.retain(|p| *p != topic);
                self.ask_hub(HubRequest::Unsubscribe { pattern: topic, id })
                    .await
            }
        };
        match sent {
            Ok(()) => None,
            Err(_) => Some(End::Close(close::GOING_AWAY, "server shutting down")),
        }
    }
}

impl Session {
    /// Sends a request to the hub now, or after the replay running (and the
    /// requests already waiting) when there is one.
    async fn ask_hub(&mut self, request: HubRequest) -> Result<(), HubClosed> {
        if self.replays.is_empty() {
            return self.send_to_hub(request).await;
        }
        self.deferred.push_back(request);
        Ok(())
    }

    /// Refuses a subscribe or unsubscribe (telling the client) when too many
    /// already wait behind this connection's replay.
    fn busy(&self, id: &Option<serde_json::Value>, what: &str) -> bool {
        if self.replays.is_empty() || self.deferred.len() < MAX_DEFERRED {
            return false;
        }
        self.outbox.push_sys(error_message(
            "busy",
            &format!(
                "{MAX_DEFERRED} requests already wait for this connection's replay to finish; {what:?} was not done, send it again later"
            ),
            id.clone(),
        ));
        true
    }

    async fn send_to_hub(&mut self, request: HubRequest) -> Result<(), HubClosed> {
        let hub = &self.state.hub;
        match request {
            HubRequest::Subscribe(request) => {
                let (replay, rx) = tokio::sync::oneshot::channel();
                hub.send(Command::Subscribe {
                    conn: self.id,
                    outbox: self.outbox.clone(),
                    request,
                    replay,
                })
                .await?;
                if let Some(r) = Replaying::new(rx.await.map_err(|_| HubClosed)?) {
                    self.replays.push_back(r);
                }
                Ok(())
            }
            HubRequest::Unsubscribe { pattern, id } => {
                hub.send(Command::Unsubscribe {
                    conn: self.id,
                    pattern,
                    id,
                })
                .await
            }
        }
    }

    /// Moves the running replay on while the outbox has room for it; when
    /// it has caught up, joins it to live delivery and sends the requests
    /// that waited for it.
    async fn advance_replay(&mut self) -> Result<(), HubClosed> {
        let chunk = REPLAY_CHUNK
            .min(self.state.config.queue_max_bytes / 4)
            .max(1);
        while !self.replays.is_empty() {
            if self.outbox.queued_bytes() >= chunk || self.outbox.overflowed() {
                return Ok(());
            }
            if self.replay_permit.is_none() {
                let permits = self.state.replay_permits.clone();
                self.replay_permit = tokio::select! {
                    _ = self.state.shutdown.cancelled() => return Err(HubClosed),
                    p = permits.acquire_owned() => Some(p.map_err(|_| HubClosed)?),
                };
            }
            let r = self.replays.front_mut().expect("not empty");
            let Some(join) = r.fill(self.id, &self.outbox, chunk) else {
                return Ok(());
            };
            self.state.hub.send(join).await?;
            self.replays.pop_front();
            while self.replays.is_empty()
                && let Some(request) = self.deferred.pop_front()
            {
                self.send_to_hub(request).await?;
            }
        }
        Ok(())
    }
}

/// The frame's message, compressing it on the blocking pool when that is
/// heavy work (awaited here, so frames still go out in order).
async fn finish(frame: frames::Frame) -> Result<Message, WriteError> {
    if !frame.heavy() {
        return Ok(frame.finish());
    }
    tokio::task::spawn_blocking(move || frame.finish())
        .await
        .map_err(|e| WriteError::Socket(format!("compression task failed: {e}")))
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
