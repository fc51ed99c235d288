//! The deployments table as `conjoiner deployments` and `GET
//! /v1/deployments` show it: every entry with how many of the alive nodes
//! it wins on run it (`converged 47/50`), the nodes that do not and why,
//! and its rollout. Judged from the nodes' status reports, by the board's
//! rules of what is fresh: a node whose report is stale says nothing.

use super::converge::GoalState;
use super::table::{read_all, winners, Action, Rollout, Row};
use crate::actors::cluster_bus::{Member, MemberStatus};
use crate::cluster::protocol::{Entry, Version};
use crate::monitor::board::NodeView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A node that does not run the entry yet, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behind {
    pub node: String,
    pub reason: String,
    /// Whether its step failed (rather than still running, or unknown).
    #[serde(default)]
    pub failed: bool,
}

/// One entry of the table, with its convergence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryView {
    pub id: String,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub version: Version,
    /// The operator key that signed it (signing is not built yet: none).
    pub signed_by: Option<String>,
    pub ts: u64,
    pub age_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The alive nodes it wins on (`nodes`), and how many of them run it.
    pub converged: usize,
    pub nodes: usize,
    /// Those of `nodes` that do not run it yet.
    pub behind: Vec<Behind>,
    /// Targeted alive nodes where a newer entry of the module wins.
    pub superseded_on: usize,
    /// Targeted alive nodes a rollout has not released yet.
    pub later: usize,
    /// Targeted members that are not alive now; they catch up when they
    /// return.
    pub absent: Vec<String>,
}

/// Why `node` (its status view, if any) does not run entry `row` yet, or
/// `None` if it does.
fn behind_why(row: &Row, view: Option<&NodeView>) -> Option<Behind> {
    let node = |reason: String, failed: bool| {
        Some(Behind {
            node: String::new(),
            reason,
            failed,
        })
    };
    let Some(view) = view.filter(|v| v.health.is_current()) else {
        let health = view.map_or("unknown", |v| v.health.as_str());
        return node(format!("no fresh status report (the node is {health})"), false);
    };
    let Some(goal) = view.desired.iter().find(|g| g.module == row.module()) else {
        return node("its report does not name the module yet".into(), false);
    };
    if goal.entry != *row.id {
        return node(
            format!("it follows entry {} (its table is behind)", short_id(&goal.entry)),
            false,
        );
    }
    match goal.state {
        GoalState::Converged => None,
        GoalState::Working => node(goal.reason.clone().unwrap_or_else(|| "working".into()), false),
        GoalState::Failed => {
            let retry = goal
                .retry_in_ms
                .map(|ms| format!(" (try {} in {} s)", goal.failures + 1, ms.div_ceil(1000)))
                .unwrap_or_default();
            node(
                format!(
                    "failed: {}: {}{retry}",
                    goal.code.as_deref().unwrap_or("error"),
                    goal.reason.as_deref().unwrap_or("no reason given")
                ),
                true,
            )
        }
    }
}

/// The last eight characters of an entry id, as tables show it: an id is
/// a UUIDv7, whose first characters are its time and shared by entries
/// written close together, and whose last are random.
pub fn short_id(id: &str) -> &str {
    id.char_indices().rev().nth(7).map_or(id, |(i, _)| &id[i..])
}

/// Every entry of the table, with its convergence across `members` (their
/// status `views`), at `now_ms`; sorted by module, newest first.
pub fn view(entries: &[Arc<Entry>], members: &[Member], views: &[NodeView], now_ms: u64) -> Vec<EntryView> {
    let (rows, _) = read_all(entries);
    let by_node: BTreeMap<&str, &NodeView> = views.iter().map(|v| (v.node.as_str(), v)).collect();
    let alive: Vec<&Member> = members
        .iter()
        .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
        .collect();
    // Each alive node's winner per module.
    let won: BTreeMap<&str, BTreeMap<&str, &Row>> = alive
        .iter()
        .map(|m| (m.name.as_str(), winners(&rows, &m.name, &m.tags)))
        .collect();
    let mut out: Vec<EntryView> = rows
        .iter()
        .map(|row| {
            let mut v = EntryView {
                id: row.id.to_string(),
                module: row.module().to_string(),
                target: row.deployment.target.clone(),
                action: row.action(),
                sha256: row.deployment.sha256.clone(),
                version: row.version.clone(),
                signed_by: None,
                ts: row.deployment.ts,
                age_ms: now_ms.saturating_sub(row.deployment.ts),
                rollout: row.deployment.rollout.clone(),
                converged: 0,
                nodes: 0,
                behind: Vec::new(),
                superseded_on: 0,
                later: 0,
                absent: Vec::new(),
            };
            for m in members.iter().filter(|m| row.targets(&m.name, &m.tags)) {
                if !matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect) {
                    v.absent.push(m.name.clone());
                    continue;
                }
                if !row.in_force_for(&m.name, &m.tags) {
                    v.later += 1;
                    continue;
                }
                let wins = won
                    .get(m.name.as_str())
                    .and_then(|w| w.get(row.module()))
                    .is_some_and(|w| w.id == row.id);
                if !wins {
                    v.superseded_on += 1;
                    continue;
                }
                v.nodes += 1;
                match behind_why(row, by_node.get(m.name.as_str()).copied()) {
                    None => v.converged += 1,
                    Some(mut b) => {
                        b.node = m.name.clone();
                        v.behind.push(b);
                    }
                }
            }
            v
        })
        .collect();
    out.sort_by(|a, b| a.module.cmp(&b.module).then(b.version.cmp(&a.version)));
    out
}

/// The entry `part` names: its id, or a unique start or end of it (four
/// characters at least), such as the short id tables show.
pub fn find<'a>(entries: &'a [Arc<Entry>], part: &str) -> Result<&'a Arc<Entry>, String> {
    find_by(entries, |e| &e.key, part)
}

/// [`find`] over anything that carries an entry's id (`id` reads it): the
/// CLI finds the entry an operator signs a steer for in the listed table.
pub fn find_by<'a, T>(items: &'a [T], id: impl Fn(&T) -> &str, part: &str) -> Result<&'a T, String> {
    if let Some(e) = items.iter().find(|e| id(e) == part) {
        return Ok(e);
    }
    if part.len() < 4 {
        return Err(format!(
            "`{part}` is too short to name an entry: give four characters or more"
        ));
    }
    let mut found = items
        .iter()
        .filter(|e| id(e).starts_with(part) || id(e).ends_with(part));
    match (found.next(), found.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(format!("no entry of the deployments table has an id like `{part}`")),
        (Some(_), Some(_)) => Err(format!("more than one entry has an id like `{part}`; give more of it")),
    }
}

#[cfg(test)]
mod tests;
