//! The in-test network: cores joined by instant links under a mocked
//! clock, and helpers to read what they sent.

use crate::cluster::core::*;
use crate::cluster::protocol::{Items, Record, SyncMsg};
use std::collections::{BTreeMap, HashMap};

/// Cores joined by instant links.
pub(super) struct Net {
    pub(super) cores: Vec<ClusterCore>,
    /// Which cores run.
    pub(super) up: Vec<bool>,
    /// Which cores are starved: they run nothing and read nothing, but
    /// their host accepts connections and acks (see `stall`).
    pub(super) stalled: Vec<bool>,
    /// Dials accepted by a stalled core's host, waiting for its handshake:
    /// (dialer, address, stalled core).
    pub(super) waiting_dials: Vec<(usize, SocketAddr, usize)>,
    pub(super) now: Instant,
    /// Our end of a link → (peer core, peer's end).
    pub(super) links: HashMap<LinkId, (usize, usize, LinkId)>,
    pub(super) next: LinkId,
    /// Every action each core took, for assertions.
    pub(super) log: Vec<(usize, Action)>,
    /// Each core's identity key, if it has one: its links prove it, as a
    /// handshake would.
    pub(super) keys: Vec<Option<NodePublicKey>>,
}

impl Net {
    pub(super) fn new() -> Net {
        Net {
            cores: Vec::new(),
            up: Vec::new(),
            stalled: Vec::new(),
            waiting_dials: Vec::new(),
            now: Instant::now(),
            links: HashMap::new(),
            next: 1,
            log: Vec::new(),
            keys: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, name: &str, port: u16, boot: u64) -> usize {
        self.add_configured(name, port, boot, ClusterConfig::local())
    }

    /// [`Self::add`] with timings and limits of its own.
    pub(super) fn add_configured(&mut self, name: &str, port: u16, boot: u64, config: ClusterConfig) -> usize {
        let id = NodeId::new(name, addr(port), boot, BTreeMap::new());
        let i = self.cores.len();
        self.cores
            .push(ClusterCore::new("test", id, config, i as u64, self.now));
        self.up.push(true);
        self.stalled.push(false);
        self.keys.push(None);
        i
    }

    /// [`Self::add`] with an identity key of its own.
    pub(super) fn add_keyed(&mut self, name: &str, port: u16, boot: u64) -> usize {
        let i = self.add(name, port, boot);
        let key = std::sync::Arc::new(crate::cluster::node_key::NodeKey::generate());
        self.keys[i] = Some(key.public());
        self.cores[i].set_identity(key);
        i
    }

    pub(super) fn connect(&mut self, i: usize, j: usize, addr: SocketAddr) {
        let (a, b) = (self.next, self.next + 1);
        self.next += 2;
        self.links.insert(a, (i, j, b));
        self.links.insert(b, (j, i, a));
        let from = self.cores[i].me().addr;
        let now = self.now;
        self.cores[j].link_up(b, Direction::Inbound, from, now);
        self.cores[i].link_up(a, Direction::Outbound, addr, now);
        if let Some(key) = self.keys[i].and_then(|k| k.noise_static()) {
            self.cores[j].link_proven(b, key);
        }
        if let Some(key) = self.keys[j].and_then(|k| k.noise_static()) {
            self.cores[i].link_proven(a, key);
        }
    }

    /// Core `i` gets no CPU until `resume`, and every link to it closes
    /// (as a busy seed hangs up after answering joins), so its observers
    /// must dial it to probe it.
    pub(super) fn stall(&mut self, i: usize) {
        self.stalled[i] = true;
        let theirs: Vec<(usize, LinkId)> = self
            .links
            .iter()
            .filter(|(_, l)| l.1 == i)
            .map(|(id, l)| (l.0, *id))
            .collect();
        for (j, link) in theirs {
            if let Some((_, _, peer)) = self.links.remove(&link) {
                self.links.remove(&peer);
                self.cores[j].link_down(link, "peer closed the link", self.now);
            }
        }
        self.settle();
    }

    /// Core `i` runs again and finishes the handshakes that waited.
    pub(super) fn resume(&mut self, i: usize) {
        self.stalled[i] = false;
        for (dialer, addr, j) in std::mem::take(&mut self.waiting_dials) {
            self.connect(dialer, j, addr);
        }
        self.settle();
    }

    pub(super) fn core_at(&self, a: SocketAddr) -> Option<usize> {
        (0..self.cores.len()).find(|i| self.up[*i] && self.cores[*i].me().addr == a)
    }

    /// Delivers every action until nothing moves.
    pub(super) fn settle(&mut self) {
        self.settle_watching(|_| {});
    }

    /// As [`Self::settle`], calling `watch` after every action carried:
    /// for states that must hold at every step, not only at the end.
    pub(super) fn settle_watching(&mut self, watch: impl Fn(&Net)) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.cores.len() {
                while let Some(action) = self.cores[i].poll() {
                    moved = true;
                    self.log.push((i, action.clone()));
                    self.carry(i, action);
                    watch(self);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    pub(super) fn carry(&mut self, i: usize, action: Action) {
        let now = self.now;
        match action {
            Action::Dial { addr } => match self.core_at(addr) {
                Some(j) if self.stalled[j] => {
                    self.cores[i].dial_connected(addr, now);
                    self.waiting_dials.push((i, addr, j));
                }
                Some(j) => self.connect(i, j, addr),
                None => self.cores[i].dial_failed(addr, "connection refused", now),
            },
            Action::CheckHost { link, name, .. } => {
                let answered = self.links.get(&link).is_some_and(|&(_, j, _)| self.up[j]);
                self.cores[i].host_checked(&name, answered, now);
            }
            Action::Send { link, frame, .. } => {
                if let Some(&(_, j, peer)) = self.links.get(&link) {
                    if self.up[j] && !self.stalled[j] {
                        // Through the codec, as on a real link.
                        let frame = Frame::decode(frame.encode()).expect("frames decode");
                        self.cores[j].frame(peer, frame, now);
                    }
                }
            }
            Action::Close { link, .. } => {
                if let Some((_, j, peer)) = self.links.remove(&link) {
                    self.links.remove(&peer);
                    if self.up[j] {
                        self.cores[j].link_down(peer, "peer closed the link", now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Moves the clock in small steps, ticking every core.
    pub(super) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            for i in 0..self.cores.len() {
                if self.up[i] && !self.stalled[i] {
                    self.cores[i].tick(self.now);
                }
            }
            self.settle();
        }
    }

    pub(super) fn join(&mut self, i: usize, j: usize) {
        let a = self.cores[j].me().addr;
        self.cores[i].join(a, self.now);
        self.settle();
    }

    /// Kills core `i`: its links close, as its kernel would.
    pub(super) fn kill(&mut self, i: usize) {
        self.up[i] = false;
        let mine: Vec<LinkId> = self.links.iter().filter(|(_, l)| l.0 == i).map(|(id, _)| *id).collect();
        for link in mine {
            if let Some((_, j, peer)) = self.links.remove(&link) {
                self.links.remove(&peer);
                if self.up[j] {
                    self.cores[j].link_down(peer, "peer closed the link", self.now);
                }
            }
        }
        self.settle();
    }

    pub(super) fn status(&self, observer: usize, name: &str) -> Option<Status> {
        self.cores[observer].member(name).map(|m| m.status)
    }

    pub(super) fn joined(&self, i: usize) -> Vec<&Result<Arc<str>, JoinError>> {
        self.log
            .iter()
            .filter(|(c, _)| *c == i)
            .filter_map(|(_, a)| match a {
                Action::Joined { result, .. } => Some(result),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// The messages among `actions` sent on `link`.
pub(super) fn sent_on(actions: &[Action], link: LinkId) -> Vec<Msg> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                link: l,
                frame: Frame::Msgs(msgs),
                ..
            } if *l == link => Some(msgs.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

pub(super) fn drain(core: &mut ClusterCore) -> Vec<Action> {
    std::iter::from_fn(|| core.poll()).collect()
}

/// Member records among `msgs`: join tables, and those a sync carries.
pub(super) fn records_sent(msgs: &[Msg]) -> Vec<Record> {
    msgs.iter()
        .flat_map(|m| match m {
            Msg::Link(LinkMsg::JoinTable { records })
            | Msg::Sync(SyncMsg::Items {
                items: Items::Records(records),
                ..
            })
            | Msg::Sync(SyncMsg::Differ {
                have: Items::Records(records),
                ..
            }) => records.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// Fills core `i`'s links up to its cap with inbound connections that never
/// say hello (and are never timed out), as a seed's are in a mass start.
pub(super) fn fill_links(net: &mut Net, i: usize) {
    net.cores[i].config.hello_timeout = Duration::from_secs(3600);
    let mut fake = 1_000_000;
    while net.cores[i].link_count() < net.cores[i].config.link_cap {
        let now = net.now;
        net.cores[i].link_up(fake, Direction::Inbound, addr(40_000 + fake as u16 % 1000), now);
        fake += 1;
    }
    net.settle();
}

/// Digests core `i` sent in `log[from..]`.
pub(super) fn digests_sent(net: &Net, i: usize, from: usize) -> usize {
    net.log[from..]
        .iter()
        .filter(|(c, act)| {
            *c == i
                && matches!(act, Action::Send { frame: Frame::Msgs(msgs), .. }
                    if msgs.iter().any(|m| matches!(m, Msg::Sync(SyncMsg::Digest { .. }))))
        })
        .count()
}

/// Hands `msgs` to node `to` as if its peer at the other end of some link
/// had sent them: a peer that holds the cluster key, and lies.
pub(super) fn inject(net: &mut Net, to: usize, msgs: Vec<crate::cluster::protocol::Msg>) {
    let link = *net.links.iter().find(|(_, l)| l.1 == to).map(|(_, l)| &l.2).unwrap();
    let now = net.now;
    net.cores[to].frame(link, crate::cluster::protocol::Frame::Msgs(msgs), now);
    net.settle();
}
