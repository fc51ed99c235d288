//! Members' proofs: records about a keyed member are taken only as its own
//! signed proof says, so a peer that holds the cluster key cannot mark a
//! healthy node `left` or dead for good, nor move it elsewhere.

use crate::cluster::core::*;
use crate::cluster::protocol::{Items, Msg, Payload, Record, SyncMsg, TreeMsg, SET_MEMBERS};
use std::collections::BTreeMap;

use super::net::*;

/// Three keyed nodes, joined through the first, after a moment to settle.
fn three_keyed() -> (Net, [usize; 3]) {
    let mut net = Net::new();
    let a = net.add_keyed("a", 1, 100);
    let b = net.add_keyed("b", 2, 100);
    let c = net.add_keyed("c", 3, 100);
    net.join(b, a);
    net.join(c, a);
    net.advance(Duration::from_secs(2));
    for i in [a, b, c] {
        for name in ["a", "b", "c"] {
            assert_eq!(net.status(i, name), Some(Status::Alive), "{name} at node {i}");
        }
    }
    (net, [a, b, c])
}

fn forged(net: &Net, about: usize, incarnation: u32, status: Status, port: Option<u16>) -> Record {
    let mut id = (**net.cores[about].me()).clone();
    if let Some(port) = port {
        id.addr = addr(port);
    }
    Record {
        id: Arc::new(id),
        incarnation,
        status,
    }
}

#[test]
fn forged_records_about_a_keyed_member_are_refused_on_every_node() {
    let (mut net, [a, b, c]) = three_keyed();
    let inc = net.cores[b].incarnation();
    let lies = vec![
        forged(&net, b, inc, Status::Left, None),
        forged(&net, b, inc + 1, Status::Left, None),
        forged(&net, b, u32::MAX, Status::Dead, None),
        forged(&net, b, inc + 1, Status::Alive, Some(66)),
        forged(&net, b, inc, Status::Alive, Some(66)),
    ];
    for to in [a, c] {
        inject(
            &mut net,
            to,
            vec![Msg::Sync(SyncMsg::Items {
                set: SET_MEMBERS,
                items: Items::Records(lies.clone()),
            })],
        );
        let gossip = lies
            .iter()
            .enumerate()
            .map(|(i, record)| {
                Msg::Tree(TreeMsg::Gossip {
                    id: 0xbad0 + i as u128,
                    hops: 0,
                    payload: Payload::Update {
                        record: record.clone(),
                        accuser: None,
                    },
                })
            })
            .collect();
        inject(&mut net, to, gossip);
    }
    net.advance(Duration::from_secs(3));
    for i in [a, c] {
        let m = net.cores[i].member("b").expect("b is held");
        assert_eq!(m.status, Status::Alive, "b at node {i}");
        assert_eq!(m.id.addr, addr(2), "b's address at node {i}");
        assert!(
            net.cores[i].counters.records_unproven >= 1,
            "refusals counted at node {i}: {}",
            net.cores[i].counters.records_unproven
        );
    }
    // The lies went no further than the nodes they were told to: b never
    // heard them, so it had nothing to refute.
    assert_eq!(net.cores[b].incarnation(), inc);
}

#[test]
fn a_members_own_news_reaches_every_node_with_its_proof() {
    let (mut net, [a, b, c]) = three_keyed();
    // A tag change is a new incarnation, signed by its node.
    let tags = BTreeMap::from([("role".to_string(), "db".to_string())]);
    let now = net.now;
    net.cores[b].set_tags(tags.clone(), now);
    net.advance(Duration::from_secs(2));
    for i in [a, c] {
        assert_eq!(net.cores[i].member("b").unwrap().id.tags, tags, "b's tags at node {i}");
    }
    // A node that joins later gets the table with its proofs, and so
    // refuses a forged leave as the others do.
    let d = net.add_keyed("d", 4, 100);
    net.join(d, c);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.status(d, "b"), Some(Status::Alive));
    // Every node knows every member's key, from its proof if not a link.
    for i in [a, b, c, d] {
        for j in [a, b, c, d] {
            let name = net.cores[j].me().name.clone();
            assert_eq!(net.cores[i].identity_of(&name), net.keys[j], "{name}'s key at node {i}");
        }
    }
    let inc = net.cores[b].incarnation();
    let lie = forged(&net, b, inc, Status::Left, None);
    inject(
        &mut net,
        d,
        vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![lie]),
        })],
    );
    assert_eq!(net.status(d, "b"), Some(Status::Alive));
    assert!(net.cores[d].counters.records_unproven >= 1);
    // Its own leave is signed, and every node takes it.
    let now = net.now;
    net.cores[b].leave(now);
    net.advance(Duration::from_secs(2));
    for i in [a, c, d] {
        assert_eq!(net.status(i, "b"), Some(Status::Left), "b at node {i}");
    }
    for i in [a, c, d] {
        assert_eq!(net.cores[i].counters.records_unproven, u64::from(i == d), "node {i}");
    }
}

#[test]
fn a_suspicion_at_a_signed_incarnation_still_spreads_and_is_refuted() {
    let (mut net, [a, b, c]) = three_keyed();
    let inc = net.cores[b].incarnation();
    // What an observer may say: suspect, at the incarnation b signed.
    let fair = forged(&net, b, inc, Status::Suspect, None);
    inject(
        &mut net,
        a,
        vec![Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![fair]),
        })],
    );
    net.advance(Duration::from_secs(2));
    assert!(net.cores[b].incarnation() > inc, "b refuted");
    for i in [a, c] {
        assert_eq!(net.status(i, "b"), Some(Status::Alive), "b at node {i}");
        assert_eq!(net.cores[i].counters.records_unproven, 0, "node {i}");
    }
}

#[test]
fn a_dead_member_is_declared_dead_at_the_incarnation_it_signed() {
    let mut net = Net::new();
    let nodes: Vec<usize> = (0..6)
        .map(|i| net.add_keyed(&format!("n{i}"), 10 + i as u16, 100))
        .collect();
    for &n in &nodes[1..] {
        net.join(n, nodes[0]);
    }
    net.advance(Duration::from_secs(3));
    net.kill(nodes[5]);
    net.advance(Duration::from_secs(10));
    for &i in &nodes[..5] {
        assert_eq!(net.status(i, "n5"), Some(Status::Dead), "n5 at node {i}");
        assert_eq!(net.cores[i].counters.records_unproven, 0, "node {i}");
    }
}

#[test]
fn a_node_of_the_release_before_gets_no_proofs_and_its_news_still_counts() {
    let mut net = Net::new();
    let a = net.add_keyed("a", 1, 100);
    let old = net.add("old", 2, 100);
    net.cores[old].speak(crate::cluster::protocol::ProtocolRange { min: 3, max: 3 });
    let c = net.add_keyed("c", 3, 100);
    let d = net.add_keyed("d", 4, 100);
    net.join(old, a);
    net.join(c, old);
    net.join(d, a);
    net.advance(Duration::from_secs(3));
    for i in [a, old, c, d] {
        for name in ["a", "old", "c", "d"] {
            assert_eq!(net.status(i, name), Some(Status::Alive), "{name} at node {i}");
        }
    }
    assert_eq!(net.cores[old].counters.skipped_msgs, 0, "no message it cannot read");
    // The old node's news of a death carries no proof; the others take it
    // at the incarnation the dead node signed.
    net.kill(d);
    net.advance(Duration::from_secs(10));
    for i in [a, old, c] {
        assert_eq!(net.status(i, "d"), Some(Status::Dead), "d at node {i}");
        assert_eq!(net.cores[i].counters.records_unproven, 0, "node {i}");
    }
}

/// Where admission is required, a host that holds the cluster key cannot
/// invent members: a record needs its member's proof, and the proof an
/// admission the node accepts.
#[test]
fn where_admission_is_required_no_member_can_be_invented() {
    use crate::cluster::member_proof::MemberProof;
    use crate::cluster::node_key::NodeKey;
    let mut net = Net::new();
    let rule = || -> AdmissionRule {
        Box::new(|id, _key, text| {
            (text == format!("ok:{}", id.name))
                .then_some(())
                .ok_or_else(|| format!("`{text}` admits no one here"))
        })
    };
    let nodes: Vec<usize> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = net.add_keyed(name, 1 + i as u16, 100);
            net.cores[n].set_admission(Some(format!("ok:{name}")), Some(rule()));
            n
        })
        .collect();
    net.join(nodes[1], nodes[0]);
    net.join(nodes[2], nodes[0]);
    net.advance(Duration::from_secs(2));
    for &i in &nodes {
        for name in ["a", "b", "c"] {
            assert_eq!(net.status(i, name), Some(Status::Alive), "{name} at node {i}");
        }
    }
    let ghost = |name: &str, port| {
        Arc::new(crate::cluster::identity::NodeId::new(
            name,
            addr(port),
            1,
            BTreeMap::new(),
        ))
    };
    let key = NodeKey::generate();
    let signed = MemberProof::sign("test", &key, ghost("ghost", 90), 0, false);
    let copied = MemberProof::sign("test", &key, ghost("ghost2", 91), 0, false).with_admission(Some("ok:a".into()));
    let msgs = vec![
        Msg::Sync(SyncMsg::Proofs {
            proofs: vec![Arc::new(signed), Arc::new(copied)],
            seals: Vec::new(),
        }),
        Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(
                [("ghost", 90), ("ghost2", 91), ("ghost3", 92)]
                    .iter()
                    .map(|(name, port)| Record {
                        id: ghost(name, *port),
                        incarnation: 0,
                        status: Status::Alive,
                    })
                    .collect(),
            ),
        }),
    ];
    inject(&mut net, nodes[0], msgs);
    net.advance(Duration::from_secs(2));
    for &i in &nodes {
        for name in ["ghost", "ghost2", "ghost3"] {
            assert!(net.cores[i].member(name).is_none(), "{name} invented at node {i}");
        }
    }
    assert!(net.cores[nodes[0]].counters.records_unproven >= 5);
}

/// A status report forged in another node's name (once, a "backdoor"
/// module showed on a node for more than 50 s) is not taken: a node's state
/// counts only as that node sealed it.
#[test]
fn a_state_is_taken_only_as_its_node_sealed_it() {
    use crate::cluster::member_proof::StateSeal;
    use crate::cluster::node_key::NodeKey;
    use crate::cluster::protocol::StateRecord;
    let (mut net, [a, b, c]) = three_keyed();
    let now = net.now;
    net.cores[b].set_state(Bytes::from_static(b"b: all ok"), now).unwrap();
    net.advance(Duration::from_secs(2));
    for i in [a, c] {
        let held = net.cores[i].state_of("b").expect("b's state");
        assert_eq!(&held.data[..], b"b: all ok", "node {i}");
    }
    let genuine = net.cores[a].state_of("b").unwrap().clone();
    let forged = |version: u64| {
        Arc::new(StateRecord {
            name: "b".into(),
            boot: genuine.boot,
            version,
            data: Bytes::from_static(b"b: backdoor running"),
        })
    };
    let other_key = NodeKey::generate();
    let wrong_seal = StateSeal::seal("test", &other_key, "b".into(), genuine.boot, 90, b"b: backdoor running");
    // Unsealed, sealed by another key, and the genuine seal on other bytes.
    let genuine_seal = StateSeal::seal("test", &NodeKey::generate(), "b".into(), genuine.boot, 91, b"x");
    let msgs = vec![
        Msg::Sync(SyncMsg::Proofs {
            proofs: Vec::new(),
            seals: vec![wrong_seal, genuine_seal],
        }),
        Msg::Sync(SyncMsg::Items {
            set: crate::cluster::protocol::SET_STATES,
            items: Items::States(vec![forged(89), forged(90), forged(91)]),
        }),
        Msg::Tree(TreeMsg::Gossip {
            id: 0x5ea1,
            hops: 0,
            payload: Payload::State(forged(92)),
        }),
    ];
    inject(&mut net, a, msgs);
    net.advance(Duration::from_secs(2));
    for i in [a, c] {
        let held = net.cores[i].state_of("b").unwrap();
        assert_eq!(&held.data[..], b"b: all ok", "node {i} took a forged state");
    }
    assert!(net.cores[a].counters.records_unproven >= 4);
    // b's next report still goes through everywhere.
    let now = net.now;
    net.cores[b].set_state(Bytes::from_static(b"b: still ok"), now).unwrap();
    net.advance(Duration::from_secs(2));
    for i in [a, c] {
        assert_eq!(
            &net.cores[i].state_of("b").unwrap().data[..],
            b"b: still ok",
            "node {i}"
        );
    }
}

/// A forged state goes no further than the node it was told to, as forged
/// member updates do: the tree does not pass on what its receiver refused,
/// and a node told a report of its own that it never published refuses it.
#[test]
fn a_forged_state_is_not_passed_on() {
    use crate::cluster::node_key::NodeKey;
    use crate::cluster::protocol::StateRecord;
    let (mut net, [a, b, c]) = three_keyed();
    for i in [b, c] {
        let now = net.now;
        let name = net.cores[i].me().name.clone();
        net.cores[i]
            .set_state(Bytes::from(format!("{name}: all ok")), now)
            .unwrap();
    }
    net.advance(Duration::from_secs(2));
    for (i, of) in [(a, "b"), (a, "c"), (b, "c"), (c, "b")] {
        assert!(net.cores[i].state_of(of).is_some(), "node {i} holds {of}'s state");
    }
    let forged_about = |net: &Net, about: usize, version: u64| {
        let me = net.cores[about].me();
        Arc::new(StateRecord {
            name: me.name.clone(),
            boot: me.boot,
            version,
            data: Bytes::from_static(b"backdoor running"),
        })
    };
    let unproven = |net: &Net| [a, b, c].map(|i| net.cores[i].counters.records_unproven);
    let before = unproven(&net);
    // At a, one about each of the others, sealed by no key of theirs:
    // whichever neighbour a would pass them to, one is about the other.
    let stranger = NodeKey::generate();
    let mut msgs = Vec::new();
    for (n, about) in [b, c].into_iter().enumerate() {
        let state = forged_about(&net, about, 50);
        let seal = crate::cluster::member_proof::StateSeal::seal(
            "test",
            &stranger,
            state.name.clone(),
            state.boot,
            state.version,
            &state.data,
        );
        msgs.push(Msg::Sync(SyncMsg::Proofs {
            proofs: Vec::new(),
            seals: vec![seal],
        }));
        msgs.push(Msg::Tree(TreeMsg::Gossip {
            id: 0x5ea1_0000 + n as u128,
            hops: 0,
            payload: Payload::State(state),
        }));
    }
    inject(&mut net, a, msgs);
    net.advance(Duration::from_secs(2));
    let after = unproven(&net);
    assert_eq!(after[0], before[0] + 2, "a refused both");
    assert_eq!(after[1..], before[1..], "b and c never heard them");
    // At b, a report of b's own above the last it published.
    let state = forged_about(&net, b, 60);
    let msgs = vec![Msg::Tree(TreeMsg::Gossip {
        id: 0x5ea1_0010,
        hops: 0,
        payload: Payload::State(state),
    })];
    inject(&mut net, b, msgs);
    net.advance(Duration::from_secs(2));
    let last = unproven(&net);
    assert_eq!(last[1], after[1] + 1, "b refused a report in its name");
    assert_eq!([last[0], last[2]], [after[0], after[2]], "a and c never heard it");
    for (i, of) in [(a, "b"), (a, "c"), (b, "c"), (c, "b")] {
        let held = net.cores[i].state_of(of).unwrap();
        assert_eq!(
            &held.data[..],
            format!("{of}: all ok").as_bytes(),
            "{of}'s state at node {i}"
        );
    }
}

/// A node that never linked with a name's holder still knows the holder's
/// key from its proof, so a hello under that name with another key is
/// refused there too.
#[test]
fn a_name_is_held_by_the_key_its_proof_names_where_no_link_proved_it() {
    use crate::cluster::member_proof::MemberProof;
    use crate::cluster::node_key::NodeKey;
    use crate::cluster::protocol::{Frame, Hello, LinkMsg, ProtocolRange, Refusal};
    let now = Instant::now();
    let mut core = ClusterCore::new(
        "test",
        crate::cluster::identity::NodeId::new("x", addr(9), 1, BTreeMap::new()),
        ClusterConfig::local(),
        5,
        now,
    );
    core.set_identity(Arc::new(NodeKey::generate()));
    let hello = |name: &str, port, key: &NodeKey| Hello {
        protocol: ProtocolRange::OURS,
        cluster: "test".into(),
        id: Arc::new(crate::cluster::identity::NodeId::new(
            name,
            addr(port),
            1,
            BTreeMap::new(),
        )),
        incarnation: 0,
        identity: Some(key.public()),
        admission: None,
        proof: None,
    };
    // `a` links, and tells of `b`, with b's own proof.
    let (ka, kb, impostor) = (NodeKey::generate(), NodeKey::generate(), NodeKey::generate());
    core.link_up(1, Direction::Inbound, addr(1), now);
    core.link_proven(1, ka.public().noise_static().unwrap());
    core.frame(1, Frame::Hello(hello("a", 1, &ka)), now);
    let b = Arc::new(crate::cluster::identity::NodeId::new("b", addr(2), 1, BTreeMap::new()));
    let proof = MemberProof::sign("test", &kb, b.clone(), 0, false);
    let news = vec![
        Msg::Sync(SyncMsg::Proofs {
            proofs: vec![Arc::new(proof)],
            seals: Vec::new(),
        }),
        Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![Record {
                id: b,
                incarnation: 0,
                status: Status::Alive,
            }]),
        }),
    ];
    core.frame(1, Frame::Msgs(news), now);
    assert_eq!(core.member("b").map(|m| m.status), Some(Status::Alive));
    assert_eq!(core.identity_of("b"), Some(kb.public()));
    drain(&mut core);
    // Another key says hello as `b`, from elsewhere: refused.
    core.link_up(2, Direction::Inbound, addr(66), now);
    core.link_proven(2, impostor.public().noise_static().unwrap());
    core.frame(2, Frame::Hello(hello("b", 66, &impostor)), now);
    let sent = sent_on(&drain(&mut core), 2);
    assert!(
        sent.iter()
            .any(|m| matches!(m, Msg::Link(LinkMsg::Refused(Refusal::NameTaken { .. })))),
        "{sent:?}"
    );
    assert_eq!(core.member("b").unwrap().id.addr, addr(2));
    assert_eq!(core.counters.identities_refused, 1);
}

/// A proof under a member's own key that its key did not sign (a higher
/// incarnation, to carry a move) is refused: once a member is held, every
/// proof of it is checked.
#[test]
fn a_proof_under_a_held_members_key_with_a_false_signature_is_refused() {
    use crate::cluster::member_proof::MemberProof;
    use crate::cluster::node_key::NodeKey;
    let (mut net, [a, b, _c]) = three_keyed();
    let inc = net.cores[b].incarnation();
    let moved = forged(&net, b, inc + 1, Status::Alive, Some(66));
    let mut proof = MemberProof::sign("test", &NodeKey::generate(), moved.id.clone(), inc + 1, false);
    proof.key = net.keys[b].unwrap();
    inject(
        &mut net,
        a,
        vec![
            Msg::Sync(SyncMsg::Proofs {
                proofs: vec![Arc::new(proof)],
                seals: Vec::new(),
            }),
            Msg::Sync(SyncMsg::Items {
                set: SET_MEMBERS,
                items: Items::Records(vec![moved]),
            }),
        ],
    );
    let m = net.cores[a].member("b").unwrap();
    assert_eq!((m.id.addr, m.incarnation), (addr(2), inc));
    assert!(net.cores[a].counters.records_unproven >= 2);
}
