//! `[storage]`: where the embedded store lives, how long each tier keeps its
//! data, the disk bound and the write cadence, with defaults and validation.
//! `AggregatorConfig` (`config.rs`) composes it. Without a `dir` the store is
//! off and the aggregator keeps history in memory only, as before.

use std::path::PathBuf;

use hostpulse_common::config::{first_zero, not_a_fraction};
use serde::{Deserialize, Serialize};

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory of the store (created if missing). Unset: no store,
    /// history lives in memory only and is gone on restart.
    pub dir: Option<PathBuf>,
    /// How long per-second (raw) values are kept, in hours.
    pub raw_retention_hours: u64,
    /// How long 1-minute rollups are kept, in days.
    pub minute_retention_days: u64,
    /// How long 1-hour rollups are kept, in days.
    pub hour_retention_days: u64,
    /// Most bytes the store may use on disk (pages in use in its file);
    /// beyond it the oldest data goes first, finest tier first. 0: no
    /// bound but retention.
    pub max_disk_bytes: u64,
    /// Samples are buffered in memory and written in one transaction this
    /// often, in ms: a crash loses at most this much.
    pub flush_interval_ms: u64,
    /// Flushes append to a log; each series' rows move from it into the
    /// per-series tables once per this interval, in ms (one insert per
    /// series per interval instead of per flush). The series are split into
    /// `checkpoint_interval_ms / flush_interval_ms` slices, each flush
    /// checkpointing one, so no flush writes them all; a log record is
    /// deleted once every slice has passed it. Longer costs less CPU and
    /// holds more rows in memory (and in the log a crash replays).
    pub checkpoint_interval_ms: u64,
    /// Batches of samples queued from ingest towards the store's writer
    /// thread. It takes ingest's samples while a flush writes, and while
    /// 10,000 hosts connect at once and the writer creates their series
    /// (131,072: 13 s of 10,000 agents sending a sample a second). When it
    /// is full, ingest waits for room before it acknowledges a batch (the
    /// agent keeps it meanwhile); a peer's update is dropped (and counted).
    pub queue: usize,
    /// Bytes of those batches, as received (MessagePack), queued at most:
    /// the bound that holds when agents send many samples per batch (a
    /// backlog after a restart). A whole host's sample is ~1.5 KB as
    /// received, and about as much in memory while it waits. At most
    /// `u32::MAX` (4 GiB).
    pub queue_bytes: u64,
    /// Bytes of the store's pages cached in memory. The writer's inserts
    /// land on the pages of the series being checkpointed; when those do
    /// not fit, each insert reads its page back from the file.
    pub cache_bytes: u64,
    /// Retention, eviction and sealing of idle series run this often, in ms.
    pub maintenance_interval_ms: u64,
    /// Most points per field in one `/series` answer; more is refused with
    /// 400 suggesting a larger step.
    pub max_points: usize,
    /// Nice steps the store's writer thread runs below the live path (0 to
    /// 19). Under CPU contention the live path goes first and the store
    /// catches up from its queue. 0 shares the CPU equally; at 10,000
    /// hosts on one core it measured worse (agents were asked to slow
    /// down more often).
    pub writer_nice: i32,
    /// While the queue is at least this fraction full (0 to 1), acks ask
    /// agents to sample no more often than `ingest.overload_interval_ms`.
    /// Near full: the queue is sized to absorb the store's own bursts (a
    /// fleet connecting, a window sealing) without slowing anyone.
    pub overload_queue_fraction: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            raw_retention_hours: 48,
            minute_retention_days: 90,
            hour_retention_days: 730,
            max_disk_bytes: 0,
            flush_interval_ms: 2_000,
            checkpoint_interval_ms: 60_000,
            queue: 131_072,
            queue_bytes: 256 << 20,
            cache_bytes: super::engine::CACHE_BYTES as u64,
            maintenance_interval_ms: 60_000,
            max_points: 20_000,
            writer_nice: 10,
            overload_queue_fraction: 0.9,
        }
    }
}

impl StorageConfig {
    /// Whether the store is on.
    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// The first value that parses but cannot work, as (key, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(p) = first_zero(&[
            ("storage.raw_retention_hours", self.raw_retention_hours),
            ("storage.minute_retention_days", self.minute_retention_days),
            ("storage.hour_retention_days", self.hour_retention_days),
            ("storage.flush_interval_ms", self.flush_interval_ms),
            (
                "storage.checkpoint_interval_ms",
                self.checkpoint_interval_ms,
            ),
            ("storage.queue", self.queue as u64),
            ("storage.queue_bytes", self.queue_bytes),
            ("storage.cache_bytes", self.cache_bytes),
            (
                "storage.maintenance_interval_ms",
                self.maintenance_interval_ms,
            ),
            ("storage.max_points", self.max_points as u64),
        ]) {
            return Some(p);
        }
        if let Some(p) = not_a_fraction(
            "storage.overload_queue_fraction",
            self.overload_queue_fraction,
        ) {
            return Some(p);
        }
        if !(0..=19).contains(&self.writer_nice) {
            return Some((
                "storage.writer_nice",
                format!("must be 0 to 19, not {}", self.writer_nice),
            ));
        }
        if self.queue_bytes > u64::from(u32::MAX) {
            return Some((
                "storage.queue_bytes",
                format!("must be at most {} (4 GiB)", u32::MAX),
            ));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Some(("storage.dir", "must not be empty".into()));
        }
        if self.max_disk_bytes != 0 && self.max_disk_bytes < 1 << 20 {
            return Some((
                "storage.max_disk_bytes",
                "must be 0 (no bound) or at least 1048576 (1 MiB)".into(),
            ));
        }
        None
    }

    /// Retention of `tier` in ms.
    pub fn retention_ms(&self, tier: super::Tier) -> i64 {
        const HOUR: u64 = 3_600_000;
        let ms = match tier {
            super::Tier::Raw => self.raw_retention_hours * HOUR,
            super::Tier::Minute => self.minute_retention_days * 24 * HOUR,
            super::Tier::Hour => self.hour_retention_days * 24 * HOUR,
        };
        ms.min(i64::MAX as u64) as i64
    }
}
