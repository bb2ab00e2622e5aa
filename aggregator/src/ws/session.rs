//! One connection's task: it `select!`s (biased) between its outbox and the
//! socket, and when its outbox wakes it (at once, or through the server's
//! wheel when a batching window closes, or for its heartbeat) drains what is
//! due and writes it with one flush. It owns no timers: the heartbeat and
//! write deadlines are the server's shared clocks ([`crate::ws::ticks`]),
//! and the heartbeat and shutdown reach it through its outbox. The
//! client's requests are handled in `session/requests.rs`.

/// Logs a line naming the connection (`conn`, `peer`). A span per
/// connection would say the same, but its entry in the log registry costs
/// every idle connection a few hundred bytes.
macro_rules! log {
    ($level:ident, $session:expr, $($rest:tt)*) => {
        tracing::$level!(conn = $session.id, peer = %$session.peer, $($rest)*)
    };
}

mod end;
mod queue;
mod requests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use crate::auth::Grant;
use crate::hub::{Command, ConnId, SubscribeRequest};
use crate::limit::TokenBucket;
use crate::ws::encoding::Encoding;
use crate::ws::outbox::{Drained, Item, Outbox};
use crate::ws::protocol;
use crate::ws::protocol::error_message;
use crate::ws::replay::Replaying;
use crate::ws::socket::Socket;
use crate::ws::write::{CLOSE_WAIT, WriteError, close_politely, finish};
use crate::ws::{FLOOD_CLOSE, WsState, write_buffer_limit};
use crate::ws::{close, frames};
use end::{End, SHUTTING_DOWN, TOO_SLOW_END, read_failed};
use queue::LazyQueue;

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

pub(super) struct Session {
    id: ConnId,
    peer: SocketAddr,
    state: Arc<WsState>,
    outbox: Arc<Outbox>,
    subscriptions: Vec<String>,
    encoding: Encoding,
    /// What this connection may watch; `None` until it authenticates.
    pub(super) grant: Option<Grant>,
    /// Control messages it may still send now.
    control: TokenBucket,
    /// Control messages refused for rate, and when the last refusal was told.
    refused_control: u64,
    told_rate_limited: Option<Instant>,
    /// Replays to run, the first one running.
    replays: LazyQueue<Replaying>,
    /// Requests made during a replay, sent to the hub once it has joined, so
    /// they take effect in the order the client made them.
    deferred: LazyQueue<HubRequest>,
    /// Held from reading a replay chunk until it is written.
    replay_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Waiting for a replay permit: polled by the session loop beside the
    /// socket, so a connection queued behind other replays still reads its
    /// client (pongs, requests, Close) meanwhile.
    /// (A task of its own waits in the semaphore's queue, first come first
    /// served, and hands the permit over.)
    permit_wait: Option<tokio::sync::oneshot::Receiver<tokio::sync::OwnedSemaphorePermit>>,
}

impl Session {
    pub(super) fn new(
        id: ConnId,
        peer: SocketAddr,
        state: Arc<WsState>,
        encoding: Encoding,
        batch: Duration,
    ) -> Self {
        let outbox = Outbox::with_window(
            state.config.queue_max_bytes,
            Duration::from_millis(state.config.slow_grace_ms),
            state.outbox_stats.clone(),
            batch,
            Some(state.ticks.wheel.clone()),
        );
        let rate = f64::from(state.config.control_per_sec);
        Self {
            id,
            peer,
            state,
            outbox,
            subscriptions: Vec::new(),
            encoding,
            grant: None,
            control: TokenBucket::new(rate, rate * 2.0),
            refused_control: 0,
            told_rate_limited: None,
            replays: LazyQueue::default(),
            deferred: LazyQueue::default(),
            replay_permit: None,
            permit_wait: None,
        }
    }

    /// The connection's task, boxed: the session and its socket live on
    /// the heap once. (An `async fn` taking them would hold them twice, as
    /// its arguments and again as the bindings of its body, 688 bytes more
    /// per connection; an `async move` block uses what it captured in
    /// place.)
    pub(super) fn run(mut self, mut socket: Socket) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.state.connections.fetch_add(1, Ordering::Relaxed);
            log!(
                debug,
                self,
                encoding = self.encoding.name(),
                batch_ms = self.outbox.window().as_millis() as u64,
                "connected"
            );
            let end = self.serve(&mut socket).await;
            // On the heap: the close paths' futures are large and run once.
            let closing = Box::pin(self.finish(end, socket));
            closing.await;
        })
    }

    /// Ends the connection the way `end` says, then leaves the hub.
    async fn finish(self, end: End, mut socket: Socket) {
        match end {
            End::Gone => {}
            End::PeerClosed => {
                // The close reply tungstenite made is written (a socket
                // dropped now would leave the client without one); bounded,
                // as the peer may have stopped reading.
                let _ = tokio::time::timeout(CLOSE_WAIT, socket.answer()).await;
            }
            End::Close(code, reason) => {
                log!(debug, self, code, reason, "closing");
                // What is queued (an error explaining the close, say) goes first.
                let mut items = Vec::new();
                self.outbox.drain_into(&mut items);
                if !items.is_empty() {
                    match tokio::time::timeout(CLOSE_WAIT, self.write(&mut socket, &mut items))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            log!(info, self, error = ?e, "last frames before the close not written")
                        }
                        Err(_) => {
                            log!(
                                info,
                                self,
                                "last frames before the close not written in time"
                            )
                        }
                    }
                }
                close_politely(&mut socket, code, reason, CLOSE_WAIT).await;
            }
            End::Fail(code, reason) => {
                close_politely(&mut socket, code, reason, CLOSE_WAIT).await;
            }
            End::Abandon(code, reason, send_wait) => {
                log!(
                    info,
                    self,
                    code,
                    reason,
                    "closing a client that does not keep up"
                );
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                let _ = tokio::time::timeout(
                    send_wait,
                    socket.send_control(Message::Close(Some(frame))),
                )
                .await;
            }
        }
        let _ = self
            .state
            .hub
            .send(Command::Disconnect { conn: self.id })
            .await;
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        log!(debug, self, "disconnected");
    }

    async fn serve(&mut self, socket: &mut Socket) -> End {
        let state = self.state.clone();
        let config = &state.config;
        state.ticks.heartbeat(self.id, &self.outbox);
        let ping_timeout = Duration::from_millis(config.ping_timeout_ms);
        let mut last_heard = Instant::now();
        let mut items: Vec<Item> = Vec::new();
        loop {
            // Shutdown is seen at each wake-up, busy or not; the heartbeat
            // task wakes every outbox on shutdown. (Fewer futures in the
            // select below keep every idle connection's task small.)
            if state.shutdown.is_cancelled() {
                return SHUTTING_DOWN;
            }
            tokio::select! {
                biased;
                // Woken when something is due: at once, or by the server's
                // wheel when the batching window closes or a throttled
                // update falls due; for the heartbeat; when the outbox gives
                // up on the client; and on shutdown.
                _ = self.outbox.notified() => {}
                message = socket.recv() => {
                    last_heard = Instant::now();
                    match message {
                        None => return End::Gone,
                        Some(Err(e)) => return read_failed(self, e),
                        Some(Ok(message)) => {
                            // The pong or close reply tungstenite made goes
                            // out now, whatever else is pending.
                            if matches!(message, Message::Ping(_) | Message::Close(_)) {
                                let answer = Box::pin(self.write_control(socket, false));
                                if let Some(end) = answer.await {
                                    return end;
                                }
                            }
                            // Boxed: requests are rare next to updates, and
                            // their future would otherwise enlarge every
                            // idle connection's task.
                            let handled = Box::pin(self.on_message(message));
                            if let Some(end) = handled.await {
                                return end;
                            }
                            if self.advance_replay().await.is_err() {
                                return SHUTTING_DOWN;
                            }
                        }
                    }
                    continue;
                }
                permit = recv_opt(&mut self.permit_wait) => {
                    self.permit_wait = None;
                    let Ok(permit) = permit else { return SHUTTING_DOWN };
                    self.replay_permit = Some(permit);
                    if self.advance_replay().await.is_err() {
                        return SHUTTING_DOWN;
                    }
                    continue;
                }
            }
            // One lock: what is due, whether the client is given up on, and
            // whether its heartbeat came. (A lag starting while this drain is
            // written wakes the session at once, and a client given up on
            // meanwhile is seen at the next drain.)
            let Drained {
                overflowed, beat, ..
            } = self.outbox.drain(&mut items);
            if overflowed {
                return TOO_SLOW_END;
            }
            if beat {
                if last_heard.elapsed() > ping_timeout {
                    log!(
                        info,
                        self,
                        timeout_ms = config.ping_timeout_ms,
                        "no answer to pings; disconnecting"
                    );
                    return End::Abandon(
                        close::POLICY,
                        "heartbeat timeout",
                        Duration::from_millis(100),
                    );
                }
                let ping = Box::pin(self.write_control(socket, true));
                if let Some(end) = ping.await {
                    return end;
                }
            }
            // Boxed, as every write path: its future would otherwise enlarge
            // every idle connection's task.
            if !items.is_empty() {
                let write = Box::pin(self.write_due(socket, &mut items));
                if let Some(end) = write.await {
                    return end;
                }
            }
            // Nothing kept between drains: thousands of idle connections
            // must not each hold the buffer of the last batch they wrote.
            items = Vec::new();
            // The chunk written (or nothing was): another replay may go, and
            // this one queues behind whatever else is ready to run.
            if self.replay_permit.take().is_some() {
                tokio::task::yield_now().await;
            }
            if self.advance_replay().await.is_err() {
                return SHUTTING_DOWN;
            }
        }
    }

    /// Writes what was drained within the write deadline, unless the
    /// connection is given up meanwhile; `Some` ends the session.
    async fn write_due(&self, socket: &mut Socket, items: &mut Vec<Item>) -> Option<End> {
        let write_timeout = Duration::from_millis(self.state.config.write_timeout_ms);
        tokio::select! {
            biased;
            r = self.write(socket, items) => r.err().map(|e| self.write_failed(e)),
            _ = self.outbox.doomed() => Some(TOO_SLOW_END),
            _ = self.state.ticks.after(write_timeout) => {
                log!(info, self, "client stopped reading; disconnecting");
                Some(End::Gone)
            }
        }
    }

    /// Writes a ping (`ping`), or tungstenite's answer to the client's ping
    /// or Close, within the write deadline; `Some` ends the session.
    async fn write_control(&self, socket: &mut Socket, ping: bool) -> Option<End> {
        let write_timeout = Duration::from_millis(self.state.config.write_timeout_ms);
        let write = async {
            if ping {
                socket.send_control(Message::Ping(Default::default())).await
            } else {
                socket.answer().await
            }
        };
        tokio::select! {
            biased;
            r = write => r.err().map(|e| self.write_failed(e.into())),
            _ = self.state.ticks.after(write_timeout) => {
                let what = if ping { "ping" } else { "control frame" };
                log!(info, self, what, "client stopped reading (not written); disconnecting");
                Some(End::Gone)
            }
        }
    }

    /// Writes `items` (batch frames split at `ws.max_frame_bytes`, or a
    /// frame each): shared frames and pieces, with vectored writes. A batch
    /// drained under a window tick is the group's, built once
    /// ([`crate::ws::shared`]); during a replay it is this connection's own.
    async fn write(&self, socket: &mut Socket, items: &mut Vec<Item>) -> Result<(), WriteError> {
        let limit = write_buffer_limit(&self.state.config);
        let mut out = Vec::with_capacity(items.len());
        let window = self.outbox.window();
        if window.is_zero() {
            for item in items.drain(..) {
                finish(frames::single(&item, self.encoding), &mut out, limit).await?;
            }
        } else {
            let tick = self.replays.is_empty().then(|| {
                let wheel = &self.state.ticks.wheel;
                wheel.window_tick(Instant::now(), window)
            });
            let max = self.state.config.max_frame_bytes;
            let shared = &self.state.shared_batches;
            shared
                .write(items, self.encoding, max, tick, &mut out, limit)
                .await?;
            items.clear();
        }
        Ok(socket.write_frames(out).await?)
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
                        log!(
                            info,
                            self,
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
                        log!(debug, self, code = e.code, message = %e.message, "request refused");
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
            // tungstenite answers pings itself (see `Socket::answer`); a
            // pong is just a sign of life.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            Message::Close(_) => Some(End::PeerClosed),
        }
    }
}

/// What `rx` receives, or never when there is nothing to wait for.
async fn recv_opt<T>(
    rx: &mut Option<tokio::sync::oneshot::Receiver<T>>,
) -> Result<T, tokio::sync::oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}
