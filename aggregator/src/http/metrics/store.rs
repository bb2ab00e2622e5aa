//! The embedded store's families for `/metrics` (when `[storage]` is on):
//! bytes on disk, values written, flush duration, samples waiting in the
//! queue and ingest waiting for it, peer samples dropped at it, blocks expired by retention and evicted by `max_disk_bytes`.
//! Read from the counters the store's writer keeps; nothing is computed at
//! scrape time (bytes in use are measured at each maintenance pass).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::registry::Unit;

use super::Scrape;
use crate::store::StoreView;

/// Adds the store's counters and gauges to `scrape`.
pub(super) fn extend(scrape: &mut Scrape, store: &StoreView) {
    let s = &store.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    scrape.counters.extend([
        (
            "hostpulse_store_values_written",
            "Raw values written to the store (each also rolled up into the 1-minute and 1-hour tiers).",
            load(&s.values_written),
        ),
        (
            "hostpulse_store_flushes",
            "Flush transactions written.",
            load(&s.flushes),
        ),
        (
            "hostpulse_store_flush_errors",
            "Flushes that failed; their rows are kept in memory and written with a later flush.",
            load(&s.flush_errors),
        ),
        (
            "hostpulse_store_values_lost",
            "Raw values not stored because flushes kept failing for a whole checkpoint rotation.",
            load(&s.values_lost),
        ),
        (
            "hostpulse_store_dropped_samples",
            "Samples not stored: a cluster peer's updates that found the queue to the store's writer full (the hub does not wait for it).",
            load(&s.dropped_samples),
        ),
        (
            "hostpulse_store_ingest_waits",
            "Batches of ingest that waited for room in the full queue to the store's writer (storage.queue, storage.queue_bytes) before being acknowledged.",
            load(&s.waits),
        ),
        (
            "hostpulse_store_late_values",
            "Values not stored because their series already held a newer one.",
            load(&s.late),
        ),
        (
            "hostpulse_store_expired_blocks",
            "Sealed blocks deleted by retention.",
            load(&s.expired_blocks),
        ),
        (
            "hostpulse_store_evicted_blocks",
            "Sealed blocks deleted, oldest first, to keep the store within storage.max_disk_bytes.",
            load(&s.evicted_blocks),
        ),
        (
            "hostpulse_store_evicted_bytes",
            "Bytes of the blocks evicted by storage.max_disk_bytes.",
            load(&s.evicted_bytes),
        ),
    ]);
    scrape.gauges.extend([
        (
            "hostpulse_store_used",
            "Bytes in use in the store's file (what storage.max_disk_bytes bounds), as of the last maintenance pass.",
            Some(Unit::Bytes),
            load(&s.used_bytes) as f64,
        ),
        (
            "hostpulse_store_file",
            "Size of the store's file on disk.",
            Some(Unit::Bytes),
            load(&s.file_bytes) as f64,
        ),
        (
            "hostpulse_store_last_flush_duration",
            "Duration of the latest flush.",
            Some(Unit::Seconds),
            load(&s.last_flush_micros) as f64 / 1e6,
        ),
        (
            "hostpulse_store_queue_depth",
            "Batches waiting in the queue to the store's writer (bounded by storage.queue; when full, ingest waits).",
            None,
            load(&s.queued) as f64,
        ),
        (
            "hostpulse_store_queue",
            "Bytes (as received) of the batches waiting in the queue to the store's writer (bounded by storage.queue_bytes).",
            Some(Unit::Bytes),
            load(&s.queued_bytes) as f64,
        ),
    ]);
    scrape.families.push(super::Family {
        name: "hostpulse_store_ingest_wait",
        help: "Time ingest waited for room in the full queue to the store's writer: the store is behind ingest, which slows agents instead of losing samples.",
        unit: Some("seconds"),
        counter: true,
        series: vec![(Vec::new(), load(&s.wait_micros) as f64 / 1e6)],
    });
    scrape.families.push(super::Family {
        name: "hostpulse_store_flush",
        help: "Time spent in flushes (rate over hostpulse_store_flushes_total: the mean flush duration).",
        unit: Some("seconds"),
        counter: true,
        series: vec![(Vec::new(), load(&s.flush_micros) as f64 / 1e6)],
    });
}
