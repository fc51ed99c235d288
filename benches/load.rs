//! `make bench-load`: NODES node processes (default 5) on loopback, each
//! running the `loadgen` process module (`benches/load/loadgen`), which
//! publishes RATE events a second (default 500) for SECS seconds (default
//! 60) to `load.sink` on every *other* node. With the defaults that is
//! 2,500 envelopes sent and 10,000 delivered a second.
//!
//! Measured at the receivers, by the modules themselves: every event
//! carries its sender and a sequence number, and each loadgen counts what
//! it got from each sender, so a lost envelope shows as expected minus
//! received; the nodes' own drop counters (every `*dropped*` figure in
//! `GET /v1/debug/state`) say where the lost ones went. Also the latency
//! from publish to receipt (both ends on this host's clock), and each
//! node's RSS and CPU over the run, and its RSS once idle again. Nothing is asserted: it prints a table
//! and writes `target/bench/load.json`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time after the last publish for the last envelopes to arrive.
const DRAIN: Duration = Duration::from_secs(10);
/// How often RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long after the drain the nodes' idle RSS is read again.
const SETTLE: Duration = Duration::from_secs(15);

fn unix_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Every numeric field of `value` whose key names a drop, with its path.
fn drop_counters(value: &Value, path: &str, out: &mut BTreeMap<String, u64>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match v.as_u64() {
                    Some(n) if k.contains("dropped") => {
                        out.insert(here, n);
                    }
                    _ => drop_counters(v, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                drop_counters(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What one loadgen wrote to `load-counts.json`.
fn counts(data: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(data.join("mods").join("loadgen").join("load-counts.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the load benchmark runs with `make bench-load`");
        return;
    }
    let n = env_usize("NODES", 5).max(2);
    let rate = env_usize("RATE", 500).max(1);
    let secs = env_usize("SECS", 60).max(1);
    eprintln!(
        "load benchmark: {n} nodes, each publishing {rate}/s to the {} others for {secs} s",
        n - 1
    );
    let root = tempfile::tempdir().unwrap();
    let key = {
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let binds: Vec<String> = port_block(n).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut nodes: Vec<ConjoinerNode> = (1..=n)
        .map(|i| start_conjoiner(root.path(), i, &key, &binds[i - 1], &binds[0]))
        .collect();
    let converged = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        nodes
            .iter_mut()
            .all(|node| node.http().map(alive_count) == Some(n))
            .then_some(())
    });
    if converged.is_none() {
        eprintln!("the {n} nodes never all listed each other within 60 s; no load was sent");
        return;
    }
    let pids: Vec<u32> = nodes.iter().map(|node| node.proc.child.id()).collect();
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    // Deploy to all; every loadgen starts publishing at the same moment.
    let start_at = unix_secs().ceil() + 8.0;
    let config = json!({"rate": rate, "secs": secs, "start_at": start_at}).to_string();
    let package = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/load/loadgen");
    let first_http = nodes[0].http().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["deploy", "loadgen", "--from"])
        .arg(&package)
        .args(["--target", "*", "--config", &config])
        .env("CONJOINER_HTTP", &first_http)
        .env("CONJOINER_TOKEN_FILE", nodes[0].data.join("api.token"))
        .output()
        .expect("run conjoiner deploy");
    if !out.status.success() {
        eprintln!(
            "deploy failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }

    // Watch RSS and CPU until every loadgen has written its last publish
    // (a node that holds its publishers back makes that later than SECS),
    // then for the last envelopes to arrive.
    let cpu_before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let load_start = Instant::now() + Duration::from_secs_f64((start_at - unix_secs()).max(0.0));
    let give_up = load_start + Duration::from_secs(secs as u64 * 4 + 60);
    let all_done = || {
        nodes
            .iter()
            .all(|node| counts(&node.data).is_some_and(|c| c["done_sending"] == true))
    };
    let mut done_seen: Option<Instant> = None;
    let mut rss_samples: Vec<(f64, Vec<u64>)> = Vec::new();
    loop {
        let now = Instant::now();
        if done_seen.is_none() && now >= load_start && all_done() {
            done_seen = Some(now);
        }
        let end = match done_seen {
            Some(done) => (done + DRAIN).max(load_start + Duration::from_secs(secs as u64) + DRAIN),
            None => give_up,
        };
        if now >= end {
            break;
        }
        let at = unix_secs() - start_at;
        rss_samples.push((at, pids.iter().map(|p| rss_kib(*p)).collect()));
        thread::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(now)));
    }
    if done_seen.is_none() {
        eprintln!(
            "some loadgens had not written their last publish after {} s",
            give_up.duration_since(load_start).as_secs()
        );
    }
    let watched = Instant::now().saturating_duration_since(load_start).as_secs_f64();
    let ticks = clock_ticks_per_s();
    let cpu_cores: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| (cpu_ticks(*p) - before) as f64 / ticks / watched)
        .collect();
    // The last counts are written once a second; RSS is read once the
    // nodes have been idle a while.
    thread::sleep(SETTLE);
    let rss_after: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    let figures: Vec<Option<Value>> = nodes.iter().map(|node| counts(&node.data)).collect();
    let name = |i: usize| format!("n{}", i + 1);
    let sent: Vec<u64> = figures
        .iter()
        .map(|f| f.as_ref().and_then(|f| f["sent"].as_u64()).unwrap_or(0))
        .collect();
    let total_sent: u64 = sent.iter().sum();
    let mut latency: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut total_expected = 0;
    let mut total_received = 0;
    for (i, f) in figures.iter().enumerate() {
        let expected: u64 = (0..n).filter(|j| *j != i).map(|j| sent[j]).sum();
        let received: u64 = (0..n)
            .filter(|j| *j != i)
            .map(|j| f.as_ref().and_then(|f| f["received"][name(j)].as_u64()).unwrap_or(0))
            .sum();
        if let Some(hist) = f.as_ref().and_then(|f| f["latency_tenth_ms"].as_object()) {
            for (k, v) in hist {
                if let (Ok(k), Some(v)) = (k.parse::<u64>(), v.as_u64()) {
                    *latency.entry(k).or_default() += v;
                }
            }
        }
        total_expected += expected;
        total_received += received;
        let peak = rss_samples
            .iter()
            .map(|(_, r)| r[i])
            .chain([rss_after[i]])
            .max()
            .unwrap_or(0);
        rows.push(json!({
            "node": name(i),
            "sent": sent[i],
            "expected": expected,
            "received": received,
            "missing": expected.saturating_sub(received),
            "cpu_cores": cpu_cores[i],
            "rss_kib_before": rss_before[i],
            "rss_kib_peak": peak,
            "rss_kib_after": rss_after[i],
            "counts_read": f.is_some(),
        }));
    }
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let Some(addr) = node.http().map(str::to_string) else {
            continue;
        };
        if let Ok((200, body)) = http(&addr, "GET", "/v1/debug/state", "", None) {
            if let Ok(state) = serde_json::from_str::<Value>(&body) {
                let mut found = BTreeMap::new();
                drop_counters(&state, "", &mut found);
                for (path, count) in found.into_iter().filter(|(_, c)| *c > 0) {
                    drops.insert(format!("{}: {path}", name(i)), count);
                }
            }
        }
    }
    let percentile_ms = |p: f64| -> f64 {
        let total: u64 = latency.values().sum();
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (tenths, count) in &latency {
            seen += count;
            if seen >= rank {
                return *tenths as f64 / 10.0;
            }
        }
        f64::NAN
    };
    let max_ms = latency.keys().last().map(|t| *t as f64 / 10.0).unwrap_or(f64::NAN);

    println!();
    println!(
        "{n} nodes on loopback, {} cores; each published {rate}/s for {secs} s to the {} others",
        thread::available_parallelism().map(|p| p.get()).unwrap_or(1),
        n - 1
    );
    println!(
        "| node | sent | expected | received | missing | CPU cores | RSS MiB before / peak / {} s after |",
        (DRAIN + SETTLE).as_secs()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} / {:.1} / {:.1} |",
            row["node"].as_str().unwrap(),
            row["sent"],
            row["expected"],
            row["received"],
            row["missing"],
            row["cpu_cores"].as_f64().unwrap(),
            row["rss_kib_before"].as_f64().unwrap() / 1024.0,
            row["rss_kib_peak"].as_f64().unwrap() / 1024.0,
            row["rss_kib_after"].as_f64().unwrap() / 1024.0,
        );
    }
    let last_publish = figures
        .iter()
        .filter_map(|f| f.as_ref().and_then(|f| f["done_at"].as_f64()))
        .fold(f64::NAN, f64::max);
    let delivered_per_s = total_received as f64 / (last_publish - start_at).max(secs as f64);
    println!(
        "publishing {rate}/s per node was planned to take {secs} s and took {:.1} s (the nodes hold publishers back when their links are full)",
        last_publish - start_at
    );
    println!(
        "sent {total_sent} ({:.0}/s), delivered {total_received} of {total_expected} ({delivered_per_s:.0}/s), missing {}",
        total_sent as f64 / secs as f64,
        total_expected.saturating_sub(total_received)
    );
    println!(
        "publish to receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile_ms(50.0),
        percentile_ms(99.0),
        max_ms
    );
    if drops.is_empty() {
        println!("drops counted by the nodes: none");
    } else {
        println!("drops counted by the nodes:");
        for (what, count) in &drops {
            println!("  {what} = {count}");
        }
    }
    println!("RSS over time (s from the start of the load: MiB per node):");
    for (at, rss) in &rss_samples {
        let mib: Vec<String> = rss.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect();
        println!("  {at:>6.1}: {}", mib.join(" "));
    }
    let report = json!({
        "nodes": n,
        "rate_per_node": rate,
        "secs": secs,
        "sent": total_sent,
        "expected": total_expected,
        "received": total_received,
        "delivered_per_s": delivered_per_s,
        "publishing_took_s": last_publish - start_at,
        "latency_ms": {"p50": percentile_ms(50.0), "p99": percentile_ms(99.0), "max": max_ms},
        "per_node": rows,
        "drops": drops,
        "rss_kib_samples": rss_samples.iter().map(|(at, r)| json!({"at_s": at, "rss_kib": r})).collect::<Vec<_>>(),
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("load.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written: {}", file.display());
}
