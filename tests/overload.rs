//! Overload without silent loss: three nodes whose modules publish as fast
//! as they can write, far more than the links carry. The nodes hold the
//! publishers back (their output is read more slowly) instead of dropping
//! links or envelopes further on. Whatever is still lost is counted where
//! it was lost, and no link between the live nodes is dropped.

mod common;

use common::*;
use conjoiner::cluster::ClusterKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Envelopes each node publishes, and the padding of each (bytes).
const PER_NODE: u64 = 10_000;
const PAD: usize = 1_500;

/// Once the file `go` appears in its folder (every node's module is
/// subscribed by then), publishes PER_NODE envelopes to `flood.sink` on
/// every other node as fast as it can write them. Counts what it receives
/// from each sender, and writes its figures to `counts.json` twice a
/// second.
const FLOOD: &str = r#"#!/usr/bin/env python3
import json, os, sys, threading, time
node = os.environ["CONJOINER_NODE"]
lock = threading.Lock()
state = {"sent": 0, "done": False, "received": {}}

def publish(total, pad):
    while not os.path.exists("go"):
        time.sleep(0.05)
    out = sys.stdout
    for seq in range(total):
        out.write(json.dumps({"op": "publish", "address": "flood.sink", "target": "!name=" + node,
                              "body": {"from": node, "seq": seq, "pad": pad}}) + "\n")
        with lock:
            state["sent"] = seq + 1
    out.flush()
    with lock:
        state["done"] = True

def report():
    while True:
        time.sleep(0.5)
        with lock:
            text = json.dumps(state)
        with open("counts.json.tmp", "w") as f:
            f.write(text)
        os.replace("counts.json.tmp", "counts.json")

for line in sys.stdin:
    msg = json.loads(line)
    kind = msg.get("type")
    if kind == "init":
        config = msg["body"]["config"]
        threading.Thread(target=publish, args=(config["count"], "x" * config["pad"]), daemon=True).start()
        threading.Thread(target=report, daemon=True).start()
    elif kind == "event" and msg.get("dst", {}).get("address") == "flood.sink":
        sender = msg["body"]["from"]
        with lock:
            state["received"][sender] = state["received"].get(sender, 0) + 1
    elif kind == "status_request":
        print(json.dumps({"op": "status", "body": {"health": "ok"}}), flush=True)
"#;

fn counts(node: &TestNode) -> Option<Value> {
    let text = std::fs::read_to_string(node.data_dir().join("mods/flood/counts.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Every envelope a node counted as lost: each counter in its debug state
/// whose name says `dropped` (links are not envelopes), and full mailboxes.
fn counted_losses(value: &Value, path: &str, out: &mut BTreeMap<String, u64>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{path}.{k}");
                match v.as_u64() {
                    Some(n) if (k.contains("dropped") && !k.starts_with("links_")) || k == "mailbox_full" => {
                        if n > 0 {
                            out.insert(here, n);
                        }
                    }
                    _ => counted_losses(v, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                counted_losses(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn at_overload_publishers_are_held_back_and_every_loss_is_counted() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("ov1", "a"), ("ov2", "a"), ("ov3", "a")], &key);
    let refs: Vec<&TestNode> = nodes.iter().collect();
    wait_converged(&refs, 3);

    let tmp = tempfile::tempdir().unwrap();
    let dir = module_dir(
        tmp.path(),
        "flood",
        "1.0.0",
        FLOOD,
        json!({"subscribe": ["flood.sink"], "publish_per_sec": 100000,
               "config": {"count": PER_NODE, "pad": PAD}}),
    );
    let (code, out) = cli_json(&nodes[0], &["deploy", "flood", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // Every module runs, so every node handles `flood.sink`: go.
    for node in &nodes {
        wait_module(node, "flood", "running", |m| m["state"] == "running");
    }
    for node in &nodes {
        std::fs::write(node.data_dir().join("mods/flood/go"), b"").unwrap();
    }
    let started = Instant::now();
    wait_for(
        Duration::from_secs(240),
        "every flood module to finish publishing",
        || {
            nodes
                .iter()
                .all(|n| counts(n).is_some_and(|c| c["done"] == true))
                .then_some(())
        },
    );
    let sending = started.elapsed();

    // Then wait for the last envelopes: until every receiver has all it
    // was sent, or its counts stop moving for 10 s.
    let received_total = || -> u64 {
        nodes
            .iter()
            .filter_map(counts)
            .map(|c| {
                c["received"]
                    .as_object()
                    .map(|r| r.values().filter_map(Value::as_u64).sum::<u64>())
                    .unwrap_or(0)
            })
            .sum()
    };
    let expected_total = PER_NODE * 3 * 2;
    let (mut last, mut moved) = (received_total(), Instant::now());
    wait_for(Duration::from_secs(120), "the receivers' counts to settle", || {
        let now = received_total();
        if now != last {
            (last, moved) = (now, Instant::now());
        }
        (now == expected_total || moved.elapsed() > Duration::from_secs(10)).then_some(())
    });

    let mut missing = 0;
    for receiver in &nodes {
        let c = counts(receiver).expect("counts written");
        for sender in nodes.iter().filter(|n| n.name != receiver.name) {
            let sent = counts(sender).unwrap()["sent"].as_u64().unwrap();
            assert_eq!(sent, PER_NODE, "{} published all it meant to", sender.name);
            let got = c["received"][&sender.name].as_u64().unwrap_or(0);
            assert!(
                got <= sent,
                "{} got {got} of {sent} from {}",
                receiver.name,
                sender.name
            );
            missing += sent - got;
        }
    }
    let mut losses = BTreeMap::new();
    let mut held_back = 0;
    for node in &nodes {
        let (status, state) = node.http("GET", "/v1/debug/state", None);
        assert_eq!(status, 200, "{state}");
        counted_losses(&state, &node.name, &mut losses);
        held_back += state["cluster"]["link_loads"]["congested_episodes"]
            .as_u64()
            .unwrap_or(0);
    }
    let counted: u64 = losses.values().sum();
    eprintln!(
        "overload: {expected_total} deliveries expected, {missing} missing, {counted} counted as lost \
         ({losses:?}); publishers held back {held_back} times; publishing took {:.1} s",
        sending.as_secs_f64()
    );
    assert!(
        held_back > 0,
        "the nodes never held a publisher back: no overload was made"
    );
    if missing > counted {
        for node in &nodes {
            let log = node.log_text();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("state snapshot") && (l.contains("WARN") || l.contains("ERROR")))
                .take(30)
                .collect();
            eprintln!("--- {}\n{}", node.name, lines.join("\n"));
            let (_, state) = node.http("GET", "/v1/debug/state", None);
            eprintln!("{}", serde_json::to_string(&state["transponder"]).unwrap());
            eprintln!("{}", serde_json::to_string(&state["modbus"]).unwrap());
            eprintln!("{}", serde_json::to_string(&state["cluster"]["counters"]).unwrap());
            eprintln!("{}", serde_json::to_string(&state["cluster"]["tree"]).unwrap());
        }
    }
    assert!(
        missing <= counted,
        "{missing} deliveries missing but only {counted} counted: {losses:?}"
    );

    // No link between the live nodes was dropped, and nobody died.
    for node in &nodes {
        let log = node.log_text();
        for bad in ["does not drain its queue", "member declared dead"] {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).take(5).collect();
            assert!(lines.is_empty(), "{} logged `{bad}`:\n{}", node.name, lines.join("\n"));
        }
        let alive = alive_names(node);
        assert_eq!(
            alive.len(),
            3,
            "{} lists all three alive, not only {alive:?}",
            node.name
        );
    }
}
