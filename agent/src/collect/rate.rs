//! Counters to per-second rates, over the measured time between two readings.
//!
//! Shared by the network and disk families: each keeps the previous reading
//! of every named counter set and the instant it was taken, and divides the
//! difference (`saturating_sub`, so a counter that restarted from zero reads
//! as 0, not as a huge rate) by the time that really passed, which is not
//! the configured interval when a sample is late or the agent was paused.
//!
//! Rates are rounded to whole units per second (bytes, packets, errors):
//! the fraction is only the jitter of the measured interval, and whole
//! numbers compress far better in the aggregator's store (BENCHMARKS.md,
//! "Embedded store").

use std::collections::HashMap;
use std::time::Instant;

/// Previous counter readings, by entry name.
#[derive(Debug)]
pub(super) struct Rates<const N: usize> {
    previous: HashMap<String, [u64; N]>,
    at: Option<Instant>,
}

impl<const N: usize> Default for Rates<N> {
    fn default() -> Self {
        Self {
            previous: HashMap::new(),
            at: None,
        }
    }
}

/// One reading: the entries seen now, each with its counters.
pub(super) struct Reading<const N: usize> {
    now: Instant,
    elapsed_secs: f64,
    current: HashMap<String, [u64; N]>,
}

impl<const N: usize> Rates<N> {
    /// Starts a reading taken at `now`.
    pub(super) fn begin(&self, now: Instant) -> Reading<N> {
        Reading {
            now,
            elapsed_secs: self
                .at
                .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64()),
            current: HashMap::with_capacity(self.previous.len()),
        }
    }

    /// Records `counters` for `name` and returns their rates per second,
    /// rounded to whole units, or `None` on the first reading of that name
    /// (no baseline yet).
    pub(super) fn rate(
        &self,
        reading: &mut Reading<N>,
        name: &str,
        counters: [u64; N],
    ) -> Option<[f64; N]> {
        reading.current.insert(name.to_owned(), counters);
        let before = self.previous.get(name)?;
        if reading.elapsed_secs <= 0.0 {
            return None;
        }
        let mut out = [0.0; N];
        for (o, (now, was)) in out.iter_mut().zip(counters.iter().zip(before)) {
            *o = (now.saturating_sub(*was) as f64 / reading.elapsed_secs).round();
        }
        Some(out)
    }

    /// Keeps this reading as the baseline of the next; names not seen in it
    /// are forgotten.
    pub(super) fn finish(&mut self, reading: Reading<N>) {
        self.previous = reading.current;
        self.at = Some(reading.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_use_the_measured_elapsed_time() {
        let mut rates = Rates::<2>::default();
        let t0 = Instant::now();
        let mut r = rates.begin(t0);
        assert_eq!(rates.rate(&mut r, "eth0", [1000, 10]), None);
        rates.finish(r);
        // Two seconds later, not the one-second interval a caller might assume.
        let mut r = rates.begin(t0 + Duration::from_secs(2));
        assert_eq!(rates.rate(&mut r, "eth0", [3000, 10]), Some([1000.0, 0.0]));
        assert_eq!(rates.rate(&mut r, "eth1", [5, 5]), None, "new entry");
        rates.finish(r);
        // A counter that went backwards (device re-created) reads as 0.
        let mut r = rates.begin(t0 + Duration::from_secs(3));
        assert_eq!(rates.rate(&mut r, "eth0", [10, 10]), Some([0.0, 0.0]));
        rates.finish(r);
        // Three seconds for 1000 bytes and 2 packets: whole units, rounded.
        let mut r = rates.begin(t0 + Duration::from_secs(6));
        assert_eq!(rates.rate(&mut r, "eth0", [1010, 12]), Some([333.0, 1.0]));
        rates.finish(r);
        // Under half a unit a second reads as 0.
        let mut r = rates.begin(t0 + Duration::from_secs(10));
        assert_eq!(rates.rate(&mut r, "eth0", [1011, 12]), Some([0.0, 0.0]));
        rates.finish(r);
    }
}
