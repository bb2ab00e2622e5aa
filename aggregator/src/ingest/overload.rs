//! When acks ask agents to slow down: while the hub's queue or the store's
//! has been behind for `ingest.overload_after_ms` without a break.
//!
//! A request takes effect only at the agent's next sample, after the batch
//! that carried it was handled, and it costs that agent its samples for
//! `ingest.overload_interval_ms`. A queue that fills for a moment (a burst,
//! a stall shorter than a sampling interval) has drained before any agent
//! could act on the request, so asking then loses samples and relieves
//! nothing; the queue absorbs it, and the agents' batches wait in their
//! streams meanwhile. Only a queue that stays behind asks.
//!
//! Each cause is counted in [`IngestStats`]
//! (`hostpulse_ingest_slow_down_acks_total{cause}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::registry::IngestStats;

/// Since when one queue has been behind, as the sessions reading it saw it.
#[derive(Debug)]
struct Sustained {
    /// Milliseconds since `Overload::epoch`, plus one, at the first sight
    /// of the queue behind; 0 while it is not.
    since: AtomicU64,
}

impl Sustained {
    const fn new() -> Self {
        Self {
            since: AtomicU64::new(0),
        }
    }

    /// Records whether the queue is behind at `now_ms` (> 0 when it is;
    /// not read when it is not); returns whether it has been for
    /// `after_ms` or longer.
    fn observe(&self, behind: bool, now_ms: u64, after_ms: u64) -> bool {
        if !behind {
            if self.since.load(Ordering::Relaxed) != 0 {
                self.since.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let first = self
            .since
            .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        let since = first.map_or_else(|since| since, |_| now_ms);
        now_ms.saturating_sub(since) >= after_ms
    }
}

/// The slow-down decision every session of one ingest service shares.
#[derive(Debug)]
pub struct Overload {
    epoch: Instant,
    /// Interval asked of agents, in ms (0: never ask).
    interval_ms: u32,
    /// The hub's queue counts as behind at least this full.
    hub_fraction: f64,
    /// How long a queue must stay behind before acks ask, in ms.
    after_ms: u64,
    hub: Sustained,
    store: Sustained,
}

impl Overload {
    /// Asks for `interval` once the hub's queue has been `hub_fraction`
    /// full (or the store's, by its own measure) for `after`.
    pub fn new(interval: Duration, hub_fraction: f64, after: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval_ms: interval.as_millis().min(u128::from(u32::MAX)) as u32,
            hub_fraction,
            after_ms: after.as_millis().min(u128::from(u64::MAX)) as u64,
            hub: Sustained::new(),
            store: Sustained::new(),
        }
    }

    /// The `min_interval_ms` of the next ack (0: sample as configured),
    /// from the hub's queue fill and whether the store's queue is behind
    /// now; counts each cause that asks.
    pub fn min_interval_ms(&self, hub_fill: f64, store_behind: bool, stats: &IngestStats) -> u32 {
        if self.interval_ms == 0 {
            return 0; // never asks
        }
        let hub_behind = hub_fill >= self.hub_fraction;
        // The clock only when a queue is behind: the usual batch needs none.
        let now_ms = if hub_behind || store_behind {
            self.epoch.elapsed().as_millis() as u64 + 1
        } else {
            0
        };
        let hub = self.hub.observe(hub_behind, now_ms, self.after_ms);
        let store = self.store.observe(store_behind, now_ms, self.after_ms);
        if hub {
            stats.slow_down_hub.fetch_add(1, Ordering::Relaxed);
        }
        if store {
            stats.slow_down_store.fetch_add(1, Ordering::Relaxed);
        }
        if hub || store { self.interval_ms } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queue_behind_for_the_whole_grace_asks() {
        let s = Sustained::new();
        // Behind at 10 ms: not yet, with a grace of 100 ms.
        assert!(!s.observe(true, 10, 100));
        assert!(!s.observe(true, 109, 100));
        assert!(s.observe(true, 110, 100));
        assert!(s.observe(true, 500, 100));
        // One sight of it caught up starts the grace again.
        assert!(!s.observe(false, 501, 100));
        assert!(!s.observe(true, 502, 100));
        assert!(!s.observe(true, 601, 100));
        assert!(s.observe(true, 602, 100));
        // No grace: asks at the first sight, as before it existed.
        let s = Sustained::new();
        assert!(s.observe(true, 1, 0));
        assert!(!s.observe(false, 2, 0));
    }

    #[test]
    fn each_cause_is_counted_and_the_interval_asked_only_when_one_holds() {
        let stats = IngestStats::default();
        let o = Overload::new(Duration::from_millis(5_000), 0.5, Duration::ZERO);
        assert_eq!(o.min_interval_ms(0.49, false, &stats), 0);
        assert_eq!(o.min_interval_ms(0.5, false, &stats), 5_000);
        assert_eq!(o.min_interval_ms(0.0, true, &stats), 5_000);
        assert_eq!(o.min_interval_ms(0.9, true, &stats), 5_000);
        assert_eq!(stats.slow_down_hub.load(Ordering::Relaxed), 2);
        assert_eq!(stats.slow_down_store.load(Ordering::Relaxed), 2);
        // With a grace of an hour, nothing in this test asks.
        let o = Overload::new(Duration::from_millis(5_000), 0.5, Duration::from_secs(3600));
        assert_eq!(o.min_interval_ms(1.0, true, &stats), 0);
        assert_eq!(o.min_interval_ms(1.0, true, &stats), 0);
        assert_eq!(stats.slow_down_hub.load(Ordering::Relaxed), 2);
        // An interval of 0 never asks, and counts nothing.
        let o = Overload::new(Duration::ZERO, 0.0, Duration::ZERO);
        assert_eq!(o.min_interval_ms(1.0, true, &stats), 0);
        assert_eq!(stats.slow_down_store.load(Ordering::Relaxed), 2);
    }
}
