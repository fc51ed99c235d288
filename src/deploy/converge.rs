//! Where this node stands on what the deployments table asks of it: per
//! module, the entry it follows, whether that is done, under way, or
//! failed (and when it is tried again). A step that fails is retried with a
//! growing backoff, never in a hot loop; its reason is in the node's status
//! report, so `conjoiner status` and `conjoiner deployments` show which
//! nodes are behind and why.

use super::table::Action;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The first retry of a failed step waits this long; each failure in a row
/// doubles it, up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// How long the `failures`-th failure in a row waits before the next try.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Where a module stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalState {
    /// It runs as the entry asks (or, for an undeploy, is gone).
    Converged,
    /// A step is under way.
    Working,
    /// The last step failed; it is tried again later.
    Failed,
}

impl GoalState {
    pub fn as_str(self) -> &'static str {
        match self {
            GoalState::Converged => "converged",
            GoalState::Working => "working",
            GoalState::Failed => "failed",
        }
    }
}

/// One module the table names for this node, as the node's status report
/// carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub module: String,
    /// The entry it follows, and that entry's version clock.
    pub entry: String,
    pub clock: u64,
    pub action: Action,
    pub state: GoalState,
    /// What the step does now, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The failure's stable code (`fetch_failed`, `start_failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Failures in a row, and how long until the next try.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

struct Tracked {
    goal: Goal,
    retry_at: Option<Instant>,
}

/// Every module's goal on this node.
#[derive(Default)]
pub struct Goals {
    by_module: BTreeMap<String, Tracked>,
}

impl Goals {
    fn same_entry(&self, module: &str, entry: &str, clock: u64) -> Option<&Tracked> {
        self.by_module
            .get(module)
            .filter(|t| t.goal.entry == entry && t.goal.clock == clock)
    }

    /// Whether a step of `module` for this version of `entry` may start at
    /// `now`: none runs, and it is not waiting out a backoff for that same
    /// version (a newer version is tried at once).
    pub fn may_start(&self, module: &str, entry: &str, clock: u64, now: Instant) -> bool {
        if self
            .by_module
            .get(module)
            .is_some_and(|t| t.goal.state == GoalState::Working)
        {
            return false;
        }
        self.same_entry(module, entry, clock)
            .and_then(|t| t.retry_at)
            .is_none_or(|at| now >= at)
    }

    /// Whether `module` has a step under way.
    pub fn busy(&self, module: &str) -> bool {
        self.by_module
            .get(module)
            .is_some_and(|t| t.goal.state == GoalState::Working)
    }

    /// A step starts; `what` says what it does, for the status report.
    pub fn started(&mut self, module: &str, entry: &str, clock: u64, action: Action, what: String) {
        let failures = self.same_entry(module, entry, clock).map_or(0, |t| t.goal.failures);
        self.by_module.insert(
            module.to_string(),
            Tracked {
                goal: Goal {
                    module: module.to_string(),
                    entry: entry.to_string(),
                    clock,
                    action,
                    state: GoalState::Working,
                    reason: Some(what),
                    code: None,
                    failures,
                    retry_in_ms: None,
                },
                retry_at: None,
            },
        );
    }

    /// What a running step does now (`fetching web`, `starting web 1.2`).
    pub fn say(&mut self, module: &str, what: String) {
        if let Some(t) = self
            .by_module
            .get_mut(module)
            .filter(|t| t.goal.state == GoalState::Working)
        {
            t.goal.reason = Some(what);
        }
    }

    /// Nothing to do: it already runs as `entry` asks.
    pub fn converged(&mut self, module: &str, entry: &str, clock: u64, action: Action) {
        if self.busy(module) {
            return;
        }
        self.by_module.insert(
            module.to_string(),
            Tracked {
                goal: Goal {
                    module: module.to_string(),
                    entry: entry.to_string(),
                    clock,
                    action,
                    state: GoalState::Converged,
                    reason: None,
                    code: None,
                    failures: 0,
                    retry_in_ms: None,
                },
                retry_at: None,
            },
        );
    }

    /// The entry that would decide `module` here was refused by the
    /// command gate: nothing is done, and the status says why (no retry:
    /// only a new, signed entry changes that).
    pub fn refused(&mut self, module: &str, entry: &str, clock: u64, action: Action, reason: String) {
        if self.busy(module) {
            return;
        }
        self.by_module.insert(
            module.to_string(),
            Tracked {
                goal: Goal {
                    module: module.to_string(),
                    entry: entry.to_string(),
                    clock,
                    action,
                    state: GoalState::Failed,
                    reason: Some(reason),
                    code: Some(crate::command::gate::NOT_AUTHORIZED.to_string()),
                    failures: 1,
                    retry_in_ms: None,
                },
                retry_at: None,
            },
        );
    }

    /// A step ended: converged, or failed with a code and a reason (then it
    /// is tried again after a backoff that grows with each failure).
    pub fn finished(&mut self, module: &str, result: Result<(), (String, String)>, now: Instant) {
        let Some(t) = self.by_module.get_mut(module) else {
            return;
        };
        match result {
            Ok(()) => {
                t.goal.state = GoalState::Converged;
                t.goal.reason = None;
                t.goal.code = None;
                t.goal.failures = 0;
                t.retry_at = None;
            }
            Err((code, reason)) => {
                t.goal.state = GoalState::Failed;
                t.goal.failures = t.goal.failures.saturating_add(1);
                t.goal.code = Some(code);
                t.goal.reason = Some(reason);
                t.retry_at = Some(now + backoff(t.goal.failures));
            }
        }
    }

    /// Forgets the modules the table no longer names here (unless a step
    /// of theirs still runs).
    pub fn retain(&mut self, named: &BTreeSet<String>) {
        self.by_module
            .retain(|m, t| named.contains(m) || t.goal.state == GoalState::Working);
    }

    /// The goals as the status report carries them.
    pub fn report(&self, now: Instant) -> Vec<Goal> {
        self.by_module
            .values()
            .map(|t| {
                let mut goal = t.goal.clone();
                goal.retry_in_ms = t
                    .retry_at
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64);
                goal
            })
            .collect()
    }

    /// When the earliest backoff ends.
    pub fn next_retry(&self) -> Option<Instant> {
        self.by_module.values().filter_map(|t| t.retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 8, 20].iter().map(|f| backoff(*f).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 600, 600]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failed_step_waits_its_backoff_unless_a_newer_version_comes() {
        let mut g = Goals::default();
        let t0 = Instant::now();
        assert!(g.may_start("m", "e1", 1, t0));
        g.started("m", "e1", 1, Action::Deploy, "fetching m".into());
        assert!(!g.may_start("m", "e1", 1, t0), "one step at a time");
        assert!(!g.may_start("m", "e2", 1, t0), "even for another entry");
        g.finished("m", Err(("fetch_failed".into(), "no route".into())), t0);
        assert!(!g.may_start("m", "e1", 1, t0 + Duration::from_secs(4)));
        assert!(g.may_start("m", "e1", 1, t0 + Duration::from_secs(5)));
        assert!(
            g.may_start("m", "e1", 2, t0),
            "a newer version of the entry is tried at once"
        );
        let report = g.report(t0 + Duration::from_secs(1));
        assert_eq!(report[0].state, GoalState::Failed);
        assert_eq!(report[0].code.as_deref(), Some("fetch_failed"));
        assert_eq!(report[0].retry_in_ms, Some(4000));
        // A second failure of the same version waits twice as long.
        g.started("m", "e1", 1, Action::Deploy, "fetching m".into());
        g.finished("m", Err(("fetch_failed".into(), "no route".into())), t0);
        assert_eq!(g.report(t0)[0].failures, 2);
        assert_eq!(g.next_retry(), Some(t0 + Duration::from_secs(10)));
        // Success clears it.
        g.started("m", "e1", 1, Action::Deploy, "fetching m".into());
        g.finished("m", Ok(()), t0);
        let report = g.report(t0);
        assert_eq!((report[0].state, report[0].failures), (GoalState::Converged, 0));
        assert_eq!(g.next_retry(), None);
    }

    #[test]
    fn goals_follow_what_the_table_names() {
        let mut g = Goals::default();
        g.converged("a", "e1", 1, Action::Deploy);
        g.started("b", "e2", 1, Action::Deploy, "installing".into());
        g.converged("b", "e2", 1, Action::Deploy);
        assert_eq!(
            g.report(Instant::now())[1].state,
            GoalState::Working,
            "a running step is not overwritten"
        );
        g.retain(&BTreeSet::new());
        let left: Vec<String> = g.report(Instant::now()).into_iter().map(|x| x.module).collect();
        assert_eq!(left, ["b"], "a module whose step runs is kept");
    }
}
