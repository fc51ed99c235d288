//! A process module's publish rate limit. A module writing publish lines in a
//! tight loop (1.19 M in 40 s) once filled every link queue of its cluster
//! and made four nodes declare their peers dead; now each module may burst
//! to twice its rate and is then held to `publish_per_sec` (in `mod.json`),
//! and what it publishes beyond that is dropped and counted.
//!
//! Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// A token bucket: `per_sec` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_sec` a second that holds two seconds' worth
    /// (at least one token).
    pub fn new(per_sec: f64, now: Instant) -> TokenBucket {
        let burst = (per_sec * 2.0).max(1.0);
        TokenBucket {
            per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Says when to log drops: at the first one, then at most once per
/// `every`, with the count since the last line, so a flood cannot flood the
/// log as well.
#[derive(Debug, Clone)]
pub struct DropLog {
    every: Duration,
    unreported: u64,
    last_line: Option<Instant>,
}

impl DropLog {
    pub fn new(every: Duration) -> DropLog {
        DropLog {
            every,
            unreported: 0,
            last_line: None,
        }
    }

    /// Notes one drop; answers the drops to report if a line is due now.
    pub fn drop_one(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, t0);
        let burst = (0..100).filter(|_| bucket.take(t0)).count();
        assert_eq!(burst, 20, "two seconds' worth at once");
        assert!(!bucket.take(t0));
        // One second later: ten more, not twenty.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| bucket.take(t1)).count(), 10);
        // A long quiet spell refills to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| bucket.take(t2)).count(), 20);
    }

    #[test]
    fn a_slow_rate_still_lets_one_through() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0.1, t0);
        assert!(bucket.take(t0));
        assert!(!bucket.take(t0 + Duration::from_secs(5)));
        assert!(bucket.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn drops_are_logged_at_once_then_summed_per_interval() {
        let t0 = Instant::now();
        let mut log = DropLog::new(Duration::from_secs(10));
        assert_eq!(log.drop_one(t0), Some(1));
        for s in 1..=9 {
            assert_eq!(log.drop_one(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(log.drop_one(t0 + Duration::from_secs(10)), Some(10));
        assert_eq!(log.drop_one(t0 + Duration::from_secs(11)), None);
    }
}
