//! Token buckets for rate limits (control messages per connection, batches
//! per agent stream).

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
        self.refill(now);
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
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
}
