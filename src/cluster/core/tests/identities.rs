//! Identity keys: a hello must name the key its link proved, and a name
//! held by one key is not taken by another while its holder is up.

use crate::cluster::core::*;
use crate::cluster::node_key::NodeKey;
use crate::cluster::protocol::{Hello, ProtocolRange, Refusal};
use std::collections::BTreeMap;

use super::net::*;

#[test]
fn a_hello_naming_a_key_the_link_did_not_prove_closes_the_link() {
    let now = Instant::now();
    let mut core = ClusterCore::new(
        "test",
        NodeId::new("x", addr(9), 1, BTreeMap::new()),
        ClusterConfig::local(),
        5,
        now,
    );
    core.set_identity(Arc::new(NodeKey::generate()));
    let (shown, named) = (NodeKey::generate().public(), NodeKey::generate().public());
    core.link_up(1, Direction::Inbound, addr(1), now);
    core.link_proven(1, shown.noise_static().unwrap());
    let hello = |identity| Hello {
        protocol: ProtocolRange::OURS,
        cluster: "test".into(),
        id: Arc::new(NodeId::new("a", addr(1), 1, BTreeMap::new())),
        incarnation: 0,
        identity,
        admission: None,
        proof: None,
    };
    core.frame(1, Frame::Hello(hello(Some(named))), now);
    let actions = drain(&mut core);
    assert!(actions.iter().any(|a| matches!(a, Action::Close { link: 1, .. })));
    assert!(core.member("a").is_none(), "a member taken on a hello that lied");
    assert_eq!(core.counters.identities_refused, 1);

    // The key the link proved is taken.
    core.link_up(2, Direction::Inbound, addr(1), now);
    core.link_proven(2, shown.noise_static().unwrap());
    core.frame(2, Frame::Hello(hello(Some(shown))), now);
    drain(&mut core);
    assert_eq!(core.member("a").map(|m| m.status), Some(Status::Alive));
    assert_eq!(core.counters.identities_refused, 1);
}

#[test]
fn a_name_held_by_one_key_is_not_taken_by_another_until_its_holder_is_gone() {
    let mut net = Net::new();
    let a = net.add_keyed("a", 1, 100);
    let x = net.add_keyed("x", 2, 100);
    net.join(x, a);
    net.advance(Duration::from_millis(300));
    // Another key claims "x" from another address with an older boot, the
    // claim that used to win a name.
    let impostor = net.add_keyed("x", 66, 1);
    net.join(impostor, a);
    net.advance(Duration::from_millis(300));
    assert!(
        matches!(
            net.joined(impostor)[..],
            [Err(JoinError::Refused(Refusal::NameTaken { .. }))]
        ),
        "{:?}",
        net.joined(impostor)
    );
    let held = net.cores[a].member("x").unwrap();
    assert_eq!((held.id.addr, held.id.boot, held.status), (addr(2), 100, Status::Alive));
    assert_eq!(net.cores[x].standing(), &Standing::Joined, "the holder stepped aside");
    assert!(net.cores[a].counters.identities_refused >= 1);

    // A process that proves no key cannot take it either.
    let unkeyed = net.add("x", 67, 1);
    net.join(unkeyed, a);
    net.advance(Duration::from_millis(300));
    assert!(matches!(net.cores[unkeyed].standing(), Standing::Refused { .. }));
    assert_eq!(net.cores[a].member("x").unwrap().id.addr, addr(2));

    // Once the holder is gone, another key may have the name (a host
    // rebuilt with a new data dir).
    net.cores[x].leave(net.now);
    net.settle();
    net.kill(x);
    net.advance(Duration::from_millis(100));
    let rebuilt = net.add_keyed("x", 68, 300);
    net.join(rebuilt, a);
    net.advance(Duration::from_millis(300));
    assert_eq!(net.cores[rebuilt].standing(), &Standing::Joined);
    assert_eq!(net.cores[a].member("x").unwrap().id.addr, addr(68));
}

#[test]
fn a_node_never_steps_aside_for_a_process_of_its_name_with_another_key() {
    let mut net = Net::new();
    let a = net.add_keyed("a", 1, 100);
    let impostor = net.add_keyed("a", 66, 1);
    net.join(impostor, a);
    net.advance(Duration::from_millis(300));
    assert!(
        !matches!(net.cores[a].standing(), Standing::Refused { .. }),
        "the node stepped aside for an older boot of another key"
    );
    // Each refuses the other's hello; the impostor never gets in.
    assert!(
        matches!(net.joined(impostor)[..], [Err(_)]),
        "{:?}",
        net.joined(impostor)
    );
    assert_ne!(net.cores[impostor].standing(), &Standing::Joined);
    assert!(net.cores[a].member("a").is_some_and(|m| m.id.addr == addr(1)));
    assert_eq!(net.cores[a].counters.identities_refused, 1);
}

#[test]
fn a_node_that_requires_admission_links_only_with_admitted_peers() {
    let mut net = Net::new();
    let a = net.add_keyed("a", 1, 100);
    // The rule the node is given: here, an admission is the text `ok:NAME`.
    let rule: AdmissionRule = Box::new(|id, _key, text| {
        (text == format!("ok:{}", id.name))
            .then_some(())
            .ok_or_else(|| format!("`{text}` admits no one here"))
    });
    net.cores[a].set_admission(Some("ok:a".into()), Some(rule));
    let b = net.add_keyed("b", 2, 100);
    net.cores[b].set_admission(Some("ok:b".into()), None);
    net.join(b, a);
    net.advance(Duration::from_millis(300));
    assert_eq!(net.cores[b].standing(), &Standing::Joined);
    assert!(net.cores[a].member("b").is_some_and(|m| m.status == Status::Alive));

    // Shown someone else's admission, or none, or by a node that proves no
    // key: refused, counted, and the refused node says why.
    let cases: [(&str, Option<&str>, bool, &str); 3] = [
        ("c", Some("ok:b"), true, "admits no one here"),
        ("d", None, true, "showed no admission"),
        ("e", Some("ok:e"), false, "proved no identity key"),
    ];
    for (i, (name, admission, keyed, why)) in cases.into_iter().enumerate() {
        let port = 10 + i as u16;
        let peer = if keyed {
            net.add_keyed(name, port, 100)
        } else {
            net.add(name, port, 100)
        };
        net.cores[peer].set_admission(admission.map(str::to_string), None);
        net.join(peer, a);
        net.advance(Duration::from_millis(300));
        assert!(net.cores[a].member(name).is_none(), "{name} let in");
        match net.cores[peer].standing() {
            Standing::Refused { reason, .. } => {
                assert!(
                    reason.contains("not admitted") && reason.contains(why),
                    "{name}: {reason}"
                )
            }
            other => panic!("{name} should stay out, is {other:?}"),
        }
    }
    assert_eq!(net.cores[a].counters.not_admitted, 3);
    assert_eq!(net.cores[b].standing(), &Standing::Joined);
}
