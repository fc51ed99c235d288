//! The Transponder: the node's border between the ClusterBus and its ModBus.
//!
//! - Outgoing: stamps envelopes with this node's name, the time and the
//!   lamport clock (these are never trusted from modules), then
//!   hands them to the ClusterBus.
//! - Incoming: drops duplicates, advances the lamport clock, checks
//!   `dst.target` against this node's name and tags, and delivers what is
//!   meant for this node to the ModBus. A `request` is answered: the reply (or
//!   an `error` envelope, e.g. `no_handler`) goes straight back to the origin.
//! - Both ways, it refuses envelopes of an order's type (`deploy`,
//!   `undeploy`): orders travel only as deployments-table entries, so the
//!   command gate has no way around it.
//! - Requests it sends are gathered per node: one reply per targeted alive
//!   member, and the silent ones are named in `missing`.
//! - The Monitor's report leaves through it as this node's *state*, which
//!   the cluster spreads once per change. There are no heartbeats: liveness
//!   comes from membership.

use super::cluster_bus::{
    AttachTransponder, Broadcast, ClusterHandle, Direct, FromCluster, ListMembers, MemberStatus, SetNodeState,
};
use super::messages::{state_handlers, Deliver, ShowState};
use super::modbus::{self, BusError, ModBus};
use super::NodeIdentity;
use crate::logging::LogThrottle;
use crate::metrics::{DropReason, Metrics};
use crate::wire::envelope::ORDER_AS_ENVELOPE;
use crate::wire::{now_ms, Envelope, MessageType, SeenIds, Source, Target};
use actix::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

/// Messages the Transponder's mailbox holds; cluster envelopes past this
/// are dropped by the bridge and counted (`overloaded`).
pub const TRANSPONDER_MAILBOX: usize = 8192;

/// The address every node's Transponder listens to.
pub const CLUSTERBUS_ADDRESS: &str = "conjoiner.clusterbus";

/// Where modules find the live Transponder: its factory puts each new one
/// here, so a module keeps reaching the cluster across Transponder restarts.
#[derive(Clone, Default)]
pub struct TransponderSlot(std::sync::Arc<std::sync::RwLock<Option<Addr<Transponder>>>>);

impl TransponderSlot {
    /// The Transponder, if it is running right now.
    pub fn get(&self) -> Option<Addr<Transponder>> {
        self.0.read().ok().and_then(|t| t.clone()).filter(|t| t.connected())
    }

    pub fn set(&self, transponder: Addr<Transponder>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(transponder);
        }
    }
}

/// Tunables of the Transponder.
#[derive(Debug, Clone)]
pub struct TransponderConfig {
    /// How long a module on this node may take to answer a cluster request.
    pub module_request_timeout: Duration,
    /// How many envelope ids are remembered to drop duplicates.
    pub dedup_capacity: usize,
}

impl Default for TransponderConfig {
    fn default() -> Self {
        TransponderConfig {
            module_request_timeout: Duration::from_secs(30),
            dedup_capacity: 16_384,
        }
    }
}

/// Why the Transponder sends no envelope for a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefused {
    /// The target selector does not parse: why.
    BadTarget(String),
    /// An order's type (see [`MessageType::is_order`]).
    Order(MessageType),
}

impl std::fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishRefused::BadTarget(why) => f.write_str(why),
            PublishRefused::Order(kind) => write!(f, "refused a `{kind}` envelope: {ORDER_AS_ENVELOPE}"),
        }
    }
}

/// Send an envelope to the cluster (an event, by default).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Uuid, PublishRefused>")]
pub struct PublishToCluster {
    pub kind: MessageType,
    pub module: String,
    pub address: String,
    pub target: Option<String>,
    pub body: Value,
}

/// Send a request to the targeted nodes and gather one answer per node: any
/// envelope whose `reply_to` is the request's id (a `reply`, an `error`, a
/// `deploy_result`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<RequestOutcome, String>")]
pub struct RequestCluster {
    /// `request` for module requests, `status_request` for status; never
    /// an order's type (refused).
    pub kind: MessageType,
    pub module: String,
    pub address: String,
    pub target: Option<String>,
    /// Ask this one node only, straight over its link (no ClusterBus push).
    pub to: Option<String>,
    pub body: Value,
    pub timeout: Duration,
    /// Gets each node's answer as it arrives.
    pub progress: Option<mpsc::UnboundedSender<NodeReply>>,
}

impl RequestCluster {
    /// A `request` to every node that `target` selects.
    pub fn new(module: &str, address: &str, target: Option<String>, body: Value, timeout: Duration) -> RequestCluster {
        RequestCluster {
            kind: MessageType::Request,
            module: module.to_string(),
            address: address.to_string(),
            target,
            to: None,
            body,
            timeout,
            progress: None,
        }
    }
}

/// Gather the answers to `id` (envelopes whose `reply_to` is it) from the
/// `expected` nodes, without sending anything: the results of a
/// deployments-table entry come to the node that wrote it.
#[derive(Message, Debug)]
#[rtype(result = "Result<RequestOutcome, String>")]
pub struct AwaitReplies {
    pub id: Uuid,
    /// The label of the latency histogram (`deploy`, `undeploy`).
    pub kind: MessageType,
    pub expected: BTreeSet<String>,
    pub timeout: Duration,
    pub progress: Option<mpsc::UnboundedSender<NodeReply>>,
}

/// Publish this node's status report (the body of a `status` envelope to
/// `mod.monitor`) as its state in the cluster.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct PublishNodeState {
    pub module: String,
    pub body: Value,
}

/// Send an envelope straight to one node (a `deploy_result` to its origin).
/// The Transponder stamps it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SendDirect {
    pub node: String,
    pub envelope: Envelope,
}

/// One node's answer to a gathered request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReply {
    pub node: String,
    pub body: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub elapsed_ms: u64,
}

/// The result of a gathered request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestOutcome {
    pub id: Uuid,
    pub replies: Vec<NodeReply>,
    /// Targeted alive nodes that did not answer in time.
    pub missing: Vec<String>,
    /// Targeted members that are dead or left: not asked, and named.
    pub absent: Vec<NotAsked>,
}

/// A member a request's target matched that was not asked, because it is
/// not alive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotAsked {
    pub node: String,
    pub member: MemberStatus,
    /// What that means for this request, in a sentence.
    pub note: String,
}

struct Gather {
    /// The request's envelope type, the label of its latency histogram.
    kind: String,
    expected: BTreeSet<String>,
    replies: Vec<NodeReply>,
    started: Instant,
    done: Option<oneshot::Sender<RequestOutcome>>,
    progress: Option<mpsc::UnboundedSender<NodeReply>>,
}

impl Gather {
    fn outcome(self, id: Uuid) -> RequestOutcome {
        let answered: BTreeSet<&String> = self.replies.iter().map(|r| &r.node).collect();
        let missing = self
            .expected
            .iter()
            .filter(|n| !answered.contains(n))
            .cloned()
            .collect();
        RequestOutcome {
            id,
            replies: self.replies,
            missing,
            absent: Vec::new(),
        }
    }
}

#[derive(Default, Debug, Clone, Copy, Serialize)]
struct Counters {
    sent: u64,
    received: u64,
    delivered: u64,
    duplicates: u64,
    not_for_us: u64,
    bad_target: u64,
    no_handler: u64,
    /// Answers that came after their gather ended (a node that was away
    /// reporting on a deploy, a reply past the timeout): dropped.
    late_replies: u64,
    requests_answered: u64,
    states_published: u64,
    /// Envelopes of an order's type, refused: published here or sent by a peer.
    orders_refused: u64,
}

pub struct Transponder {
    identity: NodeIdentity,
    config: TransponderConfig,
    span: tracing::Span,
    bus: Addr<ModBus>,
    cluster: ClusterHandle,
    lamport: u64,
    seen: SeenIds,
    gathers: HashMap<Uuid, Gather>,
    counters: Counters,
    metrics: Metrics,
    /// The module name it answers `status_request` under (`mod.<name>`).
    name: String,
    /// Refused orders are logged at most once per 10 s.
    orders_log: LogThrottle,
}

impl Transponder {
    /// Counts envelopes and request latencies in the node's metrics, and
    /// answers `status_request` on `mod.<name>`.
    pub fn with_metrics(mut self, metrics: Metrics, name: &str) -> Transponder {
        self.metrics = metrics;
        self.name = name.to_string();
        self
    }

    pub fn new(identity: &NodeIdentity, config: TransponderConfig, bus: Addr<ModBus>, cluster: ClusterHandle) -> Self {
        Transponder {
            identity: identity.clone(),
            span: identity.span("transponder"),
            seen: SeenIds::new(config.dedup_capacity),
            config,
            bus,
            cluster,
            lamport: 0,
            gathers: HashMap::new(),
            counters: Counters::default(),
            metrics: Metrics::default(),
            name: "transponder".to_string(),
            orders_log: LogThrottle::new(Duration::from_secs(10), 1),
        }
    }

    /// Refuses an envelope of an order's type, published here by `module`
    /// or sent by peer `from`: counted, and logged once per 10 s.
    fn refuse_order(&mut self, kind: &MessageType, address: &str, module: &str, from: &str) {
        self.counters.orders_refused += 1;
        self.metrics.dropped(DropReason::Unauthorized);
        if self.orders_log.event(Instant::now()).is_some() {
            warn!(%kind, %address, %module, %from, refused_so_far = self.counters.orders_refused,
                "refused a `{kind}` envelope: orders travel only as deployments-table entries");
        }
    }

    /// Whether an envelope of `kind` to `target` may leave this node: the
    /// parsed target, or why not.
    fn check_publish(
        &mut self,
        kind: &MessageType,
        address: &str,
        module: &str,
        target: Option<&str>,
    ) -> Result<Option<Target>, PublishRefused> {
        if kind.is_order() {
            let me = self.identity.name.clone();
            self.refuse_order(kind, address, module, &me);
            return Err(PublishRefused::Order(kind.clone()));
        }
        target
            .map(Target::parse)
            .transpose()
            .map_err(|e| PublishRefused::BadTarget(e.to_string()))
    }

    fn source(&self, module: &str) -> Source {
        Source {
            node: self.identity.name.clone(),
            module: module.to_string(),
        }
    }

    /// Stamps an envelope leaving this node: node, time, lamport clock.
    fn stamp(&mut self, envelope: &mut Envelope) {
        self.lamport = self.lamport.saturating_add(1);
        envelope.src.node = self.identity.name.clone();
        envelope.ts = now_ms();
        envelope.lamport = self.lamport;
        envelope.hops = 0;
    }

    fn broadcast(&mut self, mut envelope: Envelope) -> Uuid {
        self.stamp(&mut envelope);
        self.counters.sent += 1;
        self.metrics.envelope_out(envelope.kind.as_str());
        debug!(envelope = %envelope.id, kind = %envelope.kind, address = %envelope.dst.address,
            target = ?envelope.dst.target, lamport = envelope.lamport, "sending to cluster");
        let id = envelope.id;
        self.cluster.broadcast.do_send(Broadcast(envelope));
        id
    }

    fn direct(&mut self, node: String, mut envelope: Envelope) {
        self.stamp(&mut envelope);
        self.counters.sent += 1;
        self.metrics.envelope_out(envelope.kind.as_str());
        debug!(envelope = %envelope.id, kind = %envelope.kind, to = %node, reply_to = ?envelope.reply_to,
            "sending direct");
        let id = envelope.id;
        let direct = self.cluster.direct.send(Direct { node, envelope });
        actix_rt::spawn(async move {
            match direct.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(envelope = %id, error = %e, "direct envelope not sent"),
                Err(e) => warn!(envelope = %id, error = %e, "cluster bus unavailable"),
            }
        });
    }

    /// Is this envelope meant for this node? A bad selector from a peer is
    /// logged and treated as "no".
    fn is_for_us(&mut self, envelope: &Envelope) -> bool {
        let Some(target) = &envelope.dst.target else {
            return true;
        };
        match Target::parse(target) {
            Ok(t) => self.identity.tags.with(|tags| t.matches(&self.identity.name, tags)),
            Err(e) => {
                self.counters.bad_target += 1;
                self.metrics.dropped(DropReason::BadTarget);
                warn!(envelope = %envelope.id, from = %envelope.src.node, error = %e,
                    "dropping envelope with a malformed target");
                false
            }
        }
    }

    /// A reply or error for one of our gathered requests.
    fn record_reply(&mut self, envelope: Envelope) {
        let Some(request_id) = envelope.reply_to else { return };
        let Some(gather) = self.gathers.get_mut(&request_id) else {
            self.counters.late_replies += 1;
            debug!(envelope = %envelope.id, request = %request_id, from = %envelope.src.node,
                "late or unknown reply dropped");
            return;
        };
        if gather.replies.iter().any(|r| r.node == envelope.src.node) {
            debug!(envelope = %envelope.id, from = %envelope.src.node, "second reply from the same node ignored");
            return;
        }
        let (body, error, code) = if envelope.kind == MessageType::Error {
            let error = envelope
                .body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string();
            let code = envelope.body.get("code").and_then(Value::as_str).map(str::to_string);
            (Value::Null, Some(error), code)
        } else {
            (envelope.body, None, None)
        };
        debug!(request = %request_id, from = %envelope.src.node, kind = %envelope.kind, error = ?error,
            "reply gathered");
        let elapsed = gather.started.elapsed();
        self.metrics.request_answered(&gather.kind, elapsed);
        let reply = NodeReply {
            node: envelope.src.node,
            body,
            error,
            code,
            elapsed_ms: elapsed.as_millis() as u64,
        };
        if let Some(progress) = &gather.progress {
            let _ = progress.send(reply.clone());
        }
        gather.replies.push(reply);
        let complete = gather
            .expected
            .iter()
            .all(|n| gather.replies.iter().any(|r| &r.node == n));
        if complete {
            if let Some(mut gather) = self.gathers.remove(&request_id) {
                if let Some(done) = gather.done.take() {
                    let _ = done.send(gather.outcome(request_id));
                }
            }
        }
    }

    /// A request from the cluster for a module on this node: ask it on the
    /// ModBus and send its reply (or the reason there is none) to the origin.
    fn answer_request(&mut self, request: Envelope, ctx: &mut Context<Self>) {
        let ask = self.bus.send(modbus::Request {
            envelope: request.clone(),
            timeout: self.config.module_request_timeout,
        });
        let node = request.src.node.clone();
        ask.into_actor(self)
            .map(move |result, act, _ctx| {
                let _g = act.span.clone().entered();
                let source = act.source("transponder");
                let reply = match result {
                    Ok(Ok(reply)) => {
                        // A module's error reply stays an error for the asker.
                        let kind = match reply.kind {
                            MessageType::Error => MessageType::Error,
                            _ => MessageType::Reply,
                        };
                        Envelope::reply_to_request(&request, kind, source, reply.body)
                    }
                    Ok(Err(e)) => {
                        if matches!(e, BusError::NoHandler { .. }) {
                            act.counters.no_handler += 1;
                        }
                        Envelope::reply_to_request(
                            &request,
                            MessageType::Error,
                            source,
                            json!({"error": e.to_string(), "code": e.code()}),
                        )
                    }
                    Err(e) => Envelope::reply_to_request(
                        &request,
                        MessageType::Error,
                        source,
                        json!({"error": format!("modbus unavailable: {e}"), "code": "unavailable"}),
                    ),
                };
                act.counters.requests_answered += 1;
                act.direct(node, reply);
            })
            .spawn(ctx);
    }
}

impl Actor for Transponder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        // The bridge drops cluster envelopes past this instead of queueing
        // them without bound (see `ClusterBridge::deliver_local`).
        ctx.set_mailbox_capacity(TRANSPONDER_MAILBOX);
        self.cluster
            .attach
            .do_send(AttachTransponder(ctx.address().recipient()));
        self.bus.do_send(modbus::Subscribe {
            address: format!("mod.{}", self.name),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        info!("transponder started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.bus.do_send(modbus::Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
        info!(
            lamport = self.lamport,
            pending_gathers = self.gathers.len(),
            "transponder stopped"
        );
    }
}

impl Handler<FromCluster> for Transponder {
    type Result = ();

    fn handle(&mut self, FromCluster(envelope): FromCluster, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.counters.received += 1;
        if !self.seen.insert(envelope.id) {
            self.counters.duplicates += 1;
            self.metrics.dropped(DropReason::Duplicate);
            debug!(envelope = %envelope.id, from = %envelope.src.node, "duplicate dropped");
            return;
        }
        self.metrics.envelope_in(envelope.kind.as_str());
        // A peer's clock near u64::MAX must not overflow ours.
        self.lamport = self.lamport.max(envelope.lamport).saturating_add(1);
        if !self.is_for_us(&envelope) {
            self.counters.not_for_us += 1;
            debug!(envelope = %envelope.id, target = ?envelope.dst.target, "not for this node");
            return;
        }
        debug!(envelope = %envelope.id, kind = %envelope.kind, from = %envelope.src.node,
            address = %envelope.dst.address, lamport = self.lamport, "received from cluster");
        self.counters.delivered += 1;

        match envelope.kind {
            // No peer hands this node an order as an envelope: a node of
            // this release sends none, and the Deployer takes orders only
            // from the deployments table, past the command gate.
            ref kind if kind.is_order() => {
                let (kind, address, from) = (kind.clone(), envelope.dst.address.clone(), envelope.src.node.clone());
                self.refuse_order(&kind, &address, &envelope.src.module, &from);
            }
            // Status reports: the Monitor listens; a node without one is normal.
            MessageType::Status if envelope.reply_to.is_none() => {
                let _ = self.bus.try_send(modbus::Publish(envelope));
            }
            // An answer to one of our gathered requests, whatever its type.
            _ if envelope.reply_to.is_some_and(|id| self.gathers.contains_key(&id)) => {
                self.record_reply(envelope);
            }
            // A late answer is no event for the modules: a node that was
            // away reports on a deploy whose gather ended long ago.
            MessageType::Reply | MessageType::Error | MessageType::DeployResult if envelope.reply_to.is_some() => {
                self.record_reply(envelope);
            }
            MessageType::Request => self.answer_request(envelope, ctx),
            _ => {
                let publish = self.bus.send(modbus::Publish(envelope.clone()));
                publish
                    .into_actor(self)
                    .map(move |result, act, _ctx| {
                        if let Ok(Err(e)) = result {
                            let _g = act.span.clone().entered();
                            if matches!(e, BusError::NoHandler { .. }) {
                                act.counters.no_handler += 1;
                            }
                            debug!(envelope = %envelope.id, error = %e, "event not delivered on the modbus");
                        }
                    })
                    .spawn(ctx);
            }
        }
    }
}

impl Handler<PublishToCluster> for Transponder {
    type Result = Result<Uuid, PublishRefused>;

    fn handle(&mut self, msg: PublishToCluster, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        self.check_publish(&msg.kind, &msg.address, &msg.module, msg.target.as_deref())?;
        let envelope = Envelope::new(msg.kind, self.source(&msg.module), msg.address, msg.target, msg.body);
        Ok(self.broadcast(envelope))
    }
}

impl Transponder {
    /// Gathers the answers to `id` (any envelope whose `reply_to` is it)
    /// from `expected`, until each answered or `timeout` passed.
    fn gather(
        &mut self,
        id: Uuid,
        kind: &MessageType,
        expected: BTreeSet<String>,
        progress: Option<mpsc::UnboundedSender<NodeReply>>,
        timeout: Duration,
    ) -> ResponseActFuture<Self, Result<RequestOutcome, String>> {
        let (tx, rx) = oneshot::channel();
        let timeout = if expected.is_empty() { Duration::ZERO } else { timeout };
        self.gathers.insert(
            id,
            Gather {
                kind: kind.as_str().to_string(),
                expected,
                replies: Vec::new(),
                started: Instant::now(),
                done: Some(tx),
                progress,
            },
        );
        Box::pin(
            async move { tokio::time::timeout(timeout, rx).await }
                .into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok(Ok(outcome)) => Ok(outcome),
                    _ => {
                        let gather = act.gathers.remove(&id).ok_or("request state lost")?;
                        let outcome = gather.outcome(id);
                        let _g = act.span.clone().entered();
                        info!(request = %id, replies = outcome.replies.len(), missing = ?outcome.missing,
                            "request timed out waiting for some nodes");
                        Ok(outcome)
                    }
                }),
        )
    }
}

impl Handler<RequestCluster> for Transponder {
    type Result = ResponseActFuture<Self, Result<RequestOutcome, String>>;

    fn handle(&mut self, msg: RequestCluster, _ctx: &mut Self::Context) -> Self::Result {
        let checked = {
            let _g = self.span.clone().entered();
            self.check_publish(&msg.kind, &msg.address, &msg.module, msg.target.as_deref())
        };
        let target = match checked {
            Ok(t) => t,
            Err(e) => return Box::pin(fut::ready(Err(e.to_string()))),
        };
        let members = self.cluster.members.send(ListMembers);
        Box::pin(members.into_actor(self).then(move |members, act, _ctx| {
            let _g = act.span.clone().entered();
            let members = members.unwrap_or_default();
            let not_asked: Vec<NotAsked> = members
                .iter()
                .filter(|m| matches!(m.status, MemberStatus::Dead | MemberStatus::Left))
                .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
                .filter(|m| msg.to.as_ref().is_none_or(|to| &m.name == to))
                .map(|m| NotAsked {
                    node: m.name.clone(),
                    member: m.status,
                    note: match m.status {
                        MemberStatus::Left => "left the cluster: not asked".into(),
                        _ => "dead: not asked (it may come back; ask again then)".into(),
                    },
                })
                .collect();
            let expected: BTreeSet<String> = members
                .into_iter()
                // A suspect node is still a member: it is asked, and named
                // in `missing` if it stays silent.
                .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
                .filter(|m| target.as_ref().is_none_or(|t| t.matches(&m.name, &m.tags)))
                .filter(|m| msg.to.as_ref().is_none_or(|to| &m.name == to))
                .map(|m| m.name)
                .collect();
            let envelope = Envelope::new(
                msg.kind.clone(),
                act.source(&msg.module),
                msg.address,
                msg.target,
                msg.body,
            );
            let id = envelope.id;
            let nobody = expected.is_empty();
            if msg.to.is_some() {
                // Single-node requests (package chunks) are many; keep them out of the info log.
                debug!(request = %id, kind = %envelope.kind, address = %envelope.dst.address, to = ?msg.to,
                    expected = expected.len(), "asking one node");
            } else {
                info!(request = %id, kind = %envelope.kind, address = %envelope.dst.address,
                    expected = expected.len(), timeout_ms = msg.timeout.as_millis() as u64, "gathering request");
            }
            if !not_asked.is_empty() {
                info!(request = %id, not_asked = ?not_asked.iter().map(|n| &n.node).collect::<Vec<_>>(),
                    "targeted members that are not alive are not asked");
            }
            let gathered =
                act.gather(id, &envelope.kind, expected, msg.progress, msg.timeout)
                    .map(move |outcome, _act, _ctx| {
                        outcome.map(|mut o| {
                            o.absent = not_asked;
                            o
                        })
                    });
            match (&msg.to, nobody) {
                (_, true) => {}
                (Some(node), false) => act.direct(node.clone(), envelope),
                (None, false) => {
                    act.broadcast(envelope);
                }
            }
            Box::pin(gathered)
        }))
    }
}

impl Handler<AwaitReplies> for Transponder {
    type Result = ResponseActFuture<Self, Result<RequestOutcome, String>>;

    fn handle(&mut self, msg: AwaitReplies, _ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        info!(request = %msg.id, kind = %msg.kind, expected = msg.expected.len(),
            timeout_ms = msg.timeout.as_millis() as u64, "gathering results");
        self.gather(msg.id, &msg.kind, msg.expected, msg.progress, msg.timeout)
    }
}

impl Handler<PublishNodeState> for Transponder {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: PublishNodeState, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let mut envelope = Envelope::new(
            MessageType::Status,
            self.source(&msg.module),
            format!("mod.{}", msg.module),
            None,
            msg.body,
        );
        self.stamp(&mut envelope);
        self.counters.states_published += 1;
        self.metrics.envelope_out(envelope.kind.as_str());
        debug!(envelope = %envelope.id, lamport = envelope.lamport, "publishing this node's status report");
        let id = envelope.id;
        self.cluster
            .set_state
            .send(SetNodeState(envelope))
            .into_actor(self)
            .map(move |result, act, _ctx| {
                let _g = act.span.clone().entered();
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(envelope = %id, error = %e, "status report not published"),
                    Err(e) => warn!(envelope = %id, error = %e, "cluster bus unavailable; status report not published"),
                }
            })
            .spawn(ctx);
        Ok(())
    }
}

impl Handler<SendDirect> for Transponder {
    type Result = ();

    fn handle(&mut self, msg: SendDirect, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.direct(msg.node, msg.envelope);
    }
}

/// The Monitor's `status_request` on `mod.<name>`: answered with the
/// counters, the lamport clock and the heartbeat ages.
impl Handler<Deliver> for Transponder {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        if envelope.kind == MessageType::Request {
            // Say so rather than let the asker wait for its timeout.
            let error = json!({"error": "the transponder answers only status_request", "code": "unsupported"});
            let reply = Envelope::reply_to_request(&envelope, MessageType::Error, self.source(&self.name), error);
            self.bus.do_send(modbus::Publish(reply));
            return;
        }
        if envelope.kind != MessageType::StatusRequest {
            debug!(envelope = %envelope.id, kind = %envelope.kind, "the transponder only answers status_request here");
            return;
        }
        // The report travels to every node, so it stays the same size
        // however large the cluster.
        let status = self.state();
        let reply = Envelope::reply_to_request(&envelope, MessageType::Status, self.source(&self.name), status);
        self.bus.do_send(modbus::Publish(reply));
    }
}

impl ShowState for Transponder {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        json!({
            "lamport": self.lamport,
            "pending_gathers": self.gathers.len(),
            "dedup_ids": self.seen.len(),
            "counters": self.counters,
        })
    }
}

state_handlers!(Transponder, stop);
