//! ClusterBridge: the only actor that talks to other nodes.
//!
//! It owns the encrypted links (`cluster::link`), drives foca's SWIM state
//! machine for membership (probes, indirect probes, suspicion, incarnations)
//! with timers from this actor's context, and carries the ClusterBus:
//!
//! - an envelope published here is pushed at once to every active member, and
//!   each receiver forwards it to a few random members until `max_hops`, with
//!   duplicates dropped by id, so a broken link does not lose it;
//! - a direct envelope goes to its one node;
//! - every envelope reaches this node's Transponder once, which filters by
//!   target.
//!
//! Discovery (mDNS, `--join` seeds) only hands it candidate addresses; it
//! dials them and lets membership decide.

use super::cluster_bus::*;
use super::messages::{DumpState, Snapshot};
use super::NodeIdentity;
use crate::cluster::link::{self, Direction, HelloCard, LinkEvent, LinkHandle, LinkId, LinkSetup};
use crate::cluster::protocol::{Hello, Leave, LinkFrame, PROTOCOL_VERSION};
use crate::cluster::{ClusterConfig, ClusterKey, NodeId};
use crate::metrics::{DropReason, Metrics};
use crate::wire::{Envelope, SeenIds};
use actix::prelude::*;
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, State};
use rand::rngs::StdRng;
use rand::seq::IteratorRandom as _;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

type Membership = Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// Dial `addr` (a `--join` seed) and answer with the name of the node found
/// there once its Hello arrived, or why it could not be reached.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct JoinSeed(pub SocketAddr);

/// An address discovery found (mDNS); dialed unless a member already lives there.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Candidate {
    pub addr: SocketAddr,
    pub node: String,
}

/// Tell every peer this node leaves, then stop. Answers once the goodbyes
/// are written or after a short grace period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveCluster;

/// What a peer told us about itself, and the link we reach it on.
struct Link {
    handle: LinkHandle,
    peer: Option<NodeId>,
    since: Instant,
    frames_in: u64,
}

/// A dial in progress: frames waiting for the link, and callers waiting for
/// the peer's Hello.
#[derive(Default)]
struct Dialing {
    pending: Vec<Bytes>,
    pending_bytes: usize,
    waiters: Vec<oneshot::Sender<Result<String, String>>>,
}

#[derive(Debug, Default, Serialize)]
struct Counters {
    broadcasts_sent: u64,
    broadcasts_received: u64,
    relayed: u64,
    directs_sent: u64,
    directs_received: u64,
    duplicates: u64,
    malformed: u64,
    oversized: u64,
    handshake_failures: u64,
    dial_failures: u64,
    links_dropped_slow: u64,
    frames_dropped_no_link: u64,
    swim_errors: u64,
}

pub struct ClusterBridge {
    identity: NodeIdentity,
    span: tracing::Span,
    config: ClusterConfig,
    key: ClusterKey,
    foca: Membership,
    runtime: AccumulatingRuntime<NodeId>,
    hello: HelloCard,
    listener: Option<TcpListener>,
    listener_task: Option<tokio::task::JoinHandle<()>>,
    links: HashMap<LinkId, Link>,
    /// The link used to send to each peer, by name.
    routes: HashMap<String, LinkId>,
    dialing: HashMap<SocketAddr, Dialing>,
    /// `JoinSeed` callers waiting for the Hello on a link just dialed.
    hello_waiters: HashMap<LinkId, Vec<oneshot::Sender<Result<String, String>>>>,
    /// Members that said they leave: name → boot.
    left: HashMap<String, u64>,
    seen: SeenIds,
    transponder: Option<Recipient<FromCluster>>,
    rng: StdRng,
    counters: Counters,
    metrics: Metrics,
    /// Members foca holds as suspect, with the incarnation and when we first
    /// saw it: see [`ClusterBridge::expire_lost_suspicions`].
    suspects: HashMap<String, (foca::Incarnation, Instant)>,
}

impl ClusterBridge {
    /// `listener` is already bound; `advertise` is the address peers dial.
    pub fn new(
        identity: &NodeIdentity,
        config: ClusterConfig,
        key: ClusterKey,
        listener: TcpListener,
        advertise: SocketAddr,
    ) -> ClusterBridge {
        let boot = crate::wire::now_ms();
        let me = NodeId {
            name: identity.name.clone(),
            addr: advertise,
            boot,
            renewal: 0,
            tags: identity.tags.clone(),
        };
        let foca = Foca::new(me.clone(), config.foca(), rand::make_rng(), PostcardCodec);
        let hello = Arc::new(RwLock::new(hello_frame(&identity.cluster, &me)));
        ClusterBridge {
            identity: identity.clone(),
            span: identity.span("cluster"),
            seen: SeenIds::new(config.dedup_capacity),
            config,
            key,
            foca,
            runtime: AccumulatingRuntime::new(),
            hello,
            listener: Some(listener),
            listener_task: None,
            links: HashMap::new(),
            routes: HashMap::new(),
            dialing: HashMap::new(),
            hello_waiters: HashMap::new(),
            left: HashMap::new(),
            transponder: None,
            rng: rand::make_rng(),
            counters: Counters::default(),
            metrics: Metrics::default(),
            suspects: HashMap::new(),
        }
    }

    /// Counts drops and handshake failures in the node's metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> ClusterBridge {
        self.metrics = metrics;
        self
    }

    fn me(&self) -> &NodeId {
        self.foca.identity()
    }

    fn link_setup(&self, ctx: &Context<Self>) -> LinkSetup {
        LinkSetup {
            key: self.key.clone(),
            hello: self.hello.clone(),
            max_frame: self.config.max_frame,
            events: ctx.address().recipient(),
            span: self.span.clone(),
        }
    }

    /// Runs one foca call, then does what it asked: send packets, set timers,
    /// and act on membership changes.
    fn membership<F>(&mut self, ctx: &mut Context<Self>, what: &'static str, call: F)
    where
        F: FnOnce(&mut Membership, &mut AccumulatingRuntime<NodeId>) -> Result<(), foca::Error>,
    {
        if let Err(e) = call(&mut self.foca, &mut self.runtime) {
            self.counters.swim_errors += 1;
            debug!(error = %e, during = what, "membership protocol refused input");
        }
        self.drain_membership(ctx);
    }

    /// Sends what foca asked to send, sets its timers, acts on its news.
    fn drain_membership(&mut self, ctx: &mut Context<Self>) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send_to(ctx, &to, LinkFrame::Swim(data).encode());
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            ctx.run_later(after, move |act, ctx| {
                let _g = act.span.clone().entered();
                if let Err(e) = act.foca.handle_timer(timer, &mut act.runtime) {
                    act.counters.swim_errors += 1;
                    debug!(error = %e, "membership timer failed");
                }
                act.drain_membership(ctx);
            });
        }
        while let Some(notification) = self.runtime.to_notify() {
            self.on_membership_change(notification);
        }
    }

    fn on_membership_change(&mut self, notification: OwnedNotification<NodeId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                if self.left.get(&id.name).is_some_and(|boot| *boot < id.boot) {
                    self.left.remove(&id.name);
                }
                info!(member = %id.name, addr = %id.addr, boot = id.boot, tags = ?id.tags, "member alive");
            }
            OwnedNotification::MemberDown(id) => {
                if self.left.get(&id.name) == Some(&id.boot) {
                    info!(member = %id.name, "member left the cluster");
                } else {
                    warn!(member = %id.name, addr = %id.addr, "member declared dead");
                }
                self.drop_route(&id.name, "member is down");
            }
            OwnedNotification::Rename(old, new) => {
                info!(member = %new.name, old_boot = old.boot, boot = new.boot, renewal = new.renewal,
                    "member came back with a newer identity");
            }
            OwnedNotification::Active => info!(members = self.foca.num_members(), "joined the cluster"),
            OwnedNotification::Idle => warn!("no other member is alive; waiting for peers"),
            OwnedNotification::Defunct => {
                error!("this node was declared dead and could not renew its identity")
            }
            OwnedNotification::Rejoin(id) => {
                warn!(
                    renewal = id.renewal,
                    "this node was declared dead by the cluster; rejoined with a renewed identity"
                );
                if let Ok(mut card) = self.hello.write() {
                    *card = hello_frame(&self.identity.cluster, &id);
                }
            }
        }
    }

    fn drop_route(&mut self, name: &str, why: &str) {
        if let Some(link_id) = self.routes.remove(name) {
            if self.links.remove(&link_id).is_some() {
                debug!(peer = %name, link = link_id, reason = why, "link closed");
            }
        }
    }

    /// Queues a frame for a peer, dialing it if there is no link yet.
    fn send_to(&mut self, ctx: &mut Context<Self>, to: &NodeId, frame: Bytes) {
        if to.name == self.identity.name {
            return;
        }
        if let Some(link_id) = self.routes.get(&to.name).copied() {
            let stale = self
                .links
                .get(&link_id)
                .and_then(|l| l.peer.as_ref())
                .is_none_or(|peer| peer.boot < to.boot);
            if !stale {
                self.enqueue(link_id, frame);
                return;
            }
            self.drop_route(&to.name, "peer restarted");
        }
        self.dial_and_queue(ctx, to.addr, Some(frame), None);
    }

    fn enqueue(&mut self, link_id: LinkId, frame: Bytes) {
        let Some(link) = self.links.get(&link_id) else {
            self.counters.frames_dropped_no_link += 1;
            return;
        };
        if let Err(full) = link.handle.enqueue(frame, self.config.peer_queue_bytes) {
            self.counters.links_dropped_slow += 1;
            let peer = link.peer.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            warn!(%peer, queued_bytes = full.queued, limit = self.config.peer_queue_bytes,
                "peer does not drain its queue; disconnecting it");
            self.links.remove(&link_id);
            self.routes.retain(|_, l| *l != link_id);
        }
    }

    fn dial_and_queue(
        &mut self,
        ctx: &mut Context<Self>,
        addr: SocketAddr,
        frame: Option<Bytes>,
        waiter: Option<oneshot::Sender<Result<String, String>>>,
    ) {
        let is_new = !self.dialing.contains_key(&addr);
        let limit = self.config.peer_queue_bytes;
        let dialing = self.dialing.entry(addr).or_default();
        if let Some(frame) = frame {
            if dialing.pending_bytes + frame.len() <= limit {
                dialing.pending_bytes += frame.len();
                dialing.pending.push(frame);
            } else {
                self.counters.frames_dropped_no_link += 1;
            }
        }
        dialing.waiters.extend(waiter);
        if is_new {
            debug!(%addr, "dialing");
            link::dial(addr, self.config.dial_timeout, self.link_setup(ctx));
        }
    }

    fn deliver_local(&mut self, envelope: Envelope) {
        match &self.transponder {
            Some(t) => t.do_send(FromCluster(envelope)),
            None => warn!(envelope = %envelope.id, "no transponder attached; envelope dropped"),
        }
    }

    fn active_peers(&self) -> Vec<NodeId> {
        self.foca.iter_members().map(|m| m.id().clone()).collect()
    }

    fn on_link_up(&mut self, handle: LinkHandle) {
        debug!(link = handle.id, remote = %handle.remote, direction = ?handle.direction, "link up");
        let link_id = handle.id;
        let mut pending = Vec::new();
        let mut waiters = Vec::new();
        if handle.direction == Direction::Outbound {
            if let Some(d) = self.dialing.remove(&handle.remote) {
                pending = d.pending;
                waiters = d.waiters;
            }
        }
        self.links.insert(
            link_id,
            Link {
                handle,
                peer: None,
                since: Instant::now(),
                frames_in: 0,
            },
        );
        for frame in pending {
            self.enqueue(link_id, frame);
        }
        if !waiters.is_empty() {
            self.hello_waiters.insert(link_id, waiters);
        }
    }

    fn close_link(&mut self, link_id: LinkId, why: &str) {
        if let Some(link) = self.links.remove(&link_id) {
            debug!(link = link_id, remote = %link.handle.remote, reason = why, "closing link");
            if let Some(peer) = link.peer {
                if self.routes.get(&peer.name) == Some(&link_id) {
                    self.routes.remove(&peer.name);
                }
            }
        }
        self.answer_waiters(link_id, Err(why.to_string()));
    }

    fn answer_waiters(&mut self, link_id: LinkId, answer: Result<String, String>) {
        for waiter in self.hello_waiters.remove(&link_id).unwrap_or_default() {
            let _ = waiter.send(answer.clone());
        }
    }

    fn on_frame(&mut self, ctx: &mut Context<Self>, link_id: LinkId, frame: Bytes) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        link.frames_in += 1;
        let remote = link.handle.remote;
        let frame = match LinkFrame::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                self.counters.malformed += 1;
                self.metrics.dropped(DropReason::Malformed);
                warn!(%remote, error = %e, "malformed frame from a peer dropped");
                return;
            }
        };
        let peer = link.peer.clone();
        match (frame, peer) {
            (LinkFrame::Hello(hello), None) => self.on_hello(ctx, link_id, hello),
            (LinkFrame::Hello(_), Some(_)) => {
                self.counters.malformed += 1;
                self.metrics.dropped(DropReason::Malformed);
                warn!(%remote, "second hello on a link; closing it");
                self.close_link(link_id, "protocol violation: second hello");
            }
            (other, None) => {
                self.counters.malformed += 1;
                self.metrics.dropped(DropReason::Malformed);
                warn!(%remote, kind = other.kind(), "frame before hello; closing the link");
                self.close_link(link_id, "protocol violation: frame before hello");
            }
            (LinkFrame::Swim(data), Some(_)) => {
                self.membership(ctx, "packet", |foca, rt| foca.handle_data(&data, rt));
            }
            (LinkFrame::Broadcast(data), Some(peer)) => self.on_broadcast(ctx, &peer.name, &data),
            (LinkFrame::Direct(data), Some(peer)) => {
                if let Some(envelope) = self.parse_envelope(&peer.name, &data) {
                    self.counters.directs_received += 1;
                    if self.seen.insert(envelope.id) {
                        debug!(envelope = %envelope.id, from = %peer.name, kind = %envelope.kind, "direct envelope received");
                        self.deliver_local(envelope);
                    } else {
                        self.counters.duplicates += 1;
                        self.metrics.dropped(DropReason::Duplicate);
                    }
                }
            }
            (LinkFrame::Leave(leave), Some(peer)) => self.on_leave(ctx, &peer, leave),
        }
    }

    fn on_hello(&mut self, ctx: &mut Context<Self>, link_id: LinkId, hello: Hello) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let remote = link.handle.remote;
        let direction = link.handle.direction;
        if hello.protocol != PROTOCOL_VERSION {
            warn!(%remote, protocol = hello.protocol, ours = PROTOCOL_VERSION, "peer speaks another protocol version; closing");
            return self.close_link(link_id, "protocol version mismatch");
        }
        if hello.cluster != self.identity.cluster {
            warn!(%remote, peer = %hello.id.name, cluster = %hello.cluster, "peer belongs to another cluster; closing");
            return self.close_link(link_id, &format!("node there belongs to cluster `{}`", hello.cluster));
        }
        let id = hello.id;
        if id.name == self.identity.name {
            if id.boot == self.me().boot {
                debug!(%remote, "dialed ourselves; closing");
                self.answer_waiters(link_id, Ok(id.name.clone()));
                return self.close_link(link_id, "this node");
            }
            error!(%remote, boot = id.boot, "another node uses this node's name; refusing it (give each node its own --name)");
            return self.close_link(link_id, "name conflict");
        }
        debug!(link = link_id, peer = %id.name, %remote, ?direction, "hello received");
        link.peer = Some(id.clone());
        self.routes.insert(id.name.clone(), link_id);
        self.answer_waiters(link_id, Ok(id.name.clone()));
        let known = self.foca.iter_members().any(|m| m.id().name == id.name);
        if direction == Direction::Outbound && !known {
            info!(peer = %id.name, addr = %id.addr, "announcing this node to a discovered peer");
            self.membership(ctx, "announce", |foca, rt| foca.announce(id, rt));
        }
    }

    fn parse_envelope(&mut self, from: &str, data: &[u8]) -> Option<Envelope> {
        match Envelope::from_slice(data) {
            Ok(e) => Some(e),
            Err(e) => {
                self.counters.malformed += 1;
                self.metrics.dropped(DropReason::Malformed);
                warn!(peer = %from, error = %e, "malformed envelope from a peer dropped");
                None
            }
        }
    }

    fn on_broadcast(&mut self, ctx: &mut Context<Self>, from: &str, data: &[u8]) {
        let Some(mut envelope) = self.parse_envelope(from, data) else {
            return;
        };
        self.counters.broadcasts_received += 1;
        if !self.seen.insert(envelope.id) {
            self.counters.duplicates += 1;
            self.metrics.dropped(DropReason::Duplicate);
            return;
        }
        debug!(envelope = %envelope.id, from = %from, origin = %envelope.src.node, hops = envelope.hops,
            kind = %envelope.kind, "cluster envelope received");
        self.deliver_local(envelope.clone());
        if envelope.hops >= self.config.max_hops {
            return;
        }
        envelope.hops += 1;
        let origin = envelope.src.node.clone();
        let relay_to: Vec<NodeId> = self
            .foca
            .iter_members()
            .map(|m| m.id())
            .filter(|id| id.name != from && id.name != origin)
            .cloned()
            .sample(&mut self.rng, self.config.relay_fanout);
        if relay_to.is_empty() {
            return;
        }
        let frame = LinkFrame::Broadcast(envelope.to_vec().into()).encode();
        for peer in relay_to {
            self.counters.relayed += 1;
            self.send_to(ctx, &peer, frame.clone());
        }
    }

    fn on_leave(&mut self, ctx: &mut Context<Self>, peer: &NodeId, leave: Leave) {
        if self.left.get(&leave.name) == Some(&leave.boot) {
            return;
        }
        info!(member = %leave.name, via = %peer.name, "member says it is leaving");
        self.left.insert(leave.name.clone(), leave.boot);
        // Pass the news on, so members the leaver could not reach hear it too.
        let relay_to: Vec<NodeId> = self
            .foca
            .iter_members()
            .map(|m| m.id())
            .filter(|id| id.name != peer.name && id.name != leave.name)
            .cloned()
            .sample(&mut self.rng, self.config.relay_fanout);
        let frame = LinkFrame::Leave(leave.clone()).encode();
        for to in relay_to {
            self.send_to(ctx, &to, frame.clone());
        }
        let down: Vec<_> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().name == leave.name && m.id().boot == leave.boot && m.state() != State::Down)
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), State::Down))
            .collect();
        if !down.is_empty() {
            self.membership(ctx, "leave", |foca, rt| foca.apply_many(down.into_iter(), true, rt));
        }
    }

    /// Declares dead the members that stayed suspect well past the
    /// suspicion timeout. foca drops its pending suspicion timers whenever
    /// this node renews its identity (after a partition heals, say), which
    /// would leave such a member suspect for good: nobody tells it that it
    /// is suspected, so it never refutes. Declared dead, it is announced to
    /// and renews, the same path every healed member takes.
    fn expire_lost_suspicions(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let limit = self.config.suspect_to_down_after * 2;
        let suspects: Vec<(NodeId, foca::Incarnation)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.suspects
            .retain(|name, (inc, _)| suspects.iter().any(|(id, i)| &id.name == name && i == inc));
        let mut expired = Vec::new();
        for (id, incarnation) in suspects {
            let (_, since) = *self.suspects.entry(id.name.clone()).or_insert((incarnation, now));
            if now.duration_since(since) > limit {
                warn!(member = %id.name, suspect_ms = now.duration_since(since).as_millis() as u64,
                    "member stayed suspect past its suspicion timeout; declaring it dead so it can rejoin");
                self.suspects.remove(&id.name);
                expired.push(foca::Member::new(id, incarnation, State::Down));
            }
        }
        if !expired.is_empty() {
            self.membership(ctx, "expire suspicion", |foca, rt| {
                foca.apply_many(expired.into_iter(), true, rt)
            });
        }
    }

    fn members(&self) -> Vec<Member> {
        let me = self.me();
        let mut out = vec![Member {
            name: me.name.clone(),
            addr: Some(me.addr.to_string()),
            status: MemberStatus::Alive,
            tags: me.tags.clone(),
            incarnation: u64::from(me.renewal),
        }];
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.name == me.name {
                continue;
            }
            let status = match m.state() {
                State::Alive => MemberStatus::Alive,
                State::Suspect => MemberStatus::Suspect,
                State::Down if self.left.get(&id.name) == Some(&id.boot) => MemberStatus::Left,
                State::Down => MemberStatus::Dead,
            };
            out.push(Member {
                name: id.name.clone(),
                addr: Some(id.addr.to_string()),
                status,
                tags: id.tags.clone(),
                incarnation: u64::from(m.incarnation()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn hello_frame(cluster: &str, id: &NodeId) -> Bytes {
    LinkFrame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        cluster: cluster.to_string(),
        id: id.clone(),
    })
    .encode()
}

impl Actor for ClusterBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8192);
        ctx.run_interval(self.config.probe_period, |act, ctx| {
            let _g = act.span.clone().entered();
            act.expire_lost_suspicions(ctx);
        });
        let _g = self.span.clone().entered();
        if let Some(listener) = self.listener.take() {
            let local = listener.local_addr().ok();
            self.listener_task = Some(link::spawn_listener(listener, self.link_setup(ctx)));
            info!(listen = ?local, advertise = %self.me().addr, boot = self.me().boot,
                probe_ms = self.config.probe_period.as_millis() as u64,
                suspect_ms = self.config.suspect_to_down_after.as_millis() as u64,
                "cluster bridge started");
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(task) = self.listener_task.take() {
            task.abort();
        }
        self.links.clear();
        let _g = self.span.clone().entered();
        info!("cluster bridge stopped");
    }
}

impl Handler<LinkEvent> for ClusterBridge {
    type Result = ();

    fn handle(&mut self, event: LinkEvent, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        match event {
            LinkEvent::Up(handle) => self.on_link_up(handle),
            LinkEvent::Frame { id, frame } => self.on_frame(ctx, id, frame),
            LinkEvent::Down { id, reason } => {
                let link = self.links.get(&id);
                let peer = link.and_then(|l| l.peer.as_ref()).map(|p| p.name.clone());
                let refused_us = link.is_some_and(|l| l.peer.is_none() && l.handle.direction == Direction::Outbound);
                if refused_us {
                    self.counters.handshake_failures += 1;
                    self.metrics.handshake_failed();
                    self.metrics.dropped(DropReason::Unauthorized);
                    let remote = link.map(|l| l.handle.remote);
                    warn!(link = id, ?remote, %reason,
                        "the peer closed the link during the handshake; does it have the same cluster key?");
                } else if reason.contains("exceeds the limit") {
                    self.counters.oversized += 1;
                    self.metrics.dropped(DropReason::Oversize);
                    warn!(link = id, ?peer, %reason, "peer sent an oversized frame; link closed");
                } else if reason != "peer closed the link" {
                    warn!(link = id, ?peer, %reason, "link failed");
                }
                self.close_link(id, &reason);
            }
            LinkEvent::Failed {
                remote,
                direction,
                reason,
                handshake,
            } => {
                if handshake {
                    self.counters.handshake_failures += 1;
                    self.metrics.handshake_failed();
                    self.metrics.dropped(DropReason::Unauthorized);
                    warn!(%remote, ?direction, %reason, "refused a link: the peer failed the encrypted handshake");
                } else {
                    self.counters.dial_failures += 1;
                    debug!(%remote, ?direction, %reason, "dial failed");
                }
                if let Some(d) = self.dialing.remove(&remote) {
                    for waiter in d.waiters {
                        let _ = waiter.send(Err(reason.clone()));
                    }
                }
            }
        }
    }
}

impl Handler<AttachTransponder> for ClusterBridge {
    type Result = ();
    fn handle(&mut self, msg: AttachTransponder, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        info!("transponder attached");
        self.transponder = Some(msg.0);
    }
}

impl Handler<Broadcast> for ClusterBridge {
    type Result = ();
    fn handle(&mut self, Broadcast(envelope): Broadcast, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.seen.insert(envelope.id);
        let frame = LinkFrame::Broadcast(envelope.to_vec().into()).encode();
        if frame.len() > self.config.max_frame {
            self.counters.oversized += 1;
            self.metrics.dropped(DropReason::Oversize);
            error!(envelope = %envelope.id, size = frame.len(), max = self.config.max_frame,
                "envelope too large for the cluster; not sent");
            return;
        }
        let peers = self.active_peers();
        debug!(envelope = %envelope.id, kind = %envelope.kind, address = %envelope.dst.address,
            peers = peers.len(), "pushing envelope to the cluster");
        self.counters.broadcasts_sent += 1;
        for peer in &peers {
            self.send_to(ctx, peer, frame.clone());
        }
        self.deliver_local(envelope);
    }
}

impl Handler<Direct> for ClusterBridge {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: Direct, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        if msg.node == self.identity.name {
            self.deliver_local(msg.envelope);
            return Ok(());
        }
        let peer = self
            .foca
            .iter_members()
            .find(|m| m.id().name == msg.node)
            .map(|m| m.id().clone());
        let Some(peer) = peer else {
            warn!(envelope = %msg.envelope.id, to = %msg.node, "direct envelope to a node that is not alive dropped");
            return Err(format!("node `{}` is not an alive member of this cluster", msg.node));
        };
        debug!(envelope = %msg.envelope.id, to = %msg.node, kind = %msg.envelope.kind, "sending direct envelope");
        self.counters.directs_sent += 1;
        let frame = LinkFrame::Direct(msg.envelope.to_vec().into()).encode();
        self.send_to(ctx, &peer, frame);
        Ok(())
    }
}

impl Handler<ListMembers> for ClusterBridge {
    type Result = Vec<Member>;
    fn handle(&mut self, _msg: ListMembers, _ctx: &mut Self::Context) -> Self::Result {
        self.members()
    }
}

impl Handler<JoinSeed> for ClusterBridge {
    type Result = ResponseFuture<Result<String, String>>;
    fn handle(&mut self, JoinSeed(addr): JoinSeed, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let connected = self
            .links
            .values()
            .find(|l| l.handle.remote == addr || l.peer.as_ref().is_some_and(|p| p.addr == addr))
            .and_then(|l| l.peer.as_ref().map(|p| p.name.clone()));
        if let Some(name) = connected {
            return Box::pin(async move { Ok(name) });
        }
        let (tx, rx) = oneshot::channel();
        self.dial_and_queue(ctx, addr, None, Some(tx));
        let wait = self.config.dial_timeout + crate::cluster::noise::HANDSHAKE_TIMEOUT;
        Box::pin(async move {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err("the link closed before the peer said hello".into()),
                Err(_) => Err(format!("no hello within {wait:?}")),
            }
        })
    }
}

impl Handler<Candidate> for ClusterBridge {
    type Result = ();
    fn handle(&mut self, msg: Candidate, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        let known = self.foca.iter_members().any(|m| m.id().addr == msg.addr)
            || self
                .links
                .values()
                .any(|l| l.peer.as_ref().is_some_and(|p| p.addr == msg.addr))
            || self.dialing.contains_key(&msg.addr)
            || msg.addr == self.me().addr;
        if known {
            return;
        }
        info!(addr = %msg.addr, node = %msg.node, "discovered a peer; dialing");
        self.dial_and_queue(ctx, msg.addr, None, None);
    }
}

impl Handler<LeaveCluster> for ClusterBridge {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _msg: LeaveCluster, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let me = self.me().clone();
        let peers = self.active_peers();
        info!(peers = peers.len(), "leaving the cluster");
        let frame = LinkFrame::Leave(Leave {
            name: me.name.clone(),
            boot: me.boot,
        })
        .encode();
        for peer in &peers {
            self.send_to(ctx, peer, frame.clone());
        }
        self.membership(ctx, "leave", |foca, rt| foca.leave_cluster(rt));
        let me = ctx.address();
        Box::pin(
            async move {
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline && !me.send(IsDrained).await.unwrap_or(true) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            .into_actor(self)
            .map(|_, _act, ctx| ctx.stop()),
        )
    }
}

/// Whether every queued frame is written and no dial is pending.
#[derive(Message)]
#[rtype(result = "bool")]
struct IsDrained;

impl Handler<IsDrained> for ClusterBridge {
    type Result = bool;
    fn handle(&mut self, _msg: IsDrained, _ctx: &mut Self::Context) -> bool {
        self.dialing.is_empty() && self.links.values().all(|l| l.handle.queued_bytes() == 0)
    }
}

impl Handler<ClusterStatus> for ClusterBridge {
    type Result = ClusterSummary;
    fn handle(&mut self, _msg: ClusterStatus, _ctx: &mut Self::Context) -> ClusterSummary {
        let mut members: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.members() {
            *members.entry(m.status.as_str().to_string()).or_default() += 1;
        }
        let mut links: Vec<PeerLink> = self
            .links
            .values()
            .filter_map(|l| {
                Some(PeerLink {
                    peer: l.peer.as_ref()?.name.clone(),
                    queued_bytes: l.handle.queued_bytes(),
                    frames_in: l.frames_in,
                    age_ms: l.since.elapsed().as_millis() as u64,
                })
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        let peers: std::collections::BTreeSet<&String> = links.iter().map(|l| &l.peer).collect();
        ClusterSummary {
            peers: peers.len(),
            members,
            max_queued_bytes: links.iter().map(|l| l.queued_bytes).max().unwrap_or(0),
            links,
            dialing: self.dialing.len(),
        }
    }
}

impl Handler<DumpState> for ClusterBridge {
    type Result = Snapshot;
    fn handle(&mut self, _msg: DumpState, _ctx: &mut Self::Context) -> Snapshot {
        let _g = self.span.clone().entered();
        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        for m in self.members() {
            *by_status.entry(format!("{:?}", m.status).to_lowercase()).or_default() += 1;
        }
        let links: Vec<_> = self
            .links
            .values()
            .map(|l| {
                json!({
                    "id": l.handle.id,
                    "peer": l.peer.as_ref().map(|p| p.name.clone()),
                    "remote": l.handle.remote.to_string(),
                    "direction": l.handle.direction,
                    "queued_bytes": l.handle.queued_bytes(),
                    "frames_in": l.frames_in,
                    "age_ms": l.since.elapsed().as_millis() as u64,
                })
            })
            .collect();
        let state = json!({
            "kind": "bridge",
            "me": self.me(),
            "members": by_status,
            "links": links,
            "dialing": self.dialing.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            "membership_backlog": self.foca.updates_backlog(),
            "seen_ids": self.seen.len(),
            "transponder_attached": self.transponder.as_ref().is_some_and(|t| t.connected()),
            "counters": &self.counters,
        });
        info!(state = %state, "state snapshot");
        Snapshot(state)
    }
}
