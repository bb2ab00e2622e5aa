//! `[hub]`: history, the hub queue, forgetting and rate limits, with
//! defaults and validation. `AggregatorConfig` (`config.rs`) composes it.

use hostpulse_common::config::first_zero;
use serde::{Deserialize, Serialize};

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
    /// Bytes of updates queued to the hub before publishers wait: one
    /// command can carry a whole batch of samples, so commands alone do not
    /// bound its memory.
    pub queue_max_bytes: usize,
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
            history_max_bytes: 2 << 30,
            queue: 4096,
            queue_max_bytes: 64 << 20,
            forget_after_ms: 7 * 24 * 3_600_000,
            rate_limit: Vec::new(),
        }
    }
}

impl HubConfig {
    /// The first value that parses but cannot work, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = first_zero(&[
            ("hub.history_max_bytes", self.history_max_bytes as u64),
            ("hub.history_len", self.history_len as u64),
            ("hub.queue", self.queue as u64),
            ("hub.queue_max_bytes", self.queue_max_bytes as u64),
            ("hub.forget_after_ms", self.forget_after_ms),
        ]) {
            return Some(p);
        }
        for r in &self.rate_limit {
            if let Err(e) = crate::topic::validate_pattern(&r.topic) {
                return Some(("hub.rate_limit.topic", e.to_string()));
            }
            if r.min_interval_ms == 0 {
                return Some(("hub.rate_limit.min_interval_ms", "must be positive".into()));
            }
        }
        None
    }
}
