//! The `/ws` upgrade: admission (connections in total and per client
//! address), the token, the connect-time options (`encoding`, `batch_ms`),
//! then one session task per connection, tracked for shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, bearer};
use crate::hub::HubHandle;
use crate::ws::MAX_BATCH_MS;
use crate::ws::WsConfig;
use crate::ws::encoding::{Encoding, SUBPROTOCOLS};
use crate::ws::handshake::Handshake;
use crate::ws::outbox::OutboxStats;
use crate::ws::session::Session;
use crate::ws::shared::SharedBatches;
use crate::ws::socket::Socket;
use crate::ws::ticks::Ticks;
use crate::ws::write::READ_BUFFER;

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
    pub(super) replay_permits: Arc<tokio::sync::Semaphore>,
    /// Batching windows, throttles, write deadlines and heartbeats of every
    /// connection.
    pub(super) ticks: Ticks,
    /// Batch frames built once per subscription group.
    pub shared_batches: SharedBatches,
}

impl WsState {
    /// State for the `/ws` route; starts the shared clocks' tasks on the
    /// current runtime (they stop on `shutdown`).
    pub fn new(
        hub: HubHandle,
        config: WsConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        auth: Arc<Auth>,
    ) -> Arc<Self> {
        let replays = config.replays_at_once();
        let ticks = Ticks::start(Duration::from_millis(config.ping_interval_ms), &shutdown);
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
            // Half the cores by default: the rest stay for live updates.
            replay_permits: Arc::new(tokio::sync::Semaphore::new(replays)),
            ticks,
            shared_batches: SharedBatches::default(),
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
pub(super) struct Slot {
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
    handshake: Handshake,
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
    let protocol = handshake.choose(&SUBPROTOCOLS);
    let encoding = protocol
        .and_then(Encoding::from_subprotocol)
        .or(query_encoding)
        .unwrap_or_default();
    let (response, on_upgrade) = handshake.accept(protocol);
    let max = state.config.max_message_bytes;
    let tasks = state.tasks.clone();
    // The task holds only two pointers and the slot: the start (the upgrade
    // and the socket's set-up) and then the session are on the heap, each
    // for as long as it runs.
    tasks.spawn(async move {
        let start = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                    return None;
                }
            };
            let socket = Socket::new(upgraded, READ_BUFFER, max).await;
            let id = state.next_id.fetch_add(1, Ordering::Relaxed);
            let mut session = Session::new(id, peer, state, encoding, Duration::from_millis(batch));
            session.grant = grant;
            Some(session.run(socket))
        };
        let start = Box::pin(start);
        if let Some(run) = start.await {
            run.await;
        }
        drop(slot);
    });
    response
}
