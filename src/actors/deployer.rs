//! The Deployer: makes this node run what the deployments table asks of it.
//!
//! The table is replicated on every node by the cluster core; the Deployer
//! keeps it on disk (`deployments.json`), hands it to the cluster at start
//! (so a node that restarts has its table before it reconciles), and runs
//! a reconcile pass at start, whenever the table or the node's tags
//! change, when its steps end, and every `RECONCILE_EVERY` (so a failed
//! step is retried once its backoff ends). The passes and their steps are `deploy::reconciler`'s;
//! every install goes through the one pipeline of `deploy::install`.
//!
//! It also serves the packages this node holds to peers, chunk by chunk,
//! and answers the Monitor with where each module stands.

use super::cluster_bus::{EntriesChanged, ListEntries, ListMembers, LoadEntries, WatchEntries};
use super::context::ModuleContext;
use super::messages::{state_handlers, Deliver, ShowState};
use super::modbus::answer_status;
use super::modbus::{Publish, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, RunningModule, StartModule};
use crate::audit::{AuditLine, Decision};
use crate::cluster::protocol::{Entry, SET_DEPLOYMENTS};
use crate::cluster::SharedKeyring;
use crate::command::keyring_change::{KeyringAnswer, KeyringChange, KeyringOp, KeyringRefusal};
use crate::command::replay::RecentIds;
use crate::command::signature::OperatorSignature;
use crate::deploy::install::{blocking, DeployerConfig, Installer};
use crate::deploy::order::{PeerNews, PeerRequest};
use crate::deploy::package::parse_sha256;
use crate::deploy::reconciler::{Holders, PassSummary, Reconciler};
use crate::deploy::refused_entries::{refusal_line, Verdict};
use crate::deploy::serve::{elsewhere, read_chunk, ServeError};
use crate::deploy::state::DeployState;
use crate::deploy::table_file::{self, Loaded};
use crate::modules::registry::Builtins;
use crate::wire::{now_ms, Envelope, MessageType, Source};
use actix::prelude::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn, Instrument};

/// A pass runs at least this often, so a step whose backoff ended is tried
/// again.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// A node whose table file was lost or did not read removes nothing the
/// table installed until it has had this long to learn the table from its
/// peers.
pub const TABLE_GRACE: Duration = Duration::from_secs(60);
/// Changes of the table are written to disk this long after the first, in
/// one write.
const SAVE_DELAY: Duration = Duration::from_millis(200);

/// Starts every module installed in `<data-dir>/mods`, after cleaning up
/// whatever a crash left half-done. Called once when the node starts; the
/// Deployer reconciles nothing before it is done.
pub async fn start_installed(parts: &DeployerParts) {
    let span = parts.ctx.identity.span("deployer");
    let store = parts.state.store.clone();
    let (cleaned, installed) = blocking(move || (store.recover(), store.installed())).await;
    for line in cleaned {
        span.in_scope(|| warn!("recovery: {line}"));
    }
    for module in installed {
        let name = module.manifest.name.clone();
        let started = match parts.builtins.installed_spec(&parts.ctx, &module) {
            Ok(spec) => parts
                .ctx
                .supervisor
                .send(StartModule(spec))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        span.in_scope(|| match started {
            Ok(()) => info!(module_name = %name, version = %module.manifest.version, "installed module started again"),
            Err(e) => error!(module_name = %name, error = %e, "installed module cannot start"),
        });
    }
    parts.state.mark_ready();
}

/// What the Deployer works with, handed to it by whoever assembles the
/// node: the runtime, its own state (kept across its restarts), its
/// settings, the built-in kinds a package may name, where the table is
/// kept, and who else holds a package.
#[derive(Clone)]
pub struct DeployerParts {
    pub ctx: ModuleContext,
    pub state: Arc<DeployState>,
    pub config: DeployerConfig,
    pub builtins: Builtins,
    pub data_dir: PathBuf,
    pub holders: Holders,
    /// The keys the node's links are made with (none on a node without
    /// links): `conjoiner keys` lists and changes them through here.
    pub keys: Option<SharedKeyring>,
}

/// The factory of the node's Deployer.
pub fn start_module(name: &str, parts: DeployerParts) -> anyhow::Result<RunningModule> {
    let source = Source {
        node: parts.ctx.identity.name.clone(),
        module: name.to_string(),
    };
    let reconciler = Reconciler {
        installer: Installer {
            ctx: parts.ctx.clone(),
            state: parts.state.clone(),
            config: parts.config.clone(),
            builtins: parts.builtins,
            source,
        },
        holders: parts.holders.clone(),
    };
    let deployer = Deployer {
        span: parts.ctx.identity.span(name),
        parts,
        name: name.to_string(),
        reconciler,
        started: Instant::now(),
        table: TableStanding::Loading,
        passing: false,
        again: false,
        save_pending: false,
        last_pass: None,
        keyring_ids: RecentIds::default(),
    };
    Ok(spawn_module(deployer).1)
}

/// Whether the table this node holds can be taken as whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableStanding {
    /// Still reading it from disk: nothing is reconciled yet.
    Loading,
    /// Read from disk (or there was none to lose).
    Whole,
    /// The file was lost or did not read; peers fill it in. Nothing the
    /// table installed is removed before `TABLE_GRACE` has passed.
    Filling,
}

pub struct Deployer {
    parts: DeployerParts,
    name: String,
    span: tracing::Span,
    reconciler: Reconciler,
    started: Instant,
    table: TableStanding,
    /// A pass runs; `again`: another was asked for meanwhile.
    passing: bool,
    again: bool,
    save_pending: bool,
    last_pass: Option<(Instant, Result<PassSummary, String>)>,
    /// Keyring commands taken lately, so that none is taken twice.
    keyring_ids: RecentIds,
}

/// Run a reconcile pass (again, if one runs now).
#[derive(Message)]
#[rtype(result = "()")]
struct Reconcile;

/// The table was read from disk and handed to the cluster.
#[derive(Message)]
#[rtype(result = "()")]
struct TableLoaded(TableStanding);

impl Deployer {
    fn source(&self) -> Source {
        Source {
            node: self.parts.ctx.identity.name.clone(),
            module: self.name.clone(),
        }
    }

    fn trusted(&self) -> bool {
        match self.table {
            TableStanding::Whole => true,
            TableStanding::Filling => self.started.elapsed() >= TABLE_GRACE,
            TableStanding::Loading => false,
        }
    }

    /// Answers a request on the ModBus (the Transponder sends it on to the asker).
    fn reply(&self, request: &Envelope, result: Result<Value, ServeError>) {
        let reply = match result {
            Ok(body) => Envelope::reply_to_request(request, MessageType::Reply, self.source(), body),
            Err(e) => Envelope::reply_to_request(
                request,
                MessageType::Error,
                self.source(),
                json!({"error": e.to_string(), "code": e.code()}),
            ),
        };
        self.parts.ctx.bus.do_send(Publish(reply));
    }

    /// Someone (`conjoiner keys`) lists or changes this node's cluster
    /// keys. A change passes the command gate, is kept in the data dir,
    /// then used for every new link; each one is in the audit.
    fn answer_keyring(&mut self, request: Envelope, change: KeyringChange) {
        let Some(keys) = self.parts.keys.clone() else {
            let body = json!({"error": "this node makes no cluster links", "code": "invalid_request"});
            let reply = Envelope::reply_to_request(&request, MessageType::Error, self.source(), body);
            return self.parts.ctx.bus.do_send(Publish(reply));
        };
        let identity = &self.parts.ctx.identity;
        // A working copy: the change is checked and saved before anyone sees it.
        let mut keyring = (*keys.current()).clone();
        let trust = self.parts.config.trust.current();
        let applied = change
            .apply(
                &mut keyring,
                &trust,
                &mut self.keyring_ids,
                &identity.name,
                &identity.tags.get(),
                now_ms(),
            )
            .and_then(|changed| {
                if changed {
                    keyring.save(&self.parts.data_dir).map_err(|e| KeyringRefusal {
                        code: "failed",
                        message: format!("cannot keep the keyring in {}: {e}", self.parts.data_dir.display()),
                    })?;
                    keys.replace(keyring.clone());
                }
                Ok(changed)
            });
        let answer = KeyringAnswer::of(&keyring, *applied.as_ref().unwrap_or(&false));
        if change.op != KeyringOp::List {
            let signer = change.signature.as_ref().and_then(OperatorSignature::signer_id);
            let (decision, status, reason) = match &applied {
                Ok(changed) => (
                    Decision::CarriedOut,
                    Some(format!(
                        "{}: {}",
                        change.op.as_str(),
                        if *changed { "changed" } else { "unchanged" }
                    )),
                    None,
                ),
                Err(refusal) => (
                    Decision::Refused,
                    Some(change.op.as_str().to_string()),
                    Some(format!("{}: {}", refusal.code, refusal.message)),
                ),
            };
            match &applied {
                Ok(changed) => {
                    info!(op = change.op.as_str(), from = %request.src.node, changed, primary = %answer.primary,
                    keys = %answer.keys.join(", "), "keyring command carried out")
                }
                Err(refusal) => warn!(op = change.op.as_str(), from = %request.src.node, code = refusal.code,
                    reason = %refusal.message, "keyring command refused"),
            }
            self.parts.state.audit.append(&AuditLine {
                id: Some(change.id.clone()),
                origin: Some(request.src.node.clone()),
                key: signer,
                status,
                reason,
                ..AuditLine::of(&identity.name, "keyring", "keyring", decision)
            });
        }
        let reply = match applied {
            Ok(_) => Envelope::reply_to_request(&request, MessageType::Reply, self.source(), json!(answer)),
            Err(refusal) => Envelope::reply_to_request(
                &request,
                MessageType::Error,
                self.source(),
                json!({"error": refusal.message, "code": refusal.code}),
            ),
        };
        self.parts.ctx.bus.do_send(Publish(reply));
    }

    /// Writes an audit line for each entry a peer offered that the table
    /// refused, once per version and within a budget (`refused_entries`).
    fn audit_refused(&self, refused: &[(Arc<Entry>, String)]) {
        let state = &self.parts.state;
        let me = &self.parts.ctx.identity.name;
        let now = Instant::now();
        for (entry, why) in refused {
            let verdict = state
                .refused_entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .judge(entry, now);
            match verdict {
                Verdict::Write => {
                    debug!(entry = %entry.key, origin = %entry.version.origin, "audited a table entry a peer offered and the table refused");
                    state.audit.append(&refusal_line(me, entry, why));
                }
                Verdict::Written => {}
                Verdict::Skipped { first } => {
                    if first {
                        warn!(entry = %entry.key, origin = %entry.version.origin,
                            "peers offer more refused table entries than the audit trail takes ({} a minute); \
                             those past it are logged by the cluster layer but not audited",
                            crate::deploy::refused_entries::PER_MINUTE)
                    }
                }
            }
        }
    }

    /// Someone (`conjoiner audit`) asks for this node's audit lines.
    fn answer_audit(&self, request: Envelope, query: crate::audit::AuditQuery) {
        let state = self.parts.state.clone();
        let (bus, source) = (self.parts.ctx.bus.clone(), self.source());
        actix_rt::spawn(
            async move {
                let lines = blocking(move || state.audit.read(&query)).await;
                debug!(envelope = %request.id, lines = lines.len(), "answering an audit request");
                let body = json!({ "lines": lines });
                bus.do_send(Publish(Envelope::reply_to_request(
                    &request,
                    MessageType::Reply,
                    source,
                    body,
                )));
            }
            .in_current_span(),
        );
    }

    /// A peer asks for a piece of a package this node holds.
    fn serve_chunk(&self, request: Envelope, sha256: String, offset: u64, len: u64) {
        let state = self.parts.state.clone();
        let me = self.source();
        let bus = self.parts.ctx.bus.clone();
        let members = self.parts.ctx.cluster.members.clone();
        let name = self.parts.ctx.identity.name.clone();
        actix_rt::spawn(
            async move {
                if offset == 0 && state.originated(&sha256) {
                    let up = members.send(ListMembers).await.unwrap_or_default();
                    let is_up = |h: &str| up.iter().any(|m| m.name == h && m.status.is_up());
                    if let Some(holders) = elsewhere(&state, &name, &request.src.node, &sha256, offset, is_up) {
                        state.count(|c| c.fetchers_redirected += 1);
                        debug!(from = %request.src.node, holders = holders.len(), sha256 = %sha256,
                            "a new fetcher is sent to the nodes that hold the package already");
                        let body = json!({"holders": holders});
                        bus.do_send(Publish(Envelope::reply_to_request(
                            &request,
                            MessageType::Reply,
                            me,
                            body,
                        )));
                        return;
                    }
                }
                let reply = match read_chunk(&state, &request.src.node, &sha256, offset, len).await {
                    Ok(data) => {
                        state.count(|c| {
                            c.chunks_served += 1;
                            c.bytes_served += data.len() as u64;
                        });
                        let body = json!({"data": BASE64.encode(data)});
                        Envelope::reply_to_request(&request, MessageType::Reply, me, body)
                    }
                    Err(e) => {
                        if matches!(e, ServeError::Busy(_)) {
                            state.count(|c| c.chunks_refused_busy += 1);
                        }
                        debug!(code = e.code(), error = %e, from = %request.src.node, "chunk not served");
                        let body = json!({"error": e.to_string(), "code": e.code()});
                        Envelope::reply_to_request(&request, MessageType::Error, me, body)
                    }
                };
                bus.do_send(Publish(reply));
            }
            .instrument(self.span.clone()),
        );
    }

    /// Reads the table kept on disk and hands it to the cluster; a file
    /// that does not read is kept aside, and peers fill the table in.
    fn load_table(&self, ctx: &mut Context<Self>) {
        let dir = self.parts.data_dir.clone();
        let cluster = self.parts.ctx.cluster.clone();
        let store = self.parts.state.store.clone();
        let state = self.parts.state.clone();
        let me = ctx.address();
        actix_rt::spawn(
            async move {
                // Not before the node recovered and started its installs.
                state.wait_ready().await;
                let loaded = blocking(move || table_file::load(&dir, now_ms())).await;
                let standing = match loaded {
                    Loaded::Table(entries) => {
                        let count = entries.len();
                        let taken = cluster
                            .load_entries
                            .send(LoadEntries {
                                set: SET_DEPLOYMENTS,
                                entries,
                            })
                            .await
                            .unwrap_or(0);
                        info!(entries = count, taken, "deployments table read from disk");
                        TableStanding::Whole
                    }
                    Loaded::Missing => {
                        // No table ever, unless modules say the table installed them.
                        let managed = blocking(move || store.installed().iter().any(|m| m.record.entry.is_some())).await;
                        if managed {
                            warn!(grace_s = TABLE_GRACE.as_secs(), "the deployments table file is missing though the table installed modules here; \
                                   they stay until the peers' table arrives");
                            TableStanding::Filling
                        } else {
                            TableStanding::Whole
                        }
                    }
                    Loaded::Corrupt { error, kept_at } => {
                        error!(%error, kept_at = %kept_at.display(), grace_s = TABLE_GRACE.as_secs(),
                            "the deployments table file does not read; it is kept aside and the table is learnt from the peers \
                             (nothing the table installed is removed meanwhile)");
                        TableStanding::Filling
                    }
                };
                me.do_send(TableLoaded(standing));
            }
            .in_current_span(),
        );
    }

    /// Writes the table to disk shortly, in one write for a burst of changes.
    fn save_soon(&mut self, ctx: &mut Context<Self>) {
        if self.save_pending {
            return;
        }
        self.save_pending = true;
        ctx.run_later(SAVE_DELAY, |act, _ctx| {
            act.save_pending = false;
            let dir = act.parts.data_dir.clone();
            let list = act.parts.ctx.cluster.list_entries.send(ListEntries(SET_DEPLOYMENTS));
            actix_rt::spawn(
                async move {
                    let Ok(entries) = list.await else { return };
                    let count = entries.len();
                    match blocking(move || table_file::save(&dir, &entries)).await {
                        Ok(()) => debug!(entries = count, "deployments table written to disk"),
                        Err(e) => {
                            error!(error = %e, "cannot write the deployments table to disk; it is kept in memory")
                        }
                    }
                }
                .instrument(act.span.clone()),
            );
        });
    }
}

impl Actor for Deployer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.parts.ctx.bus.do_send(Subscribe {
            address: format!("mod.{}", self.name),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        self.parts.ctx.cluster.watch_entries.do_send(WatchEntries {
            set: SET_DEPLOYMENTS,
            watcher: ctx.address().recipient(),
        });
        self.load_table(ctx);
        ctx.run_interval(RECONCILE_EVERY, |_act, ctx| ctx.notify(Reconcile));
        // New tags may make entries target this node, or stop doing so.
        let mut tags = self.parts.ctx.identity.tags.watch();
        let me = ctx.address();
        actix_rt::spawn(async move {
            while tags.changed().await.is_ok() {
                if me.try_send(Reconcile).is_err() && !me.connected() {
                    return;
                }
            }
        });
        info!("deployer started; reading the deployments table");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.parts.ctx.bus.do_send(Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
        info!("deployer stopped; a step in progress finishes first");
    }
}

impl Handler<TableLoaded> for Deployer {
    type Result = ();
    fn handle(&mut self, TableLoaded(standing): TableLoaded, ctx: &mut Self::Context) {
        self.table = standing;
        ctx.notify(Reconcile);
    }
}

impl Handler<EntriesChanged> for Deployer {
    type Result = ();
    fn handle(&mut self, msg: EntriesChanged, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if !msg.refused.is_empty() {
            self.audit_refused(&msg.refused);
        }
        if msg.changed.is_empty() && msg.removed.is_empty() {
            return;
        }
        debug!(changed = msg.changed.len(), removed = msg.removed.len(), table = ?self.table, "deployments table changed");
        // Their origins wait for this node's results; not for entries read
        // from disk or held from before (the table was still being read).
        if self.table != TableStanding::Loading {
            self.parts.state.mark_fresh(msg.changed.iter().map(|e| e.key.clone()));
        }
        self.save_soon(ctx);
        ctx.notify(Reconcile);
    }
}

impl Handler<Reconcile> for Deployer {
    type Result = ();
    fn handle(&mut self, _msg: Reconcile, ctx: &mut Self::Context) {
        if self.table == TableStanding::Loading {
            return;
        }
        if self.passing {
            self.again = true;
            return;
        }
        self.passing = true;
        self.again = false;
        let reconciler = self.reconciler.clone();
        let trusted = self.trusted();
        let me = ctx.address();
        let again: Arc<dyn Fn() + Send + Sync> = Arc::new(move || me.do_send(Reconcile));
        let pass = async move { reconciler.pass(trusted, again).await };
        ctx.spawn(
            pass.instrument(self.span.clone())
                .into_actor(self)
                .map(|result, act, ctx| {
                    let _g = act.span.clone().entered();
                    act.passing = false;
                    act.parts.state.count(|c| c.reconciles += 1);
                    match &result {
                        Ok(s) if !s.started.is_empty() => {
                            info!(entries = s.entries, started = ?s.started, converged = s.converged, waiting = s.waiting,
                                "reconcile pass")
                        }
                        Ok(s) => debug!(entries = s.entries, converged = s.converged, waiting = s.waiting, "reconcile pass"),
                        Err(e) => warn!(error = %e, "reconcile pass failed; tried again shortly"),
                    }
                    act.last_pass = Some((Instant::now(), result));
                    if act.again {
                        ctx.notify(Reconcile);
                    }
                }),
        );
    }
}

impl Handler<Deliver> for Deployer {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        match &envelope.kind {
            MessageType::Deploy | MessageType::Undeploy => {
                // The Transponder refuses these from peers and from every
                // publisher; only a built-in module on this node's ModBus
                // could still hand one over.
                warn!(envelope = %envelope.id, from = %envelope.src.node, kind = %envelope.kind,
                    "a deploy order as an envelope is ignored: deploys travel as deployments-table entries");
            }
            MessageType::StatusRequest => {
                let body = self.parts.state.summary();
                answer_status(&self.parts.ctx.bus, &envelope, self.source(), body);
            }
            MessageType::Request => {
                let error = match serde_json::from_value::<PeerRequest>(envelope.body.clone()) {
                    Ok(PeerRequest::Chunk { sha256, offset, len }) => {
                        return self.serve_chunk(envelope, sha256, offset, len);
                    }
                    Ok(PeerRequest::Audit { query }) => return self.answer_audit(envelope, query),
                    Ok(PeerRequest::Keyring { change }) => return self.answer_keyring(envelope, change),
                    Ok(PeerRequest::Unknown) => {
                        ServeError::UnknownOp(format!("`{}`", envelope.body["op"].as_str().unwrap_or_default()))
                    }
                    Err(e) => ServeError::InvalidRequest(e.to_string()),
                };
                warn!(envelope = %envelope.id, from = %envelope.src.node, "{error}");
                self.reply(&envelope, Err(error));
            }
            MessageType::Event => match serde_json::from_value::<PeerNews>(envelope.body.clone()) {
                Ok(PeerNews::Have { sha256 }) => match parse_sha256(&sha256) {
                    Ok(sha) => {
                        debug!(sha256 = %sha, holder = %envelope.src.node, "peer holds a package");
                        self.parts.state.add_holder(&sha, &envelope.src.node);
                    }
                    Err(e) => debug!(holder = %envelope.src.node, error = %e, "ignoring a bad package announcement"),
                },
                _ => debug!(envelope = %envelope.id, "ignoring an event the deployer does not handle"),
            },
            other => {
                debug!(envelope = %envelope.id, kind = %other, "ignoring an envelope the deployer does not handle")
            }
        }
    }
}

impl ShowState for Deployer {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        let mut state = self.parts.state.summary();
        state["table"] = json!(format!("{:?}", self.table).to_lowercase());
        state["passing"] = json!(self.passing);
        state["goals"] = json!(self.parts.state.goals_report());
        state["last_pass"] = match &self.last_pass {
            Some((at, Ok(s))) => json!({"ago_ms": at.elapsed().as_millis() as u64, "summary": s}),
            Some((at, Err(e))) => json!({"ago_ms": at.elapsed().as_millis() as u64, "error": e}),
            None => Value::Null,
        };
        state
    }
}

state_handlers!(Deployer, stop);
