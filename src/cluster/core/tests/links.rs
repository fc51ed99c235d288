//! Links: hellos, direct messages, the link cap, protocol versions, and
//! mutated frames from a greeted peer.

use crate::cluster::core::*;
use crate::cluster::protocol::{
    Hello, Items, ProbeMsg, ProtocolRange, Refusal, StateRecord, SyncMsg, TreeMsg, SET_STATES,
};
use std::collections::BTreeMap;

use super::net::*;

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
            identity: None,
            admission: None,
            proof: None,
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
            identity: None,
            admission: None,
            proof: None,
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
            identity: None,
            admission: None,
            proof: None,
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
    let theirs = format!("speaks link protocol {}, this one", ProtocolRange::OURS);
    assert!(refused.contains(&theirs), "{refused}");
}
