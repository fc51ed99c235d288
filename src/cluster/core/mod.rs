//! The cluster core: everything the ClusterBridge decides, as a plain state
//! machine in the manner of foca and chitchat. It owns no socket and no
//! timer. The caller feeds it link events, frames, commands and
//! [`ClusterCore::tick`], and carries out the [`Action`]s it returns: dial
//! this address, send this frame, close that link, deliver this envelope.
//! The node's actor drives it over TCP + Noise; the simulator drives
//! thousands of them over an in-memory network under a virtual clock.
//!
//! Its parts:
//! - [`members`]: the member table, its precedence rules and digest;
//! - [`rings`]: the overlay (which few members this node links to);
//! - [`detector`]: probes, local health and suspicion (Lifeguard);
//! - [`tree`]: the broadcast tree (built from the root's beacons, repaired
//!   the Plumtree way), for membership news, node states and ClusterBus
//!   envelopes alike.
//!
//! Around them this module keeps the links (hello, one preferred link per
//! peer, overlay interest, idle closing, a cap), joins, anti-entropy with a
//! neighbour, reconnection to dead members, node states, and the rules for
//! news about this node itself (refute; step aside as a duplicate).

pub mod detector;
pub mod hash;
pub mod members;
pub mod recent;
pub mod rings;
pub mod tree;

use self::detector::{Detector, DetectorCounters, DetectorOut};
use self::hash::{combine, name_hash, ring_position, StableMap, StableSet};
use self::members::{Applied, Member, MemberTable};
use self::rings::Rings;
use self::tree::{BroadcastTree, Round, TreeOut};
use super::config::ClusterConfig;
use super::identity::NodeId;
use super::protocol::{
    Frame, Hello, Lane, Msg, MsgId, Payload, Record, Refusal, StateRecord, Status, PROTOCOL_VERSION,
};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::seq::{IteratorRandom as _, SliceRandom as _};
use rand::{RngExt as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Anti-entropy ships about this many member records per exchange at most:
/// every differing bucket in a small cluster, one or two in a large one.
const MAX_RECORDS_PER_EXCHANGE: usize = 256;

/// ... and this many when most buckets differ, as for a node that has just
/// joined a large cluster or during a mass start: at 10,000 members, one
/// bucket (about 156 records) per exchange every 200 ms made a joiner take
/// 8-10 s to list everyone.
const MAX_RECORDS_CATCHING_UP: usize = 2048;

/// A join is answered with at most this many member records; the joiner
/// learns the rest by anti-entropy from its neighbours. The whole table per
/// joiner made a seed's work grow with N² in a mass start: 10,000 joiners
/// took one seed about 2.5 GB of records, and it held 3,990 links while it
/// wrote them.
const MAX_JOIN_RECORDS: usize = 1024;

/// A node at its link cap names this many live members to a dialer it turns
/// away, and a join follows at most `MAX_JOIN_REDIRECTS` such answers before
/// it is reported busy (and the driver retries it with backoff).
const BUSY_PEERS: usize = 8;
const MAX_JOIN_REDIRECTS: u8 = 4;

/// Identifies one link for its whole life (given by the transport).
pub type LinkId = u64;

/// Who opened a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// How this node stands in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "standing")]
pub enum Standing {
    /// Knows no other member yet.
    Alone,
    /// Knows other members.
    Joined,
    /// Another live process holds this node's name; this one stays out.
    Refused { holder: SocketAddr, reason: String },
    /// Left the cluster (shutting down).
    Left,
}

/// A change of a member, for the driver's log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Alive,
    Suspect,
    Dead,
    Left,
    /// A new boot of the name took over.
    Restarted,
}

/// Why a join attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("that address is this node")]
    Myself,
    #[error("{0}")]
    Link(String),
    #[error("the node there and the members it named were all at their link cap")]
    Busy,
}

/// What the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Dial {
        addr: SocketAddr,
    },
    Send {
        link: LinkId,
        lane: Lane,
        frame: Frame,
    },
    Close {
        link: LinkId,
        reason: &'static str,
    },
    /// A ClusterBus envelope for this node (`direct`: sent to it alone;
    /// `hops`: links it crossed).
    Deliver {
        from: Arc<str>,
        envelope: Bytes,
        direct: bool,
        hops: u16,
    },
    /// A member published a new state.
    State {
        node: Arc<str>,
        data: Bytes,
    },
    Member {
        id: Arc<NodeId>,
        change: Change,
    },
    /// A probe of `name` sent at `since`, and its helpers, went unanswered.
    /// The driver looks at `link` below the protocol and answers with
    /// [`ClusterCore::host_checked`]: does the peer's host still
    /// acknowledge what was sent since then (on TCP: the peer's kernel
    /// acked within that time, with no retransmission pending)? A starved
    /// process is then not suspected yet.
    CheckHost {
        link: LinkId,
        name: Arc<str>,
        since: Instant,
    },
    /// The answer to [`ClusterCore::join`].
    Joined {
        addr: SocketAddr,
        result: Result<Arc<str>, JoinError>,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("node `{0}` is not an alive member of this cluster")]
    NotAlive(String),
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("this node is not part of the cluster: {0}")]
    NotJoined(String),
}

/// Counters of what the core decided (debug dump, metrics, simulator).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CoreCounters {
    pub suspicions_raised: u64,
    pub confirmations: u64,
    pub refutations: u64,
    pub deaths_declared: u64,
    pub members_died: u64,
    pub name_conflicts: u64,
    pub joins_answered: u64,
    /// New links this node closed at once because it held its link cap.
    pub links_turned_away: u64,
    /// Spare links closed to make room for a dial at the link cap.
    pub links_closed_for_room: u64,
    /// Joins a busy node sent on to another member.
    pub joins_redirected: u64,
    pub anti_entropy_rounds: u64,
    pub anti_entropy_repairs: u64,
    pub reconnect_dials: u64,
    pub links_opened: u64,
    pub links_closed: u64,
    pub dials: u64,
    pub dial_failures: u64,
    pub malformed: u64,
    pub broadcasts: u64,
    pub delivered: u64,
    pub directs_sent: u64,
    pub directs_received: u64,
    pub dropped_no_route: u64,
    /// Wake-ups that came so late that due probe and suspicion deadlines
    /// were postponed (this node was starved of CPU).
    pub late_wakeups: u64,
}

/// Where a record came from, which decides how it is applied and spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source<'a> {
    /// A member said hello on a link.
    Hello,
    /// A joining node's snapshot from its seed.
    Snapshot,
    /// A digest exchange with `peer`.
    AntiEntropy,
    /// The broadcast tree.
    Gossip { accuser: Option<&'a Arc<str>> },
    /// This node's own decision.
    Local { accuser: Option<&'a Arc<str>> },
}

struct Link {
    direction: Direction,
    remote: SocketAddr,
    peer: Option<Arc<NodeId>>,
    opened: Instant,
    last_used: Instant,
    hello_deadline: Instant,
    /// This node counts the link as overlay (told the peer so).
    i_want: bool,
    /// The peer counts it as overlay.
    peer_wants: bool,
    /// The peer answered our join on this link and does not count it as
    /// overlay: a busy seed hangs up then, which says nothing about its
    /// health.
    hangup_expected: bool,
    frames_in: u64,
}

impl Link {
    fn peer_name(&self) -> Option<&Arc<str>> {
        self.peer.as_ref().map(|p| &p.name)
    }
}

/// A dial in progress: what waits for the link.
struct Dialing {
    started: Instant,
    /// The member this address belongs to, if known.
    expect: Option<Arc<str>>,
    pending: Vec<(Lane, Msg)>,
    directs: Vec<Bytes>,
    join: Option<JoinAsk>,
}

/// A join in progress: the address the driver asked to join (the answer
/// names it, wherever the join went), and how many busy nodes sent it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JoinAsk {
    asked: SocketAddr,
    redirects: u8,
}

/// This node's side of the cluster.
pub struct ClusterCore {
    cluster: String,
    config: ClusterConfig,
    me: Arc<NodeId>,
    incarnation: u32,
    standing: Standing,
    table: MemberTable,
    rings: Rings,
    detector: Detector,
    tree: BroadcastTree,
    /// The tree's root: the live member first on ring 0 (this node included).
    root: (u64, Arc<str>),
    links: StableMap<LinkId, Link>,
    by_peer: StableMap<Arc<str>, LinkId>,
    dialing: StableMap<SocketAddr, Dialing>,
    /// When a dial to each address last got its TCP connection accepted:
    /// the host is there, whatever its process does (see `dial_connected`).
    host_seen: StableMap<SocketAddr, Instant>,
    /// When the process at each address last turned a dial away because it
    /// held its link cap: alive, only busy (see `on_busy`).
    busy_seen: StableMap<SocketAddr, Instant>,
    /// Joins asked on a link, answered when the member table arrives.
    joining: StableMap<LinkId, JoinAsk>,
    last_dial: StableMap<SocketAddr, Instant>,
    /// The overlay neighbours this node wants (from the rings), and since when.
    wanted: StableMap<Arc<str>, Instant>,
    overlay_dirty: bool,
    /// A member table came in answer to a join: until then, a joiner knows
    /// only its seed and probes nobody.
    has_table: bool,
    state_version: u64,
    next_anti_entropy: Instant,
    /// Table comparisons still to run at a tenth of the interval (see
    /// `ClusterConfig::quick_rounds_after_news`).
    quick_rounds: u32,
    next_reconnect: Instant,
    next_housekeeping: Instant,
    outbox: StableMap<LinkId, Vec<(Lane, Msg)>>,
    actions: VecDeque<Action>,
    rng: SmallRng,
    now: Instant,
    /// Duplicate claims already logged, so a flood of them logs once.
    conflicts_logged: StableSet<(Arc<str>, u64)>,
    pub counters: CoreCounters,
}

impl ClusterCore {
    /// A node alone, about to join. `seed` makes its random choices
    /// repeatable (the simulator); nodes pass a random one.
    pub fn new(cluster: &str, me: NodeId, config: ClusterConfig, seed: u64, now: Instant) -> ClusterCore {
        let me = Arc::new(me);
        let mut rng = SmallRng::seed_from_u64(seed);
        let jitter = |rng: &mut SmallRng, d: Duration| d.mul_f64(rng.random_range(0.5..1.5));
        let mut core = ClusterCore {
            cluster: cluster.to_string(),
            table: MemberTable::new(me.clone(), now),
            rings: Rings::new(&me.name, config.rings),
            detector: Detector::new(config.detector(), now),
            tree: BroadcastTree::new(&me.name, config.tree()),
            root: (ring_position(name_hash(&me.name), 0), me.name.clone()),
            next_anti_entropy: now + jitter(&mut rng, config.anti_entropy_interval),
            quick_rounds: 0,
            next_reconnect: now + jitter(&mut rng, config.reconnect_interval),
            next_housekeeping: now + Duration::from_secs(1),
            config,
            me,
            incarnation: 0,
            standing: Standing::Alone,
            links: StableMap::default(),
            by_peer: StableMap::default(),
            dialing: StableMap::default(),
            host_seen: StableMap::default(),
            busy_seen: StableMap::default(),
            joining: StableMap::default(),
            last_dial: StableMap::default(),
            wanted: StableMap::default(),
            overlay_dirty: false,
            has_table: false,
            state_version: 0,
            outbox: StableMap::default(),
            actions: VecDeque::new(),
            rng,
            now,
            conflicts_logged: StableSet::default(),
            counters: CoreCounters::default(),
        };
        // Alone, this node is the root of its own tree.
        let me = core.me.clone();
        core.tree.set_root(&me.name, me.boot, now);
        core
    }

    // ------------------------------------------------------------ queries

    pub fn me(&self) -> &Arc<NodeId> {
        &self.me
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Every member, this node included.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.table.iter()
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.table.get(name)
    }

    /// When `member`'s status last changed here.
    pub fn member_since(&self, member: &Member) -> Instant {
        self.table.since(member)
    }

    /// What the failure detector did so far.
    pub fn detector_counters(&self) -> DetectorCounters {
        self.detector.counters
    }

    /// Alive and suspect members, this node included.
    pub fn up_count(&self) -> usize {
        self.table.up_count()
    }

    /// Peers with a link that said hello.
    pub fn linked_peers(&self) -> usize {
        self.by_peer.len()
    }

    /// Every open link: id, peer (if it said hello), overlay or not.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, Option<&Arc<str>>, bool)> {
        self.links
            .iter()
            .map(|(id, l)| (*id, l.peer_name(), l.i_want || l.peer_wants))
    }

    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    pub fn dialing_count(&self) -> usize {
        self.dialing.len()
    }

    /// Lifeguard's local health score of this node (0 is healthy).
    pub fn health(&self) -> u32 {
        self.detector.health()
    }

    /// Roughly the bytes this core holds.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
            + self.tree.heap_bytes()
            + self.links.len() * 256
            + self.dialing.values().map(|d| 128 + d.pending.len() * 96).sum::<usize>()
            + self.last_dial.len() * 48
    }

    /// The core's state for `debug dump`.
    pub fn snapshot(&self) -> Value {
        let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
        for m in self.table.iter() {
            *by_status.entry(m.status.as_str()).or_default() += 1;
        }
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|(id, l)| {
                json!({
                    "id": id,
                    "peer": l.peer_name().map(|n| n.to_string()),
                    "remote": l.remote.to_string(),
                    "direction": l.direction,
                    "overlay": l.i_want || l.peer_wants,
                    "frames_in": l.frames_in,
                    "age_ms": self.now.saturating_duration_since(l.opened).as_millis() as u64,
                    "idle_ms": self.now.saturating_duration_since(l.last_used).as_millis() as u64,
                })
            })
            .collect();
        json!({
            "me": {"name": &*self.me.name, "addr": self.me.addr.to_string(), "boot": self.me.boot,
                   "incarnation": self.incarnation},
            "standing": self.standing,
            "members": by_status,
            "subjects": self.rings.subjects().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "neighbours": self.rings.neighbours().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "tree": {
                "root": self.tree.round().map(|r| r.root.to_string()),
                "round": self.tree.round().map(|r| r.round),
                "is_root": self.tree.is_root(),
                "depth": self.tree.depth(),
                "parent": self.tree.parent().map(|p| p.to_string()),
                "children": self.tree.children(),
                "neighbours": self.tree.neighbour_count(),
                "counters": self.tree.counters,
            },
            "health": self.detector.health(),
            "suspicions": self.detector.suspicions(),
            "links": links,
            "dialing": self.dialing.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            "heap_bytes": self.heap_bytes(),
            "detector": self.detector.counters,
            "counters": self.counters,
        })
    }

    /// The next action to carry out.
    pub fn poll(&mut self) -> Option<Action> {
        let action = self.actions.pop_front();
        if action.is_none() && self.actions.capacity() > 256 {
            // A snapshot of 10,000 members queues 10,000 events at once;
            // do not hold that room for the rest of the process's life.
            self.actions.shrink_to(32);
        }
        action
    }

    /// When [`ClusterCore::tick`] has work next.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self
            .detector
            .next_deadline()
            .min(self.next_anti_entropy)
            .min(self.next_reconnect)
            .min(self.next_housekeeping);
        if let Some(t) = self.tree.next_deadline() {
            next = next.min(t);
        }
        next
    }

    // ------------------------------------------------------------ commands

    /// Contacts `addr` (a seed, or a peer mDNS found) and asks for the
    /// member table. Answered with [`Action::Joined`].
    pub fn join(&mut self, addr: SocketAddr, now: Instant) {
        self.now = now;
        if addr == self.me.addr {
            self.actions.push_back(Action::Joined {
                addr,
                result: Err(JoinError::Myself),
            });
            return;
        }
        self.join_via(
            addr,
            None,
            JoinAsk {
                asked: addr,
                redirects: 0,
            },
        );
        self.flush();
    }

    /// Asks `addr` (member `expect`, if known) for the member table on
    /// behalf of `ask`: on a link that is up, or on a dial. Answers false
    /// when that cannot start (a recent dial to that member, or a dial
    /// already carrying another join).
    fn join_via(&mut self, addr: SocketAddr, expect: Option<Arc<str>>, ask: JoinAsk) -> bool {
        let ready = self
            .links
            .iter()
            .find(|(_, l)| l.peer.is_some() && (l.remote == addr || l.peer.as_ref().is_some_and(|p| p.addr == addr)))
            .map(|(id, l)| (*id, l.peer_name().cloned()));
        match ready {
            Some((link, Some(_))) if !matches!(self.standing, Standing::Refused { .. }) => {
                self.queue(link, Lane::Control, Msg::Join);
                self.joining.insert(link, ask);
                true
            }
            _ => match self.dial(addr, expect) {
                Some(d) if d.join.is_none_or(|j| j.asked == ask.asked) => {
                    d.join = Some(ask);
                    true
                }
                _ => false,
            },
        }
    }

    /// Sends a ClusterBus envelope to every node (not delivered here: the
    /// driver hands it to this node's Transponder itself).
    pub fn broadcast(&mut self, id: MsgId, envelope: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("envelope", envelope.len())?;
        self.counters.broadcasts += 1;
        let mut out = Vec::new();
        self.tree.broadcast(id, Payload::Envelope(envelope), now, &mut out);
        self.tree_out(out);
        self.flush();
        Ok(())
    }

    /// Sends an envelope to one node, over its link (dialed if need be).
    pub fn send_direct(&mut self, to: &str, envelope: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("envelope", envelope.len())?;
        let member = self
            .table
            .get(to)
            .filter(|m| m.status.is_up() && m.id.name != self.me.name)
            .ok_or_else(|| CoreError::NotAlive(to.to_string()))?;
        let (name, addr) = (member.id.name.clone(), member.id.addr);
        self.counters.directs_sent += 1;
        match self.by_peer.get(&name).copied() {
            Some(link) => {
                self.touch(link);
                self.actions.push_back(Action::Send {
                    link,
                    lane: Lane::Bulk,
                    frame: Frame::Direct(envelope),
                });
            }
            None => {
                if let Some(d) = self.dial(addr, Some(name)) {
                    d.directs.push(envelope);
                }
            }
        }
        self.flush();
        Ok(())
    }

    /// Publishes this node's state (its status report) to every node.
    pub fn set_state(&mut self, data: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("state", data.len())?;
        if data.len() > self.config.max_state_bytes {
            return Err(CoreError::TooLarge {
                what: "state",
                size: data.len(),
                max: self.config.max_state_bytes,
            });
        }
        self.state_version += 1;
        let record = Arc::new(StateRecord {
            name: self.me.name.clone(),
            boot: self.me.boot,
            version: self.state_version,
            data,
        });
        self.table.set_state(&record);
        let id = state_id(&record);
        let mut out = Vec::new();
        self.tree.broadcast(id, Payload::State(record), now, &mut out);
        self.tree_out(out);
        self.flush();
        Ok(())
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
                Msg::Gossip {
                    id,
                    hops: 0,
                    payload: payload.clone(),
                },
            );
        }
        self.flush();
    }

    fn check_size(&self, what: &'static str, size: usize) -> Result<(), CoreError> {
        // Room for the frame's own bytes around the payload.
        let max = self.config.max_frame.saturating_sub(1024);
        if size > max {
            return Err(CoreError::TooLarge { what, size, max });
        }
        Ok(())
    }

    // ------------------------------------------------------------ transport events

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
                i_want: false,
                peer_wants: false,
                hangup_expected: false,
                frames_in: 0,
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
                protocol: PROTOCOL_VERSION,
                cluster: self.cluster.clone(),
                id: self.me.clone(),
                incarnation: self.incarnation,
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
    fn turn_away(&mut self, link: LinkId) {
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
        self.queue(link, Lane::Control, Msg::Busy { peers });
        self.flush();
        self.close(link, "at the link cap");
    }

    /// The dialed node was at its link cap (see `turn_away`). Its process
    /// answered, so a probe of it counts as answered; a join goes on to one
    /// of the members it named; anything else waiting for the link is
    /// dropped and counted, as when a dial fails, and overlay links are
    /// dialed again later.
    fn on_busy(&mut self, link: LinkId, peers: Vec<(Arc<str>, SocketAddr)>) {
        let Some(remote) = self.links.get(&link).map(|l| l.remote) else {
            return;
        };
        let d = self.dialing.remove(&remote);
        self.busy_seen.insert(remote, self.now);
        self.close(link, "the peer is at its link cap");
        let Some(d) = d else { return };
        debug!(%remote, member = d.expect.as_deref(), named = peers.len(), "the node dialed is at its link cap");
        self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
        if let Some(name) = &d.expect {
            let mut out = Vec::new();
            self.detector.answered(name, &mut out);
            self.detector_out(out);
        }
        if let Some(ask) = d.join {
            self.redirect_join(remote, ask, peers);
        }
    }

    /// Sends a join that a busy node turned away to one of the members it
    /// named; after `MAX_JOIN_REDIRECTS`, or with nobody to ask, the join
    /// is answered busy and the driver retries it later.
    fn redirect_join(&mut self, busy: SocketAddr, ask: JoinAsk, peers: Vec<(Arc<str>, SocketAddr)>) {
        if ask.redirects < MAX_JOIN_REDIRECTS {
            let mut candidates: Vec<(Arc<str>, SocketAddr)> = peers
                .into_iter()
                .filter(|(name, addr)| *name != self.me.name && *addr != self.me.addr && *addr != busy)
                .collect();
            candidates.shuffle(&mut self.rng);
            let next = JoinAsk {
                asked: ask.asked,
                redirects: ask.redirects + 1,
            };
            for (name, addr) in candidates {
                if self.join_via(addr, Some(name.clone()), next) {
                    self.counters.joins_redirected += 1;
                    debug!(asked = %ask.asked, via = %name, %addr, "joining through a member the busy node named");
                    return;
                }
            }
        }
        self.answer_join(ask, Err(JoinError::Busy));
    }

    /// Answers the driver's join `ask` (under the address it asked, wherever
    /// the join went).
    fn answer_join(&mut self, ask: JoinAsk, result: Result<Arc<str>, JoinError>) {
        self.actions.push_back(Action::Joined {
            addr: ask.asked,
            result,
        });
    }

    /// Up to `n` live members other than this node, at random.
    fn sample_live(&mut self, n: usize) -> Vec<&Member> {
        let me = &self.me.name;
        self.table
            .iter()
            .filter(|m| m.id.name != *me && m.status.is_up())
            .sample(&mut self.rng, n)
    }

    /// A link is gone (closed by the peer, or failed).
    pub fn link_down(&mut self, link: LinkId, reason: &str, now: Instant) {
        self.now = now;
        let Some(l) = self.links.remove(&link) else { return };
        self.counters.links_closed += 1;
        self.outbox.remove(&link);
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

    /// A join asked on `link` gets no table: say why.
    fn fail_join(&mut self, link: LinkId, reason: &str) {
        if let Some(ask) = self.joining.remove(&link) {
            self.answer_join(ask, Err(JoinError::Link(reason.to_string())));
        }
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
    fn host_seen_since(&self, addr: SocketAddr, since: Instant) -> bool {
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

    /// A frame arrived on `link`.
    pub fn frame(&mut self, link: LinkId, frame: Frame, now: Instant) {
        self.now = now;
        let Some(l) = self.links.get_mut(&link) else { return };
        l.frames_in += 1;
        let peer = l.peer.clone();
        match (frame, peer) {
            (Frame::Hello(hello), None) => self.on_hello(link, hello),
            (Frame::Hello(_), Some(_)) => {
                self.counters.malformed += 1;
                warn!(link, "second hello on a link; closing it");
                self.close(link, "protocol violation: second hello");
            }
            (Frame::Msgs(msgs), None) if matches!(&msgs[..], [Msg::Busy { .. }]) => {
                let Some(Msg::Busy { peers }) = msgs.into_iter().next() else {
                    unreachable!()
                };
                self.on_busy(link, peers);
            }
            (other, None) => {
                self.counters.malformed += 1;
                warn!(link, kind = other.kind(), "frame before hello; closing the link");
                self.close(link, "protocol violation: frame before hello");
            }
            (Frame::Direct(envelope), Some(peer)) => {
                self.touch(link);
                self.counters.directs_received += 1;
                self.actions.push_back(Action::Deliver {
                    from: peer.name.clone(),
                    envelope,
                    direct: true,
                    hops: 1,
                });
            }
            (Frame::Msgs(msgs), Some(peer)) => {
                for msg in msgs {
                    if !self.links.contains_key(&link) {
                        break;
                    }
                    self.on_msg(link, &peer, msg);
                }
            }
        }
        self.flush();
    }

    // ------------------------------------------------------------ time

    /// Runs whatever is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        // What this wake-up was for; much later than that, this node was
        // starved of CPU (see `Detector::postpone_due`).
        let due = self.next_deadline();
        self.now = now;
        let keep = self.config.stall_grace * 2;
        self.host_seen
            .retain(|_, at| now.saturating_duration_since(*at) <= keep);
        self.busy_seen
            .retain(|_, at| now.saturating_duration_since(*at) <= keep);
        if self.standing == Standing::Left {
            return;
        }
        let refused = matches!(self.standing, Standing::Refused { .. });
        // Still waiting for the first member table: the only member known
        // is the seed, busy answering every joiner of a mass start. Probing
        // it now would only accuse it of being busy.
        let joining = !self.has_table && !self.joining.is_empty();
        if !refused {
            let grace = self.config.probe_timeout / 8;
            if now.saturating_duration_since(due) > grace {
                self.counters.late_wakeups += 1;
                self.detector.postpone_due(now, grace);
            }
            let mut out = Vec::new();
            let offset = self.rng.random::<u32>() as usize;
            let (by_peer, table, count) = (&self.by_peer, &self.table, self.config.indirect_probes);
            self.detector.tick(
                now,
                if joining { &[] } else { self.rings.subjects() },
                |target| helpers(by_peer, table, target, offset, count),
                &mut out,
            );
            self.detector_out(out);
            let mut out = Vec::new();
            self.tree.tick(now, &mut out);
            self.tree_out(out);
            if now >= self.next_anti_entropy {
                self.next_anti_entropy = if self.quick_rounds > 0 {
                    self.quick_rounds -= 1;
                    now + self.config.anti_entropy_interval / 10
                } else {
                    now + self.jitter(self.config.anti_entropy_interval)
                };
                self.anti_entropy();
            }
            if now >= self.next_reconnect {
                self.next_reconnect = now + self.jitter(self.config.reconnect_interval);
                self.reconnect();
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + Duration::from_secs(1);
            self.housekeeping();
        }
        self.flush();
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.75..1.25))
    }

    /// Up to `indirect_probes` linked, alive peers other than `target`,
    /// from a random place: who may probe it for us.
    fn helper_candidates(&mut self, target: &str) -> Vec<Arc<str>> {
        let offset = self.rng.random::<u32>() as usize;
        helpers(&self.by_peer, &self.table, target, offset, self.config.indirect_probes)
    }

    /// Brings the next anti-entropy round forward to a tenth of its interval.
    fn anti_entropy_soon(&mut self) {
        let soon = self.now + self.config.anti_entropy_interval / 10;
        self.next_anti_entropy = self.next_anti_entropy.min(soon);
    }

    fn anti_entropy(&mut self) {
        let overlay: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.is_some() && (l.i_want || l.peer_wants))
            .map(|(id, _)| *id)
            .collect();
        let Some(link) = overlay.into_iter().choose(&mut self.rng) else {
            return;
        };
        self.counters.anti_entropy_rounds += 1;
        self.queue(
            link,
            Lane::Control,
            Msg::Digest {
                buckets: self.table.digest(),
            },
        );
    }

    /// Looks at one member at random; dials it if it is dead, so that each
    /// dead member is tried about once per interval across the cluster.
    fn reconnect(&mut self) {
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

    fn housekeeping(&mut self) {
        let now = self.now;
        self.tree.expire(now);
        let late: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.is_none() && l.hello_deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for link in late {
            self.close(link, "no hello in time");
        }
        // Links nobody needs: not overlay, not a subject's, unused for a while.
        let spare = self.spare_links();
        let over = self.links.len().saturating_sub(self.config.max_links);
        for (i, (used, link)) in spare.into_iter().enumerate() {
            let idle = now.saturating_duration_since(used);
            if i < over && idle > Duration::from_secs(1) || idle > self.config.link_idle {
                self.close(link, "idle");
            }
        }
        let stale: Vec<SocketAddr> = self
            .dialing
            .iter()
            .filter(|(_, d)| now.saturating_duration_since(d.started) > self.config.dial_timeout * 3)
            .map(|(a, _)| *a)
            .collect();
        for addr in stale {
            self.fail_dial(addr, "no link in time");
        }
        self.last_dial
            .retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(60));
        // Overlay neighbours without a link: the lower name dials at once;
        // the higher one waits a moment for that dial, then dials itself.
        let missing: Vec<Arc<str>> = self
            .wanted
            .iter()
            .filter(|(n, since)| {
                !self.by_peer.contains_key(*n)
                    && (*self.me.name < ***n || now.saturating_duration_since(**since) > Duration::from_secs(1))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in missing {
            self.ensure_link(&name);
        }
        for name in self.table.forget(now, self.config.remember_dead_for) {
            debug!(member = %name, "forgetting a member gone for long");
            self.detector.clear(&name);
        }
    }

    // ------------------------------------------------------------ links

    /// Starts dialing `addr` unless a dial is under way (or was tried a
    /// moment ago); answers the dial's entry to attach messages to.
    fn dial(&mut self, addr: SocketAddr, expect: Option<Arc<str>>) -> Option<&mut Dialing> {
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

    fn fail_dial(&mut self, addr: SocketAddr, reason: &str) {
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
    fn spare_links(&self) -> Vec<(Instant, LinkId)> {
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
    fn make_room(&mut self) {
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
    fn ensure_link(&mut self, name: &Arc<str>) {
        if self.by_peer.contains_key(name) {
            return;
        }
        let Some(m) = self.table.get(name).filter(|m| m.status.is_up()) else {
            return;
        };
        let addr = m.id.addr;
        self.dial(addr, Some(name.clone()));
    }

    fn close(&mut self, link: LinkId, reason: &'static str) {
        let Some(l) = self.links.remove(&link) else { return };
        self.counters.links_closed += 1;
        self.outbox.remove(&link);
        debug!(link, peer = l.peer_name().map(|n| &**n), reason, "closing link");
        self.actions.push_back(Action::Close { link, reason });
        self.fail_join(link, reason);
        if let Some(peer) = l.peer {
            self.unroute(&peer.name, link, false);
        }
    }

    /// `link` to `name` is gone: route over another link to it, if any.
    /// `broke`: the link failed or the peer closed it unannounced, which may
    /// mean its process died; closed by this node, it means nothing.
    fn unroute(&mut self, name: &Arc<str>, link: LinkId, broke: bool) {
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

    fn touch(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_used = self.now;
        }
    }

    /// Queues a message for `link`; sent as one batch per lane at the end
    /// of this input.
    fn queue(&mut self, link: LinkId, lane: Lane, msg: Msg) {
        self.outbox.entry(link).or_default().push((lane, msg));
    }

    /// Sends to member `name` over its link, dialing it if need be.
    fn send_to(&mut self, name: &Arc<str>, lane: Lane, msg: Msg) {
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
    fn flush(&mut self) {
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
            let mut batches: [(Vec<Msg>, usize); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
            for (lane, msg) in msgs {
                let (batch, size) = &mut batches[lane as usize];
                let s = size_hint(&msg);
                if !batch.is_empty() && *size + s > 256 * 1024 {
                    self.actions.push_back(Action::Send {
                        link,
                        lane,
                        frame: Frame::Msgs(std::mem::take(batch)),
                    });
                    *size = 0;
                }
                *size += s;
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
    fn update_overlay(&mut self) {
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
                self.queue(link, Lane::Control, Msg::Neighbour { wanted: false });
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
    fn want(&mut self, link: LinkId, name: &Arc<str>) {
        let Some(l) = self.links.get_mut(&link) else { return };
        if !l.i_want {
            l.i_want = true;
            self.queue(link, Lane::Control, Msg::Neighbour { wanted: true });
        }
        self.tree_neighbour_up(name);
    }

    fn tree_neighbour_up(&mut self, name: &Arc<str>) {
        let mut out = Vec::new();
        self.tree.neighbour_up(name, &mut out);
        self.tree_out(out);
    }

    fn tree_neighbour_down(&mut self, name: &str) {
        let mut out = Vec::new();
        self.tree.neighbour_down(name, &mut out);
        self.tree_out(out);
    }

    // ------------------------------------------------------------ hello

    fn on_hello(&mut self, link: LinkId, hello: Hello) {
        let Some(l) = self.links.get(&link) else { return };
        let (remote, direction) = (l.remote, l.direction);
        if hello.protocol != PROTOCOL_VERSION {
            warn!(%remote, theirs = hello.protocol, ours = PROTOCOL_VERSION,
                "peer speaks another link protocol version; closing");
            return self.refuse(link, Refusal::Protocol { theirs: hello.protocol });
        }
        if hello.cluster != self.cluster {
            warn!(%remote, peer = %hello.id.name, cluster = %hello.cluster, "peer belongs to another cluster; closing");
            return self.refuse(
                link,
                Refusal::OtherCluster {
                    cluster: self.cluster.clone(),
                },
            );
        }
        let id = hello.id;
        if id.name == self.me.name {
            return self.hello_from_my_name(link, &id, remote);
        }
        let record = Record {
            id: id.clone(),
            incarnation: hello.incarnation,
            status: Status::Alive,
            state_version: 0,
        };
        if let Applied::Conflict { holder } = self.apply(&record, Source::Hello) {
            return self.refuse(
                link,
                Refusal::NameTaken {
                    name: id.name.clone(),
                    holder: holder.addr,
                    holder_boot: holder.boot,
                },
            );
        }
        let held = self.table.get(&id.name).map(|m| (m.id.clone(), m.status, m.record()));
        let Some((held_id, held_status, held_record)) = held else {
            return;
        };
        if held_id.boot != id.boot {
            debug!(%remote, peer = %id.name, "hello from a superseded boot; closing");
            return self.close(link, "superseded boot");
        }
        debug!(link, peer = %id.name, %remote, ?direction, "hello received");
        if let Some(l) = self.links.get_mut(&link) {
            l.peer = Some(id.clone());
        }
        // One preferred link per peer: the one dialed by the lower name, so
        // both sides pick the same; a second link idles out.
        let preferred = match self.by_peer.get(&id.name).and_then(|other| self.links.get(other)) {
            None => true,
            Some(other) if other.peer.as_ref().is_some_and(|p| p.boot != id.boot) => true,
            Some(_) => (direction == Direction::Outbound) == (*self.me.name < *id.name),
        };
        if preferred {
            self.by_peer.insert(id.name.clone(), link);
        }
        if direction == Direction::Outbound {
            if let Some(d) = self.dialing.remove(&remote) {
                if d.expect.as_ref().is_none_or(|e| *e == id.name) {
                    for (lane, msg) in d.pending {
                        self.queue(link, lane, msg);
                    }
                    for envelope in d.directs {
                        self.actions.push_back(Action::Send {
                            link,
                            lane: Lane::Bulk,
                            frame: Frame::Direct(envelope),
                        });
                    }
                } else {
                    self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
                }
                if let Some(ask) = d.join {
                    self.queue(link, Lane::Control, Msg::Join);
                    self.joining.insert(link, ask);
                }
            }
        }
        if self.wanted.contains_key(&id.name) {
            self.want(link, &id.name);
        }
        if !held_status.is_up() {
            // It says hello, but we hold it dead (a healed partition): tell
            // it, so it refutes, and compare tables.
            self.queue(
                link,
                Lane::Control,
                Msg::Members {
                    records: vec![held_record],
                    snapshot: false,
                },
            );
            self.queue(
                link,
                Lane::Control,
                Msg::Digest {
                    buckets: self.table.digest(),
                },
            );
        }
    }

    /// A hello from a process with this node's name.
    fn hello_from_my_name(&mut self, link: LinkId, id: &Arc<NodeId>, remote: SocketAddr) {
        if id.boot == self.me.boot {
            debug!(%remote, "dialed this node itself; closing");
            if let Some(d) = self.dialing.remove(&remote) {
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Myself));
                }
            }
            return self.close(link, "this node");
        }
        if id.boot > self.me.boot {
            self.log_conflict(id, "another process with this node's name tried to join; refused it");
            self.refuse(
                link,
                Refusal::NameTaken {
                    name: id.name.clone(),
                    holder: self.me.addr,
                    holder_boot: self.me.boot,
                },
            );
        } else {
            self.step_aside(id.addr, id.boot);
            self.close(link, "name held by an older live node");
        }
    }

    fn refuse(&mut self, link: LinkId, refusal: Refusal) {
        self.queue(link, Lane::Control, Msg::Refused(refusal));
        self.flush();
        self.close(link, "refused");
    }

    fn log_conflict(&mut self, other: &Arc<NodeId>, what: &str) {
        self.counters.name_conflicts += 1;
        if self.conflicts_logged.insert((other.name.clone(), other.boot)) {
            warn!(name = %other.name, addr = %other.addr, boot = other.boot, "{what}");
        }
    }

    /// Another, older, live process holds this node's name: stay out of the
    /// cluster until it is gone (joins are retried by the caller).
    fn step_aside(&mut self, holder: SocketAddr, holder_boot: u64) {
        if matches!(self.standing, Standing::Refused { .. }) {
            return;
        }
        let reason = Refusal::NameTaken {
            name: self.me.name.clone(),
            holder,
            holder_boot,
        }
        .to_string();
        error!(%holder, holder_boot, "{reason}; this node stays out of the cluster and keeps trying");
        self.standing = Standing::Refused {
            holder,
            reason: reason.clone(),
        };
        let refusal = Refusal::NameTaken {
            name: self.me.name.clone(),
            holder,
            holder_boot,
        };
        for (_, ask) in std::mem::take(&mut self.joining) {
            self.answer_join(ask, Err(JoinError::Refused(refusal.clone())));
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.close(link, "name held by another node");
        }
        for (_, d) in std::mem::take(&mut self.dialing) {
            if let Some(ask) = d.join {
                self.answer_join(
                    ask,
                    Err(JoinError::Refused(Refusal::NameTaken {
                        name: self.me.name.clone(),
                        holder,
                        holder_boot,
                    })),
                );
            }
        }
        // Forget the cluster: a later successful join starts afresh.
        let me = self.me.clone();
        self.table = MemberTable::new(me.clone(), self.now);
        self.table.set_me(self.incarnation, Status::Alive, self.now);
        self.rings = Rings::new(&me.name, self.config.rings);
        self.detector = Detector::new(self.config.detector(), self.now);
        self.tree = BroadcastTree::new(&me.name, self.config.tree());
        self.root = (ring_position(name_hash(&me.name), 0), me.name.clone());
        self.tree.set_root(&me.name, me.boot, self.now);
        self.wanted.clear();
    }

    // ------------------------------------------------------------ messages

    fn on_msg(&mut self, link: LinkId, peer: &Arc<NodeId>, msg: Msg) {
        let from = &peer.name;
        match msg {
            Msg::Ping { seq } => self.queue(link, Lane::Control, Msg::Ack { seq }),
            Msg::Ack { seq } => {
                let mut out = Vec::new();
                self.detector.on_ack(from, seq, &mut out);
                self.detector_out(out);
            }
            Msg::PingReq { seq, target } => {
                let mut out = Vec::new();
                if self.table.get(&target).is_some_and(|m| m.status.is_up()) {
                    self.detector.on_pingreq(from, seq, &target, self.now, &mut out);
                } else {
                    out.push(DetectorOut::PingReqAck {
                        to: from.clone(),
                        seq,
                        reached: false,
                    });
                }
                self.detector_out(out);
            }
            Msg::PingReqAck { seq, reached } => {
                let mut out = Vec::new();
                self.detector.on_pingreq_ack(seq, reached, &mut out);
                self.detector_out(out);
            }
            Msg::Join => {
                self.counters.joins_answered += 1;
                self.touch(link);
                self.standing_joined();
                let records = if self.table.len() <= MAX_JOIN_RECORDS {
                    self.table.snapshot()
                } else {
                    // This node and a random sample of the live members.
                    let me = self.table.me().record();
                    let mut sample: Vec<Record> = self
                        .sample_live(MAX_JOIN_RECORDS - 1)
                        .into_iter()
                        .map(Member::record)
                        .collect();
                    sample.push(me);
                    sample
                };
                for chunk in records.chunks(2048) {
                    self.queue(
                        link,
                        Lane::Bulk,
                        Msg::Members {
                            records: chunk.to_vec(),
                            snapshot: true,
                        },
                    );
                }
                self.queue(link, Lane::Bulk, Msg::JoinDone);
                // In a mass start every joiner dials the same seed. Past half
                // the link cap the seed hangs up once it has answered (the
                // close follows the table on the wire), so it never holds a
                // link per joiner; a joiner that wants it as a neighbour
                // dials again.
                let busy = self.links.len() > self.config.max_links / 2;
                if busy && !self.links.get(&link).is_some_and(|l| l.i_want) {
                    self.flush();
                    self.close(link, "join answered; this node is busy");
                }
            }
            Msg::JoinDone => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.hangup_expected = !l.peer_wants;
                }
                let overlay = self.links.get(&link).is_some_and(|l| l.i_want || l.peer_wants);
                let subject = self.rings.is_subject(from);
                if !overlay && !subject && self.by_peer.get(from) == Some(&link) {
                    self.close(link, "joined; not an overlay link");
                }
            }
            Msg::Members { records, snapshot } => self.on_members(link, records, snapshot),
            Msg::Neighbour { wanted } => {
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
            Msg::Gossip { id, hops, payload } => {
                let mut out = Vec::new();
                self.tree.on_gossip(from, id, hops, payload, self.now, &mut out);
                self.tree_out(out);
            }
            Msg::IHave { ids } => self.tree.on_ihave(from, &ids, self.now),
            Msg::Beacon {
                root,
                rank,
                boot,
                round,
                hops,
            } => {
                let root_up = self
                    .table
                    .get(&root)
                    .is_some_and(|m| m.status.is_up() && m.id.boot == boot);
                let round = Round {
                    root,
                    rank,
                    boot,
                    round,
                };
                let mut out = Vec::new();
                self.tree.on_beacon(from, round, hops, root_up, self.now, &mut out);
                self.tree_out(out);
            }
            Msg::Parent { yes } => self.tree.on_parent(from, yes),
            Msg::Graft { ids } => {
                let mut out = Vec::new();
                self.tree.on_graft(from, &ids, &mut out);
                self.tree_out(out);
            }
            Msg::Prune => self.tree.on_prune(from),
            Msg::Orphan => {
                let mut out = Vec::new();
                self.tree.on_orphan(from, &mut out);
                self.tree_out(out);
            }
            Msg::Digest { buckets } => {
                let mut differing = self.table.differing(&buckets);
                // While tables change fast (a mass start) most buckets
                // differ; a bounded number of records per exchange keeps
                // each one cheap at any size.
                let per_bucket = self.table.len().div_ceil(members::DIGEST_BUCKETS).max(1);
                let budget = if differing.len() > members::DIGEST_BUCKETS / 2 {
                    MAX_RECORDS_CATCHING_UP
                } else {
                    MAX_RECORDS_PER_EXCHANGE
                };
                let most = (budget / per_bucket).max(1);
                if differing.len() > most {
                    let start = self.rng.random_range(0..differing.len());
                    differing.rotate_left(start);
                    differing.truncate(most);
                }
                if !differing.is_empty() {
                    let records = self.table.records_in(&differing);
                    self.queue(link, Lane::Control, Msg::DigestReply { differing, records });
                }
            }
            Msg::DigestReply { differing, records } => {
                // Tables differ: compare again soon, until they agree.
                self.anti_entropy_soon();
                let mine = self.table.records_in(&differing);
                self.on_members(link, records, false);
                self.queue(
                    link,
                    Lane::Control,
                    Msg::Members {
                        records: mine,
                        snapshot: false,
                    },
                );
            }
            Msg::StateWant { names } => {
                let states: Vec<Arc<StateRecord>> = names
                    .iter()
                    .filter_map(|n| self.table.get(n))
                    .filter_map(|m| m.state.clone())
                    .collect();
                for chunk in states.chunks(32) {
                    self.queue(link, Lane::Bulk, Msg::States { states: chunk.to_vec() });
                }
            }
            Msg::States { states } => {
                for state in states {
                    self.on_state(state);
                }
            }
            Msg::Refused(refusal) => self.on_refused(link, refusal),
            // Only ever sent in place of a hello (see `frame`).
            Msg::Busy { .. } => {
                self.counters.malformed += 1;
                warn!(link, peer = %from, "a busy answer after hello; closing the link");
                self.close(link, "protocol violation: busy after hello");
            }
        }
    }

    fn on_refused(&mut self, link: LinkId, refusal: Refusal) {
        let remote = self.links.get(&link).map(|l| l.remote);
        match &refusal {
            Refusal::NameTaken {
                name,
                holder,
                holder_boot,
            } if *name == self.me.name => self.step_aside(*holder, *holder_boot),
            other => warn!(?remote, reason = %other, "a peer refused this node's link"),
        }
        if let Some(ask) = self.joining.remove(&link) {
            self.answer_join(ask, Err(JoinError::Refused(refusal)));
        } else if let Some(remote) = remote {
            if let Some(d) = self.dialing.remove(&remote) {
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Refused(refusal)));
                }
            }
        }
        self.close(link, "refused by the peer");
    }

    fn on_members(&mut self, link: LinkId, records: Vec<Record>, snapshot: bool) {
        if snapshot {
            self.has_table = true;
            self.standing_joined();
            if let Some(ask) = self.joining.remove(&link) {
                let peer = self.links.get(&link).and_then(|l| l.peer_name().cloned());
                if let Some(name) = peer {
                    self.answer_join(ask, Ok(name));
                }
            }
        }
        let source = if snapshot {
            Source::Snapshot
        } else {
            Source::AntiEntropy
        };
        let mut want = Vec::new();
        let mut changed = 0usize;
        for record in records {
            if record.id.name == self.me.name {
                self.about_me(&record, Some(link));
                continue;
            }
            let applied = self.apply(&record, source);
            if !matches!(applied, Applied::Stale | Applied::SameSuspicion) {
                changed += 1;
            }
            let held = self.table.get(&record.id.name);
            if held.is_some_and(|m| m.id.boot == record.id.boot && record.state_version > m.state_version()) {
                want.push(record.id.name.clone());
            }
        }
        if !snapshot && changed > 0 {
            self.counters.anti_entropy_repairs += changed as u64;
        }
        if snapshot {
            info!(
                members = self.table.len(),
                alive = self.table.up_count(),
                "received the member table"
            );
        }
        for chunk in want.chunks(512) {
            self.queue(link, Lane::Control, Msg::StateWant { names: chunk.to_vec() });
        }
    }

    fn standing_joined(&mut self) {
        if matches!(self.standing, Standing::Alone | Standing::Refused { .. }) {
            if matches!(self.standing, Standing::Refused { .. }) {
                info!("the name is free again; joined the cluster");
            }
            self.standing = Standing::Joined;
        }
    }

    fn on_state(&mut self, state: Arc<StateRecord>) {
        if state.name == self.me.name {
            return;
        }
        if self.table.set_state(&state) {
            self.actions.push_back(Action::State {
                node: state.name.clone(),
                data: state.data.clone(),
            });
        }
    }

    /// Acts on a new broadcast.
    fn on_payload(&mut self, payload: Payload, from: Arc<str>, hops: u16) {
        match payload {
            Payload::Update { record, accuser } => {
                if record.id.name == self.me.name {
                    self.about_me(&record, None);
                } else {
                    self.apply(
                        &record,
                        Source::Gossip {
                            accuser: accuser.as_ref(),
                        },
                    );
                }
            }
            Payload::State(state) => self.on_state(state),
            Payload::Envelope(envelope) => {
                self.counters.delivered += 1;
                self.actions.push_back(Action::Deliver {
                    from,
                    envelope,
                    direct: false,
                    hops: hops.saturating_add(1),
                });
            }
        }
    }

    // ------------------------------------------------------------ membership

    /// News about this node: refute a suspicion or a death, or step aside
    /// for an older live process of the same name.
    fn about_me(&mut self, record: &Record, via: Option<LinkId>) {
        if matches!(self.standing, Standing::Left | Standing::Refused { .. }) {
            return;
        }
        if record.id.boot == self.me.boot {
            if record.status != Status::Alive && record.incarnation >= self.incarnation {
                self.incarnation = record.incarnation.saturating_add(1);
                self.counters.refutations += 1;
                self.detector.refuted();
                warn!(
                    said = %record.status.as_str(),
                    incarnation = self.incarnation,
                    "the cluster suspected this node or declared it dead; refuting"
                );
                self.table.set_me(self.incarnation, Status::Alive, self.now);
                let mine = self.table.me().record();
                if let Some(link) = via {
                    self.queue(
                        link,
                        Lane::Control,
                        Msg::Members {
                            records: vec![mine.clone()],
                            snapshot: false,
                        },
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
    fn apply(&mut self, record: &Record, source: Source<'_>) -> Applied {
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
                if old.boot > record.id.boot {
                    // A newer duplicate we had taken: tell it who holds the name.
                    self.tell_links_to(
                        &name,
                        old.boot,
                        Msg::Members {
                            records: vec![record.clone()],
                            snapshot: false,
                        },
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

    fn status_changed(
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

    fn start_suspicion(&mut self, name: &Arc<str>, accuser: Option<&Arc<str>>) {
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
    fn expected_confirmations(&self, name: &str) -> usize {
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

    fn member_up(&mut self, name: &Arc<str>) {
        if self.rings.add(name) {
            self.overlay_dirty = true;
        }
        let rank = ring_position(name_hash(name), 0);
        if (rank, name.clone()) < self.root {
            self.root = (rank, name.clone());
            self.tree.set_root(name, self.me.boot, self.now);
        }
    }

    fn member_down(&mut self, name: &Arc<str>) {
        let table = &self.table;
        let live: Vec<Arc<str>> = table
            .iter()
            .filter(|m| m.status.is_up())
            .map(|m| m.id.name.clone())
            .collect();
        if self.rings.remove(name, live.iter()) {
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
    fn tell_links_to(&mut self, name: &Arc<str>, boot: u64, msg: Msg) {
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
    fn close_links_to(&mut self, name: &Arc<str>, keep: Option<u64>) {
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

    fn event(&mut self, id: &Arc<NodeId>, change: Change) {
        // News here may be news elsewhere (a mass start loses updates while
        // the tree forms): compare tables soon rather than at the next round.
        self.anti_entropy_soon();
        self.quick_rounds = self.config.quick_rounds_after_news;
        self.actions.push_back(Action::Member { id: id.clone(), change });
    }

    /// Broadcasts a member record along the tree.
    fn spread(&mut self, record: Record, accuser: Option<Arc<str>>) {
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
    fn probe_failed(&mut self, target: Arc<str>, probed_at: Instant) {
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
            _ if running => self.accuse(&target),
            _ if busy => {
                debug!(member = %target, "probe unanswered, but the member's process turned a link away as busy; not suspecting it");
            }
            Some(link) => self.actions.push_back(Action::CheckHost {
                link,
                name: target,
                since: probed_at,
            }),
            None if host_seen => self.host_checked(&target, true, self.now),
            None => self.accuse(&target),
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
        self.accuse(&target);
    }

    fn accuse(&mut self, target: &Arc<str>) {
        let Some(m) = self.table.get(target).filter(|m| m.status.is_up()) else {
            return;
        };
        let record = Record {
            id: m.id.clone(),
            incarnation: m.incarnation,
            status: Status::Suspect,
            state_version: m.state_version(),
        };
        self.counters.suspicions_raised += 1;
        info!(member = %target, incarnation = record.incarnation, health = self.detector.health(),
            "no answer to a probe or its helpers; suspecting member");
        let me = self.me.name.clone();
        self.apply(&record, Source::Local { accuser: Some(&me) });
        self.spread(record, Some(me));
    }

    /// A suspicion ran out: declare the member dead.
    fn declare(&mut self, name: &Arc<str>, boot: u64, incarnation: u32) {
        let Some(m) = self.table.get(name) else { return };
        if m.id.boot != boot || m.incarnation != incarnation || m.status != Status::Suspect {
            return;
        }
        let record = Record {
            id: m.id.clone(),
            incarnation,
            status: Status::Dead,
            state_version: m.state_version(),
        };
        self.counters.deaths_declared += 1;
        self.apply(&record, Source::Local { accuser: None });
        self.spread(record, None);
    }

    fn detector_out(&mut self, out: Vec<DetectorOut>) {
        for o in out {
            match o {
                DetectorOut::Ping { to, seq } => self.send_to(&to, Lane::Control, Msg::Ping { seq }),
                DetectorOut::PingReq { helper, target, seq } => {
                    self.send_to(&helper, Lane::Control, Msg::PingReq { seq, target })
                }
                DetectorOut::PingReqAck { to, seq, reached } => {
                    self.send_to(&to, Lane::Control, Msg::PingReqAck { seq, reached })
                }
                DetectorOut::Suspect { target, probed_at } => self.probe_failed(target, probed_at),
                DetectorOut::Dead {
                    name,
                    boot,
                    incarnation,
                } => self.declare(&name, boot, incarnation),
            }
        }
    }

    fn tree_out(&mut self, out: Vec<TreeOut>) {
        for o in out {
            match o {
                TreeOut::Send { to, msg, lane } => match self.by_peer.get(&to).copied() {
                    Some(link) => self.queue(link, lane, msg),
                    None => self.counters.dropped_no_route += 1,
                },
                TreeOut::Deliver {
                    payload, from, hops, ..
                } => self.on_payload(payload, from, hops),
            }
        }
    }
}

/// Up to `count` linked, alive peers other than `target`, starting at a
/// random `offset` among them.
fn helpers(
    by_peer: &StableMap<Arc<str>, LinkId>,
    table: &MemberTable,
    target: &str,
    offset: usize,
    count: usize,
) -> Vec<Arc<str>> {
    let n = by_peer.len();
    if n == 0 {
        return Vec::new();
    }
    by_peer
        .keys()
        .cycle()
        .skip(offset % n)
        .take(n)
        .filter(|p| &***p != target && table.get(p).is_some_and(|m| m.status == Status::Alive))
        .take(count)
        .cloned()
        .collect()
}

fn change_of(status: Status) -> Change {
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

fn state_id(state: &StateRecord) -> MsgId {
    let hi = combine(combine(name_hash(&state.name), state.boot), state.version);
    let lo = combine(hi, 0x27d4_eb2f);
    (u128::from(hi) << 64) | u128::from(lo) | 1
}

/// A cheap upper guess of a message's encoded size, to split batches.
fn size_hint(msg: &Msg) -> usize {
    match msg {
        Msg::Gossip { payload, .. } => {
            64 + match payload {
                Payload::Envelope(b) => b.len(),
                Payload::State(s) => s.data.len() + 64,
                Payload::Update { .. } => 128,
            }
        }
        Msg::Members { records, .. } | Msg::DigestReply { records, .. } => 32 + records.len() * 128,
        Msg::States { states } => states.iter().map(|s| s.data.len() + 64).sum(),
        Msg::IHave { ids } => 8 + ids.len() * 20,
        Msg::Digest { buckets } => buckets.len() * 10,
        _ => 32,
    }
}

#[cfg(test)]
mod tests;
