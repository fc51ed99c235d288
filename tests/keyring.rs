//! Rotating the cluster key with the keyring file, one node restarted at
//! a time, with real processes: nodes whose keyrings share any key link;
//! a node that was down during the rotation gets back in while anyone
//! still accepts its key; once nobody does, both sides say so by name.

mod common;

use common::*;
use conjoiner::cluster::keyring::{key_id, show_id};
use conjoiner::cluster::{ClusterKey, Keyring};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn keyring(primary: &ClusterKey, others: &[&ClusterKey]) -> Keyring {
    let mut ring = Keyring::new(primary.clone());
    for k in others {
        ring.install((*k).clone()).unwrap();
    }
    ring
}

/// Restarts `node` with `ring` as its keyring file.
fn restart_with(node: &mut TestNode, ring: &Keyring) {
    node.kill9();
    ring.save(&node.data_dir()).unwrap();
    node.restart();
}

fn sees_all_alive(observer: &TestNode, names: &[&str]) -> bool {
    let alive = alive_names(observer);
    names.iter().all(|n| alive.iter().any(|a| a == n))
}

#[test]
fn a_key_is_rotated_one_restart_at_a_time_and_a_node_that_missed_it_gets_back_in() {
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let all = ["k1", "k2", "k3"];
    // Fixed ports, so that a restarted node is found where it was.
    let addrs: Vec<String> = all
        .iter()
        .map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        })
        .collect();
    let mut nodes: Vec<TestNode> = all
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut extra = vec!["--bind".to_string(), addrs[i].clone(), "--no-mdns".to_string()];
            for (j, addr) in addrs.iter().enumerate() {
                if j != i {
                    extra.extend(["--join".to_string(), addr.clone()]);
                }
            }
            TestNode::launch(
                name,
                Launch {
                    env: vec![("CONJOINER_KEY".to_string(), old.to_base64())],
                    extra,
                    no_loopback_defaults: true,
                    ..Launch::default()
                },
            )
        })
        .collect();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), 3);

    // k3 is down for the whole rotation.
    nodes[2].kill9();
    // Install the new key and dial with it, one node at a time.
    for node in nodes.iter_mut().take(2) {
        restart_with(node, &keyring(&new, &[&old]));
    }
    wait_for(LIMIT, "k1 and k2 to link on the new key", || {
        (sees_all_alive(&nodes[0], &["k1", "k2"]) && sees_all_alive(&nodes[1], &["k1", "k2"])).then_some(())
    });
    assert!(
        nodes[0].log_text().contains("keyring loaded"),
        "the keyring file is read"
    );

    // k3 comes back with only the old key: the others still accept it.
    nodes[2].restart();
    for node in &nodes {
        wait_for(LIMIT, &format!("{} to see all three alive", node.name), || {
            sees_all_alive(node, &all).then_some(())
        });
    }

    // The old key is removed everywhere but on k3: nobody accepts it now.
    for node in nodes.iter_mut().take(2) {
        restart_with(node, &keyring(&new, &[]));
    }
    let (old_id, new_id) = (show_id(&key_id(&old)), show_id(&key_id(&new)));
    wait_for(LIMIT, "k3 to be told that no key is in common", || {
        let log = nodes[2].log_text();
        log.lines()
            .any(|l| l.contains("no cluster key in common") && l.contains(&old_id) && l.contains(&new_id))
            .then_some(())
    });
    wait_for(LIMIT, "k1 to say so too", || {
        nodes[0].log_text().contains("no cluster key in common").then_some(())
    });

    // Given the new key, k3 is back.
    restart_with(&mut nodes[2], &keyring(&new, &[]));
    for node in &nodes {
        wait_for(LIMIT, &format!("{} to see all three alive again", node.name), || {
            sees_all_alive(node, &all).then_some(())
        });
    }
}
