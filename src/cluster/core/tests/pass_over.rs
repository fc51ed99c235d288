//! Passing over a suspect on the rings: members that never probe cannot
//! leave a real member unwatched for long, and a suspect that refutes
//! takes its place back.

use crate::cluster::core::*;

use super::bounds::three;
use super::net::*;
use super::news::{invented, table_exchange};

fn invented_up(net: &Net, i: usize) -> usize {
    net.cores[i]
        .members()
        .filter(|m| m.id.name.starts_with("fake-") && m.status.is_up())
        .count()
}

/// 500 invented members (one link's budget of news) surround three real
/// nodes on every ring, and one real node is killed. Before its accusers
/// passed over what they suspected (and while failed probes that every
/// helper agreed on still cost local health), the killed node stayed
/// listed alive for 529 s and the last invented member died at 633 s
/// (27.5 s and 68 s after).
#[test]
fn a_crash_among_invented_members_is_seen_within_a_minute() {
    let (mut net, [a, b, c]) = three(ClusterConfig::local());
    inject(&mut net, a, table_exchange(invented("fake-", 500)));
    net.advance(Duration::from_secs(1));
    assert_eq!(invented_up(&net, b), 500, "the invented members reached b");
    net.kill(c);
    let killed = net.now;
    let seen_by_all = |net: &Net| [a, b].iter().all(|&i| net.status(i, "c") == Some(Status::Dead));
    while !seen_by_all(&net) {
        let waited = net.now - killed;
        assert!(
            waited < Duration::from_secs(60),
            "c still listed {:?} at a, {:?} at b after {waited:?}",
            net.status(a, "c"),
            net.status(b, "c")
        );
        net.advance(Duration::from_millis(500));
    }
    while invented_up(&net, a) + invented_up(&net, b) > 0 {
        let waited = net.now - killed;
        assert!(
            waited < Duration::from_secs(120),
            "{} invented members still up at a after {waited:?}",
            invented_up(&net, a)
        );
        net.advance(Duration::from_millis(500));
    }
    for i in [a, b] {
        assert!(
            net.cores[i].counters.passed_over > 0,
            "node {i} passed over its suspects"
        );
        assert_eq!(net.status(i, "a"), Some(Status::Alive));
        assert_eq!(net.status(i, "b"), Some(Status::Alive));
    }
}

/// Only the accuser's rings change, and only while the suspicion runs: a
/// suspect that refutes is its subject again.
#[test]
fn a_suspect_that_refutes_takes_its_place_on_the_accusers_rings_back() {
    let mut net = Net::new();
    let nodes: Vec<usize> = (0..8).map(|i| net.add(&format!("n{i}"), 10 + i as u16, 100)).collect();
    for &i in &nodes[1..] {
        net.join(i, nodes[0]);
    }
    net.advance(Duration::from_secs(3));
    let accuser = nodes[0];
    let suspect: Arc<str> = net.cores[accuser].rings.subjects()[0].clone();
    let others_watching: Vec<usize> = nodes[1..]
        .iter()
        .copied()
        .filter(|&i| net.cores[i].rings.is_subject(&suspect))
        .collect();

    net.cores[accuser].accuse(&suspect, false);
    assert!(
        !net.cores[accuser].rings.is_subject(&suspect),
        "the accuser passes over its suspect"
    );
    assert!(
        !net.cores[accuser].rings.subjects().is_empty(),
        "someone takes its place"
    );
    assert_eq!(net.cores[accuser].counters.passed_over, 1);
    for &i in &others_watching {
        assert!(
            net.cores[i].rings.is_subject(&suspect),
            "node {i} still watches {suspect}"
        );
    }

    // The suspect hears of it and refutes.
    net.advance(Duration::from_secs(1));
    assert_eq!(net.status(accuser, &suspect), Some(Status::Alive));
    assert!(
        net.cores[accuser].rings.is_subject(&suspect),
        "the refuted suspect is a subject again"
    );
    assert!(net.cores[accuser].passed_over.is_empty());
}
