//! Faults on a real network: five "hosts" in network namespaces, with
//! packet loss and a partition made by nftables on each host's input hook.
//!
//! - 10% loss on every host for 60 s: no node declares another dead, and
//!   every request to all nodes is answered by all of them.
//! - A 2|3 partition for 30 s, then a heal: each side sees the other dead,
//!   and every node lists all five alive again (the time it took is printed;
//!   the test allows 30 s so that it holds on a busy machine). A deploy on
//!   each side during the partition ends, after the heal, with every node
//!   running the newer one.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them). Without them
//! the test fails with the reason; it never skips silently.

mod common;

use common::netlab::Netlab;
use common::*;
use conjoiner::cluster::ClusterKey;
use std::time::{Duration, Instant};

const HOSTS: usize = 5;
const LOSS_WINDOW: Duration = Duration::from_secs(60);
const PARTITION: Duration = Duration::from_secs(30);

fn all_alive(nodes: &[TestNode], names: &[String]) -> bool {
    nodes.iter().all(|n| alive_names(n) == names)
}

#[test]
fn loss_brings_no_false_death_and_a_partition_heals() {
    let lab = Netlab::new(HOSTS).unwrap_or_else(|e| {
        panic!("cannot build the network namespace lab (this test needs root, iproute2 and nftables): {e}")
    });
    let key = ClusterKey::generate();
    let seed = format!("{}:7946", lab.ip(1));
    let nodes: Vec<TestNode> = (1..=HOSTS)
        .map(|i| {
            let mut extra = vec![
                "--bind".to_string(),
                "0.0.0.0:7946".to_string(),
                "--no-mdns".to_string(),
            ];
            if i > 1 {
                extra.extend(["--join".to_string(), seed.clone()]);
            }
            TestNode::launch(
                &format!("c{i}"),
                Launch {
                    netns: Some(lab.namespace(i)),
                    http: Some(format!("{}:7373", lab.ip(i))),
                    env: vec![("CONJOINER_KEY".into(), key.to_base64())],
                    extra,
                    no_loopback_defaults: true,
                    umask: None,
                },
            )
        })
        .collect();
    let names: Vec<String> = (1..=HOSTS).map(|i| format!("c{i}")).collect();
    wait_for(Duration::from_secs(30), "all five to list each other alive", || {
        all_alive(&nodes, &names).then_some(())
    });

    // 10% loss everywhere: requests to all are answered by all, and
    // nobody is declared dead.
    let deaths_before: Vec<usize> = nodes.iter().map(deaths_logged).collect();
    for i in 1..=HOSTS {
        lab.filter(i, 10, &[]);
    }
    let lossy = Instant::now();
    let mut requests = 0;
    while lossy.elapsed() < LOSS_WINDOW {
        let origin = &nodes[requests % HOSTS];
        let (code, outcome) = cli_json(origin, &["request", "mod.echo", "{}", "--timeout", "5s"]);
        let replies = outcome["replies"].as_array().map_or(0, Vec::len);
        assert_eq!(
            (code, replies),
            (0, HOSTS),
            "request {requests} from {} under 10% loss: {outcome}",
            origin.name
        );
        requests += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 1..=HOSTS {
        lab.filter(i, 0, &[]);
    }
    let deaths_after: Vec<usize> = nodes.iter().map(deaths_logged).collect();
    assert_eq!(deaths_after, deaths_before, "false deaths under 10% loss");
    eprintln!("10% loss for {LOSS_WINDOW:?}: {requests} requests, every node answered each; no false death");
    assert!(all_alive(&nodes, &names), "everyone alive after the loss");

    // A 2|3 partition.
    let (left, right): (Vec<usize>, Vec<usize>) = (1..=HOSTS).partition(|i| *i <= 2);
    for i in &left {
        lab.filter(*i, 0, &right);
    }
    for i in &right {
        lab.filter(*i, 0, &left);
    }
    let cut = Instant::now();
    for (side, other) in [(&left, &right), (&right, &left)] {
        for i in side.iter() {
            let node = &nodes[i - 1];
            wait_for(PARTITION, &format!("{} to see the other side dead", node.name), || {
                other
                    .iter()
                    .all(|o| member_status(node, &format!("c{o}")).as_deref() == Some("dead"))
                    .then_some(())
            });
        }
    }
    eprintln!("each side saw the other dead after {:?}", cut.elapsed());
    for i in 1..=HOSTS {
        let node = &nodes[i - 1];
        let mine = if i <= 2 { &left } else { &right };
        let alive: Vec<String> = mine.iter().map(|m| format!("c{m}")).collect();
        assert_eq!(alive_names(node), alive, "{} lists its own side alive", node.name);
    }
    // A deploy on each side: each side runs its own; the right side's is
    // written later, so it is the newer.
    let uptime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mods/uptime");
    for (origin, side) in [(&nodes[0], "left"), (&nodes[2], "right")] {
        let config = format!(r#"{{"side":"{side}"}}"#);
        let (code, outcome) = cli_json(
            origin,
            &[
                "deploy",
                "uptime",
                "--from",
                uptime.to_str().unwrap(),
                "--config",
                &config,
            ],
        );
        assert_eq!(code, 3, "the other side is named as not alive: {outcome}");
        let absent = outcome["absent"].as_array().map_or(0, Vec::len);
        assert_eq!(absent, if side == "left" { 3 } else { 2 }, "{outcome}");
    }
    let side_of = |node: &TestNode| -> Option<String> {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(node.data_dir().join("mods/uptime/config.json")).ok()?).ok()?;
        config["side"].as_str().map(str::to_string)
    };
    std::thread::sleep(PARTITION.saturating_sub(cut.elapsed()));

    // Heal.
    for i in 1..=HOSTS {
        lab.filter(i, 0, &[]);
    }
    let healed = Instant::now();
    wait_for(Duration::from_secs(30), "all five alive again after the heal", || {
        all_alive(&nodes, &names).then_some(())
    });
    eprintln!("full membership {:?} after the heal", healed.elapsed());
    wait_for(Duration::from_secs(60), "every node to run the newer deploy", || {
        nodes
            .iter()
            .all(|n| side_of(n).as_deref() == Some("right"))
            .then_some(())
    });
    eprintln!("every node runs the newer deploy {:?} after the heal", healed.elapsed());
    let (code, outcome) = cli_json(&nodes[0], &["request", "mod.echo", "{}", "--timeout", "5s"]);
    let missing: Vec<&str> = outcome["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    assert!(
        code == 0 && missing.is_empty(),
        "every node answers after the heal: {outcome}\n{}",
        request_trail(&nodes, outcome["id"].as_str().unwrap_or("?"), &missing)
    );
}

/// What each node's debug log says about request `id`, and the end of the
/// silent nodes' logs: the evidence a failure here needs (the nodes' data
/// dirs are gone once the test ends).
fn request_trail(nodes: &[TestNode], id: &str, silent: &[&str]) -> String {
    let mut trail = String::new();
    for node in nodes {
        let log = node.log_text();
        let about: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
        trail += &format!(
            "--- {}: {} lines about {id}\n{}\n",
            node.name,
            about.len(),
            about.join("\n")
        );
        if silent.contains(&node.name.as_str()) {
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            trail += &format!(
                "--- {}: the last {} lines of its log\n{}\n",
                node.name,
                tail.len(),
                tail.join("\n")
            );
        }
    }
    trail
}
