//! The Monitor: how the fleet sees this node, and how this node sees the fleet.
//!
//! Every `interval` (and at once after a deploy, or a module's exit, restart
//! or failure on this node) it runs a round:
//! - it asks every running module for its status with a `status_request` on
//!   the ModBus (`mod.<name>`), all at once, each bounded by `timeout`; a
//!   module that does not answer is `unresponsive`;
//! - it joins the answers with the supervisor's facts (state, restarts,
//!   uptime), the install records (sha256), the cluster side's peers and
//!   queues, and the host's load and memory;
//! - it keeps the result on this node's status board, and publishes it as
//!   this node's state in the cluster (a `status` envelope to
//!   `mod.monitor`) when anything an operator acts on changed, or when a
//!   refresh period passed (see [`Publication`]): the cluster spreads each
//!   report once, so the whole fleet carries about two reports a second
//!   whatever its size.
//!
//! Every node's Monitor keeps the latest report of every node in the node's
//! [`StatusBoard`], so `conjoiner modules` and `conjoiner status` answer from
//! one local read.

use super::cluster_bus::{ClusterStatus, ListMembers};
use super::context::ModuleContext;
use super::messages::{state_handlers, Deliver, ShowState};
use super::modbus::answer_status;
use super::modbus::{self, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, ListModules, ModuleInfo, ModuleState, RunningModule};
use super::transponder::PublishNodeState;
use crate::deploy::state::DeployState;
use crate::deploy::store::InstalledModule;
use crate::monitor::board::{refresh_interval, Health, ModuleReport, NodeReport, Publication, StatusBoard};
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Where `status` envelopes go on every node.
pub const MONITOR_ADDRESS: &str = "mod.monitor";

/// The largest status one module may report, in bytes of JSON; a larger one
/// is replaced by a note, so one chatty module cannot push the node's report
/// over the envelope limit.
pub const MAX_MODULE_STATUS_BYTES: usize = 8 * 1024;

/// Tunables of the Monitor.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// How often a round runs (a report is published when it changed, and
    /// at least every `max(interval, N/2 s)`).
    pub interval: Duration,
    /// How long a module may take to answer `status_request`.
    pub timeout: Duration,
}

impl MonitorConfig {
    /// A config for `interval`, with a timeout of half of it, at most 2 s.
    pub fn every(interval: Duration) -> MonitorConfig {
        MonitorConfig {
            interval,
            timeout: (interval / 2).min(Duration::from_secs(2)),
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig::every(Duration::from_secs(10))
    }
}

/// The local event (on the node's own address) that says the node has
/// started the modules it boots with: the core ones, then those installed
/// here before it last stopped.
pub const NODE_STARTED: &str = "node_started";

/// Set once the node has started the modules it boots with, just before
/// [`NODE_STARTED`] is sent. Until then the Monitor makes no round: its
/// first report lists every module the node runs, instead of leaving out
/// the ones started after the Monitor for a whole interval and being sent
/// to the cluster twice in the node's first seconds.
pub type BootDone = Arc<AtomicBool>;

/// What the Monitor works with, handed to it by whoever assembles the node.
#[derive(Clone)]
pub struct MonitorParts {
    pub ctx: ModuleContext,
    pub config: MonitorConfig,
    /// Every node's latest report; the control API reads it too.
    pub board: StatusBoard,
    /// The installed modules (for the package each one runs) and where
    /// each module the deployments table names stands.
    pub deploy: Arc<DeployState>,
    pub boot_done: BootDone,
}

/// The factory of the node's Monitor.
pub fn start_module(name: &str, parts: MonitorParts) -> anyhow::Result<RunningModule> {
    let monitor = Monitor::new(parts, name);
    Ok(spawn_module(monitor).1)
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Counters {
    rounds: u64,
    published: u64,
    not_published: u64,
    reports_received: u64,
    reports_rejected: u64,
}

pub struct Monitor {
    ctx: ModuleContext,
    deploy: Arc<DeployState>,
    name: String,
    span: tracing::Span,
    config: MonitorConfig,
    board: StatusBoard,
    /// When this node started, ms since epoch: orders reports across restarts.
    started_ms: u64,
    round: u64,
    running: bool,
    /// A round was asked for while one ran: run another right after.
    again: bool,
    last_round: Option<(Instant, Duration)>,
    last_unresponsive: Vec<String>,
    publication: Publication,
    /// A round is scheduled to publish a change held back by the gap.
    held_round: bool,
    boot_done: BootDone,
    counters: Counters,
}

impl Monitor {
    pub fn new(parts: MonitorParts, name: &str) -> Monitor {
        let started_ms = parts.ctx.started_ms;
        Monitor {
            span: parts.ctx.identity.span(name),
            config: parts.config,
            board: parts.board,
            ctx: parts.ctx,
            deploy: parts.deploy,
            name: name.to_string(),
            started_ms,
            round: 0,
            running: false,
            again: false,
            last_round: None,
            last_unresponsive: Vec::new(),
            publication: Publication::default(),
            held_round: false,
            boot_done: parts.boot_done,
            counters: Counters::default(),
        }
    }

    fn source(&self) -> Source {
        Source {
            node: self.ctx.identity.name.clone(),
            module: self.name.clone(),
        }
    }

    fn addresses(&self) -> [String; 2] {
        [format!("mod.{}", self.name), self.ctx.identity.local_address()]
    }

    /// Starts a round unless one is running (then one more follows it).
    fn start_round(&mut self, ctx: &mut Context<Self>) {
        if !self.boot_done.load(Ordering::Acquire) {
            return debug!("the node is still starting its modules; no round before it has");
        }
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        self.round += 1;
        let gather = gather_report(
            self.ctx.clone(),
            self.deploy.clone(),
            self.source(),
            self.config.clone(),
            self.started_ms,
            self.round,
        );
        let began = Instant::now();
        gather
            .into_actor(self)
            .map(move |report, act, ctx| {
                act.running = false;
                act.counters.rounds += 1;
                act.last_round = Some((began, began.elapsed()));
                act.publish(report, ctx);
                act.forget_gone(ctx);
                if std::mem::take(&mut act.again) {
                    act.start_round(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Drops the reports of nodes membership no longer lists.
    fn forget_gone(&mut self, ctx: &mut Context<Self>) {
        let board = self.board.clone();
        let span = self.span.clone();
        self.ctx
            .cluster
            .members
            .send(ListMembers)
            .into_actor(self)
            .map(move |members, _act, _ctx| {
                let Ok(members) = members else { return };
                for name in board.forget_gone(&members, Instant::now()) {
                    span.in_scope(|| info!(member = %name, "forgot the status of a node membership no longer lists"));
                }
            })
            .spawn(ctx);
    }

    fn publish(&mut self, report: NodeReport, ctx: &mut Context<Self>) {
        let _g = self.span.clone().entered();
        let unresponsive: Vec<String> = report
            .modules
            .iter()
            .filter(|m| m.health == Health::Unresponsive)
            .map(|m| m.name.clone())
            .collect();
        if unresponsive != self.last_unresponsive {
            if unresponsive.is_empty() {
                info!("every module answers its status_request again");
            } else {
                warn!(modules = ?unresponsive, timeout_ms = self.config.timeout.as_millis() as u64,
                    "modules did not answer their status_request: unresponsive");
            }
            self.last_unresponsive = unresponsive;
        }
        debug!(
            round = report.round,
            modules = report.modules.len(),
            "status round done"
        );
        let body = match serde_json::to_value(&report) {
            Ok(body) => body,
            Err(e) => return warn!(error = %e, "cannot encode the status report"),
        };
        // Our own entry is fresh even when the cluster is unreachable.
        let now = Instant::now();
        let why = self
            .publication
            .due(&report, now, Duration::from_millis(report.refresh_ms));
        if why.is_none() && !self.held_round {
            if let Some(wait) = self.publication.held(&report, now) {
                // Changed too soon after the last report: say it as soon
                // as the gap allows, not on the next periodic round.
                self.held_round = true;
                ctx.run_later(wait, |act, ctx| {
                    act.held_round = false;
                    act.start_round(ctx);
                });
            }
        }
        self.board.record(report, now);
        let Some(why) = why else { return };
        let Some(transponder) = self.ctx.transponder() else {
            self.counters.not_published += 1;
            return debug!("no transponder right now; status report kept locally");
        };
        debug!(why = ?why, "publishing the status report");
        self.counters.published += 1;
        transponder.do_send(PublishNodeState {
            module: self.name.clone(),
            body,
        });
    }

    /// A `status` envelope from a node (this one included).
    fn receive_report(&mut self, envelope: Envelope) {
        let report: NodeReport = match serde_json::from_value(envelope.body) {
            Ok(r) => r,
            Err(e) => {
                self.counters.reports_rejected += 1;
                return warn!(envelope = %envelope.id, from = %envelope.src.node, error = %e,
                    "malformed status report dropped");
            }
        };
        // `src.node` is stamped by the sender's Transponder; the body is not.
        if report.node != envelope.src.node {
            self.counters.reports_rejected += 1;
            return warn!(envelope = %envelope.id, from = %envelope.src.node, claims = %report.node,
                "status report about another node dropped");
        }
        self.counters.reports_received += 1;
        debug!(envelope = %envelope.id, from = %report.node, round = report.round, "status report received");
        self.board.record(report, Instant::now());
    }
}

/// One round: ask every running module, then build the report.
async fn gather_report(
    ctx: ModuleContext,
    deploy: Arc<DeployState>,
    me: Source,
    config: MonitorConfig,
    started_ms: u64,
    round: u64,
) -> NodeReport {
    let modules = ctx.supervisor.send(ListModules).await.unwrap_or_default();
    let asks = modules.iter().map(|m| {
        let bus = ctx.bus.clone();
        let envelope = Envelope::new(
            MessageType::StatusRequest,
            me.clone(),
            format!("mod.{}", m.name),
            None,
            json!({"round": round}),
        );
        let running = m.state == ModuleState::Running;
        async move {
            if !running {
                return None;
            }
            let answer = bus
                .send(modbus::Request {
                    envelope,
                    timeout: config.timeout,
                })
                .await;
            Some(match answer {
                Ok(Ok(reply)) => Ok(reply.body),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("modbus unavailable: {e}")),
            })
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let desired = deploy.goals_report();
    let store = deploy.store.clone();
    let installed = tokio::task::spawn_blocking(move || store.installed())
        .await
        .unwrap_or_default();
    let mut cluster = ctx.cluster.status.send(ClusterStatus).await.unwrap_or_default();
    let cluster_size = ["alive", "suspect"]
        .iter()
        .filter_map(|s| cluster.members.get(*s))
        .sum::<usize>();
    // Every node stores every report, so a list of all links would make the
    // fleet's memory grow with the square of its size. Only links with a
    // backlog are named; `/metrics` and `debug dump` show them all.
    cluster.links.retain(|l| l.queued_bytes > 0);
    let modules = modules
        .into_iter()
        .zip(answers)
        .map(|(info, answer)| module_report(info, answer, &installed))
        .collect();
    NodeReport {
        node: ctx.identity.name.clone(),
        tags: ctx.identity.tags.get(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms,
        round,
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        interval_ms: config.interval.as_millis() as u64,
        refresh_ms: refresh_interval(config.interval, cluster_size).as_millis() as u64,
        host: super::uptime::host_figures(),
        cluster: serde_json::to_value(cluster).unwrap_or(Value::Null),
        modules,
        desired,
    }
}

/// Joins what the supervisor says with what the module said (`None`: not
/// asked because it is not running).
fn module_report(
    info: ModuleInfo,
    answer: Option<Result<Value, String>>,
    installed: &[InstalledModule],
) -> ModuleReport {
    let (health, status_error) = Health::of_module(&info.state, answer.as_ref());
    let status = match (&info.state, answer) {
        (ModuleState::Running, Some(Ok(status))) => bounded(status),
        _ => Value::Null,
    };
    let state = serde_json::to_value(&info.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    ModuleReport {
        sha256: installed
            .iter()
            .find(|i| i.manifest.name == info.name)
            .map(|i| i.record.sha256.clone()),
        name: info.name,
        kind: info.kind,
        version: info.version,
        state,
        health,
        restarts: info.restarts,
        uptime_ms: info.uptime_ms,
        health_reason: Health::reason_given(&status),
        status,
        status_error,
        last_exit: info.last_exit,
        reported_health: None,
    }
}

/// A module's status, or a note in its place when it is too large.
fn bounded(status: Value) -> Value {
    let size = serde_json::to_vec(&status).map(|v| v.len()).unwrap_or(0);
    if size > MAX_MODULE_STATUS_BYTES {
        json!({"truncated": true, "bytes": size, "limit": MAX_MODULE_STATUS_BYTES})
    } else {
        status
    }
}

impl Actor for Monitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        for address in self.addresses() {
            self.ctx.bus.do_send(Subscribe {
                address,
                module: self.name.clone(),
                recipient: ctx.address().recipient(),
            });
        }
        self.start_round(ctx);
        ctx.run_interval(self.config.interval, |act, ctx| act.start_round(ctx));
        info!(
            interval_ms = self.config.interval.as_millis() as u64,
            timeout_ms = self.config.timeout.as_millis() as u64,
            "monitor started"
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.ctx.bus.do_send(Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
        info!(rounds = self.counters.rounds, "monitor stopped");
    }
}

impl Handler<Deliver> for Monitor {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        match &envelope.kind {
            MessageType::Status => self.receive_report(envelope),
            MessageType::StatusRequest => {
                let body = self.state();
                answer_status(&self.ctx.bus, &envelope, self.source(), body);
            }
            // `conjoiner request mod.monitor`: each node answers with its
            // Monitor's state.
            MessageType::Request => {
                let reply = Envelope::reply_to_request(&envelope, MessageType::Reply, self.source(), self.state());
                self.ctx.bus.do_send(modbus::Publish(reply));
            }
            kind if envelope.dst.address == self.ctx.identity.local_address() => {
                let event = envelope.body.get("event").and_then(Value::as_str);
                let changed = kind.as_str() == "deployment_changed"
                    || matches!(
                        event,
                        Some("module_failed" | "module_restarting" | "module_restarted" | NODE_STARTED)
                    );
                if changed {
                    debug!(envelope = %envelope.id, kind = %kind, "local change; reporting now");
                    self.start_round(ctx);
                }
            }
            kind => debug!(envelope = %envelope.id, kind = %kind, "ignoring an envelope the monitor does not handle"),
        }
    }
}

impl ShowState for Monitor {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        json!({
            "interval_ms": self.config.interval.as_millis() as u64,
            "timeout_ms": self.config.timeout.as_millis() as u64,
            "round": self.round,
            "round_running": self.running,
            "last_round_ago_ms": self.last_round.map(|(t, _)| t.elapsed().as_millis() as u64),
            "last_round_took_ms": self.last_round.map(|(_, d)| d.as_millis() as u64),
            "nodes_known": self.board.len(),
            "unresponsive": self.last_unresponsive,
            "counters": self.counters,
        })
    }
}

state_handlers!(Monitor, stop);
