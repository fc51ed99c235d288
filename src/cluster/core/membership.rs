//! Membership: applying member records by SWIM's rules, suspicion, death
//! and refutation, leaving, and what follows from a member coming or going
//! (the rings, the overlay, the broadcast tree's root).

use super::detector::DetectorOut;
use super::hash::{combine, name_hash, ring_position};
use super::members::Applied;
use super::proofs::Claim;
use super::{helpers, rings, Action, Change, ClusterCore, LinkId, Source, Standing};
use crate::cluster::identity::NodeId;
use crate::cluster::protocol::{
    Items, Lane, Msg, MsgId, Payload, ProbeMsg, Record, Status, SyncMsg, TreeMsg, SET_MEMBERS,
};
use rand::RngExt as _;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

impl ClusterCore {
    /// A probe message from `from`: answer pings, and hand acks and
    /// indirect probes to the failure detector.
    pub(super) fn on_probe(&mut self, link: LinkId, from: &Arc<str>, msg: ProbeMsg) {
        let mut out = Vec::new();
        match msg {
            ProbeMsg::Ping { seq } => self.queue(link, Lane::Control, Msg::Probe(ProbeMsg::Ack { seq })),
            ProbeMsg::Ack { seq } => self.detector.on_ack(from, seq, &mut out),
            ProbeMsg::PingReq { seq, target } => {
                if self.table.get(&target).is_some_and(|m| m.status.is_up()) {
                    self.detector.on_pingreq(from, seq, &target, self.now, &mut out);
                } else {
                    out.push(DetectorOut::PingReqAck {
                        to: from.clone(),
                        seq,
                        reached: false,
                    });
                }
            }
            ProbeMsg::PingReqAck { seq, reached } => self.detector.on_pingreq_ack(seq, reached, &mut out),
        }
        self.detector_out(out);
    }

    /// Says goodbye: every node lists this one as `left`.
    pub fn leave(&mut self, now: Instant) {
        self.now = now;
        if self.standing == Standing::Left {
            return;
        }
        info!(incarnation = self.incarnation, "leaving the cluster");
        self.standing = Standing::Left;
        self.table.set_me(self.incarnation, Status::Left, now);
        self.sign_me();
        let record = self.table.me().record();
        let id = update_id(&record, None);
        let payload = Payload::Update { record, accuser: None };
        // Push to every linked peer at once: there is no time for lazy repair.
        self.tree.broadcast(id, payload.clone(), now, &mut Vec::new());
        let peers: Vec<LinkId> = self.by_peer.values().copied().collect();
        for link in peers {
            self.queue(
                link,
                Lane::Control,
                Msg::Tree(TreeMsg::Gossip {
                    id,
                    hops: 0,
                    payload: payload.clone(),
                }),
            );
        }
        self.flush();
    }

    /// This node's tags change: its identity carries them, at a new
    /// incarnation, so the news wins everywhere and selectors see it.
    pub fn set_tags(&mut self, tags: std::collections::BTreeMap<String, String>, now: Instant) {
        self.now = now;
        if self.me.tags == tags || self.standing == Standing::Left {
            return;
        }
        let mut id = (*self.me).clone();
        id.tags = tags;
        self.me = Arc::new(id);
        self.incarnation = self.incarnation.saturating_add(1);
        self.table.set_me_id(self.me.clone(), self.incarnation);
        self.sign_me();
        info!(incarnation = self.incarnation, tags = %tags_text(&self.me.tags), "this node's tags changed; spreading them");
        let record = self.table.me().record();
        self.spread(record, None);
        self.flush();
    }

    /// News about this node: refute a suspicion or a death, or step aside
    /// for an older live process of the same name.
    pub(super) fn about_me(&mut self, record: &Record, via: Option<LinkId>) {
        if matches!(self.standing, Standing::Left | Standing::Refused { .. }) {
            return;
        }
        if record.id.boot == self.me.boot {
            // Only this node raises its incarnation: a claim above it is
            // forged, and refuting it would hand the forger this node's
            // incarnation numbers (one at the top would leave none).
            if record.status != Status::Alive && record.incarnation > self.incarnation {
                self.unproven(
                    &record.id.name,
                    Claim::Record(record.status, record.incarnation),
                    "a claim about this node above its own incarnation",
                );
                return;
            }
            if record.status != Status::Alive && record.incarnation == self.incarnation {
                self.incarnation = record.incarnation.saturating_add(1);
                self.counters.refutations += 1;
                self.detector.refuted();
                warn!(
                    said = %record.status.as_str(),
                    incarnation = self.incarnation,
                    "the cluster suspected this node or declared it dead; refuting"
                );
                self.table.set_me(self.incarnation, Status::Alive, self.now);
                self.sign_me();
                let mine = self.table.me().record();
                if let Some(link) = via {
                    self.queue(
                        link,
                        Lane::Control,
                        Msg::Sync(SyncMsg::Items {
                            set: SET_MEMBERS,
                            items: Items::Records(vec![mine.clone()]),
                        }),
                    );
                }
                self.spread(mine, None);
            }
            return;
        }
        let other = &record.id;
        if !record.status.is_up() || other.addr == self.me.addr {
            return;
        }
        if self.identity.is_some() {
            // Hearsay of another process under this name, from a node that
            // cannot sign for it: a name held by a key is settled on links
            // only (see `handshake::hello_from_my_name`).
            debug!(addr = %other.addr, boot = other.boot, "news of another process under this node's name; ignored");
            return;
        }
        if other.boot < self.me.boot {
            self.step_aside(other.addr, other.boot);
        } else {
            self.log_conflict(
                other,
                "another process claims this node's name; the cluster keeps this one",
            );
        }
    }

    /// Applies a record about another member and does what follows from it.
    pub(super) fn apply(&mut self, record: &Record, source: Source<'_>) -> Applied {
        if let Err(why) = record.id.check() {
            self.refuse_record(&why);
            return Applied::Stale;
        }
        if !self.vouched(record, source) {
            return Applied::Stale;
        }
        if !self
            .table
            .has_room_for_any(self.config.max_members, self.config.max_member_bytes)
            && self.table.get(&record.id.name).is_none()
            && !self.room_for(record)
        {
            return Applied::Stale;
        }
        let mut record = record.clone();
        // Anti-entropy carries others' opinions, not evidence: a member we
        // hold alive that another node holds dead is only suspected here, so
        // it can refute (memberlist does the same).
        if source == Source::AntiEntropy && record.status == Status::Dead {
            if let Some(m) = self.table.get(&record.id.name) {
                if m.id.boot == record.id.boot && m.status.is_up() {
                    record.status = Status::Suspect;
                }
            }
        }
        // Only a probe is evidence: news from a table exchange or a hello
        // names no accuser, so it never counts as a confirmation.
        let accuser = match source {
            Source::Gossip { accuser } | Source::Local { accuser } => accuser.cloned(),
            _ => None,
        };
        let applied = self.table.apply(&record, self.now);
        let name = record.id.name.clone();
        match &applied {
            Applied::Stale => {}
            Applied::SameSuspicion => {
                if let Some(a) = &accuser {
                    self.counters.confirmations += 1;
                    let m = self.table.get(&name).expect("suspected member is held");
                    let (boot, inc) = (m.id.boot, m.incarnation);
                    let expected = self.expected_confirmations(&name);
                    self.detector.suspect(&name, boot, inc, Some(a), expected, self.now);
                }
            }
            Applied::Conflict { holder } => {
                let holder = holder.clone();
                self.log_conflict(
                    &record.id,
                    &format!(
                        "a second live process claims member `{}`; refused (it is held by {} since boot {})",
                        name, holder.addr, holder.boot
                    ),
                );
            }
            Applied::Added => {
                let status = record.status;
                if status.is_up() {
                    self.member_up(&name);
                }
                if source != Source::Snapshot {
                    info!(member = %name, addr = %record.id.addr, status = %status.as_str(),
                        tags = %tags_text(&record.id.tags), "new member");
                }
                self.standing_joined();
                self.event(&record.id, change_of(status));
                if status == Status::Suspect {
                    self.start_suspicion(&name, accuser.as_ref());
                }
                if matches!(source, Source::Hello | Source::AntiEntropy) {
                    self.spread(record.clone(), None);
                }
            }
            Applied::Changed { from } => {
                let from = *from;
                let to = record.status;
                if from != to {
                    self.status_changed(&record, from, to, accuser.as_ref(), source);
                }
                if source == Source::AntiEntropy {
                    // Pass the repair on (as the same news, so nodes that had
                    // it drop it at once).
                    let current = self.table.get(&name).map(|m| m.record());
                    if let Some(current) = current {
                        self.spread(current, None);
                    }
                }
            }
            Applied::Replaced { old, from } => {
                let (old, from) = (old.clone(), *from);
                self.detector.clear(&name);
                // The state held was the old boot's.
                self.states.remove(&name);
                if old.boot > record.id.boot {
                    // A newer duplicate we had taken: tell it who holds the name.
                    self.tell_links_to(
                        &name,
                        old.boot,
                        Msg::Sync(SyncMsg::Items {
                            set: SET_MEMBERS,
                            items: Items::Records(vec![record.clone()]),
                        }),
                    );
                }
                self.close_links_to(&name, Some(record.id.boot));
                if old.boot > record.id.boot {
                    warn!(member = %name, kept = %record.id.addr, refused = %old.addr,
                        "two live processes claim this member's name; keeping the one that started first");
                } else if source != Source::Snapshot {
                    info!(member = %name, addr = %record.id.addr, old_boot = old.boot, boot = record.id.boot,
                        "member restarted");
                }
                match (from.is_up(), record.status.is_up()) {
                    (true, false) => self.member_down(&name),
                    (false, true) => self.member_up(&name),
                    (true, true) => self.take_back(&name),
                    _ => {}
                }
                self.event(&record.id, Change::Restarted);
                if matches!(source, Source::Hello | Source::AntiEntropy) {
                    self.spread(record.clone(), None);
                }
            }
        }
        applied
    }

    /// Counts a member record that breaks the bounds on names and tags:
    /// it is neither held nor spread, so a flood of such records grows no
    /// table. Logged once per 10 s, with the count.
    pub(super) fn refuse_record(&mut self, why: &str) {
        self.counters.records_refused += 1;
        if self.record_refusal_log.event(self.now).is_some() {
            warn!(refused_so_far = self.counters.records_refused, reason = %why,
                "refused a member record from a peer: it is not held or spread");
        }
    }

    pub(super) fn status_changed(
        &mut self,
        record: &Record,
        from: Status,
        to: Status,
        accuser: Option<&Arc<str>>,
        source: Source<'_>,
    ) {
        let name = record.id.name.clone();
        match to {
            Status::Alive => {
                self.detector.clear(&name);
                if !from.is_up() {
                    self.member_up(&name);
                }
                self.take_back(&name);
                info!(member = %name, incarnation = record.incarnation, was = %from.as_str(), "member alive");
            }
            Status::Suspect => {
                if !from.is_up() {
                    self.member_up(&name);
                }
                info!(member = %name, incarnation = record.incarnation,
                    by = %accuser.map(|a| &**a).unwrap_or("anti-entropy"), "member suspected");
                self.start_suspicion(&name, accuser);
            }
            Status::Dead | Status::Left => {
                self.detector.clear(&name);
                if from.is_up() {
                    self.member_down(&name);
                }
                self.close_links_to(&name, None);
                if to == Status::Left {
                    info!(member = %name, "member left the cluster");
                } else {
                    self.counters.members_died += 1;
                    let by = match source {
                        Source::Local { .. } => "this node",
                        _ => "the cluster",
                    };
                    warn!(member = %name, addr = %record.id.addr, incarnation = record.incarnation, by = %by,
                        "member declared dead");
                }
            }
        }
        self.event(&record.id, change_of(to));
    }

    pub(super) fn start_suspicion(&mut self, name: &Arc<str>, accuser: Option<&Arc<str>>) {
        let Some(m) = self.table.get(name) else { return };
        let (boot, inc) = (m.id.boot, m.incarnation);
        let expected = self.expected_confirmations(name);
        self.detector.suspect(name, boot, inc, accuser, expected, self.now);
        // An observer checks for itself, so a real failure is confirmed fast.
        if self.rings.is_subject(name) && accuser != Some(&self.me.name) {
            self.detector.probe_soon(name, self.now);
        }
    }

    /// How many observers besides the accuser could confirm a suspicion:
    /// counted exactly in clusters of up to a thousand members, where rings
    /// often share observers; above that the `K` observers are distinct
    /// but for a chance of about `K²/N`.
    pub(super) fn expected_confirmations(&self, name: &str) -> usize {
        let live = self.table.up_count();
        if live <= 1024 {
            let names: Vec<&Arc<str>> = self
                .table
                .iter()
                .filter(|m| m.status.is_up())
                .map(|m| &m.id.name)
                .collect();
            return rings::observers_of(name, self.config.rings, names.into_iter())
                .len()
                .saturating_sub(1);
        }
        self.config.rings.saturating_sub(1)
    }

    pub(super) fn member_up(&mut self, name: &Arc<str>) {
        if self.rings.add(name) {
            self.overlay_dirty = true;
        }
        let rank = ring_position(name_hash(name), 0);
        if (rank, name.clone()) < self.root {
            self.root = (rank, name.clone());
            self.tree.set_root(name, self.me.boot, self.now);
        }
    }

    pub(super) fn member_down(&mut self, name: &Arc<str>) {
        self.drop_passed_over(name);
        let table = &self.table;
        let live: Vec<Arc<str>> = table
            .iter()
            .filter(|m| m.status.is_up())
            .map(|m| m.id.name.clone())
            .collect();
        let passed = &self.passed_over;
        if self.rings.remove(name, live.iter().filter(|n| !passed.contains(*n))) {
            self.overlay_dirty = true;
        }
        self.wanted.remove(name);
        self.tree_neighbour_down(name);
        self.tree.root_gone(name);
        if self.root.1 == *name {
            let me = (ring_position(name_hash(&self.me.name), 0), self.me.name.clone());
            self.root = live
                .iter()
                .filter(|n| **n != *name)
                .map(|n| (ring_position(name_hash(n), 0), n.clone()))
                .chain(std::iter::once(me))
                .min()
                .expect("this node is always a candidate");
            self.tree.set_root(&self.root.1, self.me.boot, self.now);
        }
    }

    /// Sends `msg` at once on every link to boot `boot` of `name`.
    pub(super) fn tell_links_to(&mut self, name: &Arc<str>, boot: u64, msg: Msg) {
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.as_ref().is_some_and(|p| p.name == *name && p.boot == boot))
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            self.queue(link, Lane::Control, msg.clone());
        }
        self.flush();
    }

    /// Closes links to `name`, except to boot `keep`.
    pub(super) fn close_links_to(&mut self, name: &Arc<str>, keep: Option<u64>) {
        let doomed: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.as_ref().is_some_and(|p| p.name == *name && Some(p.boot) != keep))
            .map(|(id, _)| *id)
            .collect();
        for link in doomed {
            self.close(link, "member gone");
        }
    }

    pub(super) fn event(&mut self, id: &Arc<NodeId>, change: Change) {
        // News here may be news elsewhere (a mass start loses updates while
        // the tree forms): compare tables soon rather than at the next round.
        self.anti_entropy_soon();
        self.quick_rounds = self.config.quick_rounds_after_news;
        self.actions.push_back(Action::Member { id: id.clone(), change });
    }

    /// Broadcasts a member record along the tree.
    pub(super) fn spread(&mut self, record: Record, accuser: Option<Arc<str>>) {
        let id = update_id(&record, accuser.as_deref());
        let mut out = Vec::new();
        self.tree
            .broadcast(id, Payload::Update { record, accuser }, self.now, &mut out);
        self.tree_out(out);
    }

    /// Our probe and its helpers got no answer: suspect the subject.
    /// A probe of `target` and its helpers went unanswered. A suspicion
    /// already running is confirmed at once; otherwise, over a live link,
    /// the driver is first asked whether the host still answers.
    /// `unreachable_by_all`: see [`DetectorOut::Suspect`].
    pub(super) fn probe_failed(&mut self, target: Arc<str>, probed_at: Instant, unreachable_by_all: bool) {
        let Some(m) = self.table.get(&target) else { return };
        let running = m.status == Status::Suspect;
        // A dial to it is connected and waiting for the handshake, or one
        // reached its host since the probe (or just before).
        let addr = m.id.addr;
        let since = probed_at.checked_sub(self.config.probe_interval).unwrap_or(probed_at);
        let host_seen = self
            .dialing
            .get(&addr)
            .is_some_and(|d| self.host_seen_since(addr, d.started))
            || self.host_seen_since(addr, since);
        // Its process turned one of this node's dials away as busy since
        // the probe (or just before): alive, and the probe could not reach
        // it only because no link could be opened.
        let busy = self.busy_seen.get(&addr).is_some_and(|at| *at >= since);
        match self.by_peer.get(&target).copied() {
            _ if running => self.accuse(&target, unreachable_by_all),
            _ if busy => {
                debug!(member = %target, "probe unanswered, but the member's process turned a link away as busy; not suspecting it");
            }
            Some(link) => self.actions.push_back(Action::CheckHost {
                link,
                name: target,
                since: probed_at,
            }),
            None if host_seen => self.host_checked(&target, true, self.now),
            None => self.accuse(&target, unreachable_by_all),
        }
    }

    /// The driver's answer to [`Action::CheckHost`]: `answered` if the
    /// host of `name` still acknowledges the link. Such a
    /// member is suspected only once it has stalled for `stall_grace`.
    pub fn host_checked(&mut self, name: &str, answered: bool, now: Instant) {
        let Some(target) = self.table.get(name).map(|m| m.id.name.clone()) else {
            return;
        };
        if answered && !self.detector.host_answered(&target, now) {
            let stalled = self.detector.stalled_for(&target, now).unwrap_or_default();
            debug!(member = %target, stalled_ms = stalled.as_millis() as u64,
                "probe unanswered, but the member's host acknowledges the link; not suspecting a stalled process yet");
            return;
        }
        self.accuse(&target, false);
    }

    /// Suspects `target` on this node's own evidence and passes over it on
    /// the rings (`walk_on`: see [`ClusterCore::pass_over`]).
    pub(super) fn accuse(&mut self, target: &Arc<str>, walk_on: bool) {
        let Some(m) = self.table.get(target).filter(|m| m.status.is_up()) else {
            return;
        };
        let record = Record {
            id: m.id.clone(),
            incarnation: m.incarnation,
            status: Status::Suspect,
        };
        self.counters.suspicions_raised += 1;
        info!(member = %target, incarnation = record.incarnation, health = self.detector.health(),
            "no answer to a probe or its helpers; suspecting member");
        let me = self.me.name.clone();
        self.apply(&record, Source::Local { accuser: Some(&me) });
        self.spread(record, Some(me));
        if self.table.get(target).is_some_and(|m| m.status == Status::Suspect) {
            self.pass_over(target, walk_on);
        }
    }

    /// A suspicion ran out: declare the member dead.
    pub(super) fn declare(&mut self, name: &Arc<str>, boot: u64, incarnation: u32) {
        let Some(m) = self.table.get(name) else { return };
        if m.id.boot != boot || m.incarnation != incarnation || m.status != Status::Suspect {
            return;
        }
        let record = Record {
            id: m.id.clone(),
            incarnation,
            status: Status::Dead,
        };
        self.counters.deaths_declared += 1;
        self.apply(&record, Source::Local { accuser: None });
        self.spread(record, None);
    }

    pub(super) fn detector_out(&mut self, out: Vec<DetectorOut>) {
        for o in out {
            match o {
                DetectorOut::Ping { to, seq } => self.send_to(&to, Lane::Control, Msg::Probe(ProbeMsg::Ping { seq })),
                DetectorOut::PingReq { helper, target, seq } => {
                    self.send_to(&helper, Lane::Control, Msg::Probe(ProbeMsg::PingReq { seq, target }))
                }
                DetectorOut::PingReqAck { to, seq, reached } => {
                    self.send_to(&to, Lane::Control, Msg::Probe(ProbeMsg::PingReqAck { seq, reached }))
                }
                DetectorOut::Suspect {
                    target,
                    probed_at,
                    unreachable_by_all,
                } => self.probe_failed(target, probed_at, unreachable_by_all),
                DetectorOut::Dead {
                    name,
                    boot,
                    incarnation,
                } => self.declare(&name, boot, incarnation),
            }
        }
    }

    /// Up to `indirect_probes` linked, alive peers other than `target`,
    /// from a random place: who may probe it for us.
    pub(super) fn helper_candidates(&mut self, target: &str) -> Vec<Arc<str>> {
        let offset = self.rng.random::<u32>() as usize;
        helpers(&self.by_peer, &self.table, target, offset, self.config.indirect_probes)
    }
}

pub(super) fn change_of(status: Status) -> Change {
    match status {
        Status::Alive => Change::Alive,
        Status::Suspect => Change::Suspect,
        Status::Dead => Change::Dead,
        Status::Left => Change::Left,
    }
}

/// Tags as `k=v,k=v` for logs.
pub fn tags_text(tags: &std::collections::BTreeMap<String, String>) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The broadcast id of a member update: the same news is the same message.
pub fn update_id(record: &Record, accuser: Option<&str>) -> MsgId {
    let status = match record.status {
        Status::Alive => 1,
        Status::Suspect => 2,
        Status::Dead => 3,
        Status::Left => 4,
    };
    let h = combine(
        combine(name_hash(&record.id.name), record.id.boot),
        u64::from(record.incarnation) << 3 | status,
    );
    let a = accuser.map_or(0, name_hash);
    let hi = combine(h, a);
    let lo = combine(hi, 0x5bd1_e995);
    (u128::from(hi) << 64) | u128::from(lo)
}
