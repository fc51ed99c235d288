//! Carries out the plan: one pass reads the deployments table, what is
//! installed and what runs, plans a step per module
//! ([`super::reconcile::plan`]) and starts every step that may start now,
//! each on a task of its own through the install pipeline. A module's steps
//! run one at a time; a failed one waits out its backoff. When an entry
//! that arrived while this node ran is carried out (or turns out to be
//! superseded here), its result goes straight to the node that wrote it,
//! which shows it to whoever ran `conjoiner deploy`.

use super::command::{audit_line, authorize_row};
use super::install::{blocking, Installer};
use super::order::{DeployOrder, DeployReport, DeployStatus};
use super::reconcile::{plan, Installed, Step};
use super::steer_audit::steer_line;
use super::table::{read_all, winners, Action, Row};
use crate::actors::cluster_bus::ListEntries;
use crate::actors::transponder::SendDirect;
use crate::audit::Decision;
use crate::cluster::protocol::SET_DEPLOYMENTS;
use crate::wire::{Envelope, MessageType};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn, Instrument};

/// Nodes that hold a package, by its sha256 (from their status reports):
/// peers to fetch it from besides the entry's origin.
pub type Holders = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// What one pass found and did, for the log and the state dump.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PassSummary {
    pub entries: usize,
    pub named: usize,
    pub started: Vec<String>,
    pub converged: usize,
    pub waiting: usize,
}

/// The reconciler's parts.
#[derive(Clone)]
pub struct Reconciler {
    pub installer: Installer,
    pub holders: Holders,
}

impl Reconciler {
    /// One pass. `trusted`: the table is whole (see [`plan`]); `again` is
    /// called when a step it started ends, to look again.
    pub async fn pass(&self, trusted: bool, again: Arc<dyn Fn() + Send + Sync>) -> Result<PassSummary, String> {
        let ctx = &self.installer.ctx;
        let entries = ctx
            .cluster
            .list_entries
            .send(ListEntries(SET_DEPLOYMENTS))
            .await
            .map_err(|_| "the cluster side is not running".to_string())?;
        let (rows, unreadable) = read_all(&entries);
        for (id, why) in &unreadable {
            warn!(entry = %id, reason = %why, "a table entry this node cannot read is ignored");
        }
        let me = ctx.identity.name.clone();
        self.audit_steers(&rows, &me);
        let tags = ctx.identity.tags.get();
        let (rows, refused) = self.gate(rows, &me, &tags);
        let won = winners(&rows, &me, &tags);
        let store = self.installer.state.store.clone();
        let installed: BTreeMap<String, Installed> = blocking(move || store.installed())
            .await
            .into_iter()
            .map(|m| {
                (
                    m.manifest.name.clone(),
                    Installed {
                        version: m.manifest.version,
                        sha256: m.record.sha256,
                        config: m.record.config,
                        manifest_config: m.manifest.config,
                        entry: m.record.entry,
                    },
                )
            })
            .collect();
        let mut steps = plan(&won, &installed, trusted);
        // A module whose deciding entry was refused here is left as it is:
        // a refused entry neither changes it nor, by pruning the entry it
        // superseded, has it removed.
        steps.retain(|module, _| {
            won.contains_key(module.as_str()) || !refused.iter().any(|(r, _)| r.module() == module)
        });
        let mut summary = PassSummary {
            entries: rows.len(),
            named: won.len(),
            ..PassSummary::default()
        };
        let now = Instant::now();
        let named: BTreeSet<String> = steps
            .keys()
            .cloned()
            .chain(won.keys().map(|m| m.to_string()))
            .chain(refused.iter().map(|(r, _)| r.module().to_string()))
            .collect();
        {
            let mut goals = self.installer.state.goals.lock().unwrap_or_else(|e| e.into_inner());
            goals.retain(&named);
            // A module that only refused entries name here: its status says why.
            for (row, why) in refused.iter().filter(|(r, _)| !won.contains_key(r.module())) {
                goals.refused(row.module(), &row.id, row.version.clock, row.action(), why.to_string());
            }
        }
        for (module, step) in steps {
            let row = step.entry().and_then(|id| rows.iter().find(|r| r.id == *id)).cloned();
            let (id, clock, action) = match &row {
                Some(r) => (r.id.to_string(), r.version.clock, r.action()),
                None => (String::new(), 0, Action::Undeploy),
            };
            match step {
                // What is installed already matches, but a step is under
                // way: a new config or package is on probation, and the
                // step itself says how it ended (it may yet roll back).
                Step::Keep { .. }
                    if self
                        .installer
                        .state
                        .goals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .busy(&module) =>
                {
                    summary.waiting += 1;
                }
                Step::Keep { adopt, .. } => {
                    if adopt {
                        let store = self.installer.state.store.clone();
                        let (name, entry) = (module.clone(), id.clone());
                        if let Err(e) = blocking(move || store.adopt(&name, &entry)).await {
                            warn!(module_name = %module, error = %e, "cannot record the entry that runs this module");
                        }
                    }
                    self.installer
                        .state
                        .goals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .converged(&module, &id, clock, action);
                    summary.converged += 1;
                    if let Some(row) = &row {
                        let status = match action {
                            Action::Deploy => DeployStatus::Unchanged,
                            Action::Undeploy => DeployStatus::NotInstalled,
                        };
                        let version = installed.get(&module).map(|m| m.version.clone());
                        self.report(
                            row,
                            DeployReport {
                                status,
                                module: module.clone(),
                                version,
                                sha256: row.deployment.sha256.clone(),
                                error: None,
                                code: None,
                            },
                        )
                        .await;
                    }
                }
                step => {
                    let may = self
                        .installer
                        .state
                        .goals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .may_start(&module, &id, clock, now);
                    if !may {
                        summary.waiting += 1;
                        continue;
                    }
                    summary.started.push(module.clone());
                    self.start(module, step, row, again.clone());
                }
            }
        }
        // Entries that arrived for this node but lose to a newer entry of
        // their module here: their origin hears so.
        for row in rows.iter().filter(|r| r.in_force_for(&me, &tags)) {
            let winner = won.get(row.module()).map(|w| &w.id);
            if winner.is_some_and(|w| *w != row.id) {
                let report = DeployReport {
                    status: DeployStatus::Superseded,
                    module: row.module().to_string(),
                    version: None,
                    sha256: row.deployment.sha256.clone(),
                    error: winner.map(|w| format!("a newer entry of the module wins on this node: {w}")),
                    code: None,
                };
                self.report(row, report).await;
            }
        }
        Ok(summary)
    }

    /// Writes the `carried_out` line of each steer of a rollout held here
    /// that this node has not audited yet (`deploy::steer_audit`).
    fn audit_steers(&self, rows: &[Row], me: &str) {
        let state = &self.installer.state;
        for row in rows {
            let Some(line) = steer_line(me, row) else { continue };
            let in_file = || {
                let query = crate::audit::AuditQuery {
                    module: Some(line.module.clone()),
                    since_ms: None,
                };
                state.audit.read(&query).iter().any(|l| {
                    l.node == line.node && l.id == line.id && l.kind == line.kind && l.decision == Decision::CarriedOut
                })
            };
            let id = line.id.as_deref().unwrap_or_default();
            let first = state
                .audited_steers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first(id, in_file);
            if first {
                info!(entry = %row.id, steer = id, action = %line.kind, state = line.status.as_deref().unwrap_or("-"),
                    "holds a steered rollout; audited the steer");
                state.audit.append(&line);
            }
        }
    }

    /// The command gate, for every entry in force here: the entries this
    /// node may carry out, and the refused ones with the reason. A refusal
    /// is logged, counted and answered to the entry's origin once.
    fn gate(
        &self,
        rows: Vec<Row>,
        me: &str,
        tags: &BTreeMap<String, String>,
    ) -> (Vec<Row>, Vec<(Row, crate::command::gate::Refusal)>) {
        let trust = &*self.installer.config.trust.current();
        let held: std::collections::HashSet<Arc<str>> = rows.iter().map(|r| r.id.clone()).collect();
        let mut allowed = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for row in rows {
            if !row.in_force_for(me, tags) {
                allowed.push(row);
                continue;
            }
            match authorize_row(trust, &row, me, tags) {
                Ok(_) => allowed.push(row),
                Err(why) => refused.push((row, why)),
            }
        }
        for (row, why) in &refused {
            if self.installer.state.first_refusal(&row.id, row.version.clock, &held) {
                warn!(entry = %row.id, module_name = %row.module(), origin = %row.version.origin,
                    code = why.code(), reason = %why, "refused a deployments-table entry: it is not carried out here");
                self.installer
                    .ctx
                    .metrics
                    .dropped(crate::metrics::DropReason::Unauthorized);
                let mut line = audit_line(
                    me,
                    Some(&row.id),
                    &row.deployment,
                    Some(&row.version.origin),
                    Decision::Refused,
                );
                line.reason = Some(why.to_string());
                self.installer.state.audit.append(&line);
                let me = self.clone();
                let (row, why) = (row.clone(), why.clone());
                actix_rt::spawn(
                    async move {
                        let report = DeployReport::failed(row.module(), why.code(), why.to_string());
                        me.report(&row, report).await;
                    }
                    .in_current_span(),
                );
            }
        }
        (allowed, refused)
    }

    /// Starts `step` of `module` on a task of its own.
    fn start(&self, module: String, step: Step, row: Option<Row>, again: Arc<dyn Fn() + Send + Sync>) {
        let (id, clock, action) = match &row {
            Some(r) => (r.id.to_string(), r.version.clock, r.action()),
            None => (String::new(), 0, Action::Undeploy),
        };
        let what = match &step {
            Step::Install { .. } => format!("installing {module}"),
            Step::Reconfigure { .. } => format!("reconfiguring {module}"),
            _ => format!("removing {module}"),
        };
        info!(module_name = %module, entry = %id, step = %what, "reconciling");
        self.installer
            .state
            .goals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .started(&module, &id, clock, action, what);
        let me = self.clone();
        actix_rt::spawn(
            async move {
                let started = Instant::now();
                let lock = me.installer.state.module_lock(&module);
                let _held = lock.lock().await;
                let slots = me.installer.state.step_slots.clone();
                let Ok(_slot) = slots.acquire_owned().await else { return };
                let report = me.carry_out(&module, &step, row.as_ref()).await;
                let result = match report.status {
                    DeployStatus::Failed => Err((
                        report.code.clone().unwrap_or_else(|| "failed".into()),
                        report.error.clone().unwrap_or_default(),
                    )),
                    _ => Ok(()),
                };
                me.installer.state.count(|c| match report.status {
                    DeployStatus::Deployed => c.deployed += 1,
                    DeployStatus::Undeployed => c.undeployed += 1,
                    DeployStatus::Failed => c.failed += 1,
                    _ => c.unchanged += 1,
                });
                me.installer.ctx.metrics.deploy_result(report.status.as_str());
                let elapsed_ms = started.elapsed().as_millis() as u64;
                match &result {
                    Ok(()) => info!(module_name = %module, entry = %id, status = %report.status,
                        version = %report.version.as_deref().unwrap_or("-"), elapsed_ms, "step done"),
                    Err((code, error)) => warn!(module_name = %module, entry = %id, %code, %error, elapsed_ms,
                        "step failed; it is tried again after a backoff"),
                }
                let node = &me.installer.ctx.identity.name;
                let mut line = match &row {
                    Some(row) => audit_line(
                        node,
                        Some(&row.id),
                        &row.deployment,
                        Some(&row.version.origin),
                        Decision::CarriedOut,
                    ),
                    // No entry is in force for it here any more (its
                    // rollout was reverted, its entry retargeted or
                    // deleted): the removal is this node's own doing.
                    None => removal_line(node, &module),
                };
                line.status = Some(report.status.as_str().to_string());
                if let Err((code, error)) = &result {
                    line.reason = Some(format!("{code}: {error}"));
                }
                me.installer.state.audit.append(&line);
                me.installer
                    .state
                    .goals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finished(&module, result, Instant::now());
                if let Some(row) = &row {
                    me.report(row, report).await;
                }
                again();
            }
            .in_current_span(),
        );
    }

    async fn carry_out(&self, module: &str, step: &Step, row: Option<&Row>) -> DeployReport {
        let installer = &self.installer;
        match (step, row) {
            (Step::Install { .. } | Step::Reconfigure { .. }, Some(row)) => {
                let d = &row.deployment;
                let Some(source) = d.source.clone() else {
                    return DeployReport::failed(module, "invalid_order", "the entry names no source");
                };
                if let Some(sha) = &d.sha256 {
                    for holder in (self.holders)(sha) {
                        installer.state.add_holder(sha, &holder);
                    }
                }
                let order = DeployOrder {
                    module: module.to_string(),
                    source,
                    sha256: d.sha256.clone(),
                    config: d.config.clone(),
                };
                let state = installer.state.clone();
                let name = module.to_string();
                let say = move |what: String| {
                    if let Ok(mut goals) = state.goals.lock() {
                        goals.say(&name, what);
                    }
                };
                let fetch_timeout = installer.config.fetch_timeout + Duration::from_secs(60);
                match tokio::time::timeout(fetch_timeout, installer.install(&order, Some(&row.id), &say)).await {
                    Ok(Ok(report)) => report,
                    Ok(Err(e)) => DeployReport::failed(module, e.code(), e.to_string()),
                    Err(_) => DeployReport::failed(module, "fetch_failed", "the install took too long"),
                }
            }
            (Step::Remove { .. }, _) => installer.remove(module).await,
            _ => DeployReport::failed(module, "invalid_order", "the entry is gone from the table"),
        }
    }

    /// Sends `report` about entry `row` to the node that wrote it, once,
    /// and only for entries that arrived while this node ran (an entry
    /// read from disk at start has no one waiting for it).
    async fn report(&self, row: &Row, report: DeployReport) {
        if !self.installer.state.take_fresh(&row.id) {
            return;
        }
        let Ok(id) = uuid::Uuid::parse_str(&row.id) else { return };
        let origin = row.version.origin.to_string();
        let body = serde_json::to_value(&report).unwrap_or_default();
        let mut envelope = Envelope::new(
            MessageType::DeployResult,
            self.installer.source.clone(),
            format!("{origin}.host"),
            Some(format!("name={origin}")),
            body,
        );
        envelope.reply_to = Some(id);
        debug!(entry = %row.id, to = %origin, status = %report.status, "result sent to the entry's origin");
        if let Some(t) = self.installer.ctx.transponder() {
            let _ = t.send(SendDirect { node: origin, envelope }).await;
        }
    }
}

/// The audit line of a module removed because no entry asks for it here
/// any more: there is no command to name, only the module and the step.
fn removal_line(node: &str, module: &str) -> crate::audit::AuditLine {
    crate::audit::AuditLine {
        reason: Some("no entry is in force for it here any more".into()),
        ..crate::audit::AuditLine::of(node, "undeploy", module, Decision::CarriedOut)
    }
}
