//! ClusterBridge: the only actor that talks to other nodes.
//!
//! It drives the sans-IO [`ClusterCore`], which decides everything
//! (membership, failure detection, the broadcast tree, links): the bridge
//! feeds it link events, frames and commands, carries out the actions it
//! returns over a [`Transport`] (TCP + Noise in a node, an in-memory network
//! in tests), and wakes it when it asks. Envelopes for this node go to the
//! Transponder, which filters them by target.
//!
//! Discovery (mDNS, `--join` seeds) only hands it candidate addresses; the
//! core dials them and lets membership decide.

use super::cluster_bus::*;
use super::messages::{state_handlers, ShowState};
use super::NodeIdentity;
use crate::cluster::backpressure::Backpressure;
use crate::cluster::core::keyed::EntryRules;
use crate::cluster::core::{Action, AdmissionRule, Change, ClusterCore, CoreError, Direction, LinkId, Standing};
use crate::cluster::link::{DownReason, FailedAt, LinkEvent, LinkHandle, LinkSetup, Queued};
use crate::cluster::link_loads::{LinkLoads, LOOK_BUSY};
use crate::cluster::node_key::NodeKey;
use crate::cluster::protocol::{Entry, Frame, SetId, Status};
use crate::cluster::transport::Transport;
use crate::cluster::{ClusterConfig, NodeId, SharedKeyring};
use crate::logging::LogThrottle;
use crate::metrics::{DropReason, Metrics, CLUSTER_INPUT_REASONS};
use crate::wire::provenance::{self, Arrival};
use crate::wire::Envelope;
use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// Dial `addr` (a `--join` seed) and answer with the name of the node found
/// there once it said hello, or why it could not be reached.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct JoinSeed(pub SocketAddr);

/// An address discovery found (mDNS); joined unless a member already lives there.
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

/// What the bridge itself counts (the core counts its decisions).
#[derive(Debug, Default, Serialize)]
struct Counters {
    malformed_frames: u64,
    malformed_envelopes: u64,
    oversized: u64,
    handshake_failures: u64,
    frames_in: u64,
    frames_out: u64,
    bytes_out: u64,
    /// Cluster envelopes dropped because the Transponder's mailbox was full.
    dropped_transponder_full: u64,
    /// Envelopes that came another way than their source could have sent
    /// them (see `wire::provenance`).
    forged: u64,
}

pub struct ClusterBridge {
    identity: NodeIdentity,
    span: tracing::Span,
    core: ClusterCore,
    transport: Arc<dyn Transport>,
    /// The keys links are made with (`<data-dir>/keyring`).
    keys: SharedKeyring,
    /// This node's identity (`<data-dir>/node.key`), the static key of
    /// its handshakes.
    node_key: Arc<NodeKey>,
    links: HashMap<LinkId, LinkHandle>,
    join_waiters: HashMap<SocketAddr, Vec<oneshot::Sender<Result<String, String>>>>,
    listener_task: Option<tokio::task::JoinHandle<()>>,
    transponder: Option<Recipient<FromCluster>>,
    /// When the core is woken next, and the timer that does it.
    wake: Option<(Instant, SpawnHandle)>,
    /// When the links' queues are looked at next, and the timer.
    next_look: Option<(Instant, SpawnHandle)>,
    /// A send filled a bulk lane past the low mark: look soon.
    look_soon: bool,
    /// Failed handshakes are logged five per 10 s, then summed.
    handshake_log: LogThrottle,
    /// Handshakes that never finished, logged apart from refusals.
    unfinished_log: LogThrottle,
    /// Drops at a full Transponder mailbox, logged once per 10 s.
    transponder_full_log: LogThrottle,
    /// Envelopes dropped for their provenance, logged five per 10 s.
    forged_log: LogThrottle,
    /// The links' queues, the node's congestion, and what links lost.
    loads: LinkLoads,
    /// Envelopes lost on links, logged once per 10 s.
    link_loss_log: LogThrottle,
    /// Congestion coming and going, logged at info once per 10 s.
    congestion_log: LogThrottle,
    counters: Counters,
    metrics: Metrics,
    /// Who is told of each keyed dataset's changes (the Deployer).
    watchers: HashMap<SetId, Recipient<EntriesChanged>>,
    /// The core's refusal counters as last exported to the metrics.
    exported: [u64; CLUSTER_INPUT_REASONS.len()],
    /// When each discovered address was last logged at info: mDNS offers
    /// a cached dead peer again every 15 s, which is news once.
    candidates_logged: HashMap<SocketAddr, Instant>,
}

/// A discovered address is logged at info at most this often (debug
/// otherwise).
const CANDIDATE_LOG_EVERY: Duration = Duration::from_secs(600);

impl ClusterBridge {
    /// `transport` is listening-ready; `advertise` is the address peers dial.
    /// `boot_ms` is when this node started (ms since the epoch), the same
    /// figure its Monitor's reports carry.
    pub fn new(
        identity: &NodeIdentity,
        config: ClusterConfig,
        keys: impl Into<SharedKeyring>,
        transport: Arc<dyn Transport>,
        advertise: SocketAddr,
        boot_ms: u64,
    ) -> ClusterBridge {
        let me = NodeId::new(&identity.name, advertise, boot_ms, identity.tags.get());
        let seed: u64 = rand::random();
        let mut core = ClusterCore::new(&identity.cluster, me, config, seed, Instant::now());
        let node_key = Arc::new(NodeKey::generate());
        core.set_identity(node_key.clone());
        ClusterBridge {
            identity: identity.clone(),
            span: identity.span("cluster"),
            core,
            transport,
            keys: keys.into(),
            node_key,
            links: HashMap::new(),
            join_waiters: HashMap::new(),
            listener_task: None,
            transponder: None,
            wake: None,
            next_look: None,
            look_soon: false,
            handshake_log: LogThrottle::new(Duration::from_secs(10), 5),
            unfinished_log: LogThrottle::new(Duration::from_secs(10), 5),
            transponder_full_log: LogThrottle::new(Duration::from_secs(10), 1),
            forged_log: LogThrottle::new(Duration::from_secs(10), 5),
            loads: LinkLoads::new(Backpressure::default()),
            link_loss_log: LogThrottle::new(Duration::from_secs(10), 1),
            congestion_log: LogThrottle::new(Duration::from_secs(10), 1),
            counters: Counters::default(),
            metrics: Metrics::default(),
            watchers: HashMap::new(),
            exported: [0; CLUSTER_INPUT_REASONS.len()],
            candidates_logged: HashMap::new(),
        }
    }

    /// Links as `key` (the node's lasting identity) rather than the key of
    /// its own the bridge makes for a node that keeps none.
    pub fn with_node_key(mut self, key: Arc<NodeKey>) -> ClusterBridge {
        self.core.set_identity(key.clone());
        self.node_key = key;
        self
    }

    /// Shows `own` (this node's admission) in its hellos, and holds every
    /// peer's to `rule` (none: requires none).
    pub fn with_admission(mut self, own: Option<String>, rule: Option<AdmissionRule>) -> ClusterBridge {
        self.core.set_admission(own, rule);
        self
    }

    /// Holds keyed dataset `set` (the deployments table) under `rules`.
    pub fn holding(mut self, set: SetId, rules: Box<dyn EntryRules>) -> ClusterBridge {
        self.core.hold(set, rules);
        self
    }

    /// Sets `gauge` while the links cannot carry more, so whatever feeds
    /// the cluster holds back (see [`Backpressure`]).
    pub fn with_backpressure(mut self, gauge: Backpressure) -> ClusterBridge {
        self.loads = LinkLoads::new(gauge);
        self
    }

    /// Counts drops, handshake failures and refused input in the node's
    /// metrics (every reason from zero).
    pub fn with_metrics(mut self, metrics: Metrics) -> ClusterBridge {
        for reason in CLUSTER_INPUT_REASONS {
            metrics.cluster_input_refused(reason, 0);
        }
        self.metrics = metrics;
        self
    }

    /// Brings the metrics up to what the core counted.
    fn export_counters(&mut self) {
        let c = &self.core.counters;
        let now = [
            c.entries_refused,
            c.entries_obsolete,
            c.skipped_msgs,
            c.unknown_sets,
            c.sync_mismatches,
            c.sync_unanswered,
            c.records_refused,
            c.identities_refused,
            c.not_admitted,
            c.records_unproven,
            c.news_over_budget,
            c.table_full,
        ];
        for ((reason, now), before) in CLUSTER_INPUT_REASONS.iter().zip(now).zip(self.exported.iter_mut()) {
            if now > *before {
                self.metrics.cluster_input_refused(reason, now - *before);
                *before = now;
            }
        }
    }

    fn link_setup(&self, ctx: &Context<Self>) -> LinkSetup {
        LinkSetup {
            keys: self.keys.clone(),
            node_key: self.node_key.clone(),
            max_frame: self.core.config().max_frame,
            events: ctx.address().recipient(),
            span: self.span.clone(),
        }
    }

    /// Carries out what the core asked, then sets the next wake-up.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll() {
            match action {
                Action::Dial { addr } => {
                    debug!(%addr, "dialing");
                    self.transport
                        .dial(addr, self.core.config().dial_timeout, self.link_setup(ctx));
                }
                Action::Send { link, lane, frame } => self.send(link, lane, &frame),
                Action::Close { link, reason } => {
                    if self.remove_link(link).is_some() {
                        debug!(link, reason, "link closed");
                    }
                }
                Action::Deliver {
                    from, envelope, direct, ..
                } => {
                    let arrival = if direct {
                        Arrival::Direct { from: &from }
                    } else {
                        Arrival::Broadcast
                    };
                    self.deliver(&from, &envelope, arrival)
                }
                Action::State { node, data } => match inflate_state(&data) {
                    Ok(json) => self.deliver(&node, &json, Arrival::State { of: &node }),
                    Err(e) => {
                        self.counters.malformed_envelopes += 1;
                        self.metrics.dropped(DropReason::Malformed);
                        warn!(peer = %node, error = %e, "undecodable status report from a peer dropped");
                    }
                },
                Action::Member { id, change } => self.member_changed(&id, change),
                Action::Entries { set, changed, removed } => match self.watchers.get(&set) {
                    Some(watcher) => watcher.do_send(EntriesChanged {
                        set,
                        changed,
                        removed,
                        refused: Vec::new(),
                    }),
                    None => debug!(set, changed = changed.len(), "dataset changed; nobody watches it yet"),
                },
                Action::EntriesRefused { set, refused } => {
                    if let Some(watcher) = self.watchers.get(&set) {
                        watcher.do_send(EntriesChanged {
                            set,
                            changed: Vec::new(),
                            removed: Vec::new(),
                            refused,
                        });
                    }
                }
                Action::CheckHost { link, name, since } => {
                    let now = Instant::now();
                    let window = now.saturating_duration_since(since);
                    let report = self.links.get(&link).and_then(|l| l.tcp_report());
                    let answered = report.is_some_and(|r| r.answered_within(window));
                    match report {
                        Some(r) => debug!(member = %name, link, answered, window_ms = window.as_millis() as u64,
                            last_ack_ms = r.last_ack.as_millis() as u64, unacked = r.unacked,
                            retransmits = r.retransmits, window_probes = r.window_probes, established = r.established,
                            "probe unanswered; asked the kernel whether the member's host still acks"),
                        None => debug!(member = %name, link, "probe unanswered; the link's host cannot be asked"),
                    }
                    self.core.host_checked(&name, answered, now);
                }
                Action::Joined { addr, result } => {
                    let answer = result.map(|n| n.to_string()).map_err(|e| e.to_string());
                    for waiter in self.join_waiters.remove(&addr).unwrap_or_default() {
                        let _ = waiter.send(answer.clone());
                    }
                }
            }
        }
        self.export_counters();
        self.schedule(ctx);
        if std::mem::take(&mut self.look_soon) {
            self.schedule_look(ctx, LOOK_BUSY);
        }
    }

    /// Looks at the links within `after`, unless a look is due sooner.
    fn schedule_look(&mut self, ctx: &mut Context<Self>, after: Duration) {
        let at = Instant::now() + after;
        if let Some((due, handle)) = self.next_look {
            if due <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(after, |act, ctx| {
            act.next_look = None;
            let _g = act.span.clone().entered();
            act.look_at_links(ctx);
        });
        self.next_look = Some((at, handle));
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let deadline = self.core.next_deadline();
        if let Some((at, handle)) = self.wake {
            if at <= deadline {
                return;
            }
            ctx.cancel_future(handle);
        }
        // A deadline already past still waits a millisecond: should the
        // core ever fail to move a deadline on, the actor idles instead of
        // spinning.
        let after = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let handle = ctx.run_later(after, |act, ctx| {
            act.wake = None;
            let _g = act.span.clone().entered();
            act.core.tick(Instant::now());
            act.drive(ctx);
        });
        self.wake = Some((deadline, handle));
    }

    /// A peer failed the handshake's check (or, dialed, hung up before its
    /// hello without ever having been a member): most likely another key.
    /// Counted every time, logged five times per 10 s.
    fn handshake_refused(&mut self, remote: SocketAddr, direction: Direction, reason: &str, now: Instant) {
        self.counters.handshake_failures += 1;
        self.metrics.handshake_failed();
        self.metrics.dropped(DropReason::Unauthorized);
        if let Some(failures) = self.handshake_log.event(now) {
            warn!(%remote, ?direction, %reason, failures, failures_total = self.counters.handshake_failures,
                "refused a link: the peer failed the encrypted handshake (does it have the same cluster key?)");
        }
    }

    fn send(&mut self, link: LinkId, lane: crate::cluster::protocol::Lane, frame: &Frame) {
        let Some(handle) = self.links.get(&link) else { return };
        let bytes = frame.encode();
        self.counters.frames_out += 1;
        self.counters.bytes_out += bytes.len() as u64;
        let limit = self.core.config().peer_queue_bytes;
        match handle.enqueue(bytes, lane, frame.envelopes(), limit) {
            Ok(Queued::Yes) => {
                // Idle looks are seconds apart; a filling lane is looked
                // at within LOOK_BUSY.
                if lane == crate::cluster::protocol::Lane::Bulk
                    && handle.sample().bulk_queued > crate::cluster::backpressure::LOW_BYTES
                {
                    self.look_soon = true;
                }
            }
            Ok(Queued::Shed { envelopes }) => {
                let remote = handle.remote;
                self.loads.shed(envelopes);
                self.link_lost(Some((link, remote)), u64::from(envelopes), "its queue is full");
            }
            Err(full) => {
                warn!(link, remote = %handle.remote, queued_bytes = full.queued, limit,
                    "peer does not drain its queue; disconnecting it");
                self.drop_stalled(link);
            }
        }
    }

    /// Envelopes a link lost: counted in the metrics, logged once per 10 s.
    fn link_lost(&mut self, link: Option<(LinkId, SocketAddr)>, envelopes: u64, why: &str) {
        if envelopes == 0 {
            return;
        }
        self.metrics.dropped_many(DropReason::Overloaded, envelopes);
        if let Some(times) = self.link_loss_log.event(Instant::now()) {
            let c = &self.loads.counters;
            let (link, remote) = link.map_or((None, None), |(l, r)| (Some(l), Some(r.to_string())));
            warn!(
                link,
                remote,
                envelopes,
                why,
                times,
                queue_full = c.envelopes_dropped_queue_full,
                stale = c.envelopes_dropped_stale,
                link_closed = c.envelopes_dropped_link_closed,
                "envelopes for a peer dropped (counted as overloaded)"
            );
        }
    }

    /// Forgets a link, counting what it had not written yet as lost.
    fn remove_link(&mut self, link: LinkId) -> Option<LinkHandle> {
        let handle = self.links.remove(&link)?;
        let lost = self.loads.closed(link, &handle);
        self.link_lost(Some((link, handle.remote)), lost, "the link closed");
        Some(handle)
    }

    /// Closes a link whose peer reads nothing at all.
    fn drop_stalled(&mut self, link: LinkId) {
        self.loads.stalled_closed();
        self.remove_link(link);
        self.core
            .link_down(link, "peer does not drain its queue", Instant::now());
    }

    /// Looks at the links' queues: sets the node's congestion, counts what
    /// links shed, closes the links that stalled. Runs every 50 ms while
    /// anything is queued, every 2 s otherwise, and within 50 ms of a send
    /// that fills a bulk lane past the low mark.
    fn look_at_links(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let verdict = self.loads.look(&self.links, now);
        if verdict.dropped > 0 {
            self.link_lost(None, verdict.dropped, "they waited too long");
        }
        if let Some(congested) = verdict.changed {
            let episodes = self.loads.counters.congested_episodes;
            let worst = self.links.values().map(|l| l.queued_bytes()).max().unwrap_or(0);
            if congested && self.congestion_log.event(now).is_some() {
                info!(
                    episodes,
                    max_queued_bytes = worst,
                    "links are backed up; holding back what this node's modules publish"
                );
            } else {
                debug!(congested, episodes, max_queued_bytes = worst, "link congestion changed");
            }
        }
        for (link, yes) in verdict.backed_up {
            self.core.link_backed_up(link, yes);
        }
        for link in verdict.stalled {
            if let Some(handle) = self.links.get(&link) {
                warn!(link, remote = %handle.remote, queued_bytes = handle.queued_bytes(),
                    stalled_s = crate::cluster::backpressure::STALL_AFTER.as_secs(),
                    "peer does not drain its queue (nothing written while frames waited); disconnecting it");
            }
            self.drop_stalled(link);
        }
        self.drive(ctx);
        self.schedule_look(ctx, self.loads.next_look(&self.links));
    }

    fn deliver(&mut self, from: &str, data: &Bytes, arrival: Arrival<'_>) {
        let envelope = match Envelope::from_slice(data) {
            Ok(e) => e,
            Err(e) => {
                self.counters.malformed_envelopes += 1;
                self.metrics.dropped(DropReason::Malformed);
                return warn!(peer = %from, error = %e, "malformed envelope from a peer dropped");
            }
        };
        debug!(envelope = %envelope.id, via = %from, origin = %envelope.src.node, kind = %envelope.kind,
            ?arrival, "cluster envelope received");
        if let Err(why) = provenance::check(&envelope, arrival) {
            self.counters.forged += 1;
            self.metrics.dropped(DropReason::Unauthorized);
            if let Some(count) = self.forged_log.event(Instant::now()) {
                warn!(peer = %from, envelope = %envelope.id, dropped = count, dropped_total = self.counters.forged,
                    "{why}; dropped");
            }
            return;
        }
        self.deliver_local(envelope);
    }

    /// Hands an envelope to the Transponder. Its mailbox is bounded: a
    /// Transponder that cannot keep up loses envelopes (counted and
    /// logged) instead of the node growing a queue without limit; a
    /// request lost so is reported missing by its asker, never answered.
    fn deliver_local(&mut self, envelope: Envelope) {
        let Some(transponder) = &self.transponder else {
            return warn!(envelope = %envelope.id, "no transponder attached; envelope dropped");
        };
        match transponder.try_send(FromCluster(envelope)) {
            Ok(()) => {}
            Err(SendError::Full(FromCluster(envelope))) => {
                self.counters.dropped_transponder_full += 1;
                self.metrics.dropped(DropReason::Overloaded);
                if let Some(dropped) = self.transponder_full_log.event(Instant::now()) {
                    warn!(dropped, total_dropped = self.counters.dropped_transponder_full, envelope = %envelope.id,
                        "the transponder's mailbox is full; cluster envelopes dropped");
                }
            }
            Err(SendError::Closed(FromCluster(envelope))) => {
                warn!(envelope = %envelope.id, "the transponder stopped; envelope dropped")
            }
        }
    }

    /// Membership changes are rare and are what an operator looks for, so
    /// they are logged at info (a death at warn), as Serf does.
    fn member_changed(&mut self, id: &NodeId, change: Change) {
        let (member, addr) = (&*id.name, id.addr);
        match change {
            Change::Alive => info!(%member, %addr, "member alive"),
            Change::Suspect => info!(%member, %addr, "member suspect"),
            Change::Dead => warn!(%member, %addr, "member declared dead"),
            Change::Left => info!(%member, %addr, "member left"),
            Change::Restarted => info!(%member, %addr, boot = id.boot, "member restarted with a new boot"),
        }
    }

    fn members(&self) -> Vec<Member> {
        let me = &self.core.me().name;
        let now = Instant::now();
        let mut out: Vec<Member> = self
            .core
            .members()
            .map(|m| Member {
                name: m.id.name.to_string(),
                addr: Some(m.id.addr.to_string()),
                status: match m.status {
                    // This node is alive to itself, even while refused.
                    _ if m.id.name == *me => MemberStatus::Alive,
                    Status::Alive => MemberStatus::Alive,
                    Status::Suspect => MemberStatus::Suspect,
                    Status::Dead => MemberStatus::Dead,
                    Status::Left => MemberStatus::Left,
                },
                tags: m.id.tags.clone(),
                incarnation: u64::from(m.incarnation),
                since_ms: now.saturating_duration_since(self.core.member_since(m)).as_millis() as u64,
                boot_ms: m.id.boot,
                identity: self.core.identity_of(&m.id.name).map(|k| k.to_string()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl Actor for ClusterBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8192);
        let _g = self.span.clone().entered();
        self.listener_task = Some(self.transport.listen(self.link_setup(ctx)));
        self.look_at_links(ctx);
        let config = self.core.config();
        info!(listen = %self.transport.local_addr(), advertise = %self.core.me().addr, boot = self.core.me().boot,
            probe_ms = config.probe_interval.as_millis() as u64,
            suspicion_ms = config.suspicion_min.as_millis() as u64,
            rings = config.rings, "cluster bridge started");
        self.schedule(ctx);
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
        let now = Instant::now();
        match event {
            LinkEvent::Up(handle) => {
                let (id, direction, remote) = (handle.id, handle.direction, handle.remote);
                let peer_static = handle.peer_static;
                self.links.insert(id, handle);
                self.core.link_up(id, direction, remote, now);
                if let Some(key) = peer_static {
                    self.core.link_proven(id, key);
                }
            }
            LinkEvent::Frame { id, frame } => {
                if !self.links.contains_key(&id) {
                    return;
                }
                self.counters.frames_in += 1;
                match Frame::decode(frame) {
                    Ok(frame) => self.core.frame(id, frame, now),
                    Err(e) => {
                        self.counters.malformed_frames += 1;
                        self.metrics.dropped(DropReason::Malformed);
                        self.core.malformed(id, &e.to_string(), now);
                    }
                }
            }
            LinkEvent::Down { id, reason } => {
                let Some(handle) = self.remove_link(id) else { return };
                // With XXpsk3 the dialer finishes its half of the handshake
                // before the key is checked; a wrong key shows here, as the
                // peer hanging up before it says hello.
                let greeted = self.core.links().any(|(l, peer, _)| l == id && peer.is_some());
                if !greeted && handle.direction == Direction::Outbound {
                    // A member has shown it holds the key; when it hangs up
                    // before hello it is busy (a mass start), at its link
                    // cap, or dropping a duplicate link. Only a peer never
                    // heard from is asked about its key (200-node starts
                    // logged that question 18 times, all about members).
                    let member = self.core.members().any(|m| m.id.addr == handle.remote);
                    if member {
                        debug!(link = id, remote = %handle.remote, %reason,
                            "a member closed a new link before saying hello; it may be busy");
                    } else {
                        self.handshake_refused(handle.remote, handle.direction, &reason.to_string(), now);
                    }
                }
                match &reason {
                    DownReason::Oversized(e) => {
                        self.counters.oversized += 1;
                        self.metrics.dropped(DropReason::Oversize);
                        warn!(link = id, error = %e, "peer sent an oversized frame; link closed");
                    }
                    DownReason::Failed(e) => debug!(link = id, error = %e, "link failed"),
                    DownReason::PeerClosed => {}
                }
                self.core.link_down(id, &reason.to_string(), now);
            }
            LinkEvent::Connected { remote } => self.core.dial_connected(remote, now),
            LinkEvent::Failed {
                remote,
                direction,
                reason,
                stage,
            } => {
                match stage {
                    FailedAt::Connect => {}
                    FailedAt::HandshakeRefused => self.handshake_refused(remote, direction, &reason, now),
                    // A busy, starting or departing peer does this too.
                    FailedAt::HandshakeUnfinished => {
                        self.counters.handshake_failures += 1;
                        self.metrics.handshake_failed();
                        if let Some(failures) = self.unfinished_log.event(now) {
                            info!(%remote, ?direction, %reason, failures,
                                "a link's handshake did not finish (the peer is busy, gone, or not a node)");
                        }
                    }
                }
                if direction == Direction::Outbound {
                    self.core.dial_failed(remote, &reason, now);
                }
            }
        }
        self.drive(ctx);
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
        let waited = crate::wire::now_ms().saturating_sub(envelope.ts);
        self.loads.broadcast_waited(Duration::from_millis(waited));
        let bytes: Bytes = envelope.to_vec().into();
        match self.core.broadcast(envelope.id.as_u128(), bytes, Instant::now()) {
            Ok(()) => {
                debug!(envelope = %envelope.id, kind = %envelope.kind, address = %envelope.dst.address,
                    peers = self.core.linked_peers(), "pushing envelope to the cluster");
            }
            Err(e) => {
                self.metrics.dropped(DropReason::Oversize);
                self.counters.oversized += 1;
                warn!(envelope = %envelope.id, error = %e, "envelope not sent to the cluster");
            }
        }
        self.drive(ctx);
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
        debug!(envelope = %msg.envelope.id, to = %msg.node, kind = %msg.envelope.kind, "sending direct envelope");
        let result = self
            .core
            .send_direct(&msg.node, msg.envelope.to_vec().into(), Instant::now());
        self.drive(ctx);
        result.map_err(|e| {
            if let CoreError::NotAlive(_) = e {
                warn!(envelope = %msg.envelope.id, to = %msg.node, "direct envelope to a node that is not alive dropped");
            }
            e.to_string()
        })
    }
}

impl Handler<SetNodeState> for ClusterBridge {
    type Result = Result<(), String>;
    fn handle(&mut self, SetNodeState(envelope): SetNodeState, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let result = self.core.set_state(deflate_state(&envelope.to_vec()), Instant::now());
        self.drive(ctx);
        // This node's own report reaches its own Monitor too.
        self.deliver_local(envelope);
        result.map_err(|e| e.to_string())
    }
}

impl Handler<WriteEntry> for ClusterBridge {
    type Result = Result<Arc<Entry>, String>;
    fn handle(&mut self, msg: WriteEntry, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let result = self
            .core
            .write_entry(msg.set, &msg.key, msg.body, msg.clock, Instant::now());
        self.drive(ctx);
        result.map_err(|e| e.to_string())
    }
}

impl Handler<LoadEntries> for ClusterBridge {
    type Result = usize;
    fn handle(&mut self, msg: LoadEntries, ctx: &mut Self::Context) -> usize {
        let _g = self.span.clone().entered();
        let offered = msg.entries.len();
        let taken = self.core.load_entries(msg.set, msg.entries, Instant::now());
        info!(set = msg.set, offered, taken, "dataset entries kept on disk taken");
        self.drive(ctx);
        taken
    }
}

impl Handler<ListEntries> for ClusterBridge {
    type Result = Vec<Arc<Entry>>;
    fn handle(&mut self, ListEntries(set): ListEntries, _ctx: &mut Self::Context) -> Self::Result {
        self.core.entries(set)
    }
}

impl Handler<WatchEntries> for ClusterBridge {
    type Result = ();
    /// The watcher gets what is held now first, so it misses nothing that
    /// came before it watched (a node joins before its Deployer starts).
    fn handle(&mut self, msg: WatchEntries, _ctx: &mut Self::Context) {
        let held = self.core.entries(msg.set);
        if !held.is_empty() {
            msg.watcher.do_send(EntriesChanged {
                set: msg.set,
                changed: held,
                removed: Vec::new(),
                refused: Vec::new(),
            });
        }
        self.watchers.insert(msg.set, msg.watcher);
    }
}

impl Handler<SetTags> for ClusterBridge {
    type Result = ();
    fn handle(&mut self, SetTags(tags): SetTags, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.core.set_tags(tags, Instant::now());
        self.drive(ctx);
    }
}

impl Handler<ListMembers> for ClusterBridge {
    type Result = Vec<Member>;
    fn handle(&mut self, _msg: ListMembers, _ctx: &mut Self::Context) -> Self::Result {
        self.members()
    }
}

/// How long a join waits for a seed's member table beyond the dial and the
/// handshake. A seed busy with a mass start may say hello at once and send
/// its table seconds later; a join that gave up after 7 s called it
/// unreachable and asked it again, adding to its load.
const JOIN_ANSWER_GRACE: Duration = Duration::from_secs(30);

impl Handler<JoinSeed> for ClusterBridge {
    type Result = ResponseFuture<Result<String, String>>;
    fn handle(&mut self, JoinSeed(addr): JoinSeed, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        let (tx, rx) = oneshot::channel();
        self.join_waiters.entry(addr).or_default().push(tx);
        self.core.join(addr, Instant::now());
        self.drive(ctx);
        // A seed that is down fails the join at once (its dial, handshake
        // or link fails and the core says so); only one that said hello
        // and is slow with its table makes this wait.
        let wait = self.core.config().dial_timeout + crate::cluster::noise::HANDSHAKE_TIMEOUT + JOIN_ANSWER_GRACE;
        Box::pin(async move {
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err("the cluster bridge stopped".into()),
                Err(_) => Err(format!("no member table within {wait:?}")),
            }
        })
    }
}

impl Handler<Candidate> for ClusterBridge {
    type Result = ();
    fn handle(&mut self, msg: Candidate, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        let known =
            msg.addr == self.core.me().addr || self.core.members().any(|m| m.id.addr == msg.addr && m.status.is_up());
        if known || self.core.dialing_count() > 64 {
            return;
        }
        let now = Instant::now();
        let news = self
            .candidates_logged
            .get(&msg.addr)
            .is_none_or(|at| now.saturating_duration_since(*at) >= CANDIDATE_LOG_EVERY);
        if news {
            info!(addr = %msg.addr, node = %msg.node, "discovered a peer; joining through it");
            self.candidates_logged
                .retain(|_, at| now.saturating_duration_since(*at) < CANDIDATE_LOG_EVERY);
            self.candidates_logged.insert(msg.addr, now);
        } else {
            debug!(addr = %msg.addr, node = %msg.node, "discovered a peer again; joining through it");
        }
        self.core.join(msg.addr, now);
        self.drive(ctx);
    }
}

impl Handler<LeaveCluster> for ClusterBridge {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _msg: LeaveCluster, ctx: &mut Self::Context) -> Self::Result {
        let _g = self.span.clone().entered();
        info!(peers = self.core.linked_peers(), "leaving the cluster");
        self.core.leave(Instant::now());
        self.drive(ctx);
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

/// Whether every queued frame is written.
#[derive(Message)]
#[rtype(result = "bool")]
struct IsDrained;

impl Handler<IsDrained> for ClusterBridge {
    type Result = bool;
    fn handle(&mut self, _msg: IsDrained, _ctx: &mut Self::Context) -> bool {
        self.links.values().all(|l| l.queued_bytes() == 0)
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
            .core
            .links()
            .filter_map(|(id, peer, overlay)| {
                let handle = self.links.get(&id)?;
                Some(PeerLink {
                    peer: peer?.to_string(),
                    queued_bytes: handle.queued_bytes(),
                    overlay,
                })
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        ClusterSummary {
            peers: self.core.linked_peers(),
            members,
            max_queued_bytes: links.iter().map(|l| l.queued_bytes).max().unwrap_or(0),
            links,
            dialing: self.core.dialing_count(),
            standing: standing_text(self.core.standing()),
            refused: match self.core.standing() {
                Standing::Refused { holder, reason } => Some(RefusedStanding {
                    holder: holder.to_string(),
                    reason: reason.clone(),
                }),
                _ => None,
            },
            health: self.core.health(),
            dropped_overloaded: self.counters.dropped_transponder_full,
        }
    }
}

/// A node's state travels deflated: a status report is JSON, about four
/// times smaller so. (The core carries it as opaque bytes.)
fn deflate_state(json: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(json);
    encoder.finish().unwrap_or_default().into()
}

/// Inflates a peer's state, refusing more than an envelope's worth.
fn inflate_state(data: &[u8]) -> Result<Bytes, String> {
    use std::io::Read as _;
    let limit = crate::wire::MAX_ENVELOPE_BYTES as u64;
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(data)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not deflate data: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!("inflates to more than {limit} bytes"));
    }
    Ok(out.into())
}

/// `joined`, `alone`, `left`, or why this node is refused.
fn standing_text(standing: &Standing) -> String {
    match standing {
        Standing::Alone => "alone".into(),
        Standing::Joined => "joined".into(),
        Standing::Left => "left".into(),
        Standing::Refused { reason, .. } => format!("refused: {reason}"),
    }
}

impl ShowState for ClusterBridge {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> serde_json::Value {
        let mut state = self.core.snapshot();
        if let Some(links) = state["links"].as_array_mut() {
            for link in links {
                let queued = link["id"]
                    .as_u64()
                    .and_then(|id| self.links.get(&id))
                    .map(|h| h.queued_bytes());
                link["queued_bytes"] = json!(queued);
                if let Some(id) = link["id"].as_u64() {
                    link["queue_state"] = json!(self.loads.state(id).as_str());
                }
            }
        }
        state["kind"] = json!("bridge");
        state["bridge"] = json!(&self.counters);
        state["link_loads"] = json!(&self.loads.counters);
        state["congested"] = json!(self.loads.gauge().is_congested());
        state["transponder_attached"] = json!(self.transponder.as_ref().is_some_and(|t| t.connected()));
        state
    }
}

state_handlers!(ClusterBridge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_deflated_and_a_bomb_is_refused() {
        let json = br#"{"modules":[{"name":"echo","state":"running"},{"name":"echo","state":"running"}]}"#.repeat(20);
        let packed = deflate_state(&json);
        assert!(packed.len() * 4 < json.len(), "{} → {}", json.len(), packed.len());
        assert_eq!(inflate_state(&packed).unwrap(), Bytes::from(json));
        let bomb = deflate_state(&vec![b' '; 2 * crate::wire::MAX_ENVELOPE_BYTES]);
        assert!(
            bomb.len() < 64 * 1024,
            "small enough to be a valid state: {}",
            bomb.len()
        );
        assert!(inflate_state(&bomb).unwrap_err().contains("more than"));
        assert!(inflate_state(b"\xff\xfe not deflate").is_err());
    }
}
