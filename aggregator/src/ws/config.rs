//! `[ws]`: limits and timers of WebSocket sessions, with defaults and
//! validation. `AggregatorConfig` (`config.rs`) composes it.

use hostpulse_common::config::first_zero;
use serde::{Deserialize, Serialize};

/// `[ws]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Largest client message accepted, in bytes (larger: close 1009).
    pub max_message_bytes: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Longest topic or pattern a client may send, in bytes.
    pub max_topic_bytes: usize,
    /// Most dot-separated segments in a topic or pattern.
    pub max_topic_segments: usize,
    /// Most WebSocket connections in total (more: HTTP 503).
    pub max_connections: usize,
    /// Most WebSocket connections from one client address (more: HTTP 429).
    pub max_connections_per_ip: usize,
    /// Control messages (subscribe, ping, ...) one connection may send per
    /// second, with bursts of twice that; beyond it messages are refused with
    /// `rate_limited`, and a connection with 1000 refused is closed (1008).
    pub control_per_sec: u32,
    /// A connection with more than this queued, in bytes, is lagging: from then
    /// on it gets only the newest update per topic (conflation) and a
    /// `$sys.lagged` notice of what it skipped.
    pub queue_max_bytes: usize,
    /// A client still lagging this long after it started is closed with 1013
    /// (try again later) and may resume from history, in milliseconds.
    pub slow_grace_ms: u64,
    /// Interval of server ping frames, in milliseconds.
    pub ping_interval_ms: u64,
    /// A client silent this long (no pong, no message) is closed, in milliseconds.
    pub ping_timeout_ms: u64,
    /// Longest a single flush to a client may block, in milliseconds.
    pub write_timeout_ms: u64,
    /// Largest `batch.update` frame, in bytes (1 KiB to 256 KiB): a batch
    /// that would be larger goes out as several frames, in order. For
    /// `msgpack+deflate` the bound holds for the compressed frame. A single
    /// update larger than this still goes out whole, alone in its frame.
    pub max_frame_bytes: usize,
    /// Replays reading history at once, server-wide (each a 64 KiB chunk at
    /// a time, in turn); 0: half the cores, at least one. Connections waiting
    /// for their turn still read their clients.
    pub replay_concurrency: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 10,
            max_subscriptions: 256,
            max_topic_bytes: 256,
            max_topic_segments: 16,
            max_connections: 20_000,
            max_connections_per_ip: 20_000,
            control_per_sec: 50,
            queue_max_bytes: 4 << 20,
            slow_grace_ms: 5_000,
            ping_interval_ms: 15_000,
            ping_timeout_ms: 45_000,
            write_timeout_ms: 10_000,
            max_frame_bytes: MAX_FRAME_BYTES,
            replay_concurrency: 0,
        }
    }
}

/// Default and largest `ws.max_frame_bytes`: batch frames are split at
/// 256 KiB or less.
pub const MAX_FRAME_BYTES: usize = 256 << 10;
/// Smallest `ws.max_frame_bytes` accepted.
pub const MIN_FRAME_BYTES: usize = 1 << 10;

impl WsConfig {
    /// `replay_concurrency`, with 0 resolved to half the cores.
    pub fn replays_at_once(&self) -> usize {
        match self.replay_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }

    /// The first value that parses but cannot work, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = first_zero(&[
            ("ws.max_message_bytes", self.max_message_bytes as u64),
            ("ws.max_subscriptions", self.max_subscriptions as u64),
            ("ws.ping_interval_ms", self.ping_interval_ms),
            ("ws.max_connections", self.max_connections as u64),
            (
                "ws.max_connections_per_ip",
                self.max_connections_per_ip as u64,
            ),
            ("ws.control_per_sec", u64::from(self.control_per_sec)),
            ("ws.max_topic_bytes", self.max_topic_bytes as u64),
            ("ws.max_topic_segments", self.max_topic_segments as u64),
        ]) {
            return Some(p);
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&self.max_frame_bytes) {
            return Some((
                "ws.max_frame_bytes",
                format!("must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES} bytes"),
            ));
        }
        if self.ping_timeout_ms <= self.ping_interval_ms {
            return Some((
                "ws.ping_timeout_ms",
                "must be longer than ws.ping_interval_ms".into(),
            ));
        }
        if self.queue_max_bytes < 64 << 10 {
            return Some(("ws.queue_max_bytes", "must be at least 65536".into()));
        }
        None
    }
}
