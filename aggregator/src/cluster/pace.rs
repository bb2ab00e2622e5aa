//! A token bucket in bytes per second: the pace of one catch-up answer.
//!
//! The bucket holds at most `burst` bytes (one chunk), refilled at `rate`.
//! Taking more than it holds leaves it in debt, and the sender waits until
//! the debt is paid: over any stretch, an answer sends at most `rate` bytes
//! a second plus one chunk.

use std::time::Duration;

use tokio::time::Instant;

/// One answer's pace.
#[derive(Debug)]
pub struct Pace {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    /// `bytes_per_sec` (at least 1) with room for `burst` bytes at once,
    /// starting full.
    pub fn new(bytes_per_sec: u64, burst: usize, now: Instant) -> Self {
        Self {
            rate: bytes_per_sec.max(1) as f64,
            burst: burst as f64,
            tokens: burst as f64,
            at: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long to wait before sending them.
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn wait(&mut self, n: usize) {
        let wait = self.take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut p = Pace::new(1000, 500, t0);
        assert_eq!(p.take(500, t0), Duration::ZERO, "one chunk at once");
        assert_eq!(p.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid; another 250 bytes wait 250 ms.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(p.take(250, t1), Duration::from_millis(250));
        // A long pause refills one burst only.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(p.take(500, t2), Duration::ZERO);
        assert_eq!(p.take(1000, t2), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn ten_chunks_at_a_thousand_bytes_a_second_take_nine_seconds() {
        let start = Instant::now();
        let mut p = Pace::new(1000, 1000, start);
        for _ in 0..10 {
            p.wait(1000).await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }
}
