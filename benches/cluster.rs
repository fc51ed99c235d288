//! `make bench`: N node processes on loopback (default 20, `N=50` works),
//! measured from outside the way an operator would see them:
//!
//! - convergence: from launching the first node until every node lists N alive;
//! - broadcast latency: publish on one node, arrival time at every receiver's
//!   event stream (`/v1/events`), over `BROADCASTS` (default 100) broadcasts;
//! - failure detection: `kill -9` one node, until every survivor lists it dead;
//! - idle RSS per node (`/proc/PID/status`).
//!
//! When the `serf` binary is on the PATH, the same measures run on a Serf
//! cluster of the same N (user events with `-coalesce=false`, an event handler
//! that records arrival, `serf members` for failures), and the ratios are
//! printed. Figures are printed and written to `target/bench/cluster-N.json`;
//! nothing is asserted.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_conjoiner");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wait_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request; answers status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What one run of a system measured.
#[derive(Debug, Default)]
struct Figures {
    converge_ms: f64,
    broadcast_p50_ms: f64,
    broadcast_p99_ms: f64,
    broadcast_max_ms: f64,
    broadcasts: usize,
    deliveries_missed: usize,
    detect_all_ms: f64,
    rss_mean_mib: f64,
    rss_max_mib: f64,
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "converge_ms": self.converge_ms,
            "broadcast_p50_ms": self.broadcast_p50_ms,
            "broadcast_p99_ms": self.broadcast_p99_ms,
            "broadcast_max_ms": self.broadcast_max_ms,
            "broadcasts": self.broadcasts,
            "deliveries_missed": self.deliveries_missed,
            "failure_seen_by_all_ms": self.detect_all_ms,
            "idle_rss_mean_mib": self.rss_mean_mib,
            "idle_rss_max_mib": self.rss_max_mib,
        })
    }
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn latency_figures(f: &mut Figures, mut latencies: Vec<f64>) {
    latencies.sort_by(|a, b| a.total_cmp(b));
    f.broadcast_p50_ms = percentile(&latencies, 50.0);
    f.broadcast_p99_ms = percentile(&latencies, 99.0);
    f.broadcast_max_ms = latencies.last().copied().unwrap_or(f64::NAN);
}

fn rss_figures(f: &mut Figures, pids: &[u32]) {
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    f.rss_mean_mib = rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0;
    f.rss_max_mib = rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
}

/// Polls every survivor in its own thread until `alive` says the victim is
/// gone; answers when the last survivor saw it.
fn detect_all(survivors: usize, killed: Instant, poll: impl Fn(usize) -> bool + Sync) -> f64 {
    thread::scope(|s| {
        let handles: Vec<_> = (0..survivors)
            .map(|i| {
                let poll = &poll;
                s.spawn(move || {
                    let deadline = killed + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        if poll(i) {
                            return killed.elapsed().as_secs_f64() * 1000.0;
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    f64::NAN
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .fold(
                0.0,
                |a: f64, b| if b.is_nan() || a.is_nan() { f64::NAN } else { a.max(b) },
            )
    })
}

// ---------------------------------------------------------------- conjoiner

struct ConjoinerNode {
    proc: Proc,
    http: String,
}

fn start_conjoiner(root: &Path, i: usize, key: &str, seed: Option<&str>) -> ConjoinerNode {
    let data = root.join(format!("n{i}"));
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "--name",
        &format!("n{i}"),
        "--http",
        "127.0.0.1:0",
        "--bind",
        "127.0.0.1:0",
    ])
    .args(["--no-mdns", "--data-dir"])
    .arg(&data)
    .env("CONJOINER_KEY", key)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(root.join(format!("n{i}.log"))).unwrap());
    if let Some(seed) = seed {
        cmd.args(["--join", seed]);
    }
    let child = cmd.spawn().expect("spawn conjoiner");
    let http = wait_until(Duration::from_secs(30), "http.addr", || {
        std::fs::read_to_string(data.join("http.addr"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    });
    ConjoinerNode {
        proc: Proc { child },
        http,
    }
}

fn alive_count(http_addr: &str) -> usize {
    http(http_addr, "GET", "/v1/members?status=alive", "")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Vec<Value>>(&b).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Reads a node's `/v1/events` stream and sends (marker, arrival) pairs.
fn sse_reader(addr: String, node: usize, tx: mpsc::Sender<(usize, String, Instant)>, ready: mpsc::Sender<()>) {
    let sock: SocketAddr = addr.parse().unwrap();
    let mut stream = TcpStream::connect(sock).expect("events stream");
    write!(
        stream,
        "GET /v1/events?address=bench.lat HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut said_ready = false;
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        let now = Instant::now();
        if !said_ready && line.starts_with(": connected") {
            let _ = ready.send(());
            said_ready = true;
        }
        if let Some(pos) = line.find("\"marker\":\"") {
            let rest = &line[pos + 10..];
            let marker = rest[..rest.find('"').unwrap_or(0)].to_string();
            if tx.send((node, marker, now)).is_err() {
                return;
            }
        }
        line.clear();
    }
}

fn bench_conjoiner(n: usize, broadcasts: usize) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let key = {
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut f = Figures::default();
    let started = Instant::now();
    let mut nodes = vec![start_conjoiner(root.path(), 1, &key, None)];
    let seed = std::fs::read_to_string(root.path().join("n1/cluster.addr"))
        .unwrap()
        .trim()
        .to_string();
    for i in 2..=n {
        nodes.push(start_conjoiner(root.path(), i, &key, Some(&seed)));
    }
    for node in &nodes {
        wait_until(Duration::from_secs(120), "conjoiner convergence", || {
            (alive_count(&node.http) == n).then_some(())
        });
    }
    f.converge_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!("conjoiner: {n} nodes converged in {:.0} ms", f.converge_ms);

    // Broadcast latency at every receiver.
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    for (i, node) in nodes.iter().enumerate() {
        let (addr, tx, ready) = (node.http.clone(), tx.clone(), ready_tx.clone());
        thread::spawn(move || sse_reader(addr, i, tx, ready));
    }
    for _ in 0..n {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every events stream connects");
    }
    let mut latencies = Vec::new();
    for b in 0..broadcasts {
        let origin = &nodes[b % n];
        let marker = format!("m{b}");
        let body = json!({"address": "bench.lat", "body": {"marker": marker}}).to_string();
        let sent = Instant::now();
        let (status, _) = http(&origin.http, "POST", "/v1/publish", &body).expect("publish");
        assert_eq!(status, 202);
        let mut got = vec![false; n];
        let deadline = sent + Duration::from_secs(2);
        while got.iter().any(|g| !g) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((node, m, at)) if m == marker && !got[node] => {
                    got[node] = true;
                    if node != b % n {
                        latencies.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        f.deliveries_missed += got.iter().filter(|g| !**g).count();
    }
    f.broadcasts = broadcasts;
    latency_figures(&mut f, latencies);

    thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = nodes.iter().map(|n| n.proc.child.id()).collect();
    rss_figures(&mut f, &pids);

    // kill -9 the last node; every survivor must list it dead.
    let victim = format!("n{n}");
    let mut victim_node = nodes.pop().unwrap();
    let _ = victim_node.proc.child.kill();
    let killed = Instant::now();
    let _ = victim_node.proc.child.wait();
    f.detect_all_ms = detect_all(nodes.len(), killed, |i| {
        http(&nodes[i].http, "GET", "/v1/members?status=dead", "")
            .map(|(_, b)| b.contains(&format!("\"name\":\"{victim}\"")))
            .unwrap_or(false)
    });
    f
}

// ---------------------------------------------------------------- serf

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serf_members_alive(rpc: &str) -> usize {
    Command::new("serf")
        .args(["members", &format!("-rpc-addr={rpc}"), "-status=alive"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .unwrap_or(0)
}

fn bench_serf(n: usize, broadcasts: usize) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let arrivals = root.path().join("arrivals");
    std::fs::create_dir_all(&arrivals).unwrap();
    let handler = root.path().join("handler.sh");
    std::fs::write(
        &handler,
        format!(
            "#!/bin/sh\nt=$(date +%s%N)\nread -r payload\necho \"$payload $t\" >> {}/$1.log\n",
            arrivals.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&handler).status().unwrap();
    let mut f = Figures::default();
    let mut procs = Vec::new();
    let mut rpcs = Vec::new();
    let mut seed = String::new();
    let started = Instant::now();
    for i in 1..=n {
        let bind = format!("127.0.0.1:{}", free_port());
        let rpc = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new("serf");
        cmd.args([
            "agent",
            &format!("-node=s{i}"),
            &format!("-bind={bind}"),
            &format!("-rpc-addr={rpc}"),
            &format!("-event-handler=user:lat={} s{i}", handler.display()),
            "-log-level=err",
        ]);
        if i > 1 {
            cmd.arg(format!("-join={seed}"));
        } else {
            seed = bind.clone();
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serf agent");
        procs.push(Proc { child });
        rpcs.push(rpc);
        thread::sleep(Duration::from_millis(50));
    }
    for rpc in &rpcs {
        wait_until(Duration::from_secs(120), "serf convergence", || {
            (serf_members_alive(rpc) == n).then_some(())
        });
    }
    f.converge_ms = started.elapsed().as_secs_f64() * 1000.0;
    eprintln!("serf: {n} nodes converged in {:.0} ms", f.converge_ms);

    let mut latencies = Vec::new();
    for b in 0..broadcasts {
        let origin = &rpcs[b % n];
        let sent_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let marker = format!("m{b}");
        Command::new("serf")
            .args([
                "event",
                &format!("-rpc-addr={origin}"),
                "-coalesce=false",
                "lat",
                &marker,
            ])
            .output()
            .expect("serf event");
        let want = format!("{marker} ");
        let mut arrived = vec![None; n];
        let deadline = Instant::now() + Duration::from_secs(5);
        while arrived.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, slot) in arrived.iter_mut().enumerate() {
                if slot.is_none() {
                    let text = std::fs::read_to_string(arrivals.join(format!("s{}.log", i + 1))).unwrap_or_default();
                    *slot = text
                        .lines()
                        .find(|l| l.starts_with(&want))
                        .and_then(|l| l.split_whitespace().nth(1).and_then(|t| t.parse::<u128>().ok()));
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        for (i, at) in arrived.iter().enumerate() {
            match at {
                Some(at) if i != b % n => latencies.push(at.saturating_sub(sent_ns) as f64 / 1e6),
                Some(_) => {}
                None => f.deliveries_missed += 1,
            }
        }
    }
    f.broadcasts = broadcasts;
    latency_figures(&mut f, latencies);

    thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    rss_figures(&mut f, &pids);

    let victim = format!("s{n}");
    let mut victim_proc = procs.pop().unwrap();
    let _ = victim_proc.child.kill();
    let killed = Instant::now();
    let _ = victim_proc.child.wait();
    f.detect_all_ms = detect_all(n - 1, killed, |i| {
        Command::new("serf")
            .args(["members", &format!("-rpc-addr={}", rpcs[i]), "-status=failed"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .any(|w| w == victim)
            })
            .unwrap_or(false)
    });
    drop(victim_proc);
    f
}

fn serf_present() -> bool {
    Command::new("serf")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "| {name:<9} | {:>9.0} | {:>7.1} | {:>7.1} | {:>7.1} | {:>6} | {:>11.0} | {:>8.1} | {:>7.1} |",
        f.converge_ms,
        f.broadcast_p50_ms,
        f.broadcast_p99_ms,
        f.broadcast_max_ms,
        f.deliveries_missed,
        f.detect_all_ms,
        f.rss_mean_mib,
        f.rss_max_mib
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not,
    // and a test run must not start a 20-node benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the cluster benchmark runs with `make bench` (N=20 by default)");
        return;
    }
    let n = env_usize("N", 20).max(3);
    let broadcasts = env_usize("BROADCASTS", 100).max(1);
    eprintln!("benchmark: {n} nodes, {broadcasts} broadcasts");
    let ours = bench_conjoiner(n, broadcasts);
    let serf = if serf_present() {
        Some(bench_serf(n, broadcasts))
    } else {
        eprintln!("serf not found on PATH (apt-get install serf) — skipping the comparison");
        None
    };

    println!();
    println!(
        "N = {n} nodes on loopback, {broadcasts} broadcasts, {} cores",
        thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );
    println!("| system    | converge  | bc p50  | bc p99  | bc max  | missed | dead by all | RSS mean | RSS max |");
    println!("|           | ms        | ms      | ms      | ms      |        | ms          | MiB      | MiB     |");
    println!("|-----------|-----------|---------|---------|---------|--------|-------------|----------|---------|");
    println!("{}", row("conjoiner", &ours));
    let mut report = json!({"nodes": n, "broadcasts": broadcasts, "conjoiner": ours.json()});
    if let Some(serf) = &serf {
        println!("{}", row("serf", serf));
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        println!(
            "serf / conjoiner: broadcast p99 {:.1}×, failure detection {:.1}×, idle RSS {:.1}×",
            ratio(ours.broadcast_p99_ms, serf.broadcast_p99_ms),
            ratio(ours.detect_all_ms, serf.detect_all_ms),
            ratio(ours.rss_mean_mib, serf.rss_mean_mib)
        );
        report["serf"] = serf.json();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("cluster-{n}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written: {}", file.display());
}
