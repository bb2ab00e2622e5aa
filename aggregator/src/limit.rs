//! Token buckets for rate limits (control messages per connection, batches
//! per agent stream, bytes of a cluster catch-up answer).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            self.tokens =
                (self.tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        }
        self.at = Some(now);
    }

    /// Takes a token if there is one (true).
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token, going into debt if need be; returns how long to wait
    /// until the debt is paid (`None`: no wait).
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        self.take_n(1.0, now)
    }

    /// Takes `n` tokens, going into debt if need be; returns how long to
    /// wait until the debt is paid (`None`: no wait).
    pub fn take_n(&mut self, n: f64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Takes `n` tokens and waits until the debt they leave is paid.
    pub async fn wait_for(&mut self, n: f64) {
        if let Some(wait) = self.take_n(n, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 3.0);
        let now = Instant::now();
        assert!(b.try_take(now) && b.try_take(now) && b.try_take(now));
        assert!(!b.try_take(now));
        assert!(b.try_take(now + Duration::from_millis(100)));
        let mut b = TokenBucket::new(10.0, 1.0);
        assert_eq!(b.take(now), None);
        assert_eq!(b.take(now), Some(Duration::from_millis(100)));
    }

    #[test]
    fn bytes_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut p = TokenBucket::new(1000.0, 500.0);
        assert_eq!(p.take_n(500.0, t0), None, "one chunk at once");
        assert_eq!(p.take_n(500.0, t0), Some(Duration::from_millis(500)));
        // Half a second later the debt is paid; another 250 bytes wait 250 ms.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(p.take_n(250.0, t1), Some(Duration::from_millis(250)));
        // A long pause refills one burst only.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(p.take_n(500.0, t2), None);
        assert_eq!(p.take_n(1000.0, t2), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn ten_chunks_at_a_thousand_bytes_a_second_take_nine_seconds() {
        let start = Instant::now();
        let mut p = TokenBucket::new(1000.0, 1000.0);
        for _ in 0..10 {
            p.wait_for(1000.0).await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }
}
