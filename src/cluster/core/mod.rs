//! The cluster core: everything the ClusterBridge decides, as a plain state
//! machine in the manner of foca and chitchat. It owns no socket and no
//! timer. The caller feeds it link events, frames, commands and
//! [`ClusterCore::tick`], and carries out the [`Action`]s it returns: dial
//! this address, send this frame, close that link, deliver this envelope.
//! The node's actor drives it over TCP + Noise; the simulator drives
//! thousands of them over an in-memory network under a virtual clock.
//!
//! Its parts, each a plain struct with its own tests:
//! - [`members`]: the member table, its precedence rules and digest;
//! - [`rings`]: the overlay (which few members this node links to);
//! - [`detector`]: probes, local health and suspicion (Lifeguard);
//! - [`tree`]: the broadcast tree (built from the root's beacons, repaired
//!   the Plumtree way), for membership news, node states and ClusterBus
//!   envelopes alike.
//!
//! The core's own work is split by what it is about; each file adds
//! methods to [`ClusterCore`]:
//! - `mod.rs` (this file): the types, the inputs ([`ClusterCore::frame`],
//!   [`ClusterCore::tick`]) and the dispatch of messages;
//! - `links.rs`: links and dials (one preferred link per peer, overlay
//!   interest, idle closing, the link cap), and batching what is queued;
//! - `handshake.rs`: the hello, refusals, and stepping aside for an older
//!   process of this node's name;
//! - `join.rs`: joining through a seed, answering joiners, and sending a
//!   join on when a node is busy;
//! - `membership.rs`: applying member records, suspicion and death,
//!   refutation, leaving, and the overlay and root that follow from them;
//! - `pass_over.rs`: a suspect this node accused stops being its ring
//!   neighbour until it refutes or dies;
//! - `sync.rs`: anti-entropy with a neighbour, and node states;
//! - `broadcast.rs`: broadcasts and direct envelopes, and acting on what
//!   the tree delivers.

pub mod detector;
pub mod hash;
pub mod keyed;
pub mod members;
pub mod recent;
pub mod replica;
pub mod rings;
pub mod states;
pub mod tree;

mod bounds;
mod broadcast;
mod datasets;
mod handshake;
mod join;
mod links;
mod membership;
mod news;
mod pass_over;
mod proofs;
mod seals;
mod sync;

use self::detector::{Detector, DetectorCounters};
use self::hash::{name_hash, ring_position, StableMap, StableSet};
use self::keyed::HeldSet;
use self::members::{Member, MemberTable};
use self::rings::Rings;
use self::states::StateTable;
use self::tree::BroadcastTree;
use super::config::ClusterConfig;
use super::identity::NodeId;
use super::member_proof::{MemberProof, StateSeal};
use super::node_key::{NodeKey, NodePublicKey};
use super::protocol::{Entry, Frame, Lane, LinkMsg, Msg, ProtocolRange, Refusal, SetId, StateRecord, Status};
use crate::logging::LogThrottle;
use crate::token_bucket::TokenBucket;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

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
    /// Entries of a keyed dataset that this node holds now (new, or newer
    /// versions), and keys it dropped as obsolete.
    Entries {
        set: SetId,
        changed: Vec<Arc<Entry>>,
        removed: Vec<Arc<str>>,
    },
    /// Entries of a keyed dataset that peers offered and its rules refused
    /// (not held, not spread), each with why: the driver tells whoever owns
    /// the dataset, which may keep a record (the deployments table's
    /// Deployer writes audit lines). Peers offer a refused entry again at
    /// every exchange, so the same one comes here again and again.
    EntriesRefused {
        set: SetId,
        refused: Vec<(Arc<Entry>, String)>,
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
    #[error("this node holds no dataset {0}")]
    UnknownSet(SetId),
    #[error("the entry is refused: {0}")]
    Refused(String),
}

/// Whether the admission a peer's hello shows (its text) admits that
/// peer (its member identity and the identity key its link proved); if
/// not, why. The node gives the core this rule, so the core knows nothing
/// of operator keys.
pub type AdmissionRule = Box<dyn Fn(&NodeId, &NodePublicKey, &str) -> Result<(), String>>;

/// Counters of what the core decided (debug dump, metrics, simulator).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CoreCounters {
    pub suspicions_raised: u64,
    /// Suspects this node accused and passed over on its rings, taking the
    /// next member on as subject (see `pass_over.rs`).
    pub passed_over: u64,
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
    /// Messages a peer sent that this node could not read (a newer kind,
    /// or a variant it does not know), skipped without closing the link.
    pub skipped_msgs: u64,
    /// Sync messages about datasets this node does not hold, skipped.
    pub unknown_sets: u64,
    /// Keyed dataset entries taken, refused as invalid (bad input from a
    /// peer), dropped as already obsolete, and pruned.
    pub entries_taken: u64,
    pub entries_refused: u64,
    pub entries_obsolete: u64,
    pub entries_pruned: u64,
    /// Entries a neighbour sent in another version than its digest said,
    /// and entries it said it held and never sent.
    pub sync_mismatches: u64,
    pub sync_unanswered: u64,
    /// Member records (in a hello, news or a table exchange) whose name or
    /// tags break the bounds every node holds them to, refused unheld.
    pub records_refused: u64,
    /// Hellos refused for their identity key: not the key the link was
    /// made with, or another key than the one holding the name.
    pub identities_refused: u64,
    /// Hellos refused for want of an admission this node accepts.
    pub not_admitted: u64,
    /// Member records and proofs refused because the member's own proof
    /// does not cover them (see `proofs`).
    pub records_unproven: u64,
    /// News of new members dropped because its link had introduced its
    /// budget's worth (see `news`).
    pub news_over_budget: u64,
    /// New members refused because the member table was full of live ones
    /// (see `bounds`).
    pub table_full: u64,
    /// Dead and departed members forgotten early to make room for new ones.
    pub forgotten_for_room: u64,
    /// Signatures of members' proofs and seals checked (the CPU that
    /// signed records cost).
    pub signatures_checked: u64,
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
    /// The protocol version both sides speak, once the hello agreed one.
    version: u32,
    /// This node counts the link as overlay (told the peer so).
    i_want: bool,
    /// The peer counts it as overlay.
    peer_wants: bool,
    /// The X25519 static key the link's handshake proved the peer holds.
    peer_static: Option<[u8; 32]>,
    /// The peer answered our join on this link and does not count it as
    /// overlay: a busy seed hangs up then, which says nothing about its
    /// health.
    hangup_expected: bool,
    frames_in: u64,
    /// The new members this link may still introduce (see `news`).
    news: TokenBucket,
    /// New members the peer may still bring in its table in answer to this
    /// node's join (at most what a join answer holds): not news by a third
    /// party, so not charged to `news`.
    join_answer: usize,
}

impl Link {
    pub(super) fn peer_name(&self) -> Option<&Arc<str>> {
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

/// What a neighbour said it holds (key, version hash) of the entries asked
/// of it, since when.
type Claims = (Instant, Vec<(Arc<str>, u64)>);

/// This node's side of the cluster.
pub struct ClusterCore {
    cluster: String,
    config: ClusterConfig,
    me: Arc<NodeId>,
    /// The link protocol versions this node speaks (this build's, but for
    /// tests of mixed versions).
    protocol: ProtocolRange,
    incarnation: u32,
    standing: Standing,
    table: MemberTable,
    /// Every member's latest published state.
    states: StateTable,
    /// The keyed datasets this node holds for the layers above (the
    /// deployments table), by id.
    held: BTreeMap<SetId, HeldSet>,
    /// The wall clock at `wall_at`, in ms since the epoch: keyed entries'
    /// versions and ages are wall-clock based.
    wall_ms: u64,
    wall_at: Instant,
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
    /// Members this node accused and passes over on its rings while the
    /// suspicion runs (see `pass_over.rs`).
    passed_over: StableSet<Arc<str>>,
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
    /// This node's identity key, named in its hellos; none in the
    /// simulator, whose links prove no keys.
    identity: Option<NodePublicKey>,
    /// Signs this node's proofs about itself; none in the simulator.
    signer: Option<Arc<NodeKey>>,
    /// Each member's latest proof about itself (this node's own included),
    /// which the records about it are held to.
    proofs: StableMap<Arc<str>, Arc<MemberProof>>,
    /// When an unproven record was last logged: a flood logs a line per 10 s.
    unproven_log: LogThrottle,
    /// When news over a link's budget was last logged.
    news_log: LogThrottle,
    /// When a full member table was last logged.
    table_full_log: LogThrottle,
    /// Until then this node is learning the cluster, and news of new
    /// members is not limited (`new_members_grace`).
    learning_until: Instant,
    /// The seal of each member's state held (this node's own included),
    /// passed on with it.
    seals: StableMap<Arc<str>, StateSeal>,
    /// Seals that came in the frame being read, for the states after them.
    frame_seals: Vec<StateSeal>,
    /// The identity key each name is held by, as proven on a link with it
    /// (see `handshake::held_by_another`).
    holders: StableMap<Arc<str>, NodePublicKey>,
    /// This node's admission, shown in its hellos.
    admission: Option<String>,
    /// Set when this node requires an admission of every peer: whether the
    /// admission a hello shows admits that peer's proven key and name.
    admission_rule: Option<AdmissionRule>,
    /// When a refused record was last logged: a flood logs a line per 10 s.
    record_refusal_log: LogThrottle,
    /// Unreadable message kinds already logged, per peer.
    skipped_logged: StableSet<(Arc<str>, u32, u32)>,
    /// What each neighbour said it holds, of the entries asked of it.
    claims: StableMap<(LinkId, SetId), Claims>,
    pub counters: CoreCounters,
}

impl ClusterCore {
    /// A node alone, about to join. `seed` makes its random choices
    /// repeatable (the simulator); nodes pass a random one.
    pub fn new(cluster: &str, me: NodeId, config: ClusterConfig, seed: u64, now: Instant) -> ClusterCore {
        let learning_until = now + config.new_members_grace;
        let me = Arc::new(me);
        let mut rng = SmallRng::seed_from_u64(seed);
        let jitter = |rng: &mut SmallRng, d: Duration| d.mul_f64(rng.random_range(0.5..1.5));
        let mut core = ClusterCore {
            cluster: cluster.to_string(),
            table: MemberTable::new(me.clone(), now),
            states: StateTable::default(),
            held: BTreeMap::new(),
            wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            wall_at: now,
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
            protocol: ProtocolRange::OURS,
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
            passed_over: StableSet::default(),
            has_table: false,
            state_version: 0,
            outbox: StableMap::default(),
            actions: VecDeque::new(),
            rng,
            now,
            conflicts_logged: StableSet::default(),
            identity: None,
            signer: None,
            proofs: StableMap::default(),
            unproven_log: LogThrottle::new(Duration::from_secs(10), 1),
            news_log: LogThrottle::new(Duration::from_secs(10), 1),
            table_full_log: LogThrottle::new(Duration::from_secs(10), 1),
            learning_until,
            seals: StableMap::default(),
            frame_seals: Vec::new(),
            holders: StableMap::default(),
            admission: None,
            admission_rule: None,
            record_refusal_log: LogThrottle::new(Duration::from_secs(10), 1),
            skipped_logged: StableSet::default(),
            claims: StableMap::default(),
            counters: CoreCounters::default(),
        };
        // Alone, this node is the root of its own tree.
        let me = core.me.clone();
        core.tree.set_root(&me.name, me.boot, now);
        core
    }

    /// This node's identity key, named in every hello it sends and
    /// signing its proofs about itself.
    pub fn set_identity(&mut self, key: Arc<NodeKey>) {
        self.identity = Some(key.public());
        self.signer = Some(key);
        self.sign_me();
    }

    /// This node's admission (shown in its hellos), and the rule its
    /// peers' admissions are held to (none: it requires none).
    pub fn set_admission(&mut self, own: Option<String>, rule: Option<AdmissionRule>) {
        self.admission = own;
        self.admission_rule = rule;
        // Its proof shows its admission from now on.
        self.sign_me();
    }

    // ------------------------------------------------------------ queries

    /// The identity key of member `name`: this node's own, the one a link
    /// with that member proved, or the one its signed proof names (which
    /// reaches every node, linked or not).
    pub fn identity_of(&self, name: &str) -> Option<NodePublicKey> {
        if name == &*self.me.name {
            self.identity
        } else {
            self.key_of(name)
        }
    }

    /// The key that holds another member's name: the one its link proved,
    /// else the one its signed proof names.
    fn key_of(&self, name: &str) -> Option<NodePublicKey> {
        self.holders
            .get(name)
            .copied()
            .or_else(|| self.proofs.get(name).map(|p| p.key))
    }

    pub fn me(&self) -> &Arc<NodeId> {
        &self.me
    }

    /// Speaks `range` instead of this build's protocol versions: for tests
    /// of a fleet of mixed releases.
    pub fn speak(&mut self, range: ProtocolRange) {
        self.protocol = range;
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

    /// The latest published state of `name` that reached this node.
    pub fn state_of(&self, name: &str) -> Option<&Arc<StateRecord>> {
        self.states.get(name)
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
            + self.states.heap_bytes()
            + self.held.values().map(|h| h.entries.heap_bytes()).sum::<usize>()
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
                    "protocol": l.version,
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
            "passed_over": self.passed_over.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
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

    /// When [`ClusterCore::tick`] has work next. A node that left or was
    /// refused its name runs neither probes nor rounds, so their deadlines
    /// stand still in the past: counting them would wake it at once, and
    /// again, for as long as it stays out.
    pub fn next_deadline(&self) -> Instant {
        match self.standing {
            Standing::Left => return self.now + Duration::from_secs(3600),
            Standing::Refused { .. } => return self.next_housekeeping,
            Standing::Alone | Standing::Joined => {}
        }
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

    // ------------------------------------------------------------ inputs

    /// A frame arrived on `link`.
    pub fn frame(&mut self, link: LinkId, frame: Frame, now: Instant) {
        self.now = now;
        // Seals cover the states of their own frame only.
        self.frame_seals.clear();
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
            (Frame::Msgs(msgs), None) if matches!(&msgs[..], [Msg::Link(LinkMsg::Busy { .. })]) => {
                let Some(Msg::Link(LinkMsg::Busy { peers })) = msgs.into_iter().next() else {
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

    pub(super) fn jitter(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.random_range(0.75..1.25))
    }

    pub(super) fn housekeeping(&mut self) {
        let now = self.now;
        self.tree.expire(now);
        self.prune_entries();
        self.prune_proofs();
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
            self.forgotten(&name);
        }
    }

    // ------------------------------------------------------------ dispatch

    /// One message from `peer`, handed to its sub-protocol.
    pub(super) fn on_msg(&mut self, link: LinkId, peer: &Arc<NodeId>, msg: Msg) {
        let from = &peer.name;
        match msg {
            Msg::Link(m) => match m {
                LinkMsg::Join => self.on_join(link),
                LinkMsg::JoinTable { records } => self.on_join_table(link, records),
                LinkMsg::JoinDone => self.on_join_done(link, from),
                LinkMsg::Neighbour { wanted } => self.on_neighbour(link, from, wanted),
                LinkMsg::Refused(refusal) => self.on_refused(link, refusal),
                // Only ever sent in place of a hello (see `frame`).
                LinkMsg::Busy { .. } => {
                    self.counters.malformed += 1;
                    warn!(link, peer = %from, "a busy answer after hello; closing the link");
                    self.close(link, "protocol violation: busy after hello");
                }
            },
            Msg::Probe(m) => self.on_probe(link, from, m),
            Msg::Tree(m) => self.on_tree(from, m),
            Msg::Sync(m) => self.on_sync(link, m),
            Msg::Skipped { group, kind, reason } => self.on_skipped(link, from, group, kind, &reason),
        }
    }

    /// A message this node could not read. A newer peer may send kinds this
    /// node does not know: the link stays, and the first of each kind from
    /// each peer is logged.
    fn on_skipped(&mut self, link: LinkId, from: &Arc<str>, group: u32, kind: u32, reason: &str) {
        self.counters.skipped_msgs += 1;
        let version = self.links.get(&link).map_or(0, |l| l.version);
        if self.skipped_logged.len() < 1024 && self.skipped_logged.insert((from.clone(), group, kind)) {
            info!(peer = %from, group, kind, protocol = version, %reason,
                "skipped a message this node cannot read (the peer may run a newer release); the link stays");
        } else {
            debug!(peer = %from, group, kind, %reason, "skipped a message this node cannot read");
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

#[cfg(test)]
mod tests;
