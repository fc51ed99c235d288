//! Two floods that once took a node past a gigabyte, each now bounded in
//! bytes: a module that never reads its stdin, and event stream readers
//! that never read, under a stream of 900 KB envelopes.
//!
//! `FLOOD_PUBLISHES` sets how many envelopes (300 by default; `make
//! bench-floods` sends the 1,500 of the original finding to a release
//! build). The test prints the node's RSS before and its peak after.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How much the node's peak RSS may rise over its RSS before the floods.
/// Held by the bounds: 8 MiB of stdin queue, 4 MiB per event reader of
/// frames they share, 16 KiB pieces in the HTTP server's buffers, and the
/// envelope being handled. Before the bounds, 300 envelopes took a node
/// hundreds of megabytes up.
const RSS_RISE_BOUND_MIB: u64 = 150;

/// `VmRSS` and `VmHWM` (the peak) of a process, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn metric(node: &TestNode, name: &str) -> f64 {
    let (_, text) = http(&node.http, "GET", "/metrics", None).expect("GET /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(-1.0)
}

#[test]
fn a_deaf_module_and_readers_that_never_read_stay_within_a_memory_bound() {
    let publishes: usize = std::env::var("FLOOD_PUBLISHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let node = TestNode::start("flooded", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // A module that subscribes to `flood` and never reads its stdin.
    let dir = module_dir(
        tmp.path(),
        "deaf",
        "1.0.0",
        "#!/bin/sh\nexec sleep 100000\n",
        json!({"subscribe": ["flood"]}),
    );
    let (code, out) = cli_json(&node, &["deploy", "deaf", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // 200 event stream readers that send their request and never read.
    let token = node.api_token();
    let readers: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect(&node.http).unwrap();
            let auth = if i % 2 == 0 {
                format!("Authorization: Bearer {token}\r\n")
            } else {
                String::new()
            };
            let head = format!("GET /v1/events HTTP/1.1\r\nHost: {}\r\n{auth}\r\n", node.http);
            s.write_all(head.as_bytes()).unwrap();
            // Read only the answer's head, to know the stream is open.
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut seen = Vec::new();
            wait_for(Duration::from_secs(30), &format!("event stream {i} to open"), || {
                let mut buf = [0u8; 512];
                if let Ok(n) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                }
                String::from_utf8_lossy(&seen).contains(": connected").then_some(())
            });
            s
        })
        .collect();
    let (before, _) = rss_kib(node.pid());

    let blob = "x".repeat(900_000);
    let body = json!({"address": "flood", "body": {"blob": blob}}).to_string();
    let started = Instant::now();
    for i in 0..publishes {
        let (status, answer) = node.http("POST", "/v1/publish", Some(body.as_bytes()));
        assert_eq!(status, 202, "publish {i}: {answer}");
    }
    let took = started.elapsed();
    let (after, peak) = rss_kib(node.pid());
    let dropped_readers = metric(&node, "conjoiner_event_streams_dropped_total ");
    let module = module_state(&node, "deaf").expect("the module is listed");
    let (_, state) = node.http("GET", "/v1/debug/state", None);
    let stdin_dropped = most_of(&state, "envelopes_dropped");
    let dropped_overloaded = metric(&node, "conjoiner_envelopes_dropped_total{reason=\"overloaded\"} ");
    eprintln!(
        "floods: {publishes} envelopes of 900 KB in {:.1} s; RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; \
         event readers dropped {dropped_readers}; envelopes the module could not take {stdin_dropped}; module {}",
        took.as_secs_f64(),
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0,
        module["state"],
    );
    assert!(
        peak < before + RSS_RISE_BOUND_MIB * 1024,
        "peak RSS {peak} KiB, {} MiB over the {before} KiB before; the bound is {RSS_RISE_BOUND_MIB} MiB",
        (peak - before) / 1024
    );
    assert!(dropped_readers > 0.0, "readers that never read are dropped and counted");
    assert!(
        stdin_dropped > 0,
        "the deaf module's state counts the envelopes it could not take: {state}"
    );
    assert!(
        dropped_overloaded >= stdin_dropped as f64,
        "the node's drop metric counts them too: {dropped_overloaded} < {stdin_dropped}"
    );
    let (status, health) = node.http("GET", "/v1/health", None);
    assert_eq!(status, 200, "the node is still up: {health}");
    // The readers were cut off: what they can read ends.
    let mut first = &readers[0];
    first.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = vec![0u8; 1 << 20];
    wait_for(
        Duration::from_secs(60),
        "a dropped reader's stream to end",
        || match first.read(&mut sink) {
            Ok(0) | Err(_) => Some(()),
            Ok(_) => None,
        },
    );
}

/// The largest number under `key` anywhere in `value`.
fn most_of(value: &serde_json::Value, key: &str) -> u64 {
    match value {
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| {
                if k == key {
                    v.as_u64().unwrap_or(0)
                } else {
                    most_of(v, key)
                }
            })
            .max()
            .unwrap_or(0),
        serde_json::Value::Array(items) => items.iter().map(|v| most_of(v, key)).max().unwrap_or(0),
        _ => 0,
    }
}
