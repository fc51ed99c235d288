//! The core's rules, each on a few cores joined by an instant in-test
//! network under a mocked clock. (Many-node behaviour is tested on the
//! simulator, in `tests/cluster_sim.rs`.)

use super::keyed::AnyEntry;
use super::replica::Replicated as _;
use super::replica::{MAX_ITEMS_CATCHING_UP, MAX_ITEMS_PER_EXCHANGE};
use super::*;
use crate::cluster::protocol::{
    Entry, Hello, Items, ProbeMsg, ProtocolRange, Record, Refusal, StateRecord, SyncMsg, TreeMsg, SET_DEPLOYMENTS,
    SET_MEMBERS, SET_STATES,
};
use std::collections::{BTreeMap, HashMap};

/// Cores joined by instant links.
struct Net {
    cores: Vec<ClusterCore>,
    /// Which cores run.
    up: Vec<bool>,
    /// Which cores are starved: they run nothing and read nothing, but
    /// their host accepts connections and acks (see `stall`).
    stalled: Vec<bool>,
    /// Dials accepted by a stalled core's host, waiting for its handshake:
    /// (dialer, address, stalled core).
    waiting_dials: Vec<(usize, SocketAddr, usize)>,
    now: Instant,
    /// Our end of a link → (peer core, peer's end).
    links: HashMap<LinkId, (usize, usize, LinkId)>,
    next: LinkId,
    /// Every action each core took, for assertions.
    log: Vec<(usize, Action)>,
}

impl Net {
    fn new() -> Net {
        Net {
            cores: Vec::new(),
            up: Vec::new(),
            stalled: Vec::new(),
            waiting_dials: Vec::new(),
            now: Instant::now(),
            links: HashMap::new(),
            next: 1,
            log: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, port: u16, boot: u64) -> usize {
        let id = NodeId::new(name, addr(port), boot, BTreeMap::new());
        let i = self.cores.len();
        self.cores
            .push(ClusterCore::new("test", id, ClusterConfig::local(), i as u64, self.now));
        self.up.push(true);
        self.stalled.push(false);
        i
    }

    fn connect(&mut self, i: usize, j: usize, addr: SocketAddr) {
        let (a, b) = (self.next, self.next + 1);
        self.next += 2;
        self.links.insert(a, (i, j, b));
        self.links.insert(b, (j, i, a));
        let from = self.cores[i].me().addr;
        let now = self.now;
        self.cores[j].link_up(b, Direction::Inbound, from, now);
        self.cores[i].link_up(a, Direction::Outbound, addr, now);
    }

    /// Core `i` gets no CPU until `resume`, and every link to it closes
    /// (as a busy seed hangs up after answering joins), so its observers
    /// must dial it to probe it.
    fn stall(&mut self, i: usize) {
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
    fn resume(&mut self, i: usize) {
        self.stalled[i] = false;
        for (dialer, addr, j) in std::mem::take(&mut self.waiting_dials) {
            self.connect(dialer, j, addr);
        }
        self.settle();
    }

    fn core_at(&self, a: SocketAddr) -> Option<usize> {
        (0..self.cores.len()).find(|i| self.up[*i] && self.cores[*i].me().addr == a)
    }

    /// Delivers every action until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.cores.len() {
                while let Some(action) = self.cores[i].poll() {
                    moved = true;
                    self.log.push((i, action.clone()));
                    self.carry(i, action);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn carry(&mut self, i: usize, action: Action) {
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
    fn advance(&mut self, d: Duration) {
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

    fn join(&mut self, i: usize, j: usize) {
        let a = self.cores[j].me().addr;
        self.cores[i].join(a, self.now);
        self.settle();
    }

    /// Kills core `i`: its links close, as its kernel would.
    fn kill(&mut self, i: usize) {
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

    fn status(&self, observer: usize, name: &str) -> Option<Status> {
        self.cores[observer].member(name).map(|m| m.status)
    }

    fn joined(&self, i: usize) -> Vec<&Result<Arc<str>, JoinError>> {
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

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

#[test]
fn a_join_exchanges_tables_and_every_node_learns_every_other() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    let c = net.add("c", 3, 100);
    net.join(b, a);
    net.join(c, a);
    net.advance(Duration::from_millis(500));
    for i in [a, b, c] {
        assert_eq!(net.cores[i].up_count(), 3, "{} lists everyone", net.cores[i].me().name);
        assert_eq!(net.cores[i].standing(), &Standing::Joined);
    }
    assert!(matches!(net.joined(b)[..], [Ok(ref n)] if &**n == "a"));
    // A small cluster is all one overlay.
    assert_eq!(net.cores[c].linked_peers(), 2);
}

#[test]
fn joining_yourself_or_nothing_is_a_clear_answer() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    net.cores[a].join(addr(1), net.now);
    net.cores[a].join(addr(9), net.now);
    net.settle();
    let answers = net.joined(a);
    assert!(matches!(answers[0], Err(JoinError::Myself)));
    assert!(matches!(answers[1], Err(JoinError::Link(e)) if e.contains("refused")));
    assert_eq!(net.cores[a].standing(), &Standing::Alone);
}

#[test]
fn a_killed_member_is_suspected_confirmed_and_declared_dead() {
    let mut net = Net::new();
    let ids: Vec<usize> = (0..5).map(|i| net.add(&format!("n{i}"), i as u16 + 1, 100)).collect();
    for i in &ids[1..] {
        net.join(*i, ids[0]);
    }
    net.advance(Duration::from_secs(1));
    net.kill(ids[4]);
    // Its links closed: observers probe it at once, fail, and agree.
    net.advance(Duration::from_secs(2));
    for i in &ids[..4] {
        assert_eq!(net.status(*i, "n4"), Some(Status::Dead), "seen by n{i}");
    }
    let deaths: u64 = ids[..4].iter().map(|i| net.cores[*i].counters.deaths_declared).sum();
    assert!(deaths >= 1);
    let false_alarms: u64 = ids[..4].iter().map(|i| net.cores[*i].counters.refutations).sum();
    assert_eq!(false_alarms, 0);
}

#[test]
fn a_starved_member_whose_host_accepts_dials_is_not_suspected_within_the_grace() {
    let mut net = Net::new();
    let ids: Vec<usize> = (0..5).map(|i| net.add(&format!("n{i}"), i as u16 + 1, 100)).collect();
    for i in &ids[1..] {
        net.join(*i, ids[0]);
    }
    net.advance(Duration::from_secs(1));
    // n4 gets no CPU for 3 s (five suspicion minima of the local preset,
    // under its 5 s stall grace), and its links are gone: observers dial
    // it, its host accepts, its process never finishes the handshake.
    net.stall(ids[4]);
    net.advance(Duration::from_secs(3));
    for i in &ids[..4] {
        assert_eq!(net.status(*i, "n4"), Some(Status::Alive), "seen by n{i}");
    }
    let excused: u64 = ids[..4]
        .iter()
        .map(|i| net.cores[*i].detector_counters().stalls_excused)
        .sum();
    assert!(excused > 0, "its observers saw a stall, not a crash");
    net.resume(ids[4]);
    net.advance(Duration::from_secs(2));
    for i in &ids[..4] {
        assert_eq!(net.status(*i, "n4"), Some(Status::Alive), "seen by n{i}");
    }
    let raised: u64 = ids[..4].iter().map(|i| net.cores[*i].counters.suspicions_raised).sum();
    assert_eq!(raised, 0, "nobody accused it");
}

#[test]
fn a_node_suspected_or_declared_dead_refutes_and_comes_back() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    // a hears a rumour that b is dead (as after a partition).
    let b_id = net.cores[b].me().clone();
    let rumour = Record {
        id: b_id,
        incarnation: 0,
        status: Status::Dead,
    };
    let link = *net.links.iter().find(|(_, l)| l.0 == b).map(|(_, l)| &l.2).unwrap();
    let now = net.now;
    net.cores[a].frame(
        link,
        Frame::Msgs(vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![rumour.clone()]),
        })]),
        now,
    );
    net.settle();
    assert_eq!(
        net.status(a, "b"),
        Some(Status::Alive),
        "anti-entropy news only suspects, and b refutes at once"
    );
    assert_eq!(net.cores[b].incarnation(), 1);
    assert_eq!(net.cores[a].member("b").unwrap().incarnation, 1);
    assert_eq!(net.cores[b].counters.refutations, 1);
    assert!(net.cores[b].health() >= 1, "refuting costs local health");
}

#[test]
fn a_restart_at_the_same_address_takes_over_at_once() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    net.kill(b);
    let b2 = net.add("b", 2, 200);
    net.join(b2, a);
    net.advance(Duration::from_millis(100));
    let held = net.cores[a].member("b").unwrap();
    assert_eq!((held.id.boot, held.status), (200, Status::Alive));
    assert!(net.log.iter().any(|(i, act)| *i == a
        && matches!(
            act,
            Action::Member {
                change: Change::Restarted,
                ..
            }
        )));
}

#[test]
fn a_second_live_process_of_a_name_is_refused_and_gets_in_once_the_first_is_gone() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let x = net.add("x", 2, 100);
    net.join(x, a);
    net.advance(Duration::from_millis(300));
    // Another process claims "x" from another address, started later.
    let dup = net.add("x", 3, 200);
    net.join(dup, a);
    net.advance(Duration::from_millis(300));
    match net.cores[dup].standing() {
        Standing::Refused { holder, reason } => {
            assert_eq!(*holder, addr(2), "names the holder's address");
            assert!(reason.contains("10.0.0.1:2"), "{reason}");
        }
        other => panic!("the duplicate should be refused, is {other:?}"),
    }
    assert!(matches!(net.joined(dup)[..], [Err(JoinError::Refused(_))]));
    let held = net.cores[a].member("x").unwrap();
    assert_eq!(
        (held.id.boot, held.status),
        (100, Status::Alive),
        "the holder keeps its name"
    );
    assert_eq!(net.cores[x].standing(), &Standing::Joined);
    // Retried while the holder lives: refused again, nothing flaps.
    net.join(dup, a);
    net.advance(Duration::from_millis(300));
    assert!(matches!(net.cores[dup].standing(), Standing::Refused { .. }));
    assert_eq!(net.cores[a].member("x").unwrap().id.boot, 100);
    assert_eq!(net.cores[x].counters.refutations, 0);

    // The holder goes away; the next attempt gets in.
    net.cores[x].leave(net.now);
    net.settle();
    net.kill(x);
    net.advance(Duration::from_millis(100));
    net.join(dup, a);
    net.advance(Duration::from_millis(300));
    assert_eq!(net.cores[dup].standing(), &Standing::Joined);
    let held = net.cores[a].member("x").unwrap();
    assert_eq!((held.id.boot, held.status), (200, Status::Alive));
}

#[test]
fn the_older_of_two_live_claims_wins_wherever_the_newer_was_seen_first() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let old = net.add("x", 2, 100);
    let new = net.add("x", 3, 200);
    // The newer one reaches a first; then the older one says hello.
    net.join(new, a);
    net.advance(Duration::from_millis(100));
    assert_eq!(net.cores[a].member("x").unwrap().id.boot, 200);
    net.join(old, a);
    net.advance(Duration::from_millis(300));
    assert_eq!(
        net.cores[a].member("x").unwrap().id.boot,
        100,
        "the older boot keeps the name"
    );
    assert!(matches!(net.cores[new].standing(), Standing::Refused { .. }));
    assert_eq!(net.cores[old].standing(), &Standing::Joined);
}

#[test]
fn a_node_that_leaves_is_listed_left_not_dead() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    let c = net.add("c", 3, 100);
    net.join(b, a);
    net.join(c, a);
    net.advance(Duration::from_millis(300));
    net.cores[c].leave(net.now);
    net.settle();
    net.kill(c);
    net.advance(Duration::from_secs(6));
    assert_eq!(net.status(a, "c"), Some(Status::Left));
    assert_eq!(net.status(b, "c"), Some(Status::Left));
    assert_eq!(net.cores[a].counters.members_died, 0);
}

#[test]
fn a_frame_before_hello_or_a_second_hello_closes_the_link() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let now = net.now;
    net.cores[a].link_up(7, Direction::Inbound, addr(9), now);
    net.cores[a].frame(7, Frame::Msgs(vec![Msg::Probe(ProbeMsg::Ping { seq: 1 })]), now);
    assert!(net.cores[a].counters.malformed == 1);
    let closes: Vec<Action> = std::iter::from_fn(|| net.cores[a].poll())
        .filter(|a| matches!(a, Action::Close { link: 7, .. }))
        .collect();
    assert_eq!(closes.len(), 1);
    assert_eq!(net.cores[a].link_count(), 0);

    // A hello from another cluster is refused with the reason.
    net.cores[a].link_up(8, Direction::Inbound, addr(9), now);
    let stranger = Arc::new(NodeId::new("s", addr(9), 1, BTreeMap::new()));
    net.cores[a].frame(
        8,
        Frame::Hello(Hello {
            protocol: ProtocolRange::OURS,
            cluster: "other".into(),
            id: stranger,
            incarnation: 0,
        }),
        now,
    );
    let sent: Vec<Action> = std::iter::from_fn(|| net.cores[a].poll()).collect();
    assert!(sent
        .iter()
        .any(|a| matches!(a, Action::Send { frame: Frame::Msgs(m), .. }
        if matches!(m[..], [Msg::Link(LinkMsg::Refused(Refusal::OtherCluster { .. }))]))));
    assert!(sent.iter().any(|a| matches!(a, Action::Close { link: 8, .. })));
    assert!(net.cores[a].member("s").is_none());
}

#[test]
fn states_reach_every_node_once_and_late_ones_are_pulled_by_digest() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    net.cores[a]
        .set_state(Bytes::from_static(b"report one"), net.now)
        .unwrap();
    net.settle();
    let states = |net: &Net, i: usize| -> Vec<Bytes> {
        net.log
            .iter()
            .filter(|(c, _)| *c == i)
            .filter_map(|(_, act)| match act {
                Action::State { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(states(&net, b), vec![Bytes::from_static(b"report one")]);
    // A node that joins later gets it through the table exchange.
    let c = net.add("c", 3, 100);
    net.join(c, b);
    net.advance(Duration::from_secs(3));
    assert_eq!(states(&net, c), vec![Bytes::from_static(b"report one")]);
    assert_eq!(net.cores[c].state_of("a").map(|s| s.version), Some(1));
    // Too large a state is refused, not sent.
    let huge = Bytes::from(vec![0u8; ClusterConfig::local().max_state_bytes + 1]);
    assert!(matches!(
        net.cores[a].set_state(huge, net.now),
        Err(CoreError::TooLarge { .. })
    ));
}

#[test]
fn direct_messages_reach_their_node_and_silent_nodes_are_errors() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    net.cores[a]
        .send_direct("b", Bytes::from_static(b"{}"), net.now)
        .unwrap();
    net.settle();
    assert!(net
        .log
        .iter()
        .any(|(i, act)| *i == b && matches!(act, Action::Deliver { direct: true, .. })));
    assert!(matches!(
        net.cores[a].send_direct("nobody", Bytes::new(), net.now),
        Err(CoreError::NotAlive(_))
    ));
}

/// A node with no members has nothing to probe; its next deadline must still
/// move on, or its actor wakes in a tight loop (a lone node burnt 8% of a
/// core, and 200 nodes started at once each spun until their join landed).
#[test]
fn a_lone_node_sleeps_between_deadlines() {
    let mut net = Net::new();
    let a = net.add("a", 1, 1);
    let core = &mut net.cores[a];
    let start = net.now;
    let mut now = start;
    let mut wakeups = 0;
    while now < start + Duration::from_secs(10) {
        core.tick(now);
        drain(core);
        let next = core.next_deadline();
        assert!(next > now, "deadline {next:?} is not after the tick at {now:?}");
        now = next;
        wakeups += 1;
    }
    // local(): probes every 250 ms, anti-entropy, reconnect and housekeeping
    // each about once a second, beacons every 5 s.
    assert!(wakeups <= 100, "{wakeups} wakeups in 10 s for a lone node");
}

/// The messages among `actions` sent on `link`.
fn sent_on(actions: &[Action], link: LinkId) -> Vec<Msg> {
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

fn drain(core: &mut ClusterCore) -> Vec<Action> {
    std::iter::from_fn(|| core.poll()).collect()
}

/// In a mass start every joiner's only known member is the seed, busy
/// answering all of them; a joiner that probed it before the table came
/// accused it of being busy (200 real nodes: the seed was declared dead
/// within 2.5 s, and the false deaths kept the cluster from converging).
#[test]
fn a_joiner_does_not_accuse_its_busy_seed_before_the_table_arrives() {
    let now = Instant::now();
    let config = ClusterConfig::local();
    let mut joiner = ClusterCore::new(
        "test",
        NodeId::new("j", addr(2), 100, BTreeMap::new()),
        config.clone(),
        1,
        now,
    );
    let mut seed = ClusterCore::new("test", NodeId::new("s", addr(1), 100, BTreeMap::new()), config, 2, now);
    joiner.join(addr(1), now);
    assert!(matches!(drain(&mut joiner)[..], [Action::Dial { .. }]));
    // The link comes up and the seed says hello; it never gets further.
    joiner.link_up(1, Direction::Outbound, addr(1), now);
    seed.link_up(1, Direction::Inbound, addr(2), now);
    for action in drain(&mut seed) {
        if let Action::Send { frame, .. } = action {
            joiner.frame(1, Frame::decode(frame.encode()).unwrap(), now);
        }
    }
    let mut to_seed = Vec::new();
    let mut t = now;
    while t < now + Duration::from_secs(3) {
        t += Duration::from_millis(10);
        joiner.tick(t);
        to_seed.extend(sent_on(&drain(&mut joiner), 1));
    }
    assert!(to_seed.contains(&Msg::Link(LinkMsg::Join)), "it asked for the table");
    assert!(
        !to_seed.iter().any(|m| matches!(m, Msg::Probe(ProbeMsg::Ping { .. }))),
        "it probed the seed: {to_seed:?}"
    );
    assert_eq!(joiner.member("s").map(|m| m.status), Some(Status::Alive));
}

/// A node starved of CPU wakes long after its probe timed out, while the
/// ack waits unread in its own queue; it must read the ack before it
/// accuses anyone.
#[test]
fn a_late_wake_up_reads_the_waiting_ack_before_accusing() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_secs(1));
    let (&to_b, &(_, _, to_a)) = net.links.iter().find(|(_, l)| l.0 == a && l.1 == b).unwrap();
    // `a` wakes on time and pings `b`, which acks at once...
    let mut t = net.now;
    let ping = loop {
        t = net.cores[a].next_deadline().max(t);
        net.cores[a].tick(t);
        if let Some(ping) = sent_on(&drain(&mut net.cores[a]), to_b)
            .into_iter()
            .find(|m| matches!(m, Msg::Probe(ProbeMsg::Ping { .. })))
        {
            break ping;
        }
    };
    net.cores[b].frame(to_a, Frame::Msgs(vec![ping]), t);
    let ack: Vec<Action> = drain(&mut net.cores[b]);
    // ...but `a` gets the CPU back only two seconds later, its timer first.
    let late = t + Duration::from_secs(2);
    net.cores[a].tick(late);
    let _ = drain(&mut net.cores[a]);
    for action in ack {
        if let Action::Send { link, frame, .. } = action {
            if link == to_a {
                net.cores[a].frame(to_b, frame, late);
            }
        }
    }
    net.cores[a].tick(late + Duration::from_millis(50));
    let _ = drain(&mut net.cores[a]);
    assert_eq!(net.status(a, "b"), Some(Status::Alive));
    assert_eq!(net.cores[a].counters.suspicions_raised, 0);
    assert!(net.cores[a].counters.late_wakeups >= 1);
}

/// Closing a link is no evidence against its peer: only a link that broke,
/// or that the peer closed unannounced, makes a node probe the peer at once.
/// (A busy seed hangs up on each joiner after answering it; its joiners
/// probed it at once, found it busy, and declared it dead.)
#[test]
fn a_link_this_node_closes_does_not_make_it_probe_the_peer() {
    for announced in [false, true] {
        let mut net = Net::new();
        let a = net.add("a", 1, 100);
        let b = net.add("b", 2, 100);
        net.join(b, a);
        net.advance(Duration::from_secs(1));
        let (&b_to_a, &(_, _, a_to_b)) = net.links.iter().find(|(_, l)| l.0 == b && l.1 == a).unwrap();
        net.links.clear();
        if announced {
            // `a` answered a join on this link and hangs up as a busy seed does.
            net.cores[b].links.get_mut(&b_to_a).unwrap().hangup_expected = true;
            net.cores[b].link_down(b_to_a, "peer closed the link", net.now);
        } else {
            net.cores[b].close(b_to_a, "idle");
        }
        net.cores[a].link_down(a_to_b, "peer closed the link", net.now);
        let now = net.now + Duration::from_millis(1);
        net.cores[b].tick(now);
        let dials: Vec<Action> = drain(&mut net.cores[b])
            .into_iter()
            .filter(|x| matches!(x, Action::Dial { .. }))
            .collect();
        assert!(
            dials.is_empty(),
            "announced {announced}: it dialed `a` to probe it: {dials:?}"
        );
    }
}

#[test]
fn a_rumour_with_the_highest_incarnation_is_refuted_without_overflow() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    let rumour = Record {
        id: net.cores[b].me().clone(),
        incarnation: u32::MAX,
        status: Status::Suspect,
    };
    // b's end of its link to a: b hears it from a.
    let link = *net.links.iter().find(|(_, l)| l.0 == a).map(|(_, l)| &l.2).unwrap();
    let now = net.now;
    net.cores[b].frame(
        link,
        Frame::Msgs(vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![rumour]),
        })]),
        now,
    );
    net.settle();
    assert_eq!(net.cores[b].incarnation(), u32::MAX);
    assert_eq!(net.cores[b].counters.refutations, 1);
}

/// A taken host sent one member record with a 900,000-character name,
/// which every node held and spread and which then broke the CLI
/// everywhere, and records with 20,000 tags. Names and tags now have hard
/// bounds that every node checks on every record it is sent.
#[test]
fn member_records_beyond_the_bounds_on_names_and_tags_are_refused_unheld() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    net.advance(Duration::from_millis(200));
    let huge_name = Record {
        id: Arc::new(NodeId::new(&"n".repeat(900_000), addr(40), 1, BTreeMap::new())),
        incarnation: 0,
        status: Status::Alive,
    };
    let many_tags: BTreeMap<String, String> = (0..20_000).map(|i| (format!("k{i}"), "v".into())).collect();
    let tagged = Record {
        id: Arc::new(NodeId::new("tagged", addr(41), 1, many_tags)),
        incarnation: 0,
        status: Status::Alive,
    };
    let fine = Record {
        id: Arc::new(NodeId::new("fine", addr(42), 1, BTreeMap::new())),
        incarnation: 0,
        status: Status::Alive,
    };
    let link = *net.links.iter().find(|(_, l)| l.0 == a).map(|(_, l)| &l.2).unwrap();
    let now = net.now;
    net.cores[b].frame(
        link,
        Frame::Msgs(vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![huge_name, tagged, fine]),
        })]),
        now,
    );
    net.settle();
    let b_core = &net.cores[b];
    assert_eq!(b_core.counters.records_refused, 2);
    assert!(b_core.member("tagged").is_none());
    assert!(
        b_core.member("fine").is_some(),
        "a record within the bounds beside them is held"
    );
    assert!(
        b_core.members().all(|m| m.id.name.len() <= 64),
        "no oversized name is held"
    );
    assert!(net.cores[a].member("tagged").is_none(), "nor spread to a");
    assert!(
        net.cores[a].link_count() > 0,
        "the link stays: the peer may be relaying"
    );

    // A hello that names itself beyond the bounds closes that link.
    let now = net.now;
    net.cores[a].link_up(90, Direction::Inbound, addr(43), now);
    net.cores[a].frame(
        90,
        Frame::Hello(Hello {
            protocol: ProtocolRange::OURS,
            cluster: "test".into(),
            id: Arc::new(NodeId::new(&"x".repeat(65), addr(43), 1, BTreeMap::new())),
            incarnation: 0,
        }),
        now,
    );
    let sent: Vec<Action> = std::iter::from_fn(|| net.cores[a].poll()).collect();
    assert!(sent.iter().any(|x| matches!(x, Action::Close { link: 90, .. })));
    assert_eq!(net.cores[a].counters.records_refused, 1);
    assert!(net.cores[a].member(&"x".repeat(65)).is_none());
}

/// Member records among `msgs`: join tables, and those a sync carries.
fn records_sent(msgs: &[Msg]) -> Vec<Record> {
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

/// In a mass start of 10,000 the seed wrote its whole table to every
/// joiner (about 2.5 GB in all) and held 3,990 links while it did; and a
/// node that had just joined learnt the rest one bucket (156 records) per
/// 200 ms exchange, so it took 8-10 s to list everyone. Now a join is
/// answered with a bounded sample, and a node whose digest differs in most
/// buckets is sent many buckets at once.
#[test]
fn a_joiner_of_a_large_cluster_gets_a_bounded_sample_then_catches_up_in_large_exchanges() {
    let now = Instant::now();
    let config = ClusterConfig::local();
    let mut seed = ClusterCore::new(
        "test",
        NodeId::new("s", addr(1), 100, BTreeMap::new()),
        config.clone(),
        2,
        now,
    );
    for i in 0..10_000u16 {
        let id = Arc::new(NodeId::new(&format!("m{i}"), addr(10_000 + i), 100, BTreeMap::new()));
        seed.table.apply(
            &Record {
                id,
                incarnation: 0,
                status: Status::Alive,
            },
            now,
        );
    }
    let mut joiner = ClusterCore::new("test", NodeId::new("j", addr(2), 100, BTreeMap::new()), config, 1, now);
    joiner.join(addr(1), now);
    drain(&mut joiner);
    joiner.link_up(1, Direction::Outbound, addr(1), now);
    seed.link_up(1, Direction::Inbound, addr(2), now);
    // Carry frames both ways until the join is answered.
    let mut to_joiner = Vec::new();
    for _ in 0..4 {
        for action in drain(&mut joiner) {
            if let Action::Send { frame, .. } = action {
                seed.frame(1, Frame::decode(frame.encode()).unwrap(), now);
            }
        }
        for action in drain(&mut seed) {
            if let Action::Send { frame, .. } = action {
                let frame = Frame::decode(frame.encode()).unwrap();
                if let Frame::Msgs(msgs) = &frame {
                    to_joiner.extend(msgs.clone());
                }
                joiner.frame(1, frame, now);
            }
        }
    }
    let sample = records_sent(&to_joiner);
    assert!(
        (2..=MAX_JOIN_RECORDS).contains(&sample.len()),
        "{} records answered a join",
        sample.len()
    );
    assert!(sample.iter().any(|r| &*r.id.name == "s"), "the seed is in its sample");
    assert_eq!(joiner.standing(), &Standing::Joined);
    let known = joiner.up_count();
    assert!(known > 1 && known < 10_001, "the joiner lists {known}");

    // The joiner's digest differs from the seed's in every bucket: the
    // seed answers with far more than one bucket's worth.
    seed.frame(
        1,
        Frame::Msgs(vec![Msg::Sync(SyncMsg::Digest {
            sets: vec![(SET_MEMBERS, joiner.table.digest().buckets().to_vec())],
        })]),
        now,
    );
    let reply = records_sent(&sent_on(&drain(&mut seed), 1));
    assert!(
        reply.len() > 4 * MAX_ITEMS_PER_EXCHANGE && reply.len() <= MAX_ITEMS_CATCHING_UP + 200,
        "{} records in one exchange",
        reply.len()
    );
}

/// Fills core `i`'s links up to its cap with inbound connections that never
/// say hello (and are never timed out), as a seed's are in a mass start.
fn fill_links(net: &mut Net, i: usize) {
    net.cores[i].config.hello_timeout = Duration::from_secs(3600);
    let mut fake = 1_000_000;
    while net.cores[i].link_count() < net.cores[i].config.link_cap {
        let now = net.now;
        net.cores[i].link_up(fake, Direction::Inbound, addr(40_000 + fake as u16 % 1000), now);
        fake += 1;
    }
    net.settle();
}

#[test]
fn a_seed_at_its_link_cap_sends_a_joiner_on_to_a_member_it_names() {
    let mut net = Net::new();
    let seed = net.add("seed", 1, 1);
    let member = net.add("member", 2, 1);
    net.join(member, seed);
    fill_links(&mut net, seed);
    let cap = net.cores[seed].config.link_cap;

    let joiner = net.add("joiner", 3, 1);
    net.join(joiner, seed);

    assert_eq!(net.cores[seed].counters.links_turned_away, 1);
    assert_eq!(net.cores[joiner].counters.joins_redirected, 1);
    assert!(
        net.cores[seed].link_count() <= cap,
        "the seed holds {} links",
        net.cores[seed].link_count()
    );
    // Answered under the address the driver asked for, by the member.
    let answers: Vec<(SocketAddr, &Result<Arc<str>, JoinError>)> = net
        .log
        .iter()
        .filter(|(c, _)| *c == joiner)
        .filter_map(|(_, a)| match a {
            Action::Joined { addr, result } => Some((*addr, result)),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&answers[..], [(a, Ok(name))] if *a == net.cores[seed].me().addr && &**name == "member"),
        "{answers:?}"
    );
    assert_eq!(net.cores[joiner].standing(), &Standing::Joined);
    // The seed learns the joiner without a link from it.
    net.advance(Duration::from_secs(5));
    for i in [seed, member, joiner] {
        assert_eq!(net.cores[i].up_count(), 3, "core {i} lists {}", net.cores[i].up_count());
    }
}

#[test]
fn a_join_turned_away_everywhere_is_answered_busy_not_left_waiting() {
    let mut net = Net::new();
    let seed = net.add("seed", 1, 1);
    fill_links(&mut net, seed);
    let joiner = net.add("joiner", 3, 1);
    net.join(joiner, seed);
    assert!(
        matches!(net.joined(joiner)[..], [Err(JoinError::Busy)]),
        "{:?}",
        net.joined(joiner)
    );
    assert_ne!(net.cores[joiner].standing(), &Standing::Joined);
}

#[test]
fn a_probe_turned_away_by_a_busy_member_counts_as_answered() {
    let mut net = Net::new();
    let target = net.add("target", 1, 1);
    let observer = net.add("observer", 2, 1);
    net.join(observer, target);
    net.advance(Duration::from_secs(1));
    // Every link between the two goes; the target holds its cap, so the
    // observer's probes must dial and are turned away.
    let between: Vec<LinkId> = net
        .links
        .iter()
        .filter(|(_, l)| l.0 == observer && l.1 == target)
        .map(|(id, _)| *id)
        .collect();
    for link in between {
        let (_, _, peer) = net.links.remove(&link).expect("listed");
        net.links.remove(&peer);
        let now = net.now;
        net.cores[observer].link_down(link, "test cut", now);
        net.cores[target].link_down(peer, "test cut", now);
    }
    fill_links(&mut net, target);
    net.advance(Duration::from_secs(10));

    assert!(
        net.cores[target].counters.links_turned_away > 0,
        "the observer never dialed"
    );
    // Not even a stall excused by the host check: the busy answer shows
    // the process itself is alive.
    let detector = net.cores[observer].detector_counters();
    assert_eq!(detector.stalls_excused, 0, "{detector:?}");
    assert_eq!(net.cores[observer].counters.suspicions_raised, 0);
    assert_eq!(net.status(observer, "target"), Some(Status::Alive));
}

/// Every frame three cores sent each other while joining, broadcasting,
/// publishing states, and suspecting and declaring a killed member: the
/// seeds the fuzz test below mutates.
fn frame_corpus() -> &'static [Bytes] {
    static CORPUS: std::sync::OnceLock<Vec<Bytes>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut net = Net::new();
        let a = net.add("a", 1, 1);
        let b = net.add("b", 2, 1);
        let c = net.add("c", 3, 1);
        net.join(b, a);
        net.join(c, a);
        net.advance(Duration::from_secs(1));
        let now = net.now;
        net.cores[a]
            .set_state(Bytes::from_static(b"{\"ok\":true}"), now)
            .unwrap();
        net.cores[b]
            .broadcast(7, Bytes::from_static(b"{\"v\":1}"), now)
            .unwrap();
        net.settle();
        net.kill(c);
        net.advance(Duration::from_secs(6));
        let mut corpus: Vec<Bytes> = net
            .log
            .iter()
            .filter_map(|(_, action)| match action {
                Action::Send { frame, .. } => Some(frame.encode()),
                _ => None,
            })
            .collect();
        // And what a short run does not send.
        let state = Arc::new(StateRecord {
            name: "a".into(),
            boot: 1,
            version: 2,
            data: Bytes::from_static(b"x"),
        });
        let rare = vec![
            Msg::Sync(SyncMsg::Want {
                set: SET_STATES,
                keys: vec!["a".into()],
            }),
            Msg::Sync(SyncMsg::Items {
                set: SET_STATES,
                items: Items::States(vec![state]),
            }),
            Msg::Sync(SyncMsg::Differ {
                set: SET_STATES,
                buckets: vec![1, 70],
                have: Items::Versions(vec![("a".into(), 3)]),
            }),
            Msg::Sync(SyncMsg::Digest {
                sets: vec![(SET_STATES, vec![1]), (900, vec![2])],
            }),
            Msg::Tree(TreeMsg::IHave { ids: vec![(7, 2)] }),
            Msg::Tree(TreeMsg::Graft { ids: vec![7] }),
            Msg::Tree(TreeMsg::Prune),
            Msg::Tree(TreeMsg::Orphan),
            Msg::Link(LinkMsg::Busy {
                peers: vec![("b".into(), addr(2))],
            }),
            Msg::Link(LinkMsg::Refused(Refusal::Protocol { min: 9, max: 9 })),
        ];
        corpus.extend(rare.into_iter().map(|m| Frame::Msgs(vec![m]).encode()));
        corpus.push(Frame::Direct(Bytes::from_static(b"{\"v\":1}")).encode());
        corpus
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A peer that holds the key may still send anything: frames cut short
    /// or with bytes changed either fail to decode (the link is dropped)
    /// or are applied, and the core neither panics nor stops answering.
    #[test]
    fn a_core_survives_mutated_frames_from_a_greeted_peer(
        pick in 0usize..10_000,
        flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(0usize..4096),
    ) {
        let corpus = frame_corpus();
        let mut bytes = corpus[pick % corpus.len()].to_vec();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let now = Instant::now();
        let mut core = ClusterCore::new("test", NodeId::new("x", addr(9), 1, BTreeMap::new()), ClusterConfig::local(), 5, now);
        core.link_up(1, Direction::Inbound, addr(1), now);
        let hello = Hello {
            protocol: ProtocolRange::OURS,
            cluster: "test".into(),
            id: Arc::new(NodeId::new("a", addr(1), 1, BTreeMap::new())),
            incarnation: 0,
        };
        core.frame(1, Frame::Hello(hello), now);
        drain(&mut core);
        if let Ok(frame) = Frame::decode(Bytes::from(bytes)) {
            core.frame(1, frame, now);
        }
        for step in 1..=20u64 {
            core.tick(now + Duration::from_millis(100 * step));
        }
        drain(&mut core);
        // Still answering: a new peer's ping gets its ack. (A name no frame
        // can have been mutated into: a frame may well say that `b` has a
        // newer boot, and then `b`'s old boot is rightly turned away.)
        let later = now + Duration::from_secs(3);
        core.link_up(2, Direction::Inbound, addr(77), later);
        let hello = Hello {
            protocol: ProtocolRange::OURS,
            cluster: "test".into(),
            id: Arc::new(NodeId::new("a-newcomer", addr(77), 1, BTreeMap::new())),
            incarnation: 0,
        };
        core.frame(2, Frame::Hello(hello), later);
        core.frame(2, Frame::Msgs(vec![Msg::Probe(ProbeMsg::Ping { seq: 41 })]), later);
        let acked = sent_on(&drain(&mut core), 2).contains(&Msg::Probe(ProbeMsg::Ack { seq: 41 }));
        proptest::prop_assert!(acked, "the core stopped answering");
    }
}

#[test]
fn a_node_at_its_link_cap_closes_a_spare_link_before_it_dials() {
    let mut net = Net::new();
    let sender = net.add("a00", 1, 1);
    let mut others = Vec::new();
    for k in 1..40u16 {
        let other = net.add(&format!("a{k:02}"), 1 + k, 1);
        net.join(other, sender);
        others.push(other);
    }
    net.advance(Duration::from_secs(5));
    // A cap just above what it holds, then a direct message to every member:
    // most need a new link.
    let cap = net.cores[sender].link_count() + 2;
    net.cores[sender].config.link_cap = cap;
    let before = net.log.len();
    for &other in &others {
        let name = net.cores[other].me().name.clone();
        let now = net.now;
        net.cores[sender]
            .send_direct(&name, Bytes::from_static(b"{}"), now)
            .unwrap();
        net.settle();
        assert!(
            net.cores[sender].link_count() <= cap,
            "{} links, cap {cap}",
            net.cores[sender].link_count()
        );
    }
    assert!(net.cores[sender].counters.links_closed_for_room > 0);
    let delivered: std::collections::HashSet<usize> = net.log[before..]
        .iter()
        .filter(|(_, action)| matches!(action, Action::Deliver { direct: true, .. }))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(delivered.len(), others.len(), "every direct message arrived");
}

/// Digests core `i` sent in `log[from..]`.
fn digests_sent(net: &Net, i: usize, from: usize) -> usize {
    net.log[from..]
        .iter()
        .filter(|(c, act)| {
            *c == i
                && matches!(act, Action::Send { frame: Frame::Msgs(msgs), .. }
                    if msgs.iter().any(|m| matches!(m, Msg::Sync(SyncMsg::Digest { .. }))))
        })
        .count()
}

#[test]
fn news_keeps_table_comparisons_quick_for_a_few_rounds_then_they_slow_down() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.join(b, a);
    // Long enough for the join's own quick rounds to be over.
    net.advance(Duration::from_secs(5));
    let config = net.cores[a].config().clone();
    let quick = config.anti_entropy_interval / 10;
    assert!(
        config.quick_rounds_after_news >= 2,
        "the preset keeps a few quick rounds"
    );

    // News: c joins through b, and a hears of it.
    let from = net.log.len();
    let c = net.add("c", 3, 100);
    net.join(c, b);
    assert_eq!(net.cores[a].up_count(), 3, "a heard of c");
    // Every round after the news runs a tenth of the interval after the
    // one before, though the tables already agree: the first one that the
    // news brings forward, then `quick_rounds_after_news` more.
    let rounds = config.quick_rounds_after_news as usize + 1;
    net.advance(quick * rounds as u32 + quick / 2);
    let sent = digests_sent(&net, a, from);
    assert!(
        sent >= rounds,
        "{sent} comparisons by a in the {rounds} quick rounds after news (one, without them)"
    );

    // Without news the rounds slow down to the interval again (at least
    // half of it, with jitter).
    net.advance(Duration::from_secs(2));
    let from = net.log.len();
    let quiet = Duration::from_secs(10);
    net.advance(quiet);
    let sent = digests_sent(&net, a, from);
    let most = (quiet.as_millis() / (config.anti_entropy_interval / 2).as_millis()) as usize;
    assert!(
        sent <= most,
        "{sent} comparisons by a in a quiet {quiet:?}: at most {most}"
    );
}

/// A fleet is upgraded one host at a time: a node that speaks a newer
/// protocol as well, and sends a message kind this node does not know,
/// stays linked; the kind is skipped and counted, and the messages around
/// it are read. Two nodes with no version in common refuse each other,
/// naming both ranges.
#[test]
fn a_newer_peer_stays_linked_and_its_unknown_messages_are_skipped() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.cores[b].speak(ProtocolRange {
        min: ProtocolRange::OURS.min,
        max: ProtocolRange::OURS.max + 1,
    });
    net.join(b, a);
    net.advance(Duration::from_secs(1));
    assert_eq!(net.status(a, "b"), Some(Status::Alive));
    assert_eq!(net.status(b, "a"), Some(Status::Alive));
    let snapshot = net.cores[a].snapshot();
    assert!(
        snapshot["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["peer"] == "b" && l["protocol"] == ProtocolRange::OURS.max),
        "they speak the highest version both know: {snapshot}"
    );

    // b sends a batch with a kind of a group a does not have, between two
    // pings, as a newer release would.
    let (&to_a, _) = net.links.iter().find(|(_, l)| l.0 == b && l.1 == a).unwrap();
    let (_, _, a_end) = net.links[&to_a];
    let ping = |seq| postcard::to_allocvec(&Msg::Probe(ProbeMsg::Ping { seq })).unwrap();
    let mut raw = vec![2u8, 3];
    for m in [ping(501), vec![7, 0, 1, 2, 3], ping(502)] {
        raw.push(m.len() as u8);
        raw.extend(m);
    }
    let frame = Frame::decode(Bytes::from(raw)).expect("the batch's framing is sound");
    let now = net.now;
    net.cores[a].frame(a_end, frame, now);
    let sent = sent_on(&drain(&mut net.cores[a]), a_end);
    assert!(sent.contains(&Msg::Probe(ProbeMsg::Ack { seq: 501 })), "{sent:?}");
    assert!(sent.contains(&Msg::Probe(ProbeMsg::Ack { seq: 502 })), "{sent:?}");
    assert_eq!(net.cores[a].counters.skipped_msgs, 1);
    assert_eq!(net.cores[a].counters.malformed, 0);
    assert!(net.links.contains_key(&a_end), "the link stays");
    net.advance(Duration::from_secs(2));
    assert_eq!(net.status(a, "b"), Some(Status::Alive));

    // A node that speaks only a later version is refused with both ranges.
    let c = net.add("c", 3, 100);
    net.cores[c].speak(ProtocolRange {
        min: ProtocolRange::OURS.max + 1,
        max: ProtocolRange::OURS.max + 2,
    });
    net.join(c, a);
    net.advance(Duration::from_secs(1));
    assert_eq!(net.status(a, "c"), None, "not admitted");
    let refused = net.log.iter().find_map(|(i, act)| match act {
        Action::Joined { result: Err(e), .. } if *i == c => Some(e.to_string()),
        _ => None,
    });
    let refused = refused.expect("c's join was answered with the refusal");
    assert!(refused.contains("speaks link protocol 3, this one"), "{refused}");
}

fn entry(key: &str, clock: u64) -> Arc<Entry> {
    Arc::new(Entry {
        key: key.into(),
        version: crate::cluster::protocol::Version {
            clock,
            origin: "b".into(),
        },
        body: Bytes::from_static(b"{}"),
    })
}

/// An entry written on one node reaches the other by the tree at once;
/// one that missed it (held back by a cut) arrives by anti-entropy.
#[test]
fn a_keyed_dataset_spreads_by_the_tree_and_is_repaired_by_digest() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    for i in [a, b] {
        net.cores[i].hold(SET_DEPLOYMENTS, Box::new(AnyEntry));
    }
    net.join(b, a);
    net.advance(Duration::from_millis(500));
    let now = net.now;
    net.cores[a]
        .write_entry(SET_DEPLOYMENTS, "first", Bytes::from_static(b"{\"n\":1}"), now)
        .unwrap();
    net.settle();
    assert_eq!(net.cores[b].entries(SET_DEPLOYMENTS).len(), 1, "spread by the tree");
    // b takes one entry that a never hears of by the tree.
    net.cores[b].load_entries(SET_DEPLOYMENTS, vec![entry("second", 5)], now);
    assert_eq!(net.cores[a].entries(SET_DEPLOYMENTS).len(), 1);
    net.advance(Duration::from_secs(5));
    let keys: Vec<String> = net.cores[a]
        .entries(SET_DEPLOYMENTS)
        .iter()
        .map(|e| e.key.to_string())
        .collect();
    assert!(
        keys.contains(&"second".to_string()),
        "repaired by anti-entropy: {keys:?}"
    );
    assert_eq!(net.cores[a].counters.entries_taken, 2);
    // Once equal, a round costs each side one small digest.
    let from = net.log.len();
    net.advance(Duration::from_secs(3));
    let differs = net.log[from..]
        .iter()
        .filter(|(_, act)| {
            matches!(act, Action::Send { frame: Frame::Msgs(msgs), .. }
                if msgs.iter().any(|m| matches!(m, Msg::Sync(SyncMsg::Differ { .. }))))
        })
        .count();
    assert_eq!(differs, 0, "equal tables send no differing buckets");
}

/// A neighbour that claims, in its digest answer, versions it then does
/// not send, or sends others, is counted and logged; the link stays.
#[test]
fn a_neighbour_whose_digest_lies_is_counted() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.cores[a].hold(SET_DEPLOYMENTS, Box::new(AnyEntry));
    net.join(b, a);
    net.advance(Duration::from_millis(500));
    let (&to_a, _) = net.links.iter().find(|(_, l)| l.0 == b && l.1 == a).unwrap();
    let (_, _, a_end) = net.links[&to_a];
    let now = net.now;
    // "b" says it holds key `k` at version hash 42, in bucket 3.
    let differ = Msg::Sync(SyncMsg::Differ {
        set: SET_DEPLOYMENTS,
        buckets: vec![super::replica::bucket_of("k") as u16],
        have: Items::Versions(vec![("k".into(), 42)]),
    });
    net.cores[a].frame(a_end, Frame::Msgs(vec![differ.clone()]), now);
    let sent = sent_on(&drain(&mut net.cores[a]), a_end);
    assert!(
        sent.iter()
            .any(|m| matches!(m, Msg::Sync(SyncMsg::Want { keys, .. }) if keys == &[Arc::<str>::from("k")])),
        "a asks for it: {sent:?}"
    );
    // ...then sends another version.
    let items = Msg::Sync(SyncMsg::Items {
        set: SET_DEPLOYMENTS,
        items: Items::Entries(vec![entry("k", 7)]),
    });
    net.cores[a].frame(a_end, Frame::Msgs(vec![items]), now);
    assert_eq!(net.cores[a].counters.sync_mismatches, 1);
    // It claims again, and this time never sends; after the patience, the
    // next claim counts it unanswered.
    net.cores[a].frame(a_end, Frame::Msgs(vec![differ.clone()]), now);
    let later = now + Duration::from_secs(11);
    net.cores[a].frame(a_end, Frame::Msgs(vec![differ]), later);
    assert!(net.cores[a].counters.sync_unanswered >= 1);
    assert!(net.links.contains_key(&a_end), "the link stays");
    assert_eq!(net.cores[a].counters.malformed, 0);
}
