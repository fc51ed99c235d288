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

/// Three nodes on fixed ports (a restarted node is found where it was),
/// each joining the other two, with `key`.
fn start_three(key: &ClusterKey, extra: &[&str]) -> Vec<TestNode> {
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().to_string()
        })
        .collect();
    let nodes: Vec<TestNode> = ["k1", "k2", "k3"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut flags = vec!["--bind".to_string(), addrs[i].clone(), "--no-mdns".to_string()];
            for (j, addr) in addrs.iter().enumerate() {
                if j != i {
                    flags.extend(["--join".to_string(), addr.clone()]);
                }
            }
            flags.extend(extra.iter().map(|e| e.to_string()));
            TestNode::launch(
                name,
                Launch {
                    env: vec![("CONJOINER_KEY".to_string(), key.to_base64())],
                    extra: flags,
                    no_loopback_defaults: true,
                    ..Launch::default()
                },
            )
        })
        .collect();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), 3);
    nodes
}

#[test]
fn a_key_is_rotated_one_restart_at_a_time_and_a_node_that_missed_it_gets_back_in() {
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let all = ["k1", "k2", "k3"];
    let mut nodes = start_three(&old, &[]);

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

/// Each node's keyring as `conjoiner keys list` answers: primary, keys.
fn keyrings(node: &TestNode) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let (code, outcome) = cli_json(node, &["keys", "list"]);
    assert!(code == 0 || code == 3, "keys list: {code} {outcome}");
    outcome["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let keys = r["body"]["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string());
            (
                r["node"].as_str().unwrap().to_string(),
                (r["body"]["primary"].as_str().unwrap().to_string(), keys.collect()),
            )
        })
        .collect()
}

fn keys(node: &TestNode, args: &[&str]) -> (i32, String) {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn conjoiner_keys_rotates_the_running_fleet_and_a_node_that_was_down_is_brought_along() {
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let (old_b64, new_b64) = (old.to_base64(), new.to_base64());
    let (old_id, new_id) = (show_id(&key_id(&old)), show_id(&key_id(&new)));
    let mut nodes = start_three(&old, &[]);
    let listed = keyrings(&nodes[0]);
    assert_eq!(listed.len(), 3);
    assert!(
        listed.values().all(|(p, k)| *p == old_id && *k == [old_id.clone()]),
        "{listed:?}"
    );

    // k3 is down: it is named, and the others change.
    nodes[2].kill9();
    wait_for(LIMIT, "k1 to see k3 dead", || {
        (member_status(&nodes[0], "k3").as_deref() == Some("dead")).then_some(())
    });
    let (code, said) = keys(&nodes[0], &["install", &new_b64]);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("not alive: k3"), "{said}");
    let (code, said) = keys(&nodes[0], &["use", &new_b64]);
    assert_eq!(code, 3, "{said}");
    let listed = keyrings(&nodes[0]);
    assert_eq!(
        listed["k2"],
        (new_id.clone(), vec![new_id.clone(), old_id.clone()]),
        "{listed:?}"
    );

    // k3 comes back on the old key, which the others still accept; the
    // same commands bring it along, and change nothing elsewhere.
    nodes[2].restart();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), 3);
    for op in ["install", "use"] {
        let (code, said) = keys(&nodes[0], &[op, &new_b64]);
        assert_eq!(code, 0, "{op}: {said}");
    }
    let (code, said) = keys(&nodes[0], &["remove", &old_b64]);
    assert_eq!(code, 0, "{said}");
    let listed = keyrings(&nodes[0]);
    assert!(
        listed.values().all(|(p, k)| *p == new_id && *k == [new_id.clone()]),
        "{listed:?}"
    );

    // The primary key is not removed anywhere.
    let (code, said) = keys(&nodes[0], &["remove", &new_b64]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("primary key"), "{said}");

    // The keyring is kept: restarted with the old key given, k2 links with
    // its keyring, and says that it differs.
    nodes[1].kill9();
    nodes[1].restart();
    wait_converged(&nodes.iter().collect::<Vec<_>>(), 3);
    assert!(nodes[1]
        .log_text()
        .contains("the key given at start is not in the keyring"));
    // Every change is in the audit trail.
    let (_, lines) = cli_json(&nodes[0], &["audit", "--module", "keyring"]);
    let carried = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["decision"] == "carried_out")
        .count();
    assert!(carried >= 3 * 3, "{lines}");
}

#[test]
fn a_node_that_trusts_operator_keys_takes_only_signed_keyring_changes() {
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.key");
    let out = std::process::Command::new(BIN)
        .args(["keygen", "--operator", "-o", alice.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let trusted = format!("@{}.pub", alice.display());
    let node = TestNode::start("t1", &["--trust-operator", &trusted]);
    let new = ClusterKey::generate().to_base64();
    let (code, said) = keys(&node, &["install", &new]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("not_authorized: unsigned"), "{said}");
    let (code, said) = keys(&node, &["install", &new, "--operator-key", alice.to_str().unwrap()]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("changed"), "{said}");
    assert_eq!(keyrings(&node)["t1"].1.len(), 2);
}
