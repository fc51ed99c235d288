//! The simulator: many nodes' [`ClusterCore`]s — the same code a node runs —
//! on a virtual network under a virtual clock, in one thread.
//!
//! The network is TCP-like, since that is what carries the cluster:
//!
//! - every link has its own one-way latency, drawn from a range when it
//!   opens (plus a little jitter per frame), and frames on one link arrive
//!   in order;
//! - *loss* does not lose a frame: like TCP, it retransmits it after a
//!   retransmission timeout (200 ms, doubling), and later frames on the link
//!   wait behind it;
//! - a dial takes a TCP connect and a Noise handshake (about five one-way
//!   latencies); to a process that died on a live host it is refused after a
//!   round trip; to a host that is gone or cut off it times out;
//! - a *partition* holds frames on links that cross it until it heals (TCP
//!   would keep retransmitting them);
//! - a *reset* crash closes the process's links (its kernel says so), a
//!   *silent* crash takes the whole host away without a word.
//!
//! Each node has a CPU: processing a frame or a timer takes time (more on a
//! node made `slow`), frames wait in a queue while it is busy, and control
//! frames (probes, membership) are served before bulk ones, as the node's
//! link queues do.

pub mod liar;
pub mod measure;
pub mod scenario;
pub mod table;

use crate::cluster::core::hash::{StableMap, StableSet};
use crate::cluster::core::keyed::AnyEntry;
use crate::cluster::core::{Action, Change, ClusterCore, Direction, LinkId};
use crate::cluster::node_key::NodeKey;
use crate::cluster::protocol::{Frame, Lane, Msg, MsgId, SET_DEPLOYMENTS};
use crate::cluster::{ClusterConfig, NodeId};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the virtual network and CPUs behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub cluster: ClusterConfig,
    /// One-way latency, drawn uniformly from this range per frame.
    pub latency: (Duration, Duration),
    /// The chance that a frame (or a dial's packet) needs a retransmission.
    pub loss: f64,
    /// TCP's retransmission timeout (doubles on each further loss).
    pub rto: Duration,
    /// CPU time to process one frame, one message in it, one KiB of it.
    pub cost_per_frame: Duration,
    pub cost_per_msg: Duration,
    pub cost_per_kib: Duration,
    /// CPU time of one timer wake-up.
    pub cost_per_tick: Duration,
    pub seed: u64,
    /// Every node has an identity key, its links prove it, and it signs its
    /// own member record, as real nodes do. Off by default: each node then
    /// checks every other's proof once, which costs real CPU at scale.
    pub keyed: bool,
}

impl SimConfig {
    /// A LAN: 0.5–1.5 ms one way, no loss, a fast CPU.
    pub fn lan(seed: u64) -> SimConfig {
        SimConfig {
            cluster: ClusterConfig::lan(),
            latency: (Duration::from_micros(500), Duration::from_micros(1500)),
            loss: 0.0,
            rto: Duration::from_millis(200),
            cost_per_frame: Duration::from_micros(20),
            cost_per_msg: Duration::from_micros(2),
            cost_per_kib: Duration::from_micros(2),
            cost_per_tick: Duration::from_micros(5),
            seed,
            keyed: false,
        }
    }

    pub fn mean_latency(&self) -> Duration {
        (self.latency.0 + self.latency.1) / 2
    }
}

/// How a node crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The process dies; its host closes its links and refuses dials.
    Reset,
    /// The host is gone: no word, frames vanish, dials time out.
    Silent,
}

/// Traffic and load of one node.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct NodeStats {
    pub frames_out: u64,
    pub frames_in: u64,
    pub msgs_out: u64,
    pub msgs_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub max_links: usize,
    /// The longest a frame waited for this node's CPU.
    pub max_queue_delay: Duration,
}

/// A membership change one node saw (recorded for watched members only).
#[derive(Debug, Clone)]
pub struct Seen {
    pub observer: usize,
    pub member: String,
    pub change: Change,
    pub at: Duration,
}

enum Work {
    Up {
        link: LinkId,
        direction: Direction,
        remote: SocketAddr,
        /// The peer's handshake static key, when nodes are keyed.
        proven: Option<[u8; 32]>,
    },
    Frame {
        link: LinkId,
        frame: Frame,
        bytes: usize,
    },
    Down {
        link: LinkId,
    },
    DialFailed {
        addr: SocketAddr,
        reason: &'static str,
    },
    Tick,
}

impl Work {
    fn lane(&self) -> Lane {
        match self {
            Work::Frame {
                frame: Frame::Msgs(msgs),
                ..
            } if msgs.iter().any(|m| m.lane() == Lane::Bulk) => Lane::Bulk,
            Work::Frame {
                frame: Frame::Direct(_),
                ..
            } => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

/// One simulated node.
pub struct SimNode {
    pub core: ClusterCore,
    pub name: String,
    pub addr: SocketAddr,
    /// Its identity key, when nodes are keyed; a restart keeps it, as a
    /// node keeps `node.key` in its data dir.
    pub key: Option<std::sync::Arc<NodeKey>>,
    /// The process runs.
    pub up: bool,
    /// The host answers (false after a silent crash).
    pub host_up: bool,
    /// CPU cost multiplier (1.0 is normal).
    pub slow: f64,
    /// Partition group: nodes in different groups cannot reach each other.
    pub group: u32,
    pub stats: NodeStats,
    /// Timer wake-ups handled.
    pub ticks: u64,
    busy_until: Duration,
    control: VecDeque<(Duration, Work)>,
    bulk: VecDeque<(Duration, Work)>,
    processing: bool,
    tick_at: Option<Duration>,
    /// Which boot of the node this is; events of older boots are dropped.
    generation: u32,
}

struct LinkEnd {
    node: usize,
    generation: u32,
    peer: usize,
    peer_link: LinkId,
    open: bool,
    /// This link's one-way latency.
    latency: Duration,
    /// When the last frame on this direction arrives (frames keep order).
    last_arrival: Duration,
    /// Frames held by a partition.
    held: Vec<(Frame, usize)>,
}

enum Event {
    Arrive { node: usize, generation: u32, work: Work },
    Process { node: usize, generation: u32 },
    Tick { node: usize, generation: u32, at: Duration },
}

struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A delivery of a broadcast envelope.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub node: usize,
    pub id: MsgId,
    pub at: Duration,
    /// Links it crossed.
    pub hops: u16,
}

/// The simulated cluster.
pub struct Sim {
    pub config: SimConfig,
    pub nodes: Vec<SimNode>,
    base: Instant,
    now: Duration,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    links: StableMap<LinkId, LinkEnd>,
    next_link: LinkId,
    by_addr: StableMap<SocketAddr, usize>,
    by_name: StableMap<String, usize>,
    rng: SmallRng,
    /// Members whose changes are recorded in `seen`.
    pub watch: StableSet<String>,
    pub seen: Vec<Seen>,
    /// Envelope deliveries (broadcast and direct), in order.
    pub deliveries: Vec<Delivery>,
    /// `dead` verdicts about a node whose process ran and that the observer
    /// could reach: the false alarms.
    pub false_deaths: u64,
    pub suspicions: u64,
    pub events: u64,
    /// Events by kind: arrivals, CPU turns, timer wake-ups.
    pub event_kinds: [u64; 3],
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            nodes: Vec::new(),
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            links: StableMap::default(),
            next_link: 1,
            by_addr: StableMap::default(),
            by_name: StableMap::default(),
            watch: StableSet::default(),
            seen: Vec::new(),
            deliveries: Vec::new(),
            false_deaths: 0,
            suspicions: 0,
            events: 0,
            event_kinds: [0; 3],
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Adds a node named `name` (started now) and answers its index.
    pub fn add_node(&mut self, name: &str) -> usize {
        let i = self.nodes.len();
        let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946));
        self.add_node_at(name, addr)
    }

    /// Adds a node at `addr`: a second process of a name, or a restart.
    pub fn add_node_at(&mut self, name: &str, addr: SocketAddr) -> usize {
        let i = self.nodes.len();
        let boot = 1_700_000_000_000 + self.now.as_millis() as u64 + i as u64;
        let id = NodeId::new(name, addr, boot, Default::default());
        let (core, key) = self.new_core(id, None);
        self.nodes.push(SimNode {
            core,
            name: name.to_string(),
            addr,
            key,
            up: true,
            host_up: true,
            slow: 1.0,
            group: 0,
            stats: NodeStats::default(),
            ticks: 0,
            busy_until: self.now,
            control: VecDeque::new(),
            bulk: VecDeque::new(),
            processing: false,
            tick_at: None,
            generation: 0,
        });
        self.by_addr.insert(addr, i);
        self.by_name.insert(name.to_string(), i);
        self.schedule_tick(i);
        i
    }

    /// Restarts node `i`'s process in place: a new boot at the same address.
    pub fn restart(&mut self, i: usize) {
        let (name, addr) = (self.nodes[i].name.clone(), self.nodes[i].addr);
        self.crash(i, Crash::Reset);
        let boot = 1_700_000_000_000 + self.now.as_millis() as u64 + i as u64 + 1;
        let kept = self.nodes[i].key.clone();
        let (core, key) = self.new_core(NodeId::new(&name, addr, boot, Default::default()), kept);
        let node = &mut self.nodes[i];
        node.core = core;
        node.key = key;
        node.up = true;
        node.host_up = true;
        node.generation += 1;
        node.control.clear();
        node.bulk.clear();
        node.processing = false;
        node.tick_at = None;
        node.busy_until = self.now;
        self.by_addr.insert(addr, i);
        self.schedule_tick(i);
    }

    /// A node's core at its start: it holds the deployments table, as a
    /// node does (its entries' bodies mean nothing here, so any is held),
    /// and, when nodes are keyed, an identity key of its own.
    fn new_core(
        &mut self,
        id: NodeId,
        key: Option<std::sync::Arc<NodeKey>>,
    ) -> (ClusterCore, Option<std::sync::Arc<NodeKey>>) {
        let seed = self.rng.random();
        let mut core = ClusterCore::new("sim", id, self.config.cluster.clone(), seed, self.instant());
        core.hold(SET_DEPLOYMENTS, Box::new(AnyEntry));
        let key = self.config.keyed.then(|| {
            let key = key.unwrap_or_else(|| std::sync::Arc::new(NodeKey::generate()));
            core.set_identity(key.clone());
            key
        });
        (core, key)
    }

    /// Node `i`'s ends of its open links.
    fn open_links_of(&self, i: usize) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, l)| l.node == i && l.open)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Sends `msgs` from node `i` to every peer it has a link with, as if
    /// its core had: a node that lies, for the liar run (see [`liar`]).
    pub fn send_from(&mut self, i: usize, msgs: Vec<Msg>) {
        let mine = self.open_links_of(i);
        let frame = Frame::Msgs(msgs);
        let bytes = frame.encoded_len();
        for link in mine {
            self.nodes[i].stats.frames_out += 1;
            self.nodes[i].stats.bytes_out += bytes as u64;
            self.transmit(link, frame.clone(), bytes);
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Node `i` joins through `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        let (now, addr) = (self.instant(), self.nodes[seed].addr);
        self.nodes[i].core.join(addr, now);
        self.drain(i);
    }

    /// Node `i` broadcasts an envelope of `size` bytes; answers its id.
    pub fn broadcast(&mut self, i: usize, size: usize) -> MsgId {
        let id: MsgId = self.rng.random();
        let mut payload = vec![b'x'; size.max(16)];
        payload[..16].copy_from_slice(&id.to_be_bytes());
        let now = self.instant();
        let _ = self.nodes[i].core.broadcast(id, Bytes::from(payload), now);
        self.drain(i);
        id
    }

    /// Node `i` publishes a state of `size` bytes.
    pub fn set_state(&mut self, i: usize, size: usize) {
        let now = self.instant();
        let _ = self.nodes[i].core.set_state(Bytes::from(vec![b's'; size]), now);
        self.drain(i);
    }

    /// Node `i` writes `key` into the deployments table with a body of
    /// `size` bytes, as a deploy does.
    pub fn write_entry(&mut self, i: usize, key: &str, size: usize) {
        let now = self.instant();
        self.nodes[i]
            .core
            .write_entry(SET_DEPLOYMENTS, key, Bytes::from(vec![b'd'; size]), None, now)
            .expect("the simulator's table admits any entry");
        self.drain(i);
    }

    /// The deployments-table entries node `i` holds.
    pub fn entries_held(&self, i: usize) -> usize {
        self.nodes[i].core.entry_count(SET_DEPLOYMENTS)
    }

    pub fn crash(&mut self, i: usize, how: Crash) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.host_up = how == Crash::Reset;
        node.control.clear();
        node.bulk.clear();
        let mine = self.open_links_of(i);
        for link in mine {
            let (peer, peer_link) = {
                let l = self.links.get_mut(&link).expect("listed");
                l.open = false;
                (l.peer, l.peer_link)
            };
            if how == Crash::Reset {
                let latency = self.latency();
                self.send_work(peer, Work::Down { link: peer_link }, self.now + latency);
            }
        }
    }

    /// Node `i`'s process stops for `d` (SIGSTOP, a long pause, a starved
    /// CPU): it reads nothing and its timers wait, while its host still
    /// acknowledges what is sent to it.
    pub fn pause(&mut self, i: usize, d: Duration) {
        let node = &mut self.nodes[i];
        node.busy_until = node.busy_until.max(self.now + d);
    }

    /// Puts each node in its group; nodes in different groups are cut off.
    pub fn partition(&mut self, groups: &[u32]) {
        for (node, g) in self.nodes.iter_mut().zip(groups) {
            node.group = *g;
        }
    }

    /// Joins every group again and lets held frames through.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        let held: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.held.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for link in held {
            let frames = std::mem::take(&mut self.links.get_mut(&link).expect("listed").held);
            for (frame, bytes) in frames {
                self.transmit(link, frame, bytes);
            }
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].host_up && self.nodes[b].host_up && self.nodes[a].group == self.nodes[b].group
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency;
        if hi <= lo {
            return lo;
        }
        lo + Duration::from_nanos(self.rng.random_range(0..(hi - lo).as_nanos() as u64))
    }

    /// Extra delay from retransmissions.
    fn retransmits(&mut self, first_rto: Duration) -> Duration {
        let mut delay = Duration::ZERO;
        let mut rto = first_rto;
        while self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
            delay += rto;
            rto *= 2;
        }
        delay
    }

    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn send_work(&mut self, node: usize, work: Work, at: Duration) {
        let generation = self.nodes[node].generation;
        self.push(at, Event::Arrive { node, generation, work });
    }

    fn schedule_tick(&mut self, i: usize) {
        let node = &self.nodes[i];
        if !node.up {
            return;
        }
        let deadline = node.core.next_deadline();
        let at = deadline.saturating_duration_since(self.base).max(self.now);
        if node.tick_at.is_some_and(|t| t <= at) {
            return;
        }
        let generation = node.generation;
        self.nodes[i].tick_at = Some(at);
        self.push(
            at,
            Event::Tick {
                node: i,
                generation,
                at,
            },
        );
    }

    /// Runs events until virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(q) = self.queue.pop().expect("peeked");
            self.now = q.at;
            self.events += 1;
            match q.event {
                Event::Arrive { node, generation, work } => {
                    self.event_kinds[0] += 1;
                    self.arrive(node, generation, work)
                }
                Event::Process { node, generation } => {
                    self.event_kinds[1] += 1;
                    self.process(node, generation)
                }
                Event::Tick { node, generation, at } => {
                    self.event_kinds[2] += 1;
                    let n = &mut self.nodes[node];
                    if n.generation == generation && n.tick_at == Some(at) {
                        n.tick_at = None;
                        self.arrive(node, generation, Work::Tick);
                    }
                }
            }
        }
        self.now = until;
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    fn arrive(&mut self, i: usize, generation: u32, work: Work) {
        let node = &mut self.nodes[i];
        if !node.up || node.generation != generation {
            return;
        }
        let queue = match work.lane() {
            Lane::Control => &mut node.control,
            Lane::Bulk => &mut node.bulk,
        };
        queue.push_back((self.now, work));
        if !node.processing {
            node.processing = true;
            let at = node.busy_until.max(self.now);
            self.push(at, Event::Process { node: i, generation });
        }
    }

    fn process(&mut self, i: usize, generation: u32) {
        let cfg = &self.config;
        let node = &mut self.nodes[i];
        if !node.up || node.generation != generation {
            return;
        }
        if node.busy_until > self.now {
            // Paused (see `pause`): nothing is read until it resumes.
            let at = node.busy_until;
            self.push(at, Event::Process { node: i, generation });
            return;
        }
        let Some((queued_at, work)) = node.control.pop_front().or_else(|| node.bulk.pop_front()) else {
            node.processing = false;
            return;
        };
        let waited = self.now.saturating_sub(queued_at);
        node.stats.max_queue_delay = node.stats.max_queue_delay.max(waited);
        let now = self.base + self.now;
        let cost = match work {
            Work::Up {
                link,
                direction,
                remote,
                proven,
            } => {
                node.core.link_up(link, direction, remote, now);
                if let Some(key) = proven {
                    node.core.link_proven(link, key);
                }
                cfg.cost_per_frame
            }
            Work::Frame { link, frame, bytes } => {
                node.stats.frames_in += 1;
                node.stats.bytes_in += bytes as u64;
                let msgs = match &frame {
                    Frame::Msgs(m) => m.len(),
                    _ => 1,
                };
                node.stats.msgs_in += msgs as u64;
                node.core.frame(link, frame, now);
                cfg.cost_per_frame + cfg.cost_per_msg * msgs as u32 + cfg.cost_per_kib * (bytes / 1024) as u32
            }
            Work::Down { link } => {
                node.core.link_down(link, "peer closed the link", now);
                cfg.cost_per_frame
            }
            Work::DialFailed { addr, reason } => {
                node.core.dial_failed(addr, reason, now);
                cfg.cost_per_frame
            }
            Work::Tick => {
                node.ticks += 1;
                node.core.tick(now);
                cfg.cost_per_tick
            }
        };
        let cost = cost.mul_f64(node.slow);
        node.busy_until = self.now + cost;
        let done = node.busy_until;
        self.drain_at(i, done);
        let node = &mut self.nodes[i];
        if node.control.is_empty() && node.bulk.is_empty() {
            node.processing = false;
        } else {
            self.push(done, Event::Process { node: i, generation });
        }
        self.schedule_tick(i);
    }

    fn drain(&mut self, i: usize) {
        self.drain_at(i, self.now);
        self.schedule_tick(i);
    }

    /// Carries out node `i`'s actions as of time `at`.
    fn drain_at(&mut self, i: usize, at: Duration) {
        let saved = self.now;
        self.now = at;
        while let Some(action) = self.nodes[i].core.poll() {
            self.act(i, action);
        }
        let links = self.nodes[i].core.link_count();
        let stats = &mut self.nodes[i].stats;
        stats.max_links = stats.max_links.max(links);
        self.now = saved;
    }

    fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::Dial { addr } => self.dial(i, addr),
            Action::Send { link, frame, .. } => {
                let bytes = frame.encoded_len();
                let msgs = match &frame {
                    Frame::Msgs(m) => m.len() as u64,
                    _ => 1,
                };
                let stats = &mut self.nodes[i].stats;
                stats.frames_out += 1;
                stats.msgs_out += msgs;
                stats.bytes_out += bytes as u64;
                self.transmit(link, frame, bytes);
            }
            Action::Close { link, .. } => {
                let Some(l) = self.links.get_mut(&link) else { return };
                if !l.open {
                    return;
                }
                l.open = false;
                // The close arrives after what was sent before it, as a FIN does.
                let at = (self.now + l.latency).max(l.last_arrival + Duration::from_nanos(1));
                let (peer, peer_link) = (l.peer, l.peer_link);
                if self.reachable(i, peer) {
                    self.send_work(peer, Work::Down { link: peer_link }, at);
                }
            }
            Action::Deliver { envelope, hops, .. } => {
                if envelope.len() >= 16 {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(&envelope[..16]);
                    self.deliveries.push(Delivery {
                        node: i,
                        id: MsgId::from_be_bytes(id),
                        at: self.now,
                        hops,
                    });
                }
            }
            Action::CheckHost { link, name, .. } => {
                // A live process's host acks at the TCP level however slow
                // the process is; a crashed or cut-off one does not. Under
                // loss, the probe's segment or its ack may be lost twice in
                // a row (the first try and one retransmission within the
                // probe's window), and then nothing was acked.
                let live = self
                    .links
                    .get(&link)
                    .filter(|l| l.open)
                    .is_some_and(|l| self.nodes[l.peer].up && self.reachable(i, l.peer));
                let one_try_fails = 1.0 - (1.0 - self.config.loss).powi(2);
                let answered = live && (one_try_fails <= 0.0 || self.rng.random::<f64>() >= one_try_fails.powi(2));
                let now = self.base + self.now;
                self.nodes[i].core.host_checked(&name, answered, now);
            }
            Action::State { .. } | Action::Joined { .. } | Action::Entries { .. } | Action::EntriesRefused { .. } => {}
            Action::Member { id, change } => {
                if change == Change::Suspect {
                    self.suspicions += 1;
                }
                if change == Change::Dead {
                    if let Some(&target) = self.by_name.get(&*id.name) {
                        let t = &self.nodes[target];
                        if t.up && t.core.me().boot == id.boot && self.reachable(i, target) {
                            self.false_deaths += 1;
                        }
                    }
                }
                if self.watch.contains(&*id.name) {
                    self.seen.push(Seen {
                        observer: i,
                        member: id.name.to_string(),
                        change,
                        at: self.now,
                    });
                }
            }
        }
    }

    /// Nothing listens at `addr`: the dialer hears so after a round trip.
    fn refuse_dial(&mut self, i: usize, addr: SocketAddr) {
        let rtt = self.latency() * 2;
        self.send_work(
            i,
            Work::DialFailed {
                addr,
                reason: "connection refused",
            },
            self.now + rtt,
        );
    }

    fn dial(&mut self, i: usize, addr: SocketAddr) {
        let dial_timeout = self.config.cluster.dial_timeout;
        let Some(&j) = self.by_addr.get(&addr) else {
            return self.refuse_dial(i, addr);
        };
        if !self.reachable(i, j) {
            self.send_work(
                i,
                Work::DialFailed {
                    addr,
                    reason: "connect timed out",
                },
                self.now + dial_timeout,
            );
            return;
        }
        let latency = self.latency();
        if !self.nodes[j].up {
            return self.refuse_dial(i, addr);
        }
        // SYN, SYN-ACK (1 s initial timeout each), then the handshake.
        let mut took = Duration::ZERO;
        for leg in 0..5 {
            took += latency;
            took += self.retransmits(if leg < 2 {
                Duration::from_secs(1)
            } else {
                self.config.rto
            });
        }
        if took > dial_timeout {
            self.send_work(
                i,
                Work::DialFailed {
                    addr,
                    reason: "connect timed out",
                },
                self.now + dial_timeout,
            );
            return;
        }
        let (a, b) = (self.next_link, self.next_link + 1);
        self.next_link += 2;
        let (gi, gj) = (self.nodes[i].generation, self.nodes[j].generation);
        self.links.insert(
            a,
            LinkEnd {
                node: i,
                generation: gi,
                peer: j,
                peer_link: b,
                open: true,
                latency,
                last_arrival: Duration::ZERO,
                held: Vec::new(),
            },
        );
        self.links.insert(
            b,
            LinkEnd {
                node: j,
                generation: gj,
                peer: i,
                peer_link: a,
                open: true,
                latency,
                last_arrival: Duration::ZERO,
                held: Vec::new(),
            },
        );
        let my_addr = self.nodes[i].addr;
        let at = self.now + took;
        let static_of = |k: &Option<std::sync::Arc<NodeKey>>| k.as_ref().and_then(|k| k.public().noise_static());
        let (key_i, key_j) = (static_of(&self.nodes[i].key), static_of(&self.nodes[j].key));
        self.send_work(
            j,
            Work::Up {
                link: b,
                direction: Direction::Inbound,
                remote: my_addr,
                proven: key_i,
            },
            at.saturating_sub(latency),
        );
        self.send_work(
            i,
            Work::Up {
                link: a,
                direction: Direction::Outbound,
                remote: addr,
                proven: key_j,
            },
            at,
        );
    }

    /// Sends a frame along `link` to its other end.
    fn transmit(&mut self, link: LinkId, frame: Frame, bytes: usize) {
        let Some(l) = self.links.get(&link) else { return };
        if !l.open {
            return;
        }
        let (from, to, peer_link) = (l.node, l.peer, l.peer_link);
        if self.nodes[to].generation != self.links[&peer_link].generation {
            return;
        }
        if !self.nodes[to].host_up || !self.nodes[from].host_up {
            return;
        }
        if self.nodes[from].group != self.nodes[to].group {
            self.links.get_mut(&link).expect("exists").held.push((frame, bytes));
            return;
        }
        let base = self.links[&link].latency;
        let jitter = Duration::from_nanos(self.rng.random_range(0..=base.as_nanos() as u64 / 20));
        let mut at = self.now + base + jitter + self.retransmits(self.config.rto);
        let l = self.links.get_mut(&link).expect("exists");
        at = at.max(l.last_arrival + Duration::from_nanos(1));
        l.last_arrival = at;
        if let Some(peer) = self.links.get(&peer_link) {
            if !peer.open {
                return;
            }
        }
        self.send_work(
            to,
            Work::Frame {
                link: peer_link,
                frame,
                bytes,
            },
            at,
        );
    }

    /// Alive (or suspect) members node `i` lists.
    pub fn up_count(&self, i: usize) -> usize {
        self.nodes[i].core.up_count()
    }

    /// Whether every running node lists exactly the running nodes as up.
    pub fn converged(&self) -> bool {
        let running = self.nodes.iter().filter(|n| n.up).count();
        self.nodes.iter().filter(|n| n.up).all(|n| n.core.up_count() == running)
    }
}
