//! Deployments-table entries that peers offered and this node's table
//! refused outright (unsigned, altered, signed by a key this node does not
//! trust, a rollout moved by a node that does not drive it): each is a
//! command this node refused, so it gets an audit line here, as a refusal
//! of an entry held does (see `reconciler`).
//!
//! Peers offer a refused entry again at every table exchange, and a host
//! that holds the cluster key can make up entries without end, so:
//! - each version of an entry (key, clock, origin) is written once, as
//!   long as this node remembers it (at most [`REMEMBERED`], forgotten all
//!   at once when full: a flood costs a line again, not memory);
//! - at most [`BURST`] lines at once and [`PER_MINUTE`] a minute are
//!   written, so a flood cannot rotate the genuine lines out of the file.
//!   What is skipped is still logged and counted by the cluster layer.
//!
//! Pure: the caller passes the time.

use super::command::audit_line;
use super::table::Row;
use crate::audit::{AuditLine, Decision};
use crate::cluster::protocol::Entry;
use crate::token_bucket::TokenBucket;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// Refused entry versions remembered, so each is written once.
pub const REMEMBERED: usize = 4096;
/// Lines written at once, at most.
pub const BURST: f64 = 60.0;
/// Lines written a minute, at most, past the burst.
pub const PER_MINUTE: f64 = 60.0;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write its audit line.
    Write,
    /// Already written.
    Written,
    /// Over the budget: not written. `first` is true for the first one
    /// skipped since the last line written, which is worth a warning.
    Skipped { first: bool },
}

/// Which refused entries were written, and the budget for more.
#[derive(Debug)]
pub struct RefusedEntries {
    written: HashSet<(Arc<str>, u64, Arc<str>)>,
    budget: TokenBucket,
    skipping: bool,
    /// Refusals not written for want of budget, since this node started.
    pub skipped: u64,
}

impl RefusedEntries {
    pub fn new(now: Instant) -> RefusedEntries {
        RefusedEntries {
            written: HashSet::new(),
            budget: TokenBucket::with_burst(PER_MINUTE / 60.0, BURST, now),
            skipping: false,
            skipped: 0,
        }
    }

    /// Judges the refusal of `entry` at `now`.
    pub fn judge(&mut self, entry: &Entry, now: Instant) -> Verdict {
        let version = (entry.key.clone(), entry.version.clock, entry.version.origin.clone());
        if self.written.contains(&version) {
            return Verdict::Written;
        }
        if !self.budget.take(now) {
            self.skipped += 1;
            let first = !self.skipping;
            self.skipping = true;
            return Verdict::Skipped { first };
        }
        self.skipping = false;
        if self.written.len() >= REMEMBERED {
            self.written.clear();
        }
        self.written.insert(version);
        Verdict::Write
    }
}

/// The audit line of `node` refusing `entry`, which a peer offered, for
/// `why`. An entry that does not read as a deploy or undeploy is written
/// as type `entry`. A peer's words (key, origin, reason) are cut short.
pub fn refusal_line(node: &str, entry: &Entry, why: &str) -> AuditLine {
    let mut line = match Row::read(entry) {
        Ok(row) => audit_line(
            node,
            Some(&row.id),
            &row.deployment,
            Some(&row.version.origin),
            Decision::Refused,
        ),
        Err(_) => AuditLine {
            id: Some(entry.key.to_string()),
            origin: Some(entry.version.origin.to_string()),
            ..AuditLine::of(node, "entry", "-", Decision::Refused)
        },
    };
    line.id = line.id.as_deref().map(cut);
    line.origin = line.origin.as_deref().map(cut);
    line.reason = Some(format!(
        "a peer offered it and this node's table refused it: {}",
        cut(why)
    ));
    line
}

/// A peer's words, as the audit line repeats them.
fn cut(text: &str) -> String {
    crate::shown::shown(text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::Version;
    use std::time::Duration;

    fn entry(key: &str, clock: u64, origin: &str, body: &[u8]) -> Entry {
        Entry {
            key: key.into(),
            version: Version {
                clock,
                origin: origin.into(),
            },
            body: body.to_vec().into(),
        }
    }

    #[test]
    fn each_version_is_written_once_and_a_new_version_again() {
        let t0 = Instant::now();
        let mut ledger = RefusedEntries::new(t0);
        let e = entry("e1", 5, "x", b"{}");
        assert_eq!(ledger.judge(&e, t0), Verdict::Write);
        assert_eq!(ledger.judge(&e, t0), Verdict::Written);
        assert_eq!(ledger.judge(&entry("e1", 6, "x", b"{}"), t0), Verdict::Write);
        assert_eq!(ledger.judge(&entry("e1", 5, "y", b"{}"), t0), Verdict::Write);
    }

    #[test]
    fn a_flood_is_held_to_the_budget_and_warned_of_once_per_stretch() {
        let t0 = Instant::now();
        let mut ledger = RefusedEntries::new(t0);
        let verdicts: Vec<Verdict> = (0..200)
            .map(|i| ledger.judge(&entry(&format!("e{i}"), 1, "x", b"{}"), t0))
            .collect();
        let written = verdicts.iter().filter(|v| **v == Verdict::Write).count();
        assert_eq!(written, BURST as usize);
        assert_eq!(verdicts[BURST as usize], Verdict::Skipped { first: true });
        assert_eq!(verdicts[BURST as usize + 1], Verdict::Skipped { first: false });
        assert_eq!(ledger.skipped, 200 - BURST as u64);
        // A minute later the budget has room again, and the next skip warns again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(ledger.judge(&entry("late", 1, "x", b"{}"), later), Verdict::Write);
        assert_eq!(
            ledger.judge(&entry("later", 1, "x", b"{}"), later),
            Verdict::Skipped { first: true }
        );
    }

    #[test]
    fn what_is_remembered_stays_bounded() {
        let t0 = Instant::now();
        let mut ledger = RefusedEntries::new(t0);
        for i in 0..(REMEMBERED + 10) {
            // A minute apart each, so the budget never runs out.
            let now = t0 + Duration::from_secs(60 * i as u64);
            assert_eq!(
                ledger.judge(&entry(&format!("e{i}"), 1, "x", b"{}"), now),
                Verdict::Write
            );
            assert!(ledger.written.len() <= REMEMBERED);
        }
    }

    #[test]
    fn an_unreadable_entry_is_written_with_its_key_and_origin_cut_short() {
        let long = "k".repeat(5000);
        let line = refusal_line("n1", &entry(&long, 1, "x", b"not json"), "it does not read");
        assert_eq!(line.kind, "entry");
        assert_eq!(line.decision, Decision::Refused);
        assert_eq!(line.id, Some(format!("{}… (5000 bytes)", &long[..200])));
        assert_eq!(line.origin.as_deref(), Some("x"));
        assert!(
            line.reason.as_deref().unwrap().ends_with("it does not read"),
            "{:?}",
            line.reason
        );
    }
}
