//! Replicated datasets: node states, keyed entries, member-table
//! exchanges and their digests.

use crate::cluster::core::keyed::AnyEntry;
use crate::cluster::core::replica::Replicated as _;
use crate::cluster::core::replica::{MAX_ITEMS_CATCHING_UP, MAX_ITEMS_PER_EXCHANGE};
use crate::cluster::core::*;
use crate::cluster::protocol::{Entry, Items, Record, SyncMsg, SET_DEPLOYMENTS, SET_MEMBERS};
use std::collections::BTreeMap;

use super::net::*;

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
        .write_entry(SET_DEPLOYMENTS, "first", Bytes::from_static(b"{\"n\":1}"), None, now)
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
        buckets: vec![crate::cluster::core::replica::bucket_of("k") as u16],
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

/// Refuses bodies that say "bad".
struct RefuseBad;
impl crate::cluster::core::keyed::EntryRules for RefuseBad {
    fn check(
        &self,
        entry: &Entry,
        _held: &crate::cluster::core::keyed::KeyedSet,
        _now_ms: u64,
    ) -> Result<(), crate::cluster::core::keyed::Refused> {
        match &entry.body[..] {
            b"bad" => Err(crate::cluster::core::keyed::Refused::Invalid("a bad body".into())),
            _ => Ok(()),
        }
    }
    fn obsolete(&self, _held: &crate::cluster::core::keyed::KeyedSet, _now_ms: u64) -> Vec<Arc<str>> {
        Vec::new()
    }
}

/// An entry a peer offers that the rules refuse is handed to the driver
/// with why (its owner audits it), each time it is offered; one read from
/// this node's own disk is not a peer's offer.
#[test]
fn entries_a_peer_offers_that_the_rules_refuse_are_handed_to_the_driver() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let b = net.add("b", 2, 100);
    net.cores[a].hold(SET_DEPLOYMENTS, Box::new(RefuseBad));
    net.cores[b].hold(SET_DEPLOYMENTS, Box::new(AnyEntry));
    net.join(b, a);
    net.advance(Duration::from_millis(500));
    let now = net.now;
    net.cores[b]
        .write_entry(SET_DEPLOYMENTS, "forged", Bytes::from_static(b"bad"), None, now)
        .unwrap();
    net.advance(Duration::from_secs(5));
    let refused: Vec<(Arc<str>, String)> = net
        .log
        .iter()
        .filter(|(node, _)| *node == a)
        .filter_map(|(_, act)| match act {
            Action::EntriesRefused { set, refused } if *set == SET_DEPLOYMENTS => Some(refused.clone()),
            _ => None,
        })
        .flatten()
        .map(|(e, why)| (e.key.clone(), why))
        .collect();
    assert!(
        refused.len() >= 2,
        "by the tree, then again by anti-entropy: {refused:?}"
    );
    assert!(
        refused.iter().all(|(k, why)| &**k == "forged" && why == "a bad body"),
        "{refused:?}"
    );
    assert!(net.cores[a].entries(SET_DEPLOYMENTS).is_empty());

    let mut disk = entry("from-disk", 3);
    Arc::make_mut(&mut disk).body = Bytes::from_static(b"bad");
    net.cores[a].load_entries(SET_DEPLOYMENTS, vec![disk], net.now);
    let after = drain(&mut net.cores[a]);
    assert!(
        !after.iter().any(|act| matches!(act, Action::EntriesRefused { .. })),
        "{after:?}"
    );
}
