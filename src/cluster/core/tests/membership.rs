//! Membership: joins, suspicion and death, refutation, restarts, names
//! held by two processes, leaving, and the bounds on records.

use crate::cluster::core::*;
use crate::cluster::protocol::{Hello, Items, ProbeMsg, ProtocolRange, Record, SyncMsg, SET_MEMBERS};
use std::collections::BTreeMap;

use super::net::*;

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
fn a_refused_node_stays_out_at_every_step_and_a_peer_that_dials_it_later_lets_it_in() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let x = net.add("x", 2, 100);
    net.join(x, a);
    net.advance(Duration::from_millis(300));
    let dup = net.add("x", 3, 200);
    net.join(dup, a);
    net.advance(Duration::from_millis(300));
    assert!(matches!(net.cores[dup].standing(), Standing::Refused { .. }));

    // A peer dials the refused node (as after an mDNS answer) while the
    // holder lives: the table it gets still lists the holder, so the node
    // never says it is in, not even for one step.
    let dup_addr = net.cores[dup].me().addr;
    net.cores[a].join(dup_addr, net.now);
    net.settle_watching(|net| {
        assert!(
            matches!(net.cores[dup].standing(), Standing::Refused { .. }),
            "let in while the holder lives"
        );
    });
    assert_eq!(net.cores[a].member("x").unwrap().id.boot, 100);

    // The holder leaves. The next peer that links to the refused node
    // tells it so with its table: in, with no join asked by the node.
    net.cores[x].leave(net.now);
    net.settle();
    net.kill(x);
    net.advance(Duration::from_millis(100));
    net.cores[a].join(dup_addr, net.now);
    net.settle();
    net.advance(Duration::from_millis(300));
    assert_eq!(net.cores[dup].standing(), &Standing::Joined);
    let held = net.cores[a].member("x").unwrap();
    assert_eq!((held.id.boot, held.status), (200, Status::Alive));
}

#[test]
fn a_node_that_is_out_sleeps_until_its_housekeeping_instead_of_waking_at_once() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let x = net.add("x", 2, 100);
    net.join(x, a);
    net.advance(Duration::from_millis(300));
    let dup = net.add("x", 3, 200);
    net.join(dup, a);
    // Long enough that every round and probe deadline it had is past.
    net.advance(Duration::from_secs(30));
    assert!(matches!(net.cores[dup].standing(), Standing::Refused { .. }));
    let now = net.now;
    net.cores[dup].tick(now);
    let next = net.cores[dup].next_deadline();
    assert!(
        next > now && next <= now + Duration::from_secs(1),
        "a refused node wakes for housekeeping only, {:?} from now",
        next.checked_duration_since(now)
    );

    net.cores[a].leave(now);
    net.cores[a].tick(now);
    assert!(
        net.cores[a].next_deadline() > now + Duration::from_secs(60),
        "a node that left has nothing to wake for"
    );
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

/// Only a node raises its own incarnation. A forged `dead` at the top
/// incarnation once made its victim refute to the top, where it had no
/// number left to refute the next one with; such a claim is now discarded.
#[test]
fn a_rumour_above_this_nodes_incarnation_is_discarded_not_refuted() {
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
    assert_eq!(net.cores[b].incarnation(), 0);
    assert_eq!(net.cores[b].counters.refutations, 0);
    assert_eq!(net.cores[b].counters.records_unproven, 1);
    // A claim at its own incarnation is still refuted, as SWIM has it.
    let fair = Record {
        id: net.cores[b].me().clone(),
        incarnation: 0,
        status: Status::Suspect,
    };
    net.cores[b].frame(
        link,
        Frame::Msgs(vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![fair]),
        })]),
        now,
    );
    net.settle();
    assert_eq!(net.cores[b].incarnation(), 1);
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
            identity: None,
            admission: None,
            proof: None,
        }),
        now,
    );
    let sent: Vec<Action> = std::iter::from_fn(|| net.cores[a].poll()).collect();
    assert!(sent.iter().any(|x| matches!(x, Action::Close { link: 90, .. })));
    assert_eq!(net.cores[a].counters.records_refused, 1);
    assert!(net.cores[a].member(&"x".repeat(65)).is_none());
}
