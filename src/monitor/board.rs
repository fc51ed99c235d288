//! The fleet's status as this node knows it: the latest `status` report of
//! every node (published by each node's Monitor) and when it arrived, joined
//! with membership into the views `GET /v1/modules` and `GET /v1/status`
//! answer from. Asking about the whole fleet is one local read.
//!
//! A report is a node's *state* in the cluster core: it spreads once to
//! every node when it changes, not periodically from every node to every
//! node. [`Publication`] decides when a node publishes: at once when
//! anything an operator acts on changed, else every [`refresh_interval`],
//! which grows with the cluster so the whole cluster carries about two
//! reports a second. Liveness comes from membership, not from reports.
//!
//! Pure data and rules, tested with a mocked clock; the Monitor fills the
//! board and the control API reads it.

use crate::actors::{Member, MemberStatus, ModuleState};
use crate::deploy::converge::{Goal, GoalState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A report older than this many of its sender's refresh periods is stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// How long the report of a node that membership no longer lists is kept.
pub const FORGET_UNLISTED_AFTER: Duration = Duration::from_secs(600);
/// The longest report period a peer is believed about (one hour).
const MAX_TRUSTED_PERIOD_MS: u64 = 3_600_000;

/// How many reports per second the whole cluster carries at most in steady
/// state (each node republishes unchanged reports every `N / this` seconds).
pub const CLUSTER_REPORTS_PER_SECOND: f64 = 2.0;

/// How often a node republishes an unchanged report in a cluster of
/// `cluster_size`: its Monitor interval, or `N / 2` seconds if that is longer.
pub fn refresh_interval(interval: Duration, cluster_size: usize) -> Duration {
    interval.max(Duration::from_secs_f64(
        cluster_size as f64 / CLUSTER_REPORTS_PER_SECOND,
    ))
}

/// The least time between two publications of changed reports, so a
/// flapping module cannot flood the cluster.
pub const MIN_PUBLISH_GAP: Duration = Duration::from_secs(1);

/// Decides when this node's Monitor publishes its report.
#[derive(Debug, Default)]
pub struct Publication {
    signature: Option<u64>,
    last: Option<Instant>,
}

/// Why a report is published now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    First,
    /// A module's state, health, restarts, version or install changed, or
    /// the node's tags or version.
    Changed,
    /// Nothing changed for a refresh period; figures (load, module status
    /// bodies) are refreshed.
    Refresh,
}

impl Publication {
    /// Whether to publish `report` now; if so, it counts as published.
    pub fn due(&mut self, report: &NodeReport, now: Instant, refresh: Duration) -> Option<Publish> {
        let signature = signature(report);
        let since = self.last.map(|t| now.saturating_duration_since(t));
        let why = match (self.signature, since) {
            (None, _) | (_, None) => Publish::First,
            (Some(old), Some(since)) if old != signature && since >= MIN_PUBLISH_GAP => Publish::Changed,
            (_, Some(since)) if since >= refresh => Publish::Refresh,
            _ => return None,
        };
        self.signature = Some(signature);
        self.last = Some(now);
        Some(why)
    }

    /// How long until a change that [`Publication::due`] held back (the
    /// last report went out less than [`MIN_PUBLISH_GAP`] ago) may go out;
    /// `None` if `report` holds no such change.
    pub fn held(&self, report: &NodeReport, now: Instant) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last?);
        (self.signature != Some(signature(report)) && since < MIN_PUBLISH_GAP).then(|| MIN_PUBLISH_GAP - since)
    }
}

/// A hash of what an operator acts on in a report (not its figures).
fn signature(report: &NodeReport) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    report.version.hash(&mut h);
    report.tags.hash(&mut h);
    report.started_ms.hash(&mut h);
    for m in &report.modules {
        (&m.name, &m.kind, &m.version, &m.state, m.health as u8, m.restarts).hash(&mut h);
        (&m.sha256, &m.last_exit, &m.status_error).hash(&mut h);
    }
    for g in &report.desired {
        (&g.module, &g.entry, g.clock, g.state.as_str(), &g.code, g.failures).hash(&mut h);
    }
    h.finish()
}

/// How a module is doing, from its supervisor state, whether it answered
/// the last `status_request`, and what it says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Running and answered.
    Ok,
    /// Running and answered, and it says it works only in part (a
    /// `"health": "degraded"` in its status).
    Degraded,
    /// Running and answered, and it says it does not work (`"health":
    /// "failing"` in its status).
    Failing,
    /// Running, but did not answer `status_request` in time.
    Unresponsive,
    /// Waiting to be restarted after an exit.
    Restarting,
    /// The supervisor gave up on it.
    Failed,
    Starting,
    Stopping,
    Stopped,
    /// Its node is dead, suspect, gone or its report is stale, so nothing
    /// is known of the module now; `reported_health` keeps what the last
    /// report said. Only views say this, never a node's own report.
    Unknown,
}

impl Health {
    /// Every health, in the order the API documents them.
    pub const ALL: [Health; 10] = [
        Health::Ok,
        Health::Degraded,
        Health::Failing,
        Health::Unresponsive,
        Health::Restarting,
        Health::Failed,
        Health::Starting,
        Health::Stopping,
        Health::Stopped,
        Health::Unknown,
    ];

    /// The word the API uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Failing => "failing",
            Health::Unresponsive => "unresponsive",
            Health::Restarting => "restarting",
            Health::Failed => "failed",
            Health::Starting => "starting",
            Health::Stopping => "stopping",
            Health::Stopped => "stopped",
            Health::Unknown => "unknown",
        }
    }

    /// Whether `conjoiner status` counts this module as failing.
    pub fn is_failing(self) -> bool {
        matches!(
            self,
            Health::Degraded | Health::Failing | Health::Unresponsive | Health::Restarting | Health::Failed
        )
    }

    /// What a running module that answered says of itself: a `health` key
    /// in its status of `ok`, `degraded` or `failing`; else ok.
    pub fn self_reported(status: &Value) -> Health {
        match status.get("health").and_then(Value::as_str) {
            Some("degraded") => Health::Degraded,
            Some("failing") => Health::Failing,
            _ => Health::Ok,
        }
    }

    /// The reason a running module gives for its own health: a string
    /// `reason` in its status.
    pub fn reason_given(status: &Value) -> Option<String> {
        status.get("reason").and_then(Value::as_str).map(str::to_string)
    }

    /// A module's health from its supervisor's state and, if it runs, its
    /// answer to this round's status request (`None`: not asked). Only a
    /// running module that answered in time can be `ok`. Also answers why a
    /// running module is not heard.
    pub fn of_module(state: &ModuleState, answer: Option<&Result<Value, String>>) -> (Health, Option<String>) {
        match (state, answer) {
            (ModuleState::Running, Some(Ok(status))) => (Health::self_reported(status), None),
            (ModuleState::Running, Some(Err(e))) => (Health::Unresponsive, Some(e.clone())),
            (ModuleState::Running, None) => (Health::Unresponsive, Some("not asked".into())),
            (ModuleState::Starting, _) => (Health::Starting, None),
            (ModuleState::Restarting, _) => (Health::Restarting, None),
            (ModuleState::Stopping, _) => (Health::Stopping, None),
            (ModuleState::Stopped, _) => (Health::Stopped, None),
            (ModuleState::Failed, _) => (Health::Failed, None),
        }
    }
}

/// One module in a node's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    pub name: String,
    pub kind: String,
    pub version: String,
    /// The supervisor's state (`running`, `restarting`, `failed`, …).
    pub state: String,
    pub health: Health,
    pub restarts: u32,
    pub uptime_ms: u64,
    /// What the module said about itself, or null.
    pub status: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_error: Option<String>,
    /// Why the module says its health is what it is: the `reason` in its
    /// status, beside `health`, shown whole wherever health is shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Set in views only, when `health` is `unknown`: the health the
    /// node's last report gave, as history, not as the state now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_health: Option<Health>,
}

/// The body of a `status` envelope: one node's Monitor round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub version: String,
    /// When the node started (ms since epoch) and the Monitor's round
    /// number: together they order reports from one node.
    pub started_ms: u64,
    pub round: u64,
    pub uptime_ms: u64,
    /// The sender's Monitor interval.
    pub interval_ms: u64,
    /// The longest the sender goes without republishing its report;
    /// receivers judge staleness by it.
    #[serde(default)]
    pub refresh_ms: u64,
    /// Load, memory and host uptime.
    #[serde(default)]
    pub host: Value,
    /// Peers, links and queue depths of the node's cluster side.
    #[serde(default)]
    pub cluster: Value,
    pub modules: Vec<ModuleReport>,
    /// Where the node stands on each module the deployments table names
    /// for it: converged, working, or failed and why.
    #[serde(default)]
    pub desired: Vec<Goal>,
}

struct Entry {
    report: NodeReport,
    received: Instant,
}

#[derive(Default)]
struct Board {
    reports: BTreeMap<String, Entry>,
}

/// The latest report of every node. Shared (cheap clone) between the
/// Monitor, which writes, and the control API, which reads; it outlives
/// Monitor restarts.
#[derive(Clone, Default)]
pub struct StatusBoard(Arc<RwLock<Board>>);

impl StatusBoard {
    /// Keeps `report` unless a newer one from the same node is already here.
    /// Answers whether it was kept.
    pub fn record(&self, report: NodeReport, now: Instant) -> bool {
        let Ok(mut board) = self.0.write() else { return false };
        let newer = board
            .reports
            .get(&report.node)
            .is_none_or(|e| (report.started_ms, report.round) >= (e.report.started_ms, e.report.round));
        if newer {
            board
                .reports
                .insert(report.node.clone(), Entry { report, received: now });
        }
        newer
    }

    /// Forgets the reports of nodes that membership no longer lists (it
    /// forgets long-dead members) once the report is `FORGET_UNLISTED_AFTER`
    /// old, so a fleet that renames or replaces hosts does not fill the
    /// board for ever. Answers the names forgotten.
    pub fn forget_gone(&self, members: &[Member], now: Instant) -> Vec<String> {
        let Ok(mut board) = self.0.write() else {
            return Vec::new();
        };
        let listed: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let gone: Vec<String> = board
            .reports
            .iter()
            .filter(|(name, e)| !listed.contains(name.as_str()) && age(now, e.received) > FORGET_UNLISTED_AFTER)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            board.reports.remove(name);
        }
        gone
    }

    /// The nodes whose latest report runs a module from the package
    /// `sha256`: peers that hold it.
    pub fn holders_of(&self, sha256: &str) -> Vec<String> {
        let Ok(board) = self.0.read() else { return Vec::new() };
        board
            .reports
            .values()
            .filter(|e| e.report.modules.iter().any(|m| m.sha256.as_deref() == Some(sha256)))
            .map(|e| e.report.node.clone())
            .collect()
    }

    /// The latest report of every node, with its age.
    pub fn reports(&self, now: Instant) -> Vec<(NodeReport, Duration)> {
        let Ok(board) = self.0.read() else { return Vec::new() };
        board
            .reports
            .values()
            .map(|e| (e.report.clone(), age(now, e.received)))
            .collect()
    }

    /// How many nodes have reported.
    pub fn len(&self) -> usize {
        self.0.read().map(|b| b.reports.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every node known by membership or by report, with its status judged
    /// at `now`, sorted by name.
    pub fn view(&self, members: &[Member], now: Instant) -> Vec<NodeView> {
        let Ok(board) = self.0.read() else { return Vec::new() };
        let names: BTreeSet<&String> = members.iter().map(|m| &m.name).chain(board.reports.keys()).collect();
        names
            .into_iter()
            .map(|name| {
                let member = members.iter().find(|m| &m.name == name);
                let entry = board.reports.get(name);
                NodeView::judge(name, member, entry.map(|e| (&e.report, age(now, e.received))))
            })
            .collect()
    }
}

fn age(now: Instant, then: Instant) -> Duration {
    now.saturating_duration_since(then)
}

/// How a node is doing, as `conjoiner status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    Ok,
    /// Alive, with failing modules.
    Degraded,
    /// Its latest report is too old (or it never sent one).
    Stale,
    Suspect,
    Dead,
    /// Left the cluster on purpose: not a failure.
    Left,
}

impl NodeHealth {
    /// The word the API uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeHealth::Ok => "ok",
            NodeHealth::Degraded => "degraded",
            NodeHealth::Stale => "stale",
            NodeHealth::Suspect => "suspect",
            NodeHealth::Dead => "dead",
            NodeHealth::Left => "left",
        }
    }

    /// Whether what the node last reported holds now: it is alive and its
    /// report is fresh. Otherwise its modules' state is unknown.
    pub fn is_current(self) -> bool {
        matches!(self, NodeHealth::Ok | NodeHealth::Degraded)
    }
}

/// How many of a node's modules are ok, failing, or unknown now. Modules
/// that are starting, stopping or stopped are in none of the three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleCounts {
    pub total: usize,
    pub ok: usize,
    pub failing: usize,
    pub unknown: usize,
}

impl ModuleCounts {
    pub fn of(modules: &[ModuleReport]) -> ModuleCounts {
        let count = |f: fn(Health) -> bool| modules.iter().filter(|m| f(m.health)).count();
        ModuleCounts {
            total: modules.len(),
            ok: count(|h| h == Health::Ok),
            failing: count(Health::is_failing),
            unknown: count(|h| h == Health::Unknown),
        }
    }
}

/// How far a report's `started_ms` may fall short of its member's boot and
/// still be of the same run: builds before the two were one figure read
/// the clock twice, a few ms apart. A run shorter than this has sent no
/// report.
const BOOT_SLACK_MS: u64 = 100;

/// One node as the API shows it (`GET /v1/status`, `GET /v1/modules`); the
/// CLI and the dashboard read these same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    /// Membership status, or null if membership does not know it.
    pub member: Option<MemberStatus>,
    /// How long it has had that status.
    pub member_since_ms: Option<u64>,
    pub addr: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub health: NodeHealth,
    pub stale: bool,
    /// Age of the latest report, or null if none arrived.
    pub status_age_ms: Option<u64>,
    /// How old the report may grow before it is stale.
    pub stale_after_ms: Option<u64>,
    pub version: Option<String>,
    pub uptime_ms: Option<u64>,
    pub host: Value,
    pub cluster: Value,
    /// The modules of its latest report, each with its health now: that
    /// of the report while the node is current, else `unknown`.
    pub modules: Vec<ModuleReport>,
    pub module_counts: ModuleCounts,
    /// Where the node stands on each module the deployments table names
    /// for it, as its latest report said.
    #[serde(default)]
    pub desired: Vec<Goal>,
    /// Names of modules failing now (degraded, unresponsive, restarting or
    /// failed); empty when the node's state is unknown.
    pub failing: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeView {
    fn judge(name: &str, member: Option<&Member>, report: Option<(&NodeReport, Duration)>) -> NodeView {
        let member_status = member.map(|m| m.status);
        // The period is the peer's word: held to an hour, so an absurd one
        // can neither overflow nor keep a report fresh for ever.
        let stale_after = report.map(|(r, _)| {
            let period = r.interval_ms.max(r.refresh_ms).min(MAX_TRUSTED_PERIOD_MS);
            Duration::from_millis(period) * STALE_AFTER_INTERVALS
        });
        // A node restarted under its name is a new process: the report its
        // previous run left says nothing of this one, however recent.
        let previous_run = report.and_then(|(r, _)| {
            let boot = member.map_or(0, |m| m.boot_ms);
            (boot != 0 && r.started_ms.saturating_add(BOOT_SLACK_MS) < boot).then_some(boot)
        });
        let report_stale = match (report, stale_after) {
            _ if previous_run.is_some() => true,
            (Some((_, age)), Some(limit)) => age > limit,
            _ => true,
        };
        let gone = matches!(member_status, Some(MemberStatus::Dead | MemberStatus::Left) | None);
        let stale = report_stale || gone;
        let reported_failing = report.is_some_and(|(r, _)| r.modules.iter().any(|m| m.health.is_failing()));
        let health = match member_status {
            Some(MemberStatus::Left) => NodeHealth::Left,
            Some(MemberStatus::Dead) | None => NodeHealth::Dead,
            Some(MemberStatus::Suspect) => NodeHealth::Suspect,
            Some(MemberStatus::Alive) if report_stale => NodeHealth::Stale,
            Some(MemberStatus::Alive) if reported_failing => NodeHealth::Degraded,
            Some(MemberStatus::Alive) => NodeHealth::Ok,
        };
        // While the node is current, its running modules have aged along
        // with the report. Otherwise what the report said is history, not
        // health, and nothing ages.
        let modules: Vec<ModuleReport> = report
            .map(|(r, age)| {
                let mut modules = r.modules.clone();
                for m in &mut modules {
                    if !health.is_current() {
                        m.reported_health = Some(m.health);
                        m.health = Health::Unknown;
                    } else if m.state == "running" {
                        m.uptime_ms = m.uptime_ms.saturating_add(age.as_millis() as u64);
                    }
                }
                modules
            })
            .unwrap_or_default();
        let failing: Vec<String> = modules
            .iter()
            .filter(|m| m.health.is_failing())
            .map(|m| m.name.clone())
            .collect();
        let error = match (report, member_status) {
            (None, _) => Some("no status report received yet".to_string()),
            (Some(_), Some(MemberStatus::Dead)) => Some("the node is dead; its last report is shown".to_string()),
            (Some(_), Some(MemberStatus::Left)) => Some("the node left; its last report is shown".to_string()),
            (Some(_), _) if previous_run.is_some() => Some(
                "the node restarted and has not reported since; the report of its previous run is shown".to_string(),
            ),
            (Some((_, age)), _) if report_stale => Some(format!(
                "the latest report is {} ms old (stale after {} ms)",
                age.as_millis(),
                stale_after.unwrap_or_default().as_millis()
            )),
            _ => None,
        };
        let millis = |d: Duration| d.as_millis() as u64;
        NodeView {
            node: name.to_string(),
            member: member_status,
            member_since_ms: member.map(|m| m.since_ms),
            addr: member.and_then(|m| m.addr.clone()),
            tags: member
                .map(|m| m.tags.clone())
                .or_else(|| report.map(|(r, _)| r.tags.clone()))
                .unwrap_or_default(),
            health,
            stale,
            status_age_ms: report.map(|(_, age)| millis(age)),
            stale_after_ms: stale_after.map(millis),
            version: report.map(|(r, _)| r.version.clone()),
            uptime_ms: report.map(|(r, age)| {
                let aged = if health.is_current() { millis(age) } else { 0 };
                r.uptime_ms.saturating_add(aged)
            }),
            host: report.map(|(r, _)| r.host.clone()).unwrap_or(Value::Null),
            cluster: report.map(|(r, _)| r.cluster.clone()).unwrap_or(Value::Null),
            module_counts: ModuleCounts::of(&modules),
            desired: report.map(|(r, _)| r.desired.clone()).unwrap_or_default(),
            modules,
            failing,
            error,
        }
    }

    /// How far it is with what the deployments table asks of it, as its
    /// latest report says.
    pub fn convergence(&self) -> Convergence {
        let count = |state: GoalState| self.desired.iter().filter(|g| g.state == state).count();
        Convergence {
            converged: count(GoalState::Converged),
            failed: count(GoalState::Failed),
            total: self.desired.len(),
        }
    }

    /// Whether `conjoiner status` counts this node as failing.
    pub fn is_failing(&self) -> bool {
        !matches!(self.health, NodeHealth::Ok | NodeHealth::Left)
    }
}

/// How many of the modules the table names for a node are converged, and
/// how many failed (and are retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Convergence {
    pub converged: usize,
    pub failed: usize,
    pub total: usize,
}

/// The one-line summary of `conjoiner status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub nodes: usize,
    pub ok: usize,
    pub failing_nodes: usize,
    /// Every module of every node's latest report, and of those: ok now,
    /// failing now, and on nodes whose state is unknown (dead, suspect,
    /// stale or left), counted neither ok nor failing.
    pub modules: usize,
    pub ok_modules: usize,
    pub failing_modules: usize,
    pub unknown_modules: usize,
    /// Nodes per health, every health named (0 included), so a dashboard
    /// can show each figure without knowing the list.
    pub by_health: BTreeMap<NodeHealth, usize>,
    /// Current nodes that do not run all the deployments table asks of
    /// them yet, and the steps that failed on them (retried with backoff).
    #[serde(default)]
    pub behind_nodes: usize,
    #[serde(default)]
    pub failed_deploys: usize,
}

pub fn summarize(views: &[NodeView]) -> Summary {
    let mut by_health: BTreeMap<NodeHealth, usize> = [
        NodeHealth::Ok,
        NodeHealth::Degraded,
        NodeHealth::Stale,
        NodeHealth::Suspect,
        NodeHealth::Dead,
        NodeHealth::Left,
    ]
    .into_iter()
    .map(|h| (h, 0))
    .collect();
    for view in views {
        *by_health.entry(view.health).or_default() += 1;
    }
    Summary {
        nodes: views.len(),
        ok: views.iter().filter(|v| v.health == NodeHealth::Ok).count(),
        failing_nodes: views.iter().filter(|v| v.is_failing()).count(),
        modules: views.iter().map(|v| v.module_counts.total).sum(),
        ok_modules: views.iter().map(|v| v.module_counts.ok).sum(),
        failing_modules: views.iter().map(|v| v.module_counts.failing).sum(),
        unknown_modules: views.iter().map(|v| v.module_counts.unknown).sum(),
        by_health,
        behind_nodes: views
            .iter()
            .filter(|v| v.health.is_current() && v.convergence().converged < v.desired.len())
            .count(),
        failed_deploys: views
            .iter()
            .filter(|v| v.health.is_current())
            .map(|v| v.convergence().failed)
            .sum(),
    }
}

#[cfg(test)]
mod tests;
