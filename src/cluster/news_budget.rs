//! How many members a link may introduce. News of a member this node has
//! never heard of costs a table entry, probes and a place in every
//! neighbour's table, and a peer that holds the cluster key can invent
//! members by the thousand (2,000 in one frame once split a three-node
//! cluster for minutes). So each link gets a budget of new members: a
//! burst for a mass start, then a steady rate. News over the budget is
//! dropped; anti-entropy offers a genuine member again a round later.
//!
//! A member's own hello and the table a seed sends in answer to this
//! node's join are not news by a third party, and do not count.
//!
//! Pure: a token bucket over `Instant`s the caller passes.

use std::time::Instant;

/// A link's budget of new members: `burst` at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewsLimits {
    pub burst: u32,
    pub per_sec: u32,
}

/// The new members a link may still introduce now.
#[derive(Debug, Clone)]
pub struct NewsBudget {
    tokens: f64,
    refilled: Instant,
}

impl NewsBudget {
    /// A full budget.
    pub fn new(limits: NewsLimits, now: Instant) -> NewsBudget {
        NewsBudget {
            tokens: f64::from(limits.burst),
            refilled: now,
        }
    }

    /// Takes one new member from the budget; false when it is spent.
    pub fn take(&mut self, limits: NewsLimits, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(limits.per_sec)).min(f64::from(limits.burst));
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

    const LIMITS: NewsLimits = NewsLimits { burst: 3, per_sec: 2 };

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut budget = NewsBudget::new(LIMITS, t0);
        assert_eq!(
            (0..5).map(|_| budget.take(LIMITS, t0)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        // Half a second buys one more, and no more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(budget.take(LIMITS, t1));
        assert!(!budget.take(LIMITS, t1));
    }

    #[test]
    fn an_idle_link_saves_up_to_the_burst_only() {
        let t0 = Instant::now();
        let mut budget = NewsBudget::new(LIMITS, t0);
        for _ in 0..3 {
            assert!(budget.take(LIMITS, t0));
        }
        let later = t0 + Duration::from_secs(3600);
        let taken = (0..10).filter(|_| budget.take(LIMITS, later)).count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut budget = NewsBudget::new(NewsLimits { burst: 1, per_sec: 1 }, t0);
        assert!(budget.take(NewsLimits { burst: 1, per_sec: 1 }, t0));
        assert!(!budget.take(NewsLimits { burst: 1, per_sec: 1 }, t0 - Duration::from_secs(5)));
    }
}
