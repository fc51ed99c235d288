//! The supervisor's restart decisions, apart from the actor: the policy
//! (`restart` in `mod.json`), OTP's intensity and period, and backoff. Pure: the
//! caller passes the time, so the rules are tested on a mocked clock.

use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a module that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// After any exit the supervisor did not ask for.
    Always,
    /// After a panic or an error exit, not after a clean stop.
    OnFailure,
    /// Never.
    Never,
}

/// How a module is restarted, and when the supervisor gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// More restarts than this within `period` marks the module `failed`.
    pub max_restarts: u32,
    pub period: Duration,
    /// The first restart waits this long; each further restart within the
    /// period waits twice as long as the one before, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    /// The defaults: 5 restarts within 60 s.
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            max_restarts: 5,
            period: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// The wait before restart number `n` (1-based) within the period.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_initial.saturating_mul(factor).min(self.backoff_max)
    }
}

#[cfg(test)]
impl RestartPolicy {
    /// For tests: a 60 s period and backoff from 10 ms to 80 ms.
    pub(crate) fn quick(mode: RestartMode, max_restarts: u32) -> RestartPolicy {
        RestartPolicy {
            mode,
            max_restarts,
            period: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(80),
        }
    }
}

/// What to do about a module that exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Its policy does not restart this exit: it stays `failed` (it
    /// failed) or `stopped` (it ended cleanly).
    Stay { failed: bool },
    /// Start it again after `delay`.
    Restart { delay: Duration },
    /// It already restarted `max_restarts` times within `period`: give up
    /// and mark it `failed`.
    GiveUp,
}

/// The restarts of one module: all of them, and those within the period.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    recent: VecDeque<Instant>,
    total: u32,
}

impl RestartHistory {
    /// Decides about an exit at `now` (`failure`: a panic or an error exit)
    /// and, for a restart, records it.
    pub fn decide(&mut self, policy: &RestartPolicy, failure: bool, now: Instant) -> RestartDecision {
        let restart = match policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => failure,
            RestartMode::Never => false,
        };
        if !restart {
            return RestartDecision::Stay { failed: failure };
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= policy.max_restarts {
            return RestartDecision::GiveUp;
        }
        self.recent.push_back(now);
        self.total = self.total.saturating_add(1);
        RestartDecision::Restart {
            delay: policy.backoff(self.recent.len() as u32),
        }
    }

    /// Restarts since the module was first started.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Restarts that still count against `max_restarts`.
    pub fn in_period(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: RestartMode, max_restarts: u32) -> RestartPolicy {
        RestartPolicy::quick(mode, max_restarts)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy(RestartMode::Always, 5);
        let delays: Vec<u64> = (1..=5).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 80]);
        assert_eq!(p.backoff(200), ms(80), "no overflow for huge counts");
    }

    /// Each mode against a clean exit and a failure.
    #[test]
    fn the_policy_decides_which_exits_restart() {
        let t0 = Instant::now();
        // (mode, failure, expected)
        let rows = [
            (RestartMode::Always, false, RestartDecision::Restart { delay: ms(10) }),
            (RestartMode::Always, true, RestartDecision::Restart { delay: ms(10) }),
            (RestartMode::OnFailure, true, RestartDecision::Restart { delay: ms(10) }),
            (RestartMode::OnFailure, false, RestartDecision::Stay { failed: false }),
            (RestartMode::Never, true, RestartDecision::Stay { failed: true }),
            (RestartMode::Never, false, RestartDecision::Stay { failed: false }),
        ];
        for (mode, failure, want) in rows {
            let mut history = RestartHistory::default();
            assert_eq!(
                history.decide(&policy(mode, 5), failure, t0),
                want,
                "{mode:?}, failure {failure}"
            );
            let restarted = matches!(want, RestartDecision::Restart { .. });
            assert_eq!(history.total(), u32::from(restarted), "{mode:?}");
        }
    }

    /// Intensity and period: the sixth failure within a minute gives up;
    /// restarts older than the period no longer count, and backoff starts
    /// over with them.
    #[test]
    fn too_many_restarts_within_the_period_give_up_and_old_ones_expire() {
        let p = policy(RestartMode::Always, 5);
        let t0 = Instant::now();
        let mut history = RestartHistory::default();
        let delays: Vec<RestartDecision> = (0..5).map(|i| history.decide(&p, true, t0 + ms(i * 100))).collect();
        let want: Vec<RestartDecision> = [10, 20, 40, 80, 80]
            .into_iter()
            .map(|d| RestartDecision::Restart { delay: ms(d) })
            .collect();
        assert_eq!(delays, want);
        assert_eq!(history.decide(&p, true, t0 + ms(600)), RestartDecision::GiveUp);
        assert_eq!(
            (history.total(), history.in_period()),
            (5, 5),
            "a give-up is no restart"
        );

        // A minute after the first restart it expires, and the next exit
        // restarts again, with the backoff of the fifth in the period.
        let later = t0 + Duration::from_secs(60) + ms(50);
        assert_eq!(
            history.decide(&p, true, later),
            RestartDecision::Restart { delay: ms(80) }
        );
        assert_eq!(history.in_period(), 5);
        // Long after, every old restart has expired: backoff starts over.
        let much_later = later + Duration::from_secs(120);
        assert_eq!(
            history.decide(&p, true, much_later),
            RestartDecision::Restart { delay: ms(10) }
        );
        assert_eq!((history.total(), history.in_period()), (7, 1));
    }

    #[test]
    fn max_restarts_of_zero_gives_up_at_the_first_exit() {
        let mut history = RestartHistory::default();
        let t0 = Instant::now();
        assert_eq!(
            history.decide(&policy(RestartMode::Always, 0), true, t0),
            RestartDecision::GiveUp
        );
        assert_eq!(history.total(), 0);
    }
}
