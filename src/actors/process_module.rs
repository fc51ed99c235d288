//! ProcessModule: runs a package's `main` as a child process and bridges it
//! to the node.
//!
//! - stdin gets an `init` line, then one envelope per line for everything
//!   delivered to the module's subscriptions.
//! - stdout lines are operations (`publish`, `reply`, `status`, `subscribe`,
//!   `log`). A line that is not JSON or names an unknown `op` is logged and
//!   counted; the module keeps running.
//! - stderr lines go to the node's log under the module's name.
//!
//! The child dies with the node: `kill_on_drop`, and `PR_SET_PDEATHSIG` for
//! when the node itself is killed. It runs in a session of its own; stopping
//! sends SIGTERM to everything it started (its [`process_tree`]), then
//! SIGKILL after the manifest's `stop_grace_secs`, and whatever is left when
//! the child exits, on request or not, is killed too. A non-zero exit stops
//! the actor with an [`ExitNote`], which the supervisor's restart policy
//! sees as a failure.

use super::messages::{state_handlers, Deliver, ShowState, StopModule};
use super::modbus::{ModBus, Publish, Subscribe, Unsubscribe};
use super::supervisor::ExitNote;
use super::transponder::{PublishToCluster, TransponderSlot};
use super::NodeIdentity;
use crate::cgroup::{Containment, ModuleCgroup};
use crate::cluster::backpressure::Backpressure;
use crate::deploy::Manifest;
use crate::logging::LogThrottle;
use crate::metrics::{DropReason, Metrics};
use crate::modules::line_codec::{ModuleLines, ModuleText};
use crate::modules::module_line::{self, LineError, LogLevel, ModuleLine};
use crate::modules::process_tree::{self, ProcessRef};
use crate::modules::stdin_queue::{self, Refused, StdinQueue};
use crate::token_bucket::TokenBucket;
use crate::wire::envelope::ORDER_AS_ENVELOPE;
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

/// The longest stdout/stderr line taken from a child; longer ones are
/// skipped as bad lines, and the child keeps running.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// How long an exited child's stderr is still read before its exit is handled.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// How much of the end of a child's stderr is kept, to say why it failed.
const STDERR_TAIL_BYTES: usize = 2048;
/// The most lines a second that one module's stderr, its `log` lines and
/// its bad lines may each put in the node's log. A module printing in a
/// tight loop would otherwise fill the disk with the node's log; lines past
/// this are counted, and the next line logged says how many were not.
const MODULE_LOG_LINES_PER_SEC: u32 = 100;

fn module_log_throttle() -> LogThrottle {
    LogThrottle::new(Duration::from_secs(1), MODULE_LOG_LINES_PER_SEC)
}

/// Says how many of a module's lines were left out of the node's log
/// before the one about to be logged (`n` counts it too).
fn note_lines_not_logged(stream: &str, n: u64) {
    if n > 1 {
        warn!(stream = %stream, lines_not_logged = n - 1, limit_per_sec = MODULE_LOG_LINES_PER_SEC,
            "module wrote lines faster than the node logs them; lines left out (still counted)");
    }
}

/// The end of a child's stderr and how many lines it wrote, shared with the
/// task that reads it.
#[derive(Default)]
struct StderrTail {
    lines: u64,
    tail: String,
}

impl StderrTail {
    fn push(&mut self, line: &str) {
        self.lines += 1;
        self.tail.push_str(line);
        self.tail.push('\n');
        if self.tail.len() > STDERR_TAIL_BYTES {
            let mut cut = self.tail.len() - STDERR_TAIL_BYTES;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
        }
    }
}
/// Requests remembered so the child can reply to them by id.
const REMEMBERED_REQUESTS: usize = 1024;

/// What the node hands a process module.
pub struct ProcessModuleSetup {
    pub name: String,
    /// The installed module folder; the child runs here.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The effective config, sent in the `init` line.
    pub config: Value,
    /// A cgroup for each run, or the process tree only.
    pub containment: Containment,
    /// While set, the module's output is read no further: what it
    /// publishes waits in its own pipe instead of being lost further on.
    pub backpressure: Backpressure,
    /// Where envelopes dropped at its stdin are counted with the node's
    /// other drops.
    pub metrics: Metrics,
}

#[derive(Message)]
#[rtype(result = "()")]
struct ChildExited(std::io::Result<std::process::ExitStatus>);

#[derive(Default, Debug, Clone, Copy, Serialize)]
struct Counters {
    lines_in: u64,
    bad_lines: u64,
    stderr_lines: u64,
    envelopes_in: u64,
    envelopes_dropped: u64,
    published: u64,
    /// Publishes over the module's `publish_per_sec`, dropped.
    publish_dropped: u64,
    replies: u64,
    /// Lines that broke the stdio protocol in a way a caller waits on (a
    /// reply without `to` or `body`, an unknown op).
    protocol_errors: u64,
}

/// How long a protocol error keeps the module's health `degraded`.
const PROTOCOL_ERROR_WINDOW: Duration = Duration::from_secs(60);

pub struct ProcessModule {
    identity: NodeIdentity,
    setup: ProcessModuleSetup,
    span: tracing::Span,
    bus: Addr<ModBus>,
    transponder: TransponderSlot,
    exit_note: ExitNote,
    stdin: Option<StdinQueue>,
    pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
    /// The child's process tree as read when a stop began: killed at the
    /// end, even the parts that lost their parent meanwhile.
    tree_at_stop: BTreeSet<ProcessRef>,
    /// This run's cgroup, where the node has them: everything the child
    /// starts stays in it, and it is killed whole at the end.
    cgroup: Option<ModuleCgroup>,
    stopping: bool,
    subscriptions: BTreeSet<String>,
    requests: HashMap<Uuid, Envelope>,
    request_order: VecDeque<Uuid>,
    last_status: Option<(Value, Instant)>,
    /// `status_request`s the child has not answered yet; its next
    /// `{"op":"status"}` answers them all.
    status_requests: VecDeque<Envelope>,
    started: Instant,
    publish_limit: TokenBucket,
    publish_drops: LogThrottle,
    /// Envelopes dropped at a full stdin queue, logged once per 10 s.
    stdin_drops: LogThrottle,
    /// `log` lines and bad lines put in the node's log (see
    /// `MODULE_LOG_LINES_PER_SEC`).
    log_lines: LogThrottle,
    bad_lines: LogThrottle,
    stderr: std::sync::Arc<std::sync::Mutex<StderrTail>>,
    counters: Counters,
    /// The last protocol error, and when.
    last_protocol_error: Option<(String, Instant)>,
    /// How the child ended, for the requests it left unanswered.
    ended: Option<String>,
}

impl ProcessModule {
    pub fn new(
        identity: &NodeIdentity,
        setup: ProcessModuleSetup,
        bus: Addr<ModBus>,
        transponder: TransponderSlot,
        exit_note: ExitNote,
    ) -> ProcessModule {
        // Held to `publish_per_sec`, after a burst of twice that: publishes
        // beyond it are dropped and counted.
        let publish_limit = TokenBucket::new(setup.manifest.publish_per_sec, Instant::now());
        ProcessModule {
            identity: identity.clone(),
            span: identity.span(&setup.name),
            setup,
            bus,
            transponder,
            exit_note,
            stdin: None,
            pid: None,
            kill: None,
            tree_at_stop: BTreeSet::new(),
            cgroup: None,
            stopping: false,
            subscriptions: BTreeSet::new(),
            requests: HashMap::new(),
            request_order: VecDeque::new(),
            last_status: None,
            status_requests: VecDeque::new(),
            last_protocol_error: None,
            ended: None,
            started: Instant::now(),
            publish_limit,
            publish_drops: LogThrottle::new(Duration::from_secs(10), 1),
            stdin_drops: LogThrottle::new(Duration::from_secs(10), 1),
            log_lines: module_log_throttle(),
            bad_lines: module_log_throttle(),
            stderr: Default::default(),
            counters: Counters::default(),
        }
    }

    /// Starts the child and its stdin writer, stderr reader and exit watcher.
    fn spawn_child(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        let main = self.setup.manifest.main.as_ref().ok_or("the manifest has no `main`")?;
        let program = self.setup.dir.join(main);
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&self.setup.manifest.args)
            .envs(&self.setup.manifest.env)
            .env("CONJOINER_NODE", &self.identity.name)
            .env("CONJOINER_MODULE", &self.setup.name)
            // The cluster key is the node's secret, not the module's.
            .env_remove("CONJOINER_KEY")
            .current_dir(&self.setup.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Containment::Cgroup { parent } = &self.setup.containment {
            match ModuleCgroup::create(parent, &self.identity.name, &self.setup.name) {
                Ok(group) => self.cgroup = Some(group),
                Err(e) => warn!(error = %e, parent = %parent.display(),
                    "cannot make this module's cgroup; its process tree is all that is killed on stop"),
            }
        }
        let join_fd = self.cgroup.as_ref().and_then(ModuleCgroup::join_fd);
        let umask = crate::data_dir::inherited_umask();
        // SAFETY: setsid, prctl, umask and write are async-signal-safe and
        // touch only the child. The session marks everything the module
        // starts; the cgroup holds it even when it leaves the session. The
        // module creates files under the umask the agent was started with.
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(fd) = join_fd {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.pid = child.id();
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;

        let (lines, mut queue) = stdin_queue::stdin_queue(stdin_queue::MAX_LINES, stdin_queue::MAX_BYTES);
        let init = json!({"type": "init", "body": {
            "node": self.identity.name, "module": self.setup.name, "config": self.setup.config,
        }});
        let _ = lines.offer(init.to_string());
        self.stdin = Some(lines);
        let span = self.span.clone();
        actix_rt::spawn(async move {
            let mut stdin = stdin;
            while let Some(mut line) = queue.next().await {
                line.push('\n');
                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                    span.in_scope(|| debug!(error = %e, "module stdin closed"));
                    break;
                }
            }
        });

        ctx.add_stream(held_back(
            FramedRead::new(stdout, ModuleLines::new(MAX_LINE_BYTES)),
            self.setup.backpressure.clone(),
        ));

        let span = self.span.clone();
        let tail = self.stderr.clone();
        let stderr_reader = actix_rt::spawn(async move {
            let mut lines = FramedRead::new(stderr, ModuleLines::new(MAX_LINE_BYTES));
            let mut throttle = module_log_throttle();
            while let Some(line) = futures_util::StreamExt::next(&mut lines).await {
                match line {
                    Ok(ModuleText::Line(line)) => {
                        if let Ok(mut tail) = tail.lock() {
                            tail.push(&line);
                        }
                        if let Some(n) = throttle.event(Instant::now()) {
                            span.in_scope(|| {
                                note_lines_not_logged("stderr", n);
                                info!(stream = %"stderr", "{line}")
                            });
                        }
                    }
                    Ok(ModuleText::TooLong) => span.in_scope(
                        || warn!(stream = %"stderr", "a stderr line over {MAX_LINE_BYTES} bytes was skipped"),
                    ),
                    Err(_) => break,
                }
            }
        });

        let (kill, killed) = oneshot::channel::<()>();
        self.kill = Some(kill);
        let me = ctx.address();
        actix_rt::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // Asked to kill, or the actor is gone (its sender dropped).
                _ = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            // Its last stderr lines say why it failed: read them first (a
            // grandchild may hold stderr open, so not for long).
            let _ = tokio::time::timeout(STDERR_DRAIN, stderr_reader).await;
            me.do_send(ChildExited(status));
        });
        Ok(())
    }

    fn subscribe(&mut self, address: String, ctx: &mut Context<Self>) {
        if self.subscriptions.insert(address.clone()) {
            debug!(address = %address, "subscribing");
            self.bus.do_send(Subscribe {
                address,
                module: self.setup.name.clone(),
                recipient: ctx.address().recipient(),
            });
        }
    }

    fn remember_request(&mut self, envelope: &Envelope) {
        if self.request_order.len() >= REMEMBERED_REQUESTS {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
        self.request_order.push_back(envelope.id);
        self.requests.insert(envelope.id, envelope.clone());
    }

    /// A line that broke the stdio protocol where a caller waits: besides
    /// the log and the module's health, a caller hears at once what the
    /// module did wrong. `named` is the request the line is about, if known;
    /// else one it names in a field (`to`, `reply_to`, `id`, `request`);
    /// else, for a `reply` (`newest`), the newest request not answered yet.
    fn broke_protocol(&mut self, why: &str, line: &str, value: Option<&Value>, named: Option<Uuid>, newest: bool) {
        self.bad_line(why, line);
        self.counters.protocol_errors += 1;
        self.last_protocol_error = Some((why.to_string(), Instant::now()));
        let pending = |id: &Uuid| self.requests.contains_key(id);
        let in_field = value.and_then(|value| {
            ["to", "reply_to", "id", "request"].iter().find_map(|field| {
                let id = Uuid::parse_str(value.get(*field)?.as_str()?).ok()?;
                pending(&id).then_some((id, *field))
            })
        });
        let (id, hint) = match (named.filter(pending), in_field) {
            (Some(id), _) => (id, String::new()),
            (None, Some((id, field))) if field != "to" => {
                (id, format!("; it wrote `{field}`, but the protocol reads `to`"))
            }
            (None, Some((id, _))) => (id, String::new()),
            (None, None) if newest => match self.request_order.iter().rev().find(|id| pending(id)).copied() {
                Some(id) => (id, String::new()),
                None => return,
            },
            (None, None) => return,
        };
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        let body = json!({
            "error": format!("module `{}` broke the stdio protocol: {why}{hint}", self.setup.name),
            "code": "module_protocol",
        });
        let reply = Envelope::reply_to_request(&request, MessageType::Error, self.source(), body);
        debug!(envelope = %reply.id, request = %request.id, "told the caller the module broke the protocol");
        self.bus.do_send(Publish(reply));
    }

    /// Every request still waiting for the child, answered at once: it is
    /// gone and will not answer them.
    fn answer_pending(&mut self, why: &str) {
        self.request_order.clear();
        let pending: Vec<Envelope> = self.requests.drain().map(|(_, r)| r).collect();
        for request in pending {
            let body = json!({
                "error": format!("module `{}` {why} before it answered", self.setup.name),
                "code": "module_exited",
            });
            let reply = Envelope::reply_to_request(&request, MessageType::Error, self.source(), body);
            debug!(request = %request.id, "told the caller the module is gone");
            self.bus.do_send(Publish(reply));
        }
    }

    /// The module's status as the Monitor gets it: a module that broke the
    /// protocol lately is `degraded` (unless it says worse), and why.
    fn status_seen(&self, mut body: Value) -> Value {
        let Some((why, at)) = &self.last_protocol_error else {
            return body;
        };
        if at.elapsed() > PROTOCOL_ERROR_WINDOW || body.get("health").and_then(Value::as_str) == Some("failing") {
            return body;
        }
        if !body.is_object() {
            body = json!({ "status": body });
        }
        body["health"] = json!("degraded");
        body["reason"] = json!(format!(
            "broke the stdio protocol {} time(s), the last {} s ago: {why}",
            self.counters.protocol_errors,
            at.elapsed().as_secs()
        ));
        body
    }

    fn bad_line(&mut self, why: &str, line: &str) {
        self.counters.bad_lines += 1;
        if self.bad_lines.event(Instant::now()).is_none() {
            return;
        }
        let shown: String = line.chars().take(200).collect();
        warn!(bad_lines = self.counters.bad_lines, line = %shown, "bad line from module: {why}; ignored");
    }

    /// One line the child wrote on stdout.
    fn handle_line(&mut self, line: &str, ctx: &mut Context<Self>) {
        self.counters.lines_in += 1;
        if line.trim().is_empty() {
            return;
        }
        let parsed = match module_line::parse(line) {
            Ok(parsed) => parsed,
            Err(LineError::ReplyWithoutTo { why, line: value }) => {
                return self.broke_protocol(&why, line, Some(&value), None, true)
            }
            Err(LineError::ReplyWithoutBody { to, why }) => {
                return self.broke_protocol(&why, line, None, Some(to), true)
            }
            Err(e @ LineError::Malformed { op: "reply", .. }) => {
                let value: Option<Value> = serde_json::from_str(line).ok();
                return self.broke_protocol(&e.to_string(), line, value.as_ref(), None, true);
            }
            // An unknown op answers only the request it names: a module may
            // write other lines before its proper reply.
            Err(e @ LineError::UnknownOp(_)) => {
                let value: Option<Value> = serde_json::from_str(line).ok();
                return self.broke_protocol(&e.to_string(), line, value.as_ref(), None, false);
            }
            Err(e) => return self.bad_line(&e.to_string(), line),
        };
        match parsed {
            ModuleLine::Publish {
                address,
                target,
                kind,
                body,
            } => {
                // Orders travel only as deployments-table entries: a module
                // that publishes one is told so, like any other misuse of
                // the protocol, and nothing is sent.
                if kind.is_order() {
                    self.setup.metrics.dropped(DropReason::Unauthorized);
                    let why = format!("a publish of type `{kind}` is refused: {ORDER_AS_ENVELOPE}");
                    return self.broke_protocol(&why, line, None, None, false);
                }
                let now = Instant::now();
                if !self.publish_limit.take(now) {
                    self.counters.publish_dropped += 1;
                    if let Some(dropped) = self.publish_drops.event(now) {
                        warn!(
                            dropped,
                            total_dropped = self.counters.publish_dropped,
                            limit_per_sec = self.setup.manifest.publish_per_sec,
                            "module publishes faster than its limit; publishes dropped"
                        );
                    }
                    return;
                }
                self.publish(address, target, kind, body);
            }
            ModuleLine::Reply { to, body } => {
                let Some(request) = self.requests.remove(&to) else {
                    return self.bad_line("`reply` to an unknown or already answered request", line);
                };
                let reply = Envelope::reply_to_request(&request, MessageType::Reply, self.source(), body);
                self.counters.replies += 1;
                debug!(envelope = %reply.id, request = %request.id, "module replied");
                self.bus.do_send(Publish(reply));
            }
            ModuleLine::Status { body } => {
                debug!(status = %body, answers = self.status_requests.len(), "module reported its status");
                let source = self.source();
                let body = self.status_seen(body);
                for request in self.status_requests.drain(..) {
                    let reply = Envelope::reply_to_request(&request, MessageType::Status, source.clone(), body.clone());
                    self.bus.do_send(Publish(reply));
                }
                self.last_status = Some((body, Instant::now()));
            }
            ModuleLine::Subscribe { address } => self.subscribe(address, ctx),
            ModuleLine::Log { level, msg } => {
                let Some(n) = self.log_lines.event(Instant::now()) else {
                    return;
                };
                note_lines_not_logged("log", n);
                match level {
                    LogLevel::Error => error!(stream = %"log", "{msg}"),
                    LogLevel::Warn => warn!(stream = %"log", "{msg}"),
                    LogLevel::Debug => debug!(stream = %"log", "{msg}"),
                    LogLevel::Info => info!(stream = %"log", "{msg}"),
                }
            }
        }
    }

    fn source(&self) -> Source {
        Source {
            node: self.identity.name.clone(),
            module: self.setup.name.clone(),
        }
    }

    /// A `publish` goes to the cluster, except to this node's own
    /// `<node>.local`, which stays on the ModBus.
    fn publish(&mut self, address: String, target: Option<String>, kind: MessageType, body: Value) {
        self.counters.published += 1;
        if address == self.identity.local_address() {
            let envelope = Envelope::new(kind, self.source(), address, None, body);
            self.bus.do_send(Publish(envelope));
            return;
        }
        let Some(transponder) = self.transponder.get() else {
            warn!(address = %address, "cannot publish: the transponder is restarting");
            return;
        };
        let send = transponder.send(PublishToCluster {
            kind,
            module: self.setup.name.clone(),
            address: address.clone(),
            target,
            body,
        });
        let span = self.span.clone();
        actix_rt::spawn(async move {
            match send.await {
                Ok(Ok(id)) => span.in_scope(|| debug!(envelope = %id, address = %address, "module published")),
                Ok(Err(e)) => span.in_scope(|| warn!(address = %address, error = %e, "module publish refused")),
                Err(_) => span.in_scope(|| warn!(address = %address, "module publish lost: transponder stopped")),
            }
        });
    }

    /// The last lines the child wrote on stderr (at most 2 KiB).
    fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|t| t.tail.trim_end().to_string())
            .unwrap_or_default()
    }

    /// Kills what the child `pid` started and left running: its tree now,
    /// and what was found when a stop began.
    fn kill_leftovers(&mut self, pid: u32) {
        let mut tree = std::mem::take(&mut self.tree_at_stop);
        tree.extend(process_tree::tree_of(pid as i32, &process_tree::read_processes()));
        let mut killed = process_tree::signal_all(&tree, libc::SIGKILL);
        // The group holds what the tree lost: a daemon that left the
        // session after its parent exited.
        if let Some(group) = self.cgroup.take() {
            killed = killed.max(group.kill_all());
            group.remove();
        }
        if killed > 0 {
            warn!(processes = killed, "killed processes the module left running");
        }
    }
}

impl Actor for ProcessModule {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if let Err(e) = self.spawn_child(ctx) {
            error!(error = %e, "process module cannot start");
            self.exit_note.fail(e);
            ctx.stop();
            return;
        }
        // The module's own inbox is always open, so the Monitor's
        // `status_request` reaches it even when `subscribe` leaves it out.
        let inbox = format!("mod.{}", self.setup.name);
        let mut addresses = self.setup.manifest.subscriptions();
        if !addresses.contains(&inbox) {
            addresses.push(inbox);
        }
        for address in addresses {
            self.subscribe(address, ctx);
        }
        let subscriptions: Vec<&str> = self.subscriptions.iter().map(String::as_str).collect();
        info!(pid = self.pid.unwrap_or(0), main = %self.setup.manifest.main.as_deref().unwrap_or("-"),
            subscriptions = %subscriptions.join(","), "process module started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        let why = match (&self.ended, self.stopping) {
            (_, true) => "was stopped".to_string(),
            (Some(ended), false) => format!("{ended} (its process)"),
            (None, false) => "stopped".to_string(),
        };
        self.answer_pending(&why);
        if let Some(pid) = self.pid.take() {
            self.kill_leftovers(pid);
        }
        self.bus.do_send(Unsubscribe {
            address: None,
            module: self.setup.name.clone(),
        });
        let c = self.counters;
        info!(
            lines_in = c.lines_in,
            bad_lines = c.bad_lines,
            published = c.published,
            publish_dropped = c.publish_dropped,
            replies = c.replies,
            protocol_errors = c.protocol_errors,
            envelopes_in = c.envelopes_in,
            envelopes_dropped = c.envelopes_dropped,
            stderr_lines = self.stderr.lock().map(|t| t.lines).unwrap_or(0),
            "process module stopped"
        );
    }
}

/// `lines`, taken only while the node is not congested: a module that
/// publishes more than the links carry blocks on its own stdout, as a
/// program writing to any full pipe does.
fn held_back<S>(lines: S, gauge: Backpressure) -> impl futures_util::Stream<Item = S::Item>
where
    S: futures_util::Stream + Unpin,
{
    futures_util::stream::unfold((lines, gauge), |(mut lines, gauge)| async move {
        gauge.wait_clear().await;
        let line = futures_util::StreamExt::next(&mut lines).await?;
        Some((line, (lines, gauge)))
    })
}

impl StreamHandler<std::io::Result<ModuleText>> for ProcessModule {
    fn handle(&mut self, line: std::io::Result<ModuleText>, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        match line {
            Ok(ModuleText::Line(line)) => self.handle_line(&line, ctx),
            Ok(ModuleText::TooLong) => self.bad_line(&format!("longer than {MAX_LINE_BYTES} bytes, skipped"), ""),
            Err(e) => warn!(error = %e, "cannot read the module's stdout"),
        }
    }

    /// stdout closing is not the end: the exit watcher says when the child is gone.
    fn finished(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        debug!("module stdout closed");
    }
}

impl Handler<ChildExited> for ProcessModule {
    type Result = ();

    fn handle(&mut self, ChildExited(status): ChildExited, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if let Some(pid) = self.pid.take() {
            self.kill_leftovers(pid);
        }
        self.kill = None;
        let described = match &status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("cannot wait for the process: {e}"),
        };
        let clean = status.as_ref().is_ok_and(|s| s.success());
        self.ended = Some(described.clone());
        if self.stopping {
            info!(exit = %described, "module process stopped on request");
        } else if clean {
            info!(exit = %described, "module process exited on its own");
        } else {
            let tail = self.stderr_tail();
            warn!(exit = %described, stderr = %tail, "module process failed");
            if tail.is_empty() {
                self.exit_note.fail(format!("process {described}"));
            } else {
                self.exit_note
                    .fail(format!("process {described}; the end of its stderr:\n{tail}"));
            }
        }
        ctx.stop();
    }
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".into(),
    }
}

impl Handler<Deliver> for ProcessModule {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.counters.envelopes_in += 1;
        if envelope.kind == MessageType::Request {
            self.remember_request(&envelope);
        }
        if envelope.kind == MessageType::StatusRequest {
            // Unanswered ones stay unanswered: the Monitor calls the module
            // unresponsive. Keep only the latest few.
            if self.status_requests.len() >= 4 {
                self.status_requests.pop_front();
            }
            self.status_requests.push_back(envelope.clone());
        }
        let Some(stdin) = &self.stdin else { return };
        let line = match serde_json::to_string(&envelope) {
            Ok(line) => line,
            Err(e) => return warn!(envelope = %envelope.id, error = %e, "cannot encode envelope for the module"),
        };
        if let Err(why) = stdin.offer(line) {
            self.counters.envelopes_dropped += 1;
            match why {
                Refused::Full { queued_bytes } => {
                    self.setup.metrics.dropped(DropReason::Overloaded);
                    // Counted every time, logged once per 10 s: an overloaded
                    // module drops thousands a second.
                    let Some(times) = self.stdin_drops.event(Instant::now()) else {
                        return;
                    };
                    warn!(envelope = %envelope.id, times, dropped = self.counters.envelopes_dropped,
                    queued_bytes, limit_bytes = stdin_queue::MAX_BYTES, limit_lines = stdin_queue::MAX_LINES,
                    "module is not reading its stdin fast enough; envelopes dropped")
                }
                Refused::Closed => {
                    self.setup.metrics.dropped(DropReason::NoHandler);
                    warn!(envelope = %envelope.id, dropped = self.counters.envelopes_dropped,
                        "module's stdin is closed; envelope dropped")
                }
            }
        } else {
            debug!(envelope = %envelope.id, kind = %envelope.kind, address = %envelope.dst.address,
                "envelope written to module stdin");
        }
    }
}

impl Handler<StopModule> for ProcessModule {
    type Result = ();

    /// SIGTERM now, SIGKILL after the grace period; the actor stops when the
    /// child is gone.
    fn handle(&mut self, _msg: StopModule, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        let Some(pid) = self.pid else {
            ctx.stop();
            return;
        };
        if self.stopping {
            return;
        }
        self.stopping = true;
        let grace = Duration::from_secs_f64(self.setup.manifest.stop_grace_secs);
        info!(
            pid,
            grace_ms = grace.as_millis() as u64,
            "stopping module process: SIGTERM"
        );
        self.tree_at_stop = process_tree::tree_of(pid as i32, &process_tree::read_processes());
        let mut signalled = process_tree::signal_all(&self.tree_at_stop, libc::SIGTERM);
        if let Some(group) = &self.cgroup {
            signalled = signalled.max(group.signal(libc::SIGTERM));
        }
        debug!(processes = signalled, "SIGTERM sent to the module's process tree");
        ctx.run_later(grace, |act, _ctx| {
            if let Some(kill) = act.kill.take() {
                let _g = act.span.clone().entered();
                warn!("module process ignored SIGTERM; sending SIGKILL");
                let _ = kill.send(());
            }
        });
    }
}

impl ShowState for ProcessModule {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        json!({
            "kind": "process",
            "pid": self.pid,
            "dir": self.setup.dir,
            "version": self.setup.manifest.version,
            "stopping": self.stopping,
            "subscriptions": self.subscriptions,
            "pending_requests": self.requests.len(),
            "status": self.last_status.as_ref().map(|(v, _)| v),
            "status_age_ms": self.last_status.as_ref().map(|(_, t)| t.elapsed().as_millis() as u64),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "stdin_queued_bytes": self.stdin.as_ref().map(StdinQueue::queued_bytes),
            "containment": self.setup.containment.describe(),
            "cgroup": self.cgroup.as_ref().map(|g| g.path().display().to_string()),
            "counters": Counters {
                stderr_lines: self.stderr.lock().map(|t| t.lines).unwrap_or(0),
                ..self.counters
            },
        })
    }
}

state_handlers!(ProcessModule);
