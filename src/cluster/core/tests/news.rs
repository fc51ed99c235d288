//! New-member news within each link's budget: a peer that holds the
//! cluster key and invents members by the thousand gets only a budget's
//! worth into a node's table, while a mass start and a joiner's table
//! are never held back.

use crate::cluster::core::*;
use crate::cluster::protocol::{Items, LinkMsg, Msg, Payload, Record, SyncMsg, TreeMsg, SET_MEMBERS};
use std::collections::BTreeMap;

use super::net::*;

/// Timings for tests, with news limited from the start.
fn limited() -> ClusterConfig {
    ClusterConfig {
        new_members_grace: Duration::ZERO,
        ..ClusterConfig::local()
    }
}

fn three() -> (Net, [usize; 3]) {
    let mut net = Net::new();
    let a = net.add_configured("a", 1, 100, limited());
    let b = net.add_configured("b", 2, 100, limited());
    let c = net.add_configured("c", 3, 100, limited());
    net.join(b, a);
    net.join(c, a);
    net.advance(Duration::from_secs(2));
    (net, [a, b, c])
}

/// `n` alive members nobody ever met, named `{prefix}{i}`.
pub(super) fn invented(prefix: &str, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            id: Arc::new(NodeId::new(
                &format!("{prefix}{i}"),
                addr(20_000 + i as u16),
                1,
                BTreeMap::new(),
            )),
            incarnation: 0,
            status: Status::Alive,
        })
        .collect()
}

/// A table exchange that brings `records`.
pub(super) fn table_exchange(records: Vec<Record>) -> Vec<Msg> {
    vec![Msg::Sync(SyncMsg::Items {
        set: SET_MEMBERS,
        items: Items::Records(records),
    })]
}

pub(super) fn held(net: &Net, i: usize) -> usize {
    net.cores[i].members().count()
}

fn budget() -> (usize, usize) {
    let c = limited();
    (c.new_members_burst as usize, c.new_members_per_sec as usize)
}

#[test]
fn two_thousand_invented_members_in_one_table_exchange_get_a_burst_in() {
    let (mut net, [a, b, c]) = three();
    let (burst, per_sec) = budget();
    let fakes = invented("fake-", 2_000);
    inject(&mut net, a, table_exchange(fakes));
    assert_eq!(held(&net, a), 3 + burst, "node a takes a burst");
    assert_eq!(net.cores[a].counters.news_over_budget, (2_000 - burst) as u64);
    // What a took it passes on, and no more: the others' budgets for
    // their link from a hold the same burst.
    for i in [b, c] {
        assert!(held(&net, i) <= 3 + burst, "node {i} holds {}", held(&net, i));
    }

    // A second later, another flood on the same link gets the rate only.
    net.advance(Duration::from_secs(1));
    let before = held(&net, a);
    inject(&mut net, a, table_exchange(invented("more-", 2_000)));
    let added = held(&net, a) - before;
    assert!(added <= per_sec + 1, "{added} more in a second (rate {per_sec}/s)");
    assert!(added > 0, "the rate still lets news in");
    // The real members are untouched.
    for i in [a, b, c] {
        for name in ["a", "b", "c"] {
            assert_eq!(net.status(i, name), Some(Status::Alive), "{name} at node {i}");
        }
    }
}

#[test]
fn invented_members_down_the_tree_get_a_burst_in_and_the_rest_go_no_further() {
    let (mut net, [a, b, c]) = three();
    let (burst, _) = budget();
    let gossip = invented("fake-", 2_000)
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            Msg::Tree(TreeMsg::Gossip {
                id: 0xfee0_0000 + i as u128,
                hops: 0,
                payload: Payload::Update { record, accuser: None },
            })
        })
        .collect();
    inject(&mut net, b, gossip);
    assert_eq!(held(&net, b), 3 + burst);
    assert_eq!(net.cores[b].counters.news_over_budget, (2_000 - burst) as u64);
    for i in [a, c] {
        assert!(held(&net, i) <= 3 + burst, "node {i} holds {}", held(&net, i));
    }
}

#[test]
fn news_of_members_already_held_costs_nothing() {
    let (mut net, [a, b, _]) = three();
    let mut config = limited();
    config.new_members_burst = 1;
    config.new_members_per_sec = 0;
    let d = net.add_configured("d", 4, 100, config);
    net.join(d, a);
    net.advance(Duration::from_secs(2));
    assert_eq!(held(&net, d), 4);
    // Fresh news of b (a higher incarnation, as a refutation brings)
    // over a link whose budget is spent on one invented member.
    let mut news = vec![Record {
        id: net.cores[b].me().clone(),
        incarnation: net.cores[b].incarnation() + 1,
        status: Status::Alive,
    }];
    news.extend(invented("fake-", 3));
    inject(&mut net, d, table_exchange(news));
    assert_eq!(held(&net, d), 5, "one invented member got in");
    assert_eq!(net.cores[d].counters.news_over_budget, 2);
    let b_at_d = net.cores[d].members().find(|m| &*m.id.name == "b").unwrap().incarnation;
    assert_eq!(b_at_d, net.cores[b].incarnation() + 1, "news of a held member is taken");
}

#[test]
fn a_joiner_takes_its_seeds_whole_table_but_not_one_it_never_asked_for() {
    let mut net = Net::new();
    let seed = net.add("seed", 1, 100);
    for i in 0..8 {
        let n = net.add(&format!("n{i}"), 10 + i, 100);
        net.join(n, seed);
    }
    net.advance(Duration::from_secs(2));
    assert_eq!(held(&net, seed), 9);

    // A joiner that may hear of only two new members per link, and none
    // later, still takes the seed's table of nine.
    let mut config = limited();
    config.new_members_burst = 2;
    config.new_members_per_sec = 0;
    let joiner = net.add_configured("joiner", 2, 100, config);
    net.join(joiner, seed);
    assert_eq!(held(&net, joiner), 10, "the join's table is whole");
    assert_eq!(net.cores[joiner].counters.news_over_budget, 0);

    // A table sent unasked is news like any other.
    inject(
        &mut net,
        joiner,
        vec![Msg::Link(LinkMsg::JoinTable {
            records: invented("fake-", 10),
        })],
    );
    assert!(held(&net, joiner) <= 12, "holds {}", held(&net, joiner));
    assert!(net.cores[joiner].counters.news_over_budget >= 8);
}

#[test]
fn a_node_learning_the_cluster_takes_all_it_hears() {
    let mut net = Net::new();
    let a = net.add("a", 1, 100);
    let mut config = ClusterConfig::local();
    config.new_members_burst = 2;
    config.new_members_per_sec = 0;
    let fresh = net.add_configured("fresh", 2, 100, config);
    net.join(fresh, a);
    // Within its grace, a table exchange of 20 members it never heard of
    // all counts: a mass start brings nearly all the table over one link.
    inject(&mut net, fresh, table_exchange(invented("new-", 20)));
    assert_eq!(held(&net, fresh), 22);
    assert_eq!(net.cores[fresh].counters.news_over_budget, 0);
    // After it, the budget holds.
    net.advance(ClusterConfig::local().new_members_grace);
    inject(&mut net, fresh, table_exchange(invented("later-", 20)));
    assert!(net.cores[fresh].counters.news_over_budget >= 18);
}
