//! Aggregator configuration: `deploy/aggregator.toml` as data, then validation.
//!
//! Every key has a default, unknown keys are refused, and
//! [`AggregatorConfig::load`] names the file, the key and the reason for
//! anything it cannot accept. Nothing is bound before validation passes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use hostpulse_common::config::{ConfigError, read_bounded};

/// The whole aggregator configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// gRPC ingest from agents.
    pub ingest: IngestConfig,
    /// HTTP: WebSocket, health.
    pub http: HttpConfig,
    /// WebSocket sessions.
    pub ws: WsConfig,
    /// Topics and history.
    pub hub: HubConfig,
    /// Tokens for agents and clients.
    pub auth: crate::auth::AuthConfig,
    /// Certificate and key for TLS on both listeners.
    pub tls: crate::tls::TlsConfig,
    /// What `/metrics` exposes.
    pub metrics: crate::http::metrics::MetricsConfig,
    /// Several aggregators sharing updates through NATS (off by default).
    pub cluster: crate::cluster::ClusterConfig,
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address the gRPC ingest listens on.
    pub listen: SocketAddr,
    /// Largest gRPC message accepted (after decompression), in bytes.
    pub max_message_bytes: usize,
    /// Most samples in one batch.
    pub max_samples_per_batch: usize,
    /// Batches one agent stream may send per second (sustained; bursts up to
    /// five seconds' worth). Faster senders are slowed down, not refused.
    pub max_batches_per_sec: u32,
    /// Samples timestamped further than this in the future are refused (the
    /// host's clock is wrong), in milliseconds.
    pub max_future_ms: u64,
    /// How long a new stream may take to send `Hello`, in milliseconds.
    pub hello_timeout_ms: u64,
    /// A connected agent that sends nothing for this long (or for three of its
    /// sampling intervals, if longer) is announced offline on `hosts`, and
    /// online again when it speaks, in milliseconds.
    pub offline_after_ms: u64,
    /// While overloaded (see `overload_queue_fraction`), acks ask agents to
    /// sample no more often than this, in milliseconds; 0 never asks.
    pub overload_interval_ms: u64,
    /// The aggregator counts as overloaded while its hub queue is at least
    /// this fraction full (0 to 1; 0 means always, for testing agents).
    pub overload_queue_fraction: f64,
    /// HTTP/2 keepalive ping interval towards agents, in milliseconds.
    pub keepalive_interval_ms: u64,
    /// Unanswered keepalive tolerance, in milliseconds.
    pub keepalive_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7070).into(),
            max_message_bytes: 4 << 20,
            max_samples_per_batch: 1000,
            max_batches_per_sec: 200,
            max_future_ms: 3_600_000,
            hello_timeout_ms: 5_000,
            offline_after_ms: 10_000,
            overload_interval_ms: 5_000,
            overload_queue_fraction: 0.5,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: SocketAddr,
    /// Serve the built-in web dashboard at `/`.
    pub dashboard: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7071).into(),
            dashboard: true,
        }
    }
}

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
    /// For benchmarks only: encode every update again for every client and
    /// flush after every frame, as a naive server would. Never enable in
    /// production; `hostpulse-bench --baseline` uses it to measure the gain.
    pub naive_baseline: bool,
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
            naive_baseline: false,
        }
    }
}

/// Default and largest `ws.max_frame_bytes`: batch frames are split at
/// 256 KiB or less.
pub const MAX_FRAME_BYTES: usize = 256 << 10;
/// Smallest `ws.max_frame_bytes` accepted.
pub const MIN_FRAME_BYTES: usize = 1 << 10;

/// `[hub]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Updates kept per topic for resume and replay.
    pub history_len: usize,
    /// Memory for history over all topics, as held (compressed blocks, and
    /// the newest updates in every form made of them). Beyond it the topics
    /// holding the most are trimmed, oldest first, so a fleet too large for
    /// it keeps a shorter history of its busiest topics rather than running
    /// out of memory, and small topics keep theirs.
    pub history_max_bytes: usize,
    /// Commands queued to the hub before publishers wait.
    pub queue: usize,
    /// A host departed this long (its agent detached, or no peer announces
    /// it) with no update meanwhile is forgotten: its topics and history go,
    /// and `hosts` announces it `forgotten`. In ms; seven days by default.
    pub forget_after_ms: u64,
    /// Per-topic rate limits for high-volume topics, first match wins.
    pub rate_limit: Vec<RateLimitConfig>,
}

/// `[[hub.rate_limit]]`: at most one update per `min_interval_ms` on the
/// topics matching `topic`; the others are not published (their seqs are
/// skipped, and `$sys.subscribed` reports the interval).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Topic or pattern, e.g. `host.*.processes`.
    pub topic: String,
    /// Shortest interval between published updates of one topic, in ms.
    pub min_interval_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history_len: 600,
            history_max_bytes: 256 << 20,
            queue: 4096,
            forget_after_ms: 7 * 24 * 3_600_000,
            rate_limit: Vec::new(),
        }
    }
}

impl AggregatorConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = hostpulse_common::config::load(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses and validates TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = hostpulse_common::config::parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// A copy fit to print: clear-text tokens are replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for t in c
            .auth
            .agent_tokens
            .iter_mut()
            .chain(c.auth.client_tokens.iter_mut())
        {
            if t.token.is_some() {
                t.token = Some("<redacted>".into());
            }
        }
        c.cluster.nats_url = c.cluster.redacted_url();
        c
    }

    /// Refuses values that parse but cannot work.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::invalid(path, key, reason);
        let positive: [(&'static str, u64); 11] = [
            ("hub.history_max_bytes", self.hub.history_max_bytes as u64),
            ("ingest.offline_after_ms", self.ingest.offline_after_ms),
            (
                "ingest.max_message_bytes",
                self.ingest.max_message_bytes as u64,
            ),
            (
                "ingest.max_samples_per_batch",
                self.ingest.max_samples_per_batch as u64,
            ),
            ("ingest.hello_timeout_ms", self.ingest.hello_timeout_ms),
            ("ws.max_message_bytes", self.ws.max_message_bytes as u64),
            ("ws.max_subscriptions", self.ws.max_subscriptions as u64),
            ("ws.ping_interval_ms", self.ws.ping_interval_ms),
            ("hub.history_len", self.hub.history_len as u64),
            ("hub.queue", self.hub.queue as u64),
            ("hub.forget_after_ms", self.hub.forget_after_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        crate::tls::Tls::load(&self.tls).map_err(|e| invalid("tls", &e.to_string()))?;
        crate::auth::Auth::from_config(&self.auth)
            .map_err(|e| ConfigError::invalid(path, e.key, e.reason))?;
        for (key, v) in [
            (
                "ingest.max_batches_per_sec",
                u64::from(self.ingest.max_batches_per_sec),
            ),
            ("ws.max_connections", self.ws.max_connections as u64),
            (
                "ws.max_connections_per_ip",
                self.ws.max_connections_per_ip as u64,
            ),
            ("ws.control_per_sec", u64::from(self.ws.control_per_sec)),
            ("ws.max_topic_bytes", self.ws.max_topic_bytes as u64),
            ("ws.max_topic_segments", self.ws.max_topic_segments as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if !(0.0..=1.0).contains(&self.ingest.overload_queue_fraction) {
            return Err(invalid(
                "ingest.overload_queue_fraction",
                "must be between 0 and 1",
            ));
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&self.ws.max_frame_bytes) {
            return Err(invalid(
                "ws.max_frame_bytes",
                &format!("must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES} bytes"),
            ));
        }
        if self.ws.ping_timeout_ms <= self.ws.ping_interval_ms {
            return Err(invalid(
                "ws.ping_timeout_ms",
                "must be longer than ws.ping_interval_ms",
            ));
        }
        for r in &self.hub.rate_limit {
            crate::topic::validate_pattern(&r.topic)
                .map_err(|e| invalid("hub.rate_limit.topic", &e.to_string()))?;
            if r.min_interval_ms == 0 {
                return Err(invalid(
                    "hub.rate_limit.min_interval_ms",
                    "must be positive",
                ));
            }
        }
        if let Some((key, reason)) = self.cluster.problem() {
            return Err(invalid(key, &reason));
        }
        if self.ws.queue_max_bytes < 64 << 10 {
            return Err(invalid("ws.queue_max_bytes", "must be at least 65536"));
        }
        if self.ingest.listen == self.http.listen && self.ingest.listen.port() != 0 {
            return Err(invalid(
                "http.listen",
                "must differ from ingest.listen (gRPC and HTTP use separate listeners)",
            ));
        }
        Ok(())
    }
}

/// Milliseconds to a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.hub.history_len, 600);
    }

    #[test]
    fn cluster_section_is_checked_and_its_password_redacted() {
        let e = AggregatorConfig::parse(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`cluster.node`"), "{e}");
        let e = AggregatorConfig::parse("[cluster]\nnode_name = \"a\"\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let c = AggregatorConfig::parse(
            "[cluster]\nnats_url = \"nats://hp:secret@127.0.0.1:4222\"\nnode = \"agg-1\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(
            !shown.contains("secret") && shown.contains("hp:<redacted>@"),
            "{shown}"
        );
        assert!(!AggregatorConfig::default().cluster.enabled());
    }

    #[test]
    fn unknown_key_and_bad_value_are_named() {
        let e = AggregatorConfig::parse("[hub]\nhistory = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string().contains("x.toml") && e.to_string().contains("history"),
            "{e}"
        );
        let e =
            AggregatorConfig::parse("[hub]\nhistory_len = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("`hub.history_len`: must be positive"),
            "{e}"
        );
        let e = AggregatorConfig::parse("[http]\nlisten = \"nope\"\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn frame_split_size_is_bounded_to_256_kib() {
        let c = AggregatorConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.ws.max_frame_bytes, 256 << 10);
        for bad in [0, 1023, (256 << 10) + 1] {
            let e = AggregatorConfig::parse(
                &format!("[ws]\nmax_frame_bytes = {bad}\n"),
                Path::new("x.toml"),
            )
            .unwrap_err();
            assert!(e.to_string().contains("`ws.max_frame_bytes`"), "{bad}: {e}");
        }
        let c =
            AggregatorConfig::parse("[ws]\nmax_frame_bytes = 1024\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.ws.max_frame_bytes, 1024);
    }
}
