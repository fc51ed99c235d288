//! Four "hosts" in network namespaces on one bridge, each running a node
//! with no `--join`: they must find each other by real multicast mDNS, see a
//! host that is cut off die, see it come back, and carry a broadcast to all.
//!
//! Needs root and iproute2 (`.ci/run` installs it). Without them the test
//! fails with the reason; it never skips silently.

mod common;

use common::netlab::Netlab;
use common::*;
use conjoiner::cluster::ClusterKey;
use std::time::{Duration, Instant};
use uuid::Uuid;

const HOSTS: usize = 4;

#[test]
fn hosts_find_each_other_by_mdns_survive_a_cut_and_rejoin() {
    let lab = Netlab::new(HOSTS)
        .unwrap_or_else(|e| panic!("cannot build the network namespace lab (this test needs root and iproute2): {e}"));
    let key = ClusterKey::generate();
    let nodes: Vec<TestNode> = (1..=HOSTS)
        .map(|i| {
            TestNode::launch(
                &format!("h{i}"),
                Launch {
                    netns: Some(lab.namespace(i)),
                    http: Some(format!("{}:7373", lab.ip(i))),
                    env: vec![("CONJOINER_KEY".into(), key.to_base64())],
                    extra: vec!["--bind".into(), "0.0.0.0:7946".into()],
                    no_loopback_defaults: true,
                    umask: None,
                },
            )
        })
        .collect();
    let all: Vec<String> = (1..=HOSTS).map(|i| format!("h{i}")).collect();

    let started = Instant::now();
    for node in &nodes {
        wait_for(
            Duration::from_secs(30),
            &format!("{} to find all hosts by mDNS", node.name),
            || (alive_names(node) == all).then_some(()),
        );
    }
    eprintln!("mDNS discovery converged in {:?}", started.elapsed());
    // They found each other on the lab's addresses, never loopback.
    for m in members_json(&nodes[0]) {
        let addr = m["addr"].as_str().unwrap_or_default();
        assert!(
            addr.starts_with(&lab.ip(1)[..lab.ip(1).rfind('.').unwrap()]),
            "lab address: {m}"
        );
    }

    // Cut h4 off the network: the others mark it dead.
    lab.cut(HOSTS);
    let cut = Instant::now();
    for node in &nodes[..HOSTS - 1] {
        wait_for(
            Duration::from_secs(20),
            &format!("{} to mark h4 dead", node.name),
            || (member_status(node, "h4").as_deref() == Some("dead")).then_some(()),
        );
    }
    eprintln!("h4 seen dead by all after {:?}", cut.elapsed());

    // Bring it back: it rejoins, on every side.
    lab.heal(HOSTS);
    let healed = Instant::now();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive_names(node) != all {
            if Instant::now() > deadline {
                let tail: Vec<String> = node.log_text().lines().rev().take(120).map(str::to_string).collect();
                let tail: Vec<&str> = tail.iter().rev().map(String::as_str).collect();
                panic!(
                    "{} does not see all hosts alive 30 s after the heal: {:?}\n{}'s log ends:\n{}",
                    node.name,
                    members_json(node),
                    node.name,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("h4 rejoined after {:?}", healed.elapsed());

    // A broadcast after the heal reaches every node, from either side.
    let tails: Vec<Streaming> = nodes
        .iter()
        .map(|n| {
            let t = n.cli_spawn(&["--json", "tail", "--address", "after.heal"]);
            Streaming::line_where(&t.stderr, Duration::from_secs(20), |l| l.contains("tailing envelopes"));
            t
        })
        .collect();
    for origin in [&nodes[0], &nodes[HOSTS - 1]] {
        let marker = Uuid::now_v7().to_string();
        let out = origin.cli(&["publish", "after.heal", &format!(r#"{{"marker":"{marker}"}}"#)]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        for (node, tail) in nodes.iter().zip(&tails) {
            Streaming::line_where(&tail.stdout, Duration::from_secs(10), |l| l.contains(&marker));
            let _ = node;
        }
    }
}
