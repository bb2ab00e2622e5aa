//! `[ingest]`: the gRPC listener and what an agent stream may send, with
//! defaults and validation. `AggregatorConfig` (`config.rs`) composes it.

use hostpulse_common::config::{first_zero, not_a_fraction};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
    /// this fraction full (0 to 1; 0 means always, for testing agents), or
    /// the store's queue `storage.overload_queue_fraction` full.
    pub overload_queue_fraction: f64,
    /// Acks ask agents to slow down only once a queue has stayed that full
    /// this long without a break, in milliseconds (0: at once). A queue
    /// full for a moment has drained before an agent could act on the
    /// request, which would only cost it samples.
    pub overload_after_ms: u64,
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
            overload_after_ms: 1_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

impl IngestConfig {
    /// The first value that parses but cannot work, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = first_zero(&[
            ("ingest.offline_after_ms", self.offline_after_ms),
            ("ingest.max_message_bytes", self.max_message_bytes as u64),
            (
                "ingest.max_samples_per_batch",
                self.max_samples_per_batch as u64,
            ),
            ("ingest.hello_timeout_ms", self.hello_timeout_ms),
            (
                "ingest.max_batches_per_sec",
                u64::from(self.max_batches_per_sec),
            ),
        ]) {
            return Some(p);
        }
        not_a_fraction(
            "ingest.overload_queue_fraction",
            self.overload_queue_fraction,
        )
    }
}
