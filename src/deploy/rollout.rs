//! Rollouts without a server: a deploy released in waves, checked on
//! health, and taken back by itself.
//!
//! The plan lives in the table entry (`rollout`: the share of the targeted
//! nodes it is released to, its state and its policy), so no node is
//! special. Each node places itself by a stable hash of its name and the
//! entry id ([`placement`]) and runs the entry when its place is below
//! `released`; the others keep the entry they ran before. The node that
//! wrote the entry drives it: after each wave's health window it judges
//! the released nodes from their status reports, and writes the next
//! version of the entry: the next wave, `done`, or (too many failures)
//! `reverted`, which sends every released node back. If the driving node
//! goes away, the rollout stays where it is, which is safe; `conjoiner
//! deployments resume ID` on any node makes that node the driver.

use super::converge::GoalState;
use super::progress::seal;
use super::steer::{Steer, SteerAction};
use super::table::{placement, Amount, Deployment, Rollout, RolloutPolicy, RolloutState, Row};
use crate::actors::cluster_bus::{ListEntries, ListMembers, Member, MemberStatus, WriteEntry};
use crate::actors::ModuleContext;
use crate::cluster::core::keyed::next_clock;
use crate::cluster::node_key::NodeKey;
use crate::cluster::protocol::{Entry, Version, SET_DEPLOYMENTS};
use crate::monitor::board::{NodeView, StatusBoard};
use crate::wire::{now_ms, Target};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn, Instrument};

/// How often the driver looks at a rollout.
const DRIVE_EVERY: Duration = Duration::from_millis(500);

/// The `released` share that puts exactly `count` of the nodes whose
/// places are `places` inside: halfway between the last one in and the
/// first one out, so a small move of the member list does not flip them.
pub fn release_share(mut places: Vec<f64>, count: usize) -> f64 {
    places.sort_by(f64::total_cmp);
    match count {
        0 => 0.0,
        n if n >= places.len() => 1.0,
        n => (places[n - 1] + places[n]) / 2.0,
    }
}

/// The alive members `deployment` targets, with their places in the
/// rollout of entry `id`.
fn targeted_places(deployment: &Deployment, id: &str, members: &[Member]) -> Vec<(String, f64)> {
    let target = deployment.target.as_deref().and_then(|t| Target::parse(t).ok());
    members
        .iter()
        .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
        .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
        .map(|m| (m.name.clone(), placement(&m.name, id)))
        .collect()
}

/// The first wave of a new rollout of entry `id`: its canary.
pub fn first_wave(deployment: &Deployment, id: &str, members: &[Member], policy: RolloutPolicy) -> Rollout {
    let places: Vec<f64> = targeted_places(deployment, id, members)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let canary = policy.canary.of(places.len()).max(1);
    let released = release_share(places.clone(), canary);
    Rollout {
        released,
        state: if canary >= places.len() {
            RolloutState::Done
        } else {
            RolloutState::Rolling
        },
        policy,
        wave_at_ms: now_ms(),
        wave: 1,
        reason: None,
        steer: None,
        seal: None,
    }
}

/// How one released node is doing, judged from its status report.
#[derive(Debug, Clone, PartialEq)]
pub enum Judged {
    /// It runs the entry, and its module is healthy.
    Healthy,
    /// Not yet: its step runs, or its report has not said yet.
    Pending(String),
    /// It failed, and why.
    Failed(String),
}

/// Judges a released node: its status view (fresh or not), for entry
/// `id` of module `module`.
pub fn judge(view: Option<&NodeView>, member: MemberStatus, module: &str, id: &str) -> Judged {
    if matches!(member, MemberStatus::Dead | MemberStatus::Left) {
        return Judged::Failed(format!("the node is {} during its wave", member.as_str()));
    }
    let Some(view) = view.filter(|v| v.health.is_current()) else {
        return Judged::Pending("no fresh status report yet".into());
    };
    let Some(goal) = view.desired.iter().find(|g| g.module == module) else {
        return Judged::Pending("its report does not name the module yet".into());
    };
    if goal.entry != id {
        return Judged::Pending(format!("it still follows entry {}", goal.entry));
    }
    match goal.state {
        GoalState::Failed => Judged::Failed(format!(
            "{}: {}",
            goal.code.as_deref().unwrap_or("failed"),
            goal.reason.as_deref().unwrap_or("no reason given")
        )),
        GoalState::Working => Judged::Pending(goal.reason.clone().unwrap_or_else(|| "working".into())),
        GoalState::Converged => match view.modules.iter().find(|m| m.name == module) {
            Some(m) if m.health.is_failing() => Judged::Failed(format!(
                "module {module} is {}{}",
                m.health.as_str(),
                m.status_error
                    .as_deref()
                    .or(m.last_exit.as_deref())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            Some(m) if m.health == crate::monitor::board::Health::Ok => Judged::Healthy,
            Some(m) => Judged::Pending(format!("module {module} is {}", m.health.as_str())),
            // An undeploy converged: the module is gone, as asked.
            None if goal.action == super::table::Action::Undeploy => Judged::Healthy,
            None => Judged::Pending(format!("module {module} is not in its report yet")),
        },
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep watching.
    Wait,
    /// Release the next wave: this share, as wave `wave`.
    Next { released: f64, wave: u32 },
    /// Every targeted node is released and healthy.
    Done,
    /// Too many failures: take it back (or hold it, without revert).
    Stop { state: RolloutState, reason: String },
}

/// The driver's rule, pure: given the rollout, every targeted alive node's
/// place and judgement (none for nodes not released), and the time.
pub fn decide(rollout: &Rollout, nodes: &[(String, f64, Option<Judged>)], now_ms: u64) -> Decision {
    let released: Vec<&(String, f64, Option<Judged>)> = nodes.iter().filter(|n| n.2.is_some()).collect();
    let failed: Vec<String> = released
        .iter()
        .filter_map(|(name, _, j)| match j {
            Some(Judged::Failed(why)) => Some(format!("{name}: {why}")),
            _ => None,
        })
        .collect();
    let allowed = rollout.policy.max_failed.of(released.len());
    if failed.len() > allowed {
        let state = if rollout.policy.revert {
            RolloutState::Reverted
        } else {
            RolloutState::Paused
        };
        let reason = format!(
            "{} of {} released node(s) failed (at most {} allowed): {}",
            failed.len(),
            released.len(),
            allowed,
            failed.join("; ")
        );
        return Decision::Stop { state, reason };
    }
    let window_over = now_ms >= rollout.wave_at_ms.saturating_add(rollout.policy.health_window_ms);
    let settled = released.iter().all(|(_, _, j)| !matches!(j, Some(Judged::Pending(_))));
    if !window_over || !settled {
        return Decision::Wait;
    }
    if released.len() >= nodes.len() {
        return Decision::Done;
    }
    let places: Vec<f64> = nodes.iter().map(|(_, p, _)| *p).collect();
    let next = released.len() + rollout.policy.batch.of(nodes.len()).max(1);
    Decision::Next {
        released: release_share(places, next),
        wave: rollout.wave + 1,
    }
}

/// Drives the rollout of entry `id` from this node until it is done,
/// stopped, or another node drives it.
pub async fn drive(ctx: ModuleContext, board: StatusBoard, key: Arc<NodeKey>, id: String) {
    let span = ctx.identity.span("rollout");
    async move {
        info!(entry = %id, "driving the rollout");
        loop {
            tokio::time::sleep(DRIVE_EVERY).await;
            match step(&ctx, &board, &key, &id).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => warn!(entry = %id, error = %e, "cannot look at the rollout now; trying again"),
            }
        }
    }
    .instrument(span)
    .await
}

/// One look at the rollout; answers whether to keep driving it.
async fn step(ctx: &ModuleContext, board: &StatusBoard, key: &NodeKey, id: &str) -> Result<bool, String> {
    let gone = |_| "the cluster side is not running".to_string();
    let entries = ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .map_err(gone)?;
    let Some(row) = entries.iter().find(|e| &*e.key == id).and_then(|e| Row::read(e).ok()) else {
        info!(entry = %id, "the rollout's entry is gone from the table; no longer driving it");
        return Ok(false);
    };
    let Some(rollout) = row.deployment.rollout.clone() else {
        return Ok(false);
    };
    if rollout.state != RolloutState::Rolling {
        info!(entry = %id, state = rollout.state.as_str(), "the rollout is not rolling; no longer driving it");
        return Ok(false);
    }
    if *row.version.origin != *ctx.identity.name {
        info!(entry = %id, driver = %row.version.origin, "another node drives the rollout now");
        return Ok(false);
    }
    let members = ctx.cluster.members.send(ListMembers).await.map_err(gone)?;
    let views = board.view(&members, Instant::now());
    let nodes: Vec<(String, f64, Option<Judged>)> = targeted_places(&row.deployment, id, &members)
        .into_iter()
        .map(|(name, place)| {
            let judged = (place < rollout.released).then(|| {
                let member = members.iter().find(|m| m.name == name).map(|m| m.status);
                judge(
                    views.iter().find(|v| v.node == name),
                    member.unwrap_or(MemberStatus::Dead),
                    row.module(),
                    id,
                )
            });
            (name, place, judged)
        })
        .collect();
    let decision = decide(&rollout, &nodes, now_ms());
    let mut next = rollout.clone();
    match &decision {
        Decision::Wait => {
            debug!(entry = %id, released = rollout.released, wave = rollout.wave, "waiting on the wave");
            return Ok(true);
        }
        Decision::Next { released, wave } => {
            info!(entry = %id, wave, released, "the wave stayed healthy; releasing the next");
            next.released = *released;
            next.wave = *wave;
            next.wave_at_ms = now_ms();
        }
        Decision::Done => {
            info!(entry = %id, waves = rollout.wave, "every targeted node runs the entry; the rollout is done");
            next.released = 1.0;
            next.state = RolloutState::Done;
        }
        Decision::Stop { state, reason } => {
            warn!(entry = %id, state = state.as_str(), %reason, "stopping the rollout");
            next.state = *state;
            next.reason = Some(reason.clone());
        }
    }
    write_rollout(ctx, key, &row, next).await?;
    Ok(matches!(decision, Decision::Next { .. }))
}

/// Writes a new version of entry `row` with `rollout`, sealed by this
/// node's `key`.
pub async fn write_rollout(ctx: &ModuleContext, key: &NodeKey, row: &Row, rollout: Rollout) -> Result<(), String> {
    let mut deployment = row.deployment.clone();
    deployment.rollout = Some(rollout);
    write_sealed(ctx, key, &row.id, deployment).await.map(|_| ())
}

/// Writes `deployment` as entry `id` from this node; its rollout, if it has
/// one, sealed by this node's `key` for the version it is written under
/// (see `deploy::progress`).
pub async fn write_sealed(
    ctx: &ModuleContext,
    key: &NodeKey,
    id: &str,
    mut deployment: Deployment,
) -> Result<Arc<Entry>, String> {
    let gone = |_| "the cluster side is not running".to_string();
    let held = ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .map_err(gone)?;
    let clock = next_clock(now_ms(), held.iter().map(|e| e.version.clock).max().unwrap_or(0));
    let version = Version {
        clock,
        origin: ctx.identity.name.as_str().into(),
    };
    if let Some(rollout) = &mut deployment.rollout {
        seal(key, id, &version, rollout);
    }
    ctx.cluster
        .write_entry
        .send(WriteEntry {
            set: SET_DEPLOYMENTS,
            key: id.to_string(),
            body: deployment.to_body(),
            clock: Some(clock),
        })
        .await
        .map_err(gone)?
}

/// `pause`, `resume` or `revert`, from any node: the rollout's new state,
/// which keeps the command (`steer`, signed or not) that asked for it.
pub fn steer(rollout: &Rollout, steer: Steer) -> Result<Rollout, String> {
    let mut next = rollout.clone();
    let action = steer.action;
    match (action, rollout.state) {
        (SteerAction::Pause, RolloutState::Rolling) => {
            next.state = RolloutState::Paused;
            next.reason = Some("paused by an operator".into());
        }
        (SteerAction::Resume, RolloutState::Paused | RolloutState::Rolling) => {
            next.state = RolloutState::Rolling;
            next.reason = None;
            // The health window starts again: the driver watches anew.
            next.wave_at_ms = now_ms();
        }
        (SteerAction::Revert, RolloutState::Rolling | RolloutState::Paused | RolloutState::Done) => {
            next.state = RolloutState::Reverted;
            next.reason = Some("reverted by an operator".into());
        }
        (_, state) => {
            return Err(format!(
                "the rollout is {}; it cannot {}",
                state.as_str(),
                action.as_str()
            ))
        }
    }
    next.steer = Some(steer);
    Ok(next)
}

/// The policy's amounts as a person reads them.
pub fn describe_policy(p: &RolloutPolicy) -> String {
    let amount = |a: &Amount| a.to_string();
    format!(
        "canary {}, then {} a wave, {} s healthy each, at most {} failed, {}",
        amount(&p.canary),
        amount(&p.batch),
        p.health_window_ms / 1000,
        amount(&p.max_failed),
        if p.revert { "then revert" } else { "then pause" }
    )
}

#[cfg(test)]
mod tests;
