//! The member table's bounds: however many members a peer invents, and
//! for however long, a node holds at most `max_members` in
//! `max_member_bytes`, and its real members stay held and alive.

use crate::cluster::core::*;
use crate::cluster::protocol::Record;
use std::collections::BTreeMap;

use super::net::*;
use super::news::{held, invented, table_exchange};

/// Timings for tests, news not limited by link (a node in its first 30 s
/// takes all it hears), and a table of at most `max_members`.
fn bounded(max_members: usize) -> ClusterConfig {
    ClusterConfig {
        max_members,
        ..ClusterConfig::local()
    }
}

pub(super) fn three(config: ClusterConfig) -> (Net, [usize; 3]) {
    let mut net = Net::new();
    let a = net.add_configured("a", 1, 100, config.clone());
    let b = net.add_configured("b", 2, 100, config.clone());
    let c = net.add_configured("c", 3, 100, config);
    net.join(b, a);
    net.join(c, a);
    net.advance(Duration::from_secs(2));
    (net, [a, b, c])
}

fn real_members_alive_everywhere(net: &Net, nodes: &[usize], names: &[&str]) {
    for &i in nodes {
        for name in names {
            assert_eq!(net.status(i, name), Some(Status::Alive), "{name} at node {i}");
        }
    }
}

#[test]
fn invented_members_fill_the_table_to_its_bound_and_no_further() {
    let (mut net, [a, b, c]) = three(bounded(200));
    inject(&mut net, a, table_exchange(invented("fake-", 2_000)));
    assert_eq!(held(&net, a), 200, "node a holds its bound");
    assert_eq!(net.cores[a].counters.table_full, 2_000 - 197);
    net.advance(Duration::from_secs(1));
    // A second flood, by another node, while the first is still alive.
    inject(&mut net, b, table_exchange(invented("more-", 2_000)));
    for i in [a, b, c] {
        assert!(held(&net, i) <= 200, "node {i} holds {}", held(&net, i));
    }
    // b, full of what a passed on, refuses the second flood, so none of
    // it reaches c.
    assert_eq!(net.cores[b].counters.table_full, 2_000);
    assert!(net.cores[c].members().all(|m| !m.id.name.starts_with("more-")));
    real_members_alive_everywhere(&net, &[a, b, c], &["a", "b", "c"]);
}

#[test]
fn dead_members_make_room_for_new_ones() {
    let (mut net, [a, b, c]) = three(bounded(50));
    inject(&mut net, a, table_exchange(invented("old-", 47)));
    assert_eq!(held(&net, a), 50);
    // No one can reach the invented members, so they are declared dead.
    let deadline = net.now + Duration::from_secs(300);
    while net.cores[a]
        .members()
        .any(|m| m.id.name.starts_with("old-") && m.status.is_up())
    {
        assert!(net.now < deadline, "the invented members never died");
        net.advance(Duration::from_secs(1));
    }
    // A real member joins a full table of dead ones, and more news comes.
    let d = net.add_configured("d", 4, 100, bounded(50));
    net.join(d, b);
    inject(&mut net, a, table_exchange(invented("new-", 30)));
    net.advance(Duration::from_secs(2));
    for i in [a, b, c] {
        assert!(held(&net, i) <= 50, "node {i} holds {}", held(&net, i));
    }
    assert!(net.cores[a].counters.forgotten_for_room > 0);
    assert_eq!(net.cores[a].counters.table_full, 0, "room was made; nothing refused");
    let new_held = net.cores[a].members().filter(|m| m.id.name.starts_with("new-")).count();
    assert_eq!(new_held, 30, "every new member found room");
    real_members_alive_everywhere(&net, &[a, b, c, d], &["a", "b", "c", "d"]);
}

#[test]
fn records_with_large_tag_sets_meet_the_byte_bound() {
    let mut config = ClusterConfig::local();
    let (net0, _) = three(config.clone());
    // Room for the three real members and about ten records of 64 tags.
    let big = |i: usize| Record {
        id: Arc::new(NodeId::new(
            &format!("big-{i}"),
            addr(30_000 + i as u16),
            1,
            (0..64)
                .map(|t| (format!("tag-{t:03}"), "v".repeat(100)))
                .collect::<BTreeMap<_, _>>(),
        )),
        incarnation: 0,
        status: Status::Alive,
    };
    let one = big(0).id.heap_bytes();
    config.max_member_bytes = net0.cores[0].table.heap_bytes() + 10 * (one + 64);
    let (mut net, [a, b, c]) = three(config.clone());
    inject(&mut net, a, table_exchange((0..100).map(big).collect()));
    for i in [a, b, c] {
        let bytes = net.cores[i].table.heap_bytes();
        assert!(bytes <= config.max_member_bytes, "node {i} holds {bytes} bytes");
    }
    let taken = held(&net, a) - 3;
    assert!((9..=10).contains(&taken), "node a took {taken} big records");
    assert!(net.cores[a].counters.table_full >= 90);
    real_members_alive_everywhere(&net, &[a, b, c], &["a", "b", "c"]);
}
