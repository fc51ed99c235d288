//! Every node's audit line for a steer (pause, resume, revert) of a
//! rollout it holds. The node the operator gave it to writes `taken`; every
//! node whose table then takes the steered rollout, that node included,
//! writes `carried_out`, with the state the rollout is in and the key that
//! signed the steer, once per steer: a rollout's entry changes at every
//! wave, and its steer stays the same.

use super::command::audit_line;
use super::table::Row;
use crate::audit::{AuditLine, Decision};
use std::collections::HashSet;

/// Steer ids remembered as audited (emptied when full; the audit file is
/// then asked again, see [`AuditedSteers::first`]).
pub const REMEMBERED: usize = 1024;

/// The `carried_out` line of `node` for the steer `row`'s rollout keeps,
/// if it keeps one.
pub fn steer_line(node: &str, row: &Row) -> Option<AuditLine> {
    let rollout = row.deployment.rollout.as_ref()?;
    let steer = rollout.steer.as_ref()?;
    let mut line = audit_line(
        node,
        Some(&steer.id),
        &row.deployment,
        Some(&steer.driver.node),
        Decision::CarriedOut,
    );
    line.kind = steer.action.as_str().to_string();
    line.key = steer.signer_id();
    line.status = Some(rollout.state.as_str().to_string());
    Some(line)
}

/// The steers this node has audited since it started.
#[derive(Debug, Default)]
pub struct AuditedSteers {
    ids: HashSet<String>,
}

impl AuditedSteers {
    /// True the first time steer `id` is seen, unless `in_file` (asked
    /// only then) says the node wrote its line before a restart.
    pub fn first(&mut self, id: &str, in_file: impl FnOnce() -> bool) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.ids.len() >= REMEMBERED {
            self.ids.clear();
        }
        self.ids.insert(id.to_string());
        !in_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steer_is_audited_once_and_not_again_after_a_restart() {
        let mut audited = AuditedSteers::default();
        assert!(audited.first("s1", || false));
        assert!(!audited.first("s1", || panic!("the file is not asked again")));
        assert!(audited.first("s2", || false));
        let mut restarted = AuditedSteers::default();
        assert!(!restarted.first("s1", || true), "written before the restart");
    }

    #[test]
    fn what_is_remembered_stays_bounded() {
        let mut audited = AuditedSteers::default();
        for i in 0..(REMEMBERED * 2) {
            assert!(audited.first(&format!("s{i}"), || false));
            assert!(audited.ids.len() <= REMEMBERED);
        }
    }
}
