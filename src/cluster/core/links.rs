//! Links and dials: opening and closing them, one preferred link per peer,
//! which links are overlay (the broadcast tree runs over them), the link
//! cap and idle closing, reconnecting to dead members, and turning what one
//! input queued into one frame per link and lane.

use super::hash::StableSet;
use super::{Action, ClusterCore, Dialing, Direction, JoinError, Link, LinkId, Standing, BUSY_PEERS};
use crate::cluster::protocol::{Frame, Hello, Lane, LinkMsg, Msg, Payload, Status, SyncMsg, TreeMsg};
use rand::seq::IteratorRandom as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

impl ClusterCore {
    /// A link is established (encrypted); this node says hello first.
    pub fn link_up(&mut self, link: LinkId, direction: Direction, remote: SocketAddr, now: Instant) {
        self.now = now;
        self.counters.links_opened += 1;
        self.links.insert(
            link,
            Link {
                direction,
                remote,
                peer: None,
                opened: now,
                last_used: now,
                hello_deadline: now + self.config.hello_timeout,
                version: 0,
                peer_static: None,
                i_want: false,
                peer_wants: false,
                hangup_expected: false,
                frames_in: 0,
                news: self.news_budget(),
                join_answer: 0,
            },
        );
        // Dials under way count: each is a link about to open.
        if direction == Direction::Inbound && self.links.len() + self.dialing.len() > self.config.link_cap {
            return self.turn_away(link);
        }
        self.actions.push_back(Action::Send {
            link,
            lane: Lane::Control,
            frame: Frame::Hello(Hello {
                protocol: self.protocol,
                cluster: self.cluster.clone(),
                id: self.me.clone(),
                incarnation: self.incarnation,
                identity: self.identity,
                admission: self.admission.clone(),
                proof: self.my_proof(),
            }),
        });
        debug!(link, %remote, ?direction, "link up");
        self.flush();
    }

    /// Past the link cap, a new inbound link gets no hello, only a few live
    /// members to ask instead, and is closed. In a mass start every joiner
    /// dials the same seed, which otherwise held a link per joiner until it
    /// had read each one's join (3,812 at once among 10,000 simulated
    /// nodes). The dialer still holds what it meant to send, and learns
    /// that this node's process answered.
    pub(super) fn turn_away(&mut self, link: LinkId) {
        self.counters.links_turned_away += 1;
        let peers: Vec<(Arc<str>, SocketAddr)> = self
            .sample_live(BUSY_PEERS)
            .into_iter()
            .map(|m| (m.id.name.clone(), m.id.addr))
            .collect();
        debug!(
            link,
            links = self.links.len(),
            named = peers.len(),
            "at the link cap; turning a new link away"
        );
        self.queue(link, Lane::Control, Msg::Link(LinkMsg::Busy { peers }));
        self.flush();
        self.close(link, "at the link cap");
    }

    /// The handshake of `link` proved that its peer holds the X25519
    /// static key `key`; the peer's hello must name the identity it is the
    /// Noise form of.
    pub fn link_proven(&mut self, link: LinkId, key: [u8; 32]) {
        if let Some(l) = self.links.get_mut(&link) {
            l.peer_static = Some(key);
        }
    }

    /// The driver found link `link` backed up (or clear again): the tree
    /// relays to its peer by id meanwhile (see `BroadcastTree::set_backed_up`).
    pub fn link_backed_up(&mut self, link: LinkId, yes: bool) {
        if let Some(peer) = self.links.get(&link).and_then(|l| l.peer_name()).cloned() {
            debug!(link, %peer, backed_up = yes, "link queue state changed");
            self.tree.set_backed_up(&peer, yes);
        }
    }

    /// A link is gone (closed by the peer, or failed).
    pub fn link_down(&mut self, link: LinkId, reason: &str, now: Instant) {
        self.now = now;
        let Some(l) = self.links.remove(&link) else { return };
        self.counters.links_closed += 1;
        self.outbox.remove(&link);
        self.claims.retain(|(l, _), _| *l != link);
        debug!(link, remote = %l.remote, peer = l.peer_name().map(|n| &**n), %reason, "link down");
        if l.peer.is_none() && l.direction == Direction::Outbound {
            // The dial's hello never came.
            self.fail_dial(l.remote, reason);
        }
        self.fail_join(link, reason);
        if let Some(peer) = l.peer {
            self.unroute(&peer.name, link, !l.hangup_expected);
        }
        self.flush();
    }

    /// A dial to `addr` got its TCP connection accepted; the handshake
    /// follows. The host answers even if its process is too starved to
    /// finish the handshake (a seed answering a mass start), so a probe that
    /// fails meanwhile is treated as a stall, not a crash.
    pub fn dial_connected(&mut self, addr: SocketAddr, now: Instant) {
        self.now = now;
        self.host_seen.insert(addr, now);
    }

    /// Whether a dial got a TCP connection to `addr` accepted at `since` or later.
    pub(super) fn host_seen_since(&self, addr: SocketAddr, since: Instant) -> bool {
        self.host_seen.get(&addr).is_some_and(|at| *at >= since)
    }

    /// Dialing `addr` failed: nothing there, or the handshake failed.
    pub fn dial_failed(&mut self, addr: SocketAddr, reason: &str, now: Instant) {
        self.now = now;
        self.counters.dial_failures += 1;
        debug!(%addr, %reason, "dial failed");
        self.fail_dial(addr, reason);
        self.flush();
    }

    /// A frame could not be decoded: the link is closed.
    pub fn malformed(&mut self, link: LinkId, error: &str, now: Instant) {
        self.now = now;
        self.counters.malformed += 1;
        if let Some(l) = self.links.get(&link) {
            warn!(link, remote = %l.remote, peer = l.peer_name().map(|n| &**n), %error,
                "malformed frame from a peer; closing the link");
        }
        self.close(link, "malformed frame");
        self.flush();
    }

    /// Starts dialing `addr` unless a dial is under way (or was tried a
    /// moment ago); answers the dial's entry to attach messages to.
    pub(super) fn dial(&mut self, addr: SocketAddr, expect: Option<Arc<str>>) -> Option<&mut Dialing> {
        if !self.dialing.contains_key(&addr) {
            let recent = self
                .last_dial
                .get(&addr)
                .is_some_and(|at| self.now.saturating_duration_since(*at) < self.config.redial_interval);
            if recent && expect.is_some() {
                return None;
            }
            self.make_room();
            self.counters.dials += 1;
            self.last_dial.insert(addr, self.now);
            self.dialing.insert(
                addr,
                Dialing {
                    started: self.now,
                    expect,
                    pending: Vec::new(),
                    directs: Vec::new(),
                    join: None,
                },
            );
            self.actions.push_back(Action::Dial { addr });
        }
        self.dialing.get_mut(&addr)
    }

    pub(super) fn fail_dial(&mut self, addr: SocketAddr, reason: &str) {
        let Some(d) = self.dialing.remove(&addr) else { return };
        // Connected, then the handshake failed or timed out: the host is
        // there and only its process is slow, so the probe is left to run
        // its course (see `probe_failed`) instead of failing now.
        let host_answered = self.host_seen_since(addr, d.started);
        if let Some(ask) = d.join {
            self.answer_join(ask, Err(JoinError::Link(reason.to_string())));
        }
        if let Some(name) = d.expect {
            self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
            if host_answered {
                return;
            }
            let helpers = self.helper_candidates(&name);
            let mut out = Vec::new();
            self.detector.unreachable(&name, self.now, &helpers, &mut out);
            self.detector_out(out);
        }
    }

    /// Greeted links that neither side needs (not overlay, not to one of
    /// this node's probe subjects), least recently used first.
    pub(super) fn spare_links(&self) -> Vec<(Instant, LinkId)> {
        let subjects = self.rings.subjects();
        let mut spare: Vec<(Instant, LinkId)> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.is_some() && !l.i_want && !l.peer_wants)
            .filter(|(_, l)| !l.peer_name().is_some_and(|n| subjects.contains(n)))
            .map(|(id, l)| (l.last_used, *id))
            .collect();
        spare.sort();
        spare
    }

    /// Before a dial at the link cap, closes the least recently used spare
    /// link with nothing queued on it. The cap turns away links peers open;
    /// without this, the links a busy node opens itself (answers to joins,
    /// probes, pushes) piled up past it in a mass start (87 on one node of
    /// 10,000 simulated, against a cap of 64).
    pub(super) fn make_room(&mut self) {
        if self.links.len() + self.dialing.len() < self.config.link_cap {
            return;
        }
        let lru = self
            .spare_links()
            .into_iter()
            .map(|(_, link)| link)
            .find(|link| self.outbox.get(link).is_none_or(|queued| queued.is_empty()));
        if let Some(link) = lru {
            self.counters.links_closed_for_room += 1;
            self.close(link, "making room at the link cap");
        }
    }

    /// Makes sure there is (or will be) a link to member `name`.
    pub(super) fn ensure_link(&mut self, name: &Arc<str>) {
        if self.by_peer.contains_key(name) {
            return;
        }
        let Some(m) = self.table.get(name).filter(|m| m.status.is_up()) else {
            return;
        };
        let addr = m.id.addr;
        self.dial(addr, Some(name.clone()));
    }

    pub(super) fn close(&mut self, link: LinkId, reason: &'static str) {
        let Some(l) = self.links.remove(&link) else { return };
        self.counters.links_closed += 1;
        self.outbox.remove(&link);
        self.claims.retain(|(l, _), _| *l != link);
        debug!(link, peer = l.peer_name().map(|n| &**n), reason, "closing link");
        self.actions.push_back(Action::Close { link, reason });
        self.fail_join(link, reason);
        if l.peer.is_none() && l.direction == Direction::Outbound {
            // Closed during the hello (refused, a superseded boot): the dial
            // is over. Its process answered, so the detector is not told.
            if let Some(d) = self.dialing.remove(&l.remote) {
                self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Link(reason.to_string())));
                }
            }
        }
        if let Some(peer) = l.peer {
            self.unroute(&peer.name, link, false);
        }
    }

    /// `link` to `name` is gone: route over another link to it, if any.
    /// `broke`: the link failed or the peer closed it unannounced, which may
    /// mean its process died; closed by this node, it means nothing.
    pub(super) fn unroute(&mut self, name: &Arc<str>, link: LinkId, broke: bool) {
        if self.by_peer.get(name) != Some(&link) {
            return;
        }
        self.by_peer.remove(name);
        let other = self
            .links
            .iter()
            .find(|(_, l)| l.peer_name() == Some(name))
            .map(|(id, _)| *id);
        match other {
            Some(other) => {
                self.by_peer.insert(name.clone(), other);
            }
            None => {
                self.tree_neighbour_down(name);
                // A subject whose link broke is probed at once: its process
                // may have died.
                if broke && self.rings.is_subject(name) {
                    self.detector.probe_soon(name, self.now);
                }
                if self.wanted.contains_key(name) && *self.me.name < **name {
                    self.ensure_link(name);
                }
            }
        }
    }

    pub(super) fn touch(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_used = self.now;
        }
    }

    /// Queues a message for `link`; sent as one batch per lane at the end
    /// of this input.
    pub(super) fn queue(&mut self, link: LinkId, lane: Lane, msg: Msg) {
        self.outbox.entry(link).or_default().push((lane, msg));
    }

    /// Sends to member `name` over its link, dialing it if need be.
    pub(super) fn send_to(&mut self, name: &Arc<str>, lane: Lane, msg: Msg) {
        if *name == self.me.name {
            return;
        }
        if let Some(link) = self.by_peer.get(name).copied() {
            self.touch(link);
            self.queue(link, lane, msg);
            return;
        }
        let Some(addr) = self.table.get(name).map(|m| m.id.addr) else {
            self.counters.dropped_no_route += 1;
            return;
        };
        let limit = self.config.max_pending_per_dial;
        match self.dial(addr, Some(name.clone())) {
            Some(d) if d.pending.len() < limit => d.pending.push((lane, msg)),
            _ => self.counters.dropped_no_route += 1,
        }
    }

    /// Turns queued messages into frames, and settles the overlay.
    pub(super) fn flush(&mut self) {
        if self.overlay_dirty {
            self.overlay_dirty = false;
            self.update_overlay();
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut links: Vec<(LinkId, Vec<(Lane, Msg)>)> = self.outbox.drain().collect();
        links.sort_by_key(|(id, _)| *id);
        for (link, msgs) in links {
            let version = self.links.get(&link).map_or(0, |l| l.version);
            let mut batches: [(Vec<Msg>, usize); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
            for (lane, msg) in msgs {
                // Members' proofs go just before the records they cover,
                // in the same frame.
                let proofs = self.proofs_for(&msg, version);
                let (batch, size) = &mut batches[lane as usize];
                let s = size_hint(&msg) + proofs.as_ref().map_or(0, size_hint);
                if !batch.is_empty() && *size + s > 256 * 1024 {
                    self.actions.push_back(Action::Send {
                        link,
                        lane,
                        frame: Frame::Msgs(std::mem::take(batch)),
                    });
                    *size = 0;
                }
                *size += s;
                batch.extend(proofs);
                batch.push(msg);
            }
            for (lane, (batch, _)) in [Lane::Control, Lane::Bulk].into_iter().zip(batches) {
                if !batch.is_empty() {
                    self.actions.push_back(Action::Send {
                        link,
                        lane,
                        frame: Frame::Msgs(batch),
                    });
                }
            }
        }
    }

    /// Makes the overlay links match the rings: dial new neighbours, tell
    /// old ones they are no longer needed.
    pub(super) fn update_overlay(&mut self) {
        if matches!(self.standing, Standing::Refused { .. } | Standing::Left) {
            return;
        }
        let neighbours: StableSet<Arc<str>> = self.rings.neighbours().into_iter().collect();
        let added: Vec<Arc<str>> = neighbours
            .iter()
            .filter(|n| !self.wanted.contains_key(*n))
            .cloned()
            .collect();
        let removed: Vec<Arc<str>> = self
            .wanted
            .keys()
            .filter(|n| !neighbours.contains(*n))
            .cloned()
            .collect();
        for name in removed {
            self.wanted.remove(&name);
            if let Some(link) = self.by_peer.get(&name).copied() {
                self.queue(link, Lane::Control, Msg::Link(LinkMsg::Neighbour { wanted: false }));
                let unwanted = self.links.get_mut(&link).is_some_and(|l| {
                    l.i_want = false;
                    !l.peer_wants
                });
                if unwanted {
                    self.tree_neighbour_down(&name);
                }
            }
        }
        for name in added {
            self.wanted.insert(name.clone(), self.now);
            match self.by_peer.get(&name).copied() {
                Some(link) => self.want(link, &name),
                // One side dials, so the pair does not end up with two links.
                None if *self.me.name < *name => self.ensure_link(&name),
                None => {}
            }
        }
    }

    /// Marks `link` (to `name`) as overlay on this side.
    pub(super) fn want(&mut self, link: LinkId, name: &Arc<str>) {
        let Some(l) = self.links.get_mut(&link) else { return };
        if !l.i_want {
            l.i_want = true;
            self.queue(link, Lane::Control, Msg::Link(LinkMsg::Neighbour { wanted: true }));
        }
        self.tree_neighbour_up(name);
    }

    pub(super) fn tree_neighbour_up(&mut self, name: &Arc<str>) {
        let mut out = Vec::new();
        self.tree.neighbour_up(name, &mut out);
        self.tree_out(out);
    }

    pub(super) fn tree_neighbour_down(&mut self, name: &str) {
        let mut out = Vec::new();
        self.tree.neighbour_down(name, &mut out);
        self.tree_out(out);
    }

    /// The peer counts this link as overlay, or no longer does.
    pub(super) fn on_neighbour(&mut self, link: LinkId, from: &Arc<str>, wanted: bool) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.peer_wants = wanted;
        l.hangup_expected &= !wanted;
        let overlay = l.i_want || l.peer_wants;
        if self.by_peer.get(from) == Some(&link) {
            if overlay {
                self.tree_neighbour_up(from);
            } else {
                self.tree_neighbour_down(from);
            }
        }
    }

    /// Looks at one member at random; dials it if it is dead, so that each
    /// dead member is tried about once per interval across the cluster.
    pub(super) fn reconnect(&mut self) {
        let me = self.me.name.clone();
        let pick = self
            .table
            .iter()
            .filter(|m| m.id.name != me)
            .choose(&mut self.rng)
            .filter(|m| m.status == Status::Dead)
            .map(|m| (m.id.name.clone(), m.id.addr));
        if let Some((name, addr)) = pick {
            if !self.by_peer.contains_key(&name) && !self.dialing.contains_key(&addr) {
                self.counters.reconnect_dials += 1;
                debug!(member = %name, %addr, "dialing a dead member in case it is back");
                self.dial(addr, Some(name));
            }
        }
    }
}

/// A cheap upper guess of a message's encoded size, to split batches.
pub(super) fn size_hint(msg: &Msg) -> usize {
    match msg {
        Msg::Tree(TreeMsg::Gossip { payload, .. }) => {
            64 + match payload {
                Payload::Envelope(b) => b.len(),
                Payload::State(s) => s.data.len() + 64,
                Payload::Update { .. } => 128,
                Payload::Entry { entry, .. } => entry.body.len() + entry.key.len() + 64,
            }
        }
        Msg::Tree(TreeMsg::IHave { ids }) => 8 + ids.len() * 20,
        Msg::Link(LinkMsg::JoinTable { records }) => 32 + records.len() * 128,
        Msg::Sync(SyncMsg::Items { items, .. }) | Msg::Sync(SyncMsg::Differ { have: items, .. }) => {
            32 + items.size_hint()
        }
        Msg::Sync(SyncMsg::Digest { sets }) => sets.iter().map(|(_, h)| 4 + h.len() * 9).sum(),
        Msg::Sync(SyncMsg::Want { keys, .. }) => 8 + keys.iter().map(|k| k.len() + 1).sum::<usize>(),
        Msg::Sync(SyncMsg::Proofs { proofs, seals }) => 8 + proofs.len() * 192 + seals.len() * 96,
        _ => 32,
    }
}
