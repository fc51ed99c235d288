//! A token bucket: so many a second, with a burst. Two inputs anyone can
//! drive faster than a node should act on them are held to one:
//! - a process module's publishes (`publish_per_sec` in `mod.json`): a
//!   module writing publish lines in a tight loop (1.19 M in 40 s) once
//!   filled every link queue of its cluster and made four nodes declare
//!   their peers dead;
//! - the new members one link may introduce (`new_members_burst` and
//!   `new_members_per_sec`): a peer that holds the cluster key once sent
//!   2,000 invented members in one frame.
//!
//! Pure: the caller passes the time.

use std::time::Instant;

/// `per_sec` tokens a second, holding at most `burst`.
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
        TokenBucket::with_burst(per_sec, (per_sec * 2.0).max(1.0), now)
    }

    /// A full bucket of `per_sec` a second that holds `burst`.
    pub fn with_burst(per_sec: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one. A clock that went back refills
    /// nothing.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn a_burst_of_its_own_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::with_burst(2.0, 3.0, t0);
        assert_eq!(
            (0..5).map(|_| bucket.take(t0)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        // Half a second buys one more, and no more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.take(t1));
        assert!(!bucket.take(t1));
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::with_burst(1.0, 1.0, t0);
        assert!(bucket.take(t0));
        assert!(!bucket.take(t0 - Duration::from_secs(5)));
    }
}
