//! The broadcast tree: how a message reaches every node about once, over
//! the overlay's few links.
//!
//! It keeps Plumtree's repair (Leitão et al. 2007): messages travel the tree
//! eagerly, and their ids go lazily (in batches) to the other overlay
//! neighbours; a node that hears of an id but does not get the message in
//! time *grafts* the announcer (asks for it, and makes that link eager).
//!
//! It does not keep Plumtree's way of *building* the tree (prune whichever
//! link delivers a duplicate). Measured on the simulator with broadcasts
//! from many origins at once, concurrent prunes on one cycle cut the tree,
//! grafts put cycles back, and at 1,000 nodes the tree never settled (grafts
//! kept rising; broadcast p50 20 to 94 ms). A tree left to form by chance is
//! also deep between arbitrary nodes. So the tree is built on purpose:
//!
//! - the live member with the lowest position on ring 0 is the *root*; every
//!   `beacon_interval` it floods a tiny beacon over the overlay;
//! - each node takes the neighbour that brought it a round's beacon first as
//!   its *parent* and tells it so (keeping its old parent if that one's
//!   beacon arrives within a moment from as near the root, so rounds do not
//!   churn the tree);
//! - the tree is the parents and children: a breadth-first tree from the
//!   root, so any two nodes are at most about `2·log(N)` hops apart. Tree
//!   links are never pruned; a node that loses its parent takes a neighbour
//!   closer to the root at once.
//!
//! An origin pushes its envelopes to all its overlay neighbours, so they
//! enter the tree at once in several places (a handful of duplicates in
//! the whole cluster per message). Membership news and envelopes are also
//! announced lazily for repair; node states are not, since anti-entropy
//! repairs them.

use super::hash::{StableMap, StableSet};
use super::recent::RecentIds;
use crate::cluster::protocol::{Lane, MsgId, Payload, TreeMsg};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tree timings and limits.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// How often the root floods a beacon (and so how soon the tree heals
    /// after a root or a parent is lost without a word).
    pub beacon_interval: Duration,
    /// How long a node waits for its old parent's beacon before switching
    /// to the neighbour whose beacon came first.
    pub switch_grace: Duration,
    /// How long after an id is announced the message may still arrive by
    /// the tree before the announcer is grafted.
    pub graft_timeout: Duration,
    /// How long a graft may take before the next announcer is asked.
    pub graft_retry: Duration,
    /// How often lazy neighbours get the ids of new messages (batched).
    pub lazy_interval: Duration,
    /// How long a message is kept to answer grafts.
    pub cache_ttl: Duration,
    /// The most payload bytes kept to answer grafts.
    pub cache_bytes: usize,
    /// How long a message id is remembered to drop duplicates.
    pub dedup_ttl: Duration,
}

/// What the tree asks the core to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TreeOut {
    Send {
        to: Arc<str>,
        msg: TreeMsg,
        lane: Lane,
    },
    /// A new message, to act on: `from` is the neighbour it came from.
    Deliver {
        id: MsgId,
        payload: Payload,
        from: Arc<str>,
        hops: u16,
    },
}

/// Which beacon round a node follows. Compared by root rank (lower wins),
/// then the root's boot, then the round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    pub root: Arc<str>,
    pub rank: u64,
    pub boot: u64,
    pub round: u64,
}

impl Round {
    fn key(&self) -> (std::cmp::Reverse<u64>, u64, u64) {
        (std::cmp::Reverse(self.rank), self.boot, self.round)
    }

    fn same(&self, other: &Round) -> bool {
        self.root == other.root && self.boot == other.boot && self.round == other.round
    }
}

struct Cached {
    payload: Payload,
    hops: u16,
    size: usize,
}

struct Missing {
    announcers: VecDeque<Arc<str>>,
    deadline: Instant,
}

/// Counters for the debug dump and the simulator.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TreeCounters {
    pub delivered: u64,
    pub duplicates: u64,
    pub grafts_sent: u64,
    pub prunes_sent: u64,
    pub beacons_sent: u64,
    pub parent_changes: u64,
    /// Times this node lost its parent with no neighbour nearer the root.
    pub orphaned: u64,
}

/// One node's side of the broadcast tree.
pub struct BroadcastTree {
    config: TreeConfig,
    me: Arc<str>,
    /// Overlay neighbours with a link.
    neighbours: StableSet<Arc<str>>,
    parent: Option<Arc<str>>,
    children: StableSet<Arc<str>>,
    /// Links made eager by a graft, until a duplicate prunes them.
    grafted: StableSet<Arc<str>>,
    /// Neighbours whose link is backed up: what this node relays goes to
    /// them lazily (ids only), and they graft what they still miss, rather
    /// than their queue shedding copies they mostly have already.
    backed_up: StableSet<Arc<str>>,
    round: Option<Round>,
    my_hops: u16,
    /// The beacon round and hops each neighbour last sent us.
    heard: StableMap<Arc<str>, (Round, u16)>,
    /// A better parent, taken at the deadline unless the old one shows up.
    switch: Option<(Arc<str>, Instant)>,
    /// This node is the root: its own round number and next beacon.
    root: Option<(u64, u64, u64, Instant)>,
    /// Ids seen lately, folded to 64 bits (a collision in a window of
    /// seconds is about as likely as a 2⁻⁶⁴ coin), to keep this small.
    seen: RecentIds,
    cache: StableMap<MsgId, Cached>,
    cache_order: VecDeque<(Instant, MsgId)>,
    cache_bytes: usize,
    missing: StableMap<MsgId, Missing>,
    graft_due: BTreeSet<(Instant, MsgId)>,
    lazy_queue: StableMap<Arc<str>, Vec<(MsgId, u16)>>,
    lazy_due: Option<Instant>,
    pub counters: TreeCounters,
}

impl BroadcastTree {
    pub fn new(me: &Arc<str>, config: TreeConfig) -> BroadcastTree {
        let dedup_ttl = config.dedup_ttl;
        BroadcastTree {
            config,
            me: me.clone(),
            neighbours: StableSet::default(),
            parent: None,
            children: StableSet::default(),
            grafted: StableSet::default(),
            backed_up: StableSet::default(),
            round: None,
            my_hops: 0,
            heard: StableMap::default(),
            switch: None,
            root: None,
            seen: RecentIds::new(dedup_ttl),
            cache: StableMap::default(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            missing: StableMap::default(),
            graft_due: BTreeSet::new(),
            lazy_queue: StableMap::default(),
            lazy_due: None,
            counters: TreeCounters::default(),
        }
    }

    pub fn parent(&self) -> Option<&Arc<str>> {
        self.parent.as_ref()
    }

    pub fn children(&self) -> usize {
        self.children.len()
    }

    pub fn is_root(&self) -> bool {
        self.root.is_some()
    }

    pub fn round(&self) -> Option<&Round> {
        self.round.as_ref()
    }

    /// Hops from the root in the current round.
    pub fn depth(&self) -> u16 {
        self.my_hops
    }

    pub fn neighbour_count(&self) -> usize {
        self.neighbours.len()
    }

    fn is_tree(&self, peer: &str) -> bool {
        self.parent.as_deref() == Some(peer) || self.children.contains(peer)
    }

    fn is_eager(&self, peer: &str) -> bool {
        self.is_tree(peer) || self.grafted.contains(peer)
    }

    /// The link to `peer` is backed up (or clear again).
    pub fn set_backed_up(&mut self, peer: &Arc<str>, yes: bool) {
        if yes {
            self.backed_up.insert(peer.clone());
        } else {
            self.backed_up.remove(peer);
        }
    }

    /// A new overlay neighbour: it learns our round at once, so a node that
    /// just joined finds a parent without waiting for the next beacon.
    pub fn neighbour_up(&mut self, peer: &Arc<str>, out: &mut Vec<TreeOut>) {
        if !self.neighbours.insert(peer.clone()) {
            return;
        }
        if let Some(round) = &self.round {
            out.push(beacon(peer, round, self.my_hops));
        }
    }

    pub fn neighbour_down(&mut self, peer: &str, out: &mut Vec<TreeOut>) {
        if !self.neighbours.remove(peer) {
            return;
        }
        self.children.remove(peer);
        self.grafted.remove(peer);
        self.backed_up.remove(peer);
        self.lazy_queue.remove(peer);
        self.heard.remove(peer);
        if self.switch.as_ref().is_some_and(|(p, _)| &**p == peer) {
            self.switch = None;
        }
        if self.parent.as_deref() == Some(peer) {
            self.parent = None;
            self.replace_parent(out);
        }
    }

    /// The parent is gone: take the neighbour nearest the root in this
    /// round (one nearer than this node cannot be below it).
    fn replace_parent(&mut self, out: &mut Vec<TreeOut>) {
        let Some(round) = &self.round else { return };
        let best = self
            .heard
            .iter()
            .filter(|(_, (r, hops))| r.same(round) && *hops < self.my_hops)
            .min_by_key(|(n, (_, hops))| (*hops, (*n).clone()))
            .map(|(n, (_, hops))| (n.clone(), *hops));
        if let Some((p, hops)) = best {
            self.my_hops = hops.saturating_add(1);
            self.set_parent(p, out);
        } else {
            self.orphan(out);
        }
    }

    /// No neighbour is known to be nearer the root. Taking one that is not
    /// could close a loop through this node's own subtree, so the round is
    /// dropped instead: the subtree drops it too (each child hears `Orphan`),
    /// and the other neighbours answer with their beacon, from which the
    /// first one is taken as in any new round.
    fn orphan(&mut self, out: &mut Vec<TreeOut>) {
        if self.root.is_some() {
            return;
        }
        self.round = None;
        self.parent = None;
        self.switch = None;
        self.counters.orphaned += 1;
        for n in &self.neighbours {
            out.push(control(n, TreeMsg::Orphan));
        }
    }

    /// A neighbour lost its way to the root.
    pub fn on_orphan(&mut self, from: &Arc<str>, out: &mut Vec<TreeOut>) {
        self.heard.remove(from);
        self.children.remove(from);
        if self.parent.as_ref() == Some(from) {
            self.parent = None;
            self.replace_parent(out);
        } else if let Some(round) = &self.round {
            if self.neighbours.contains(from) {
                out.push(beacon(from, round, self.my_hops));
            }
        }
    }

    fn set_parent(&mut self, p: Arc<str>, out: &mut Vec<TreeOut>) {
        if self.parent.as_ref() == Some(&p) {
            return;
        }
        if let Some(old) = self.parent.take() {
            if self.neighbours.contains(&old) {
                out.push(control(&old, TreeMsg::Parent { yes: false }));
            }
        }
        self.counters.parent_changes += 1;
        self.children.remove(&p);
        out.push(control(&p, TreeMsg::Parent { yes: true }));
        self.parent = Some(p);
    }

    /// A neighbour took (or left) this node as its parent.
    pub fn on_parent(&mut self, from: &Arc<str>, yes: bool) {
        if yes && self.neighbours.contains(from) {
            self.children.insert(from.clone());
        } else {
            self.children.remove(from);
        }
    }

    /// Who the root is, as this node's member table says (`rank`: its ring-0
    /// position); `boot` is this node's boot, for its own rounds.
    pub fn set_root(&mut self, root: &Arc<str>, boot: u64, now: Instant) {
        let me = *root == self.me;
        match (me, &self.root) {
            (true, None) => {
                self.root = Some((
                    super::hash::ring_position(super::hash::name_hash(root), 0),
                    boot,
                    0,
                    now,
                ))
            }
            (false, Some(_)) => self.root = None,
            _ => {}
        }
    }

    /// The root of the round we follow is no longer a member: forget the
    /// round, so the next root's beacon is taken.
    pub fn root_gone(&mut self, name: &str) {
        if self.round.as_ref().is_some_and(|r| &*r.root == name) {
            self.round = None;
        }
    }

    /// A beacon from a neighbour. `root_up`: whether the root it names is a
    /// live member here (a late beacon from a dead root is ignored).
    pub fn on_beacon(
        &mut self,
        from: &Arc<str>,
        round: Round,
        hops: u16,
        root_up: bool,
        now: Instant,
        out: &mut Vec<TreeOut>,
    ) {
        if !self.neighbours.contains(from) || !root_up {
            return;
        }
        self.heard.insert(from.clone(), (round.clone(), hops));
        if let Some((rank, ..)) = self.root {
            if round.rank >= rank {
                return;
            }
            // A root ranked before this one exists: follow it.
            self.root = None;
        }
        let newer = self.round.as_ref().is_none_or(|r| round.key() > r.key());
        if let Some(mine) = self.round.as_ref().filter(|r| round.key() < r.key()) {
            // The neighbour follows an older round (it missed a flood while
            // linking up): bring it up to date now rather than next round.
            out.push(beacon(from, mine, self.my_hops));
            return;
        }
        if newer {
            let had_parent = self.parent.is_some();
            self.round = Some(round.clone());
            self.my_hops = hops.saturating_add(1);
            self.grafted.clear();
            // Keep the old parent if it brings this round too, soon.
            if self.parent.as_ref() == Some(from) {
                self.switch = None;
            } else if had_parent {
                self.switch = Some((from.clone(), now + self.config.switch_grace));
            } else {
                self.set_parent(from.clone(), out);
            }
            for n in &self.neighbours {
                if n != from {
                    out.push(beacon(n, &round, self.my_hops));
                }
            }
        } else if self.round.as_ref().is_some_and(|r| r.same(&round))
            && self.parent.as_ref() == Some(from)
            && self.switch.is_some()
            && hops.saturating_add(1) <= self.my_hops
        {
            // The old parent brought this round too, as near the root:
            // stay, so the tree does not churn.
            self.switch = None;
        }
    }

    pub fn has_seen(&self, id: MsgId) -> bool {
        self.seen.contains(fold(id))
    }

    /// Starts a broadcast from this node. Answers false if the id was seen.
    pub fn broadcast(&mut self, id: MsgId, payload: Payload, now: Instant, out: &mut Vec<TreeOut>) -> bool {
        if !self.remember(id, now) {
            return false;
        }
        self.push(id, payload, 0, None, now, out);
        true
    }

    /// A whole message from a neighbour.
    pub fn on_gossip(
        &mut self,
        from: &Arc<str>,
        id: MsgId,
        hops: u16,
        payload: Payload,
        now: Instant,
        out: &mut Vec<TreeOut>,
    ) {
        if !self.remember(id, now) {
            self.counters.duplicates += 1;
            // A duplicate over a grafted link: that link is not needed any
            // more. (Tree links stay; an origin's first push is expected.)
            if hops > 0 && !self.is_tree(from) && self.neighbours.contains(from) {
                self.grafted.remove(from);
                self.counters.prunes_sent += 1;
                out.push(control(from, TreeMsg::Prune));
            }
            return;
        }
        if let Some(m) = self.missing.remove(&id) {
            self.graft_due.remove(&(m.deadline, id));
        }
        self.counters.delivered += 1;
        out.push(TreeOut::Deliver {
            id,
            payload: payload.clone(),
            from: from.clone(),
            hops,
        });
        self.push(id, payload, hops.saturating_add(1), Some(from.clone()), now, out);
    }

    /// A broadcast this node refused to take or pass on (a lie about a
    /// member): remembered as seen, so lazy repair does not ask for it.
    pub fn refuse(&mut self, id: MsgId, now: Instant) {
        if self.remember(id, now) {
            if let Some(m) = self.missing.remove(&id) {
                self.graft_due.remove(&(m.deadline, id));
            }
        }
    }

    /// Ids a neighbour has.
    pub fn on_ihave(&mut self, from: &Arc<str>, ids: &[(MsgId, u16)], now: Instant) {
        for (id, _hops) in ids {
            if self.seen.contains(fold(*id)) {
                continue;
            }
            let deadline = now + self.config.graft_timeout;
            let missing = self.missing.entry(*id).or_insert_with(|| {
                self.graft_due.insert((deadline, *id));
                Missing {
                    announcers: VecDeque::new(),
                    deadline,
                }
            });
            if !missing.announcers.contains(from) {
                missing.announcers.push_back(from.clone());
            }
        }
    }

    /// A neighbour asks for messages and to be pushed to eagerly.
    pub fn on_graft(&mut self, from: &Arc<str>, ids: &[MsgId], out: &mut Vec<TreeOut>) {
        if !self.is_tree(from) && self.neighbours.contains(from) {
            self.grafted.insert(from.clone());
        }
        for id in ids {
            if let Some(c) = self.cache.get(id) {
                out.push(TreeOut::Send {
                    to: from.clone(),
                    msg: TreeMsg::Gossip {
                        id: *id,
                        hops: c.hops.saturating_add(1),
                        payload: c.payload.clone(),
                    },
                    lane: c.payload.lane(),
                });
            }
        }
    }

    pub fn on_prune(&mut self, from: &Arc<str>) {
        self.grafted.remove(from);
    }

    /// Beacons, parent switches, grafts for overdue ids, lazy batches.
    /// (Expiry waits for [`BroadcastTree::expire`], run once a second: exact
    /// deadlines would wake the node once per cached message.)
    pub fn tick(&mut self, now: Instant, out: &mut Vec<TreeOut>) {
        if let Some((rank, boot, round, next)) = self.root {
            if now >= next {
                let round = Round {
                    root: self.me.clone(),
                    rank,
                    boot,
                    round: round + 1,
                };
                self.root = Some((rank, boot, round.round, now + self.config.beacon_interval));
                self.round = Some(round.clone());
                self.my_hops = 0;
                self.grafted.clear();
                if let Some(old) = self.parent.take() {
                    out.push(control(&old, TreeMsg::Parent { yes: false }));
                }
                self.counters.beacons_sent += 1;
                for n in &self.neighbours {
                    out.push(beacon(n, &round, 0));
                }
            }
        }
        if self.switch.as_ref().is_some_and(|(_, at)| *at <= now) {
            if let Some((p, _)) = self.switch.take() {
                self.set_parent(p, out);
            }
        }
        if self.graft_due.first().is_some_and(|(at, _)| *at <= now) {
            self.graft_overdue(now, out);
        }
        if self.lazy_due.is_some_and(|due| now >= due) {
            self.lazy_due = None;
            for (to, ids) in self.lazy_queue.drain() {
                if !ids.is_empty() {
                    out.push(TreeOut::Send {
                        to: to.clone(),
                        msg: TreeMsg::IHave { ids },
                        lane: Lane::Bulk,
                    });
                }
            }
        }
    }

    fn graft_overdue(&mut self, now: Instant, out: &mut Vec<TreeOut>) {
        let mut overdue = Vec::new();
        while let Some(first) = self.graft_due.first().copied() {
            if first.0 > now {
                break;
            }
            self.graft_due.pop_first();
            overdue.push(first.1);
        }
        let mut grafts: StableMap<Arc<str>, Vec<MsgId>> = StableMap::default();
        for id in overdue {
            let Some(missing) = self.missing.get_mut(&id) else {
                continue;
            };
            let next = loop {
                match missing.announcers.pop_front() {
                    Some(peer) if self.neighbours.contains(&peer) => break Some(peer),
                    Some(_) => continue,
                    None => break None,
                }
            };
            match next {
                Some(peer) => {
                    missing.deadline = now + self.config.graft_retry;
                    self.graft_due.insert((missing.deadline, id));
                    grafts.entry(peer).or_default().push(id);
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        for (peer, ids) in grafts {
            self.counters.grafts_sent += 1;
            if !self.is_tree(&peer) {
                self.grafted.insert(peer.clone());
            }
            out.push(control(&peer, TreeMsg::Graft { ids }));
        }
    }

    /// The earliest time [`BroadcastTree::tick`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.graft_due.first().map(|(at, _)| *at),
            self.lazy_due,
            self.switch.as_ref().map(|(_, at)| *at),
            self.root.map(|(.., next)| next),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn remember(&mut self, id: MsgId, now: Instant) -> bool {
        let key = fold(id);
        self.seen.insert(key, now)
    }

    fn push(
        &mut self,
        id: MsgId,
        payload: Payload,
        hops: u16,
        from: Option<Arc<str>>,
        now: Instant,
        out: &mut Vec<TreeOut>,
    ) {
        let lane = payload.lane();
        // An origin pushes envelopes to every neighbour, so they enter the
        // tree in several places at once.
        let flood = hops == 0 && matches!(payload, Payload::Envelope(_));
        let announce = payload.announced();
        for peer in &self.neighbours {
            if Some(peer) == from.as_ref() {
                continue;
            }
            let relay_lazily = announce && lane == Lane::Bulk && self.backed_up.contains(peer);
            if flood || (self.is_eager(peer) && !relay_lazily) {
                out.push(TreeOut::Send {
                    to: peer.clone(),
                    msg: TreeMsg::Gossip {
                        id,
                        hops,
                        payload: payload.clone(),
                    },
                    lane,
                });
            } else if announce {
                self.lazy_queue.entry(peer.clone()).or_default().push((id, hops));
            }
        }
        if !self.lazy_queue.is_empty() && self.lazy_due.is_none() {
            self.lazy_due = Some(now + self.config.lazy_interval);
        }
        if !announce {
            // Nobody will graft it from us: no need to keep it.
            return;
        }
        let size = payload_size(&payload);
        self.cache_bytes += size;
        self.cache.insert(id, Cached { payload, hops, size });
        self.cache_order.push_back((now, id));
        while self.cache_bytes > self.config.cache_bytes {
            let Some((_, old)) = self.cache_order.pop_front() else {
                break;
            };
            self.uncache(old);
        }
    }

    fn uncache(&mut self, id: MsgId) {
        if let Some(c) = self.cache.remove(&id) {
            self.cache_bytes -= c.size;
        }
    }

    /// Forgets cached messages and ids past their time.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, id)) = self.cache_order.front().copied() {
            if now.saturating_duration_since(at) < self.config.cache_ttl {
                break;
            }
            self.cache_order.pop_front();
            self.uncache(id);
        }
        self.seen.expire(now);
        if self.cache_order.capacity() > 4 * self.cache_order.len() + 64 {
            self.cache_order.shrink_to_fit();
            self.cache.shrink_to_fit();
        }
    }

    /// Roughly the bytes held (ids, cached payloads, queues).
    pub fn heap_bytes(&self) -> usize {
        self.seen.heap_bytes()
            + self.cache_bytes
            + self.cache.len() * 96
            + self.missing.len() * 64
            + self.heard.len() * 96
    }
}

fn fold(id: MsgId) -> u64 {
    (id >> 64) as u64 ^ id as u64
}

fn control(to: &Arc<str>, msg: TreeMsg) -> TreeOut {
    TreeOut::Send {
        to: to.clone(),
        msg,
        lane: Lane::Control,
    }
}

fn beacon(to: &Arc<str>, round: &Round, hops: u16) -> TreeOut {
    control(
        to,
        TreeMsg::Beacon {
            root: round.root.clone(),
            rank: round.rank,
            boot: round.boot,
            round: round.round,
            hops,
        },
    )
}

fn payload_size(payload: &Payload) -> usize {
    match payload {
        Payload::Envelope(b) => b.len(),
        Payload::State(s) => s.data.len() + 48,
        Payload::Update { .. } => 96,
        Payload::Entry { entry, .. } => entry.body.len() + entry.key.len() + 48,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config() -> TreeConfig {
        TreeConfig {
            beacon_interval: Duration::from_secs(5),
            switch_grace: Duration::from_millis(50),
            graft_timeout: Duration::from_millis(100),
            graft_retry: Duration::from_millis(50),
            lazy_interval: Duration::from_millis(20),
            cache_ttl: Duration::from_secs(10),
            cache_bytes: 1 << 20,
            dedup_ttl: Duration::from_secs(30),
        }
    }

    fn name(n: &str) -> Arc<str> {
        Arc::from(n)
    }

    fn round(n: u64) -> Round {
        Round {
            root: name("root"),
            rank: 1,
            boot: 1,
            round: n,
        }
    }

    fn envelope() -> Payload {
        Payload::Envelope(Bytes::from_static(b"{}"))
    }

    fn sends(out: &[TreeOut]) -> Vec<(String, TreeMsg)> {
        out.iter()
            .filter_map(|o| match o {
                TreeOut::Send { to, msg, .. } => Some((to.to_string(), msg.clone())),
                _ => None,
            })
            .collect()
    }

    fn tree_with(neighbours: &[&str]) -> BroadcastTree {
        let mut tree = BroadcastTree::new(&name("me"), config());
        let mut out = Vec::new();
        for n in neighbours {
            tree.neighbour_up(&name(n), &mut out);
        }
        tree
    }

    #[test]
    fn the_first_beacon_picks_the_parent_and_is_passed_on() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["a", "b", "c"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("a"), round(1), 2, true, t0, &mut out);
        assert_eq!(tree.parent().map(|p| &**p), Some("a"));
        assert_eq!(tree.depth(), 3);
        let s = sends(&out);
        assert!(s.contains(&("a".into(), TreeMsg::Parent { yes: true })));
        let passed: Vec<&String> = s
            .iter()
            .filter(|(_, m)| matches!(m, TreeMsg::Beacon { .. }))
            .map(|(to, _)| to)
            .collect();
        assert_eq!(passed.len(), 2, "to b and c, not back to a");
        // A later copy of the same round changes nothing.
        out.clear();
        tree.on_beacon(&name("b"), round(1), 1, true, t0, &mut out);
        assert_eq!(tree.parent().map(|p| &**p), Some("a"));
        assert!(out.is_empty());
        // A neighbour on an older round is brought up to date.
        tree.on_beacon(&name("c"), round(0), 1, true, t0, &mut out);
        assert!(matches!(&sends(&out)[..], [(to, TreeMsg::Beacon { round: 1, hops: 3, .. })] if to == "c"));
        out.clear();
        // A beacon from a root that is not a member here is ignored.
        tree.on_beacon(&name("b"), round(9), 1, false, t0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_new_round_keeps_the_old_parent_if_it_is_about_as_quick() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["a", "b"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("a"), round(1), 1, true, t0, &mut out);
        out.clear();
        // Round 2 comes from b first, then from a within the grace period.
        tree.on_beacon(&name("b"), round(2), 1, true, t0, &mut out);
        tree.on_beacon(&name("a"), round(2), 1, true, t0 + Duration::from_millis(10), &mut out);
        tree.tick(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(tree.parent().map(|p| &**p), Some("a"), "no churn");
        assert_eq!(tree.counters.parent_changes, 1);
        // Round 3 only from b: switch after the grace period.
        tree.on_beacon(&name("b"), round(3), 1, true, t0 + Duration::from_secs(1), &mut out);
        tree.tick(t0 + Duration::from_millis(1100), &mut out);
        assert_eq!(tree.parent().map(|p| &**p), Some("b"));
        assert!(sends(&out).contains(&("a".into(), TreeMsg::Parent { yes: false })));
    }

    #[test]
    fn a_lost_parent_is_replaced_by_a_neighbour_nearer_the_root() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["a", "b", "c"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("a"), round(1), 1, true, t0, &mut out);
        tree.on_beacon(&name("b"), round(1), 1, true, t0, &mut out);
        tree.on_beacon(&name("c"), round(1), 5, true, t0, &mut out);
        out.clear();
        tree.neighbour_down("a", &mut out);
        assert_eq!(
            tree.parent().map(|p| &**p),
            Some("b"),
            "c is farther than this node: maybe below it"
        );
        assert!(sends(&out).contains(&("b".into(), TreeMsg::Parent { yes: true })));
    }

    #[test]
    fn a_node_with_no_way_to_the_root_drops_the_round_and_its_subtree_follows() {
        let t0 = Instant::now();
        // "me" hangs below a (hops 1 → me at 2); c is below me.
        let mut tree = tree_with(&["a", "b", "c"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("a"), round(1), 1, true, t0, &mut out);
        tree.on_beacon(&name("b"), round(1), 4, true, t0, &mut out);
        tree.on_parent(&name("c"), true);
        out.clear();
        tree.neighbour_down("a", &mut out);
        assert_eq!(
            tree.parent(),
            None,
            "b is farther from the root: it may be below this node"
        );
        assert!(tree.round().is_none());
        let told: Vec<String> = sends(&out)
            .into_iter()
            .filter(|(_, m)| *m == TreeMsg::Orphan)
            .map(|(to, _)| to)
            .collect();
        assert_eq!(told.len(), 2, "b and c hear it: {told:?}");
        // b, not below this node, answers with its beacon: taken at once.
        out.clear();
        tree.on_beacon(&name("b"), round(1), 1, true, t0, &mut out);
        assert_eq!(tree.parent().map(|p| &**p), Some("b"));

        // As the child of an orphan, a node looks for another parent; as
        // anyone else's neighbour, it answers with its beacon.
        let mut child = tree_with(&["p", "q", "r"]);
        child.on_beacon(&name("p"), round(1), 1, true, t0, &mut out);
        child.on_beacon(&name("q"), round(1), 0, true, t0, &mut out);
        out.clear();
        child.on_orphan(&name("p"), &mut out);
        assert_eq!(child.parent().map(|p| &**p), Some("q"));
        out.clear();
        child.on_orphan(&name("r"), &mut out);
        assert!(matches!(&sends(&out)[..], [(to, TreeMsg::Beacon { round: 1, hops: 1, .. })] if to == "r"));
    }

    #[test]
    fn messages_follow_tree_links_and_ids_go_to_the_others() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["p", "kid", "other"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("p"), round(1), 0, true, t0, &mut out);
        tree.on_parent(&name("kid"), true);
        out.clear();
        tree.on_gossip(&name("p"), 1, 3, envelope(), t0, &mut out);
        assert!(matches!(out[0], TreeOut::Deliver { id: 1, .. }));
        let pushed: Vec<String> = sends(&out).into_iter().map(|(to, _)| to).collect();
        assert_eq!(pushed, vec!["kid".to_string()], "down the tree only");
        out.clear();
        tree.tick(t0 + Duration::from_millis(25), &mut out);
        assert_eq!(
            sends(&out),
            vec![("other".into(), TreeMsg::IHave { ids: vec![(1, 4)] })]
        );
        // A duplicate over a tree link is not pruned.
        out.clear();
        tree.on_gossip(&name("kid"), 1, 5, envelope(), t0, &mut out);
        assert!(out.is_empty());
        // This node's own envelope goes to every neighbour at once.
        tree.broadcast(2, envelope(), t0, &mut out);
        assert_eq!(sends(&out).len(), 3);
    }

    #[test]
    fn a_backed_up_child_gets_relayed_envelopes_by_id_and_may_graft_them() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["p", "kid", "other"]);
        let mut out = Vec::new();
        tree.on_beacon(&name("p"), round(1), 0, true, t0, &mut out);
        tree.on_parent(&name("kid"), true);
        tree.set_backed_up(&name("kid"), true);
        out.clear();
        tree.on_gossip(&name("p"), 1, 3, envelope(), t0, &mut out);
        assert!(sends(&out).is_empty(), "nothing whole for the backed-up child");
        out.clear();
        tree.tick(t0 + Duration::from_millis(25), &mut out);
        let mut lazy = sends(&out);
        lazy.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            lazy,
            vec![
                ("kid".into(), TreeMsg::IHave { ids: vec![(1, 4)] }),
                ("other".into(), TreeMsg::IHave { ids: vec![(1, 4)] }),
            ]
        );
        // It grafts what it missed, and gets it whole.
        out.clear();
        tree.on_graft(&name("kid"), &[1], &mut out);
        assert!(matches!(&sends(&out)[..], [(to, TreeMsg::Gossip { id: 1, .. })] if to == "kid"));
        // This node's own envelopes still go to it, and once clear, relays too.
        out.clear();
        tree.broadcast(2, envelope(), t0, &mut out);
        assert_eq!(sends(&out).len(), 3);
        tree.set_backed_up(&name("kid"), false);
        out.clear();
        tree.on_gossip(&name("p"), 3, 3, envelope(), t0, &mut out);
        let pushed: Vec<String> = sends(&out).into_iter().map(|(to, _)| to).collect();
        assert_eq!(pushed, vec!["kid".to_string()]);
    }

    #[test]
    fn a_missing_message_is_grafted_and_the_grafted_link_pruned_on_a_duplicate() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["a", "b"]);
        let mut out = Vec::new();
        tree.on_ihave(&name("a"), &[(7, 2)], t0);
        tree.on_ihave(&name("b"), &[(7, 3)], t0);
        tree.tick(t0 + Duration::from_millis(50), &mut out);
        assert!(out.is_empty(), "the message may still come by the tree");
        tree.tick(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(sends(&out), vec![("a".into(), TreeMsg::Graft { ids: vec![7] })]);
        out.clear();
        tree.tick(t0 + Duration::from_millis(150), &mut out);
        assert_eq!(sends(&out), vec![("b".into(), TreeMsg::Graft { ids: vec![7] })]);
        out.clear();
        tree.on_gossip(&name("b"), 7, 4, envelope(), t0, &mut out);
        assert!(matches!(out[0], TreeOut::Deliver { id: 7, .. }));
        out.clear();
        tree.on_gossip(&name("a"), 7, 3, envelope(), t0, &mut out);
        assert_eq!(sends(&out), vec![("a".into(), TreeMsg::Prune)]);
    }

    #[test]
    fn the_root_beacons_and_steps_down_for_a_better_root() {
        let t0 = Instant::now();
        let mut tree = tree_with(&["a"]);
        tree.set_root(&name("me"), 42, t0);
        assert!(tree.is_root());
        let mut out = Vec::new();
        tree.tick(t0, &mut out);
        assert!(matches!(&sends(&out)[..], [(to, TreeMsg::Beacon { round: 1, hops: 0, .. })] if to == "a"));
        let mine = tree.round().unwrap().rank;
        out.clear();
        let better = Round {
            root: name("zz"),
            rank: mine.saturating_sub(1),
            boot: 1,
            round: 1,
        };
        tree.on_beacon(&name("a"), better, 0, true, t0, &mut out);
        assert!(!tree.is_root());
        assert_eq!(tree.parent().map(|p| &**p), Some("a"));
    }
}
