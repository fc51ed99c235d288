//! `make bench`: N node processes on loopback (default 20; `N=200` works),
//! and, when the `serf` binary is on the PATH, N Serf agents after them in
//! the same run, measured the same way from outside:
//!
//! - convergence: from launching the first node (the seed; the other N−1 are
//!   launched at once as soon as it answers) until the first, middle and last
//!   node each list N alive; then how many of all N do. A run that does not
//!   converge within `CONVERGE_LIMIT` seconds (default 180) is reported as
//!   such, with the most alive members any of those three listed; beside
//!   it, when the last node was launched, and the CPU all processes used
//!   until then (a start's cost, less swayed by other load than its time);
//! - a steady window (`STEADY_SECS`, default 60) with nothing happening:
//!   `dead` verdicts logged by every node (all false: nothing failed), and
//!   CPU per node from `/proc/PID/stat`; then idle RSS;
//! - broadcast latency: publish on one node, arrival at every receiver
//!   (conjoiner: its `/v1/events` stream; Serf: a user-event handler that
//!   records the time), over `BROADCASTS` (default 100) broadcasts;
//! - failure detection: `kill -9` the last node, until every survivor has
//!   logged it dead (conjoiner: the `member declared dead` log line; Serf: a
//!   member-failed handler). Both are read from files, so measuring adds no
//!   load to the nodes.
//!
//! The node count after convergence and the broadcast phase each stop after
//! `PHASE_LIMIT` (120 s), so a run in a storm still ends and reports what it
//! measured: nodes not asked count as not listing all, and the table says how
//! many broadcasts were sent.
//!
//! Figures are printed and written to `target/bench/cluster-N.json`; nothing
//! is asserted, and a figure that could not be measured is printed as `-`.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::*;

fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Lines appended to the files since `offsets` were taken.
fn appended(files: &[PathBuf], offsets: &[u64]) -> Vec<String> {
    let mut lines = Vec::new();
    for (file, from) in files.iter().zip(offsets) {
        let bytes = std::fs::read(file).unwrap_or_default();
        let start = (*from as usize).min(bytes.len());
        lines.extend(String::from_utf8_lossy(&bytes[start..]).lines().map(str::to_string));
    }
    lines
}

fn sizes(files: &[PathBuf]) -> Vec<u64> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect()
}

/// `2026-11-25T10:11:12.345678Z` (tracing's default) as Unix nanoseconds.
fn rfc3339_ns(stamp: &str) -> Option<u128> {
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|v| v.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|v| v.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + day - 719469;
    let secs = days * 86400 + h * 3600 + min * 60 + s;
    let frac_ns: u128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(secs as u128 * 1_000_000_000 + frac_ns)
}

/// What one run of a system measured. `None`: could not be measured.
#[derive(Debug, Default)]
struct Figures {
    converge_ms: Option<f64>,
    /// From launching the first node until the last one was launched.
    launched_ms: f64,
    /// The CPU all processes used from their start until convergence (or
    /// the limit), in seconds: the start's cost, less swayed by the
    /// machine's other load than its wall time.
    start_cpu_s: f64,
    /// The most alive members one of the watched nodes listed, if it never
    /// reached N.
    best_alive: usize,
    /// Nodes listing all N alive once the watched ones did (or at the limit).
    listing_all: usize,
    steady_s: f64,
    false_dead: usize,
    cpu_pct_per_node: f64,
    cpu_cores_total: f64,
    rss_mean_mib: f64,
    rss_max_mib: f64,
    broadcast_p50_ms: f64,
    broadcast_p99_ms: f64,
    broadcast_max_ms: f64,
    broadcasts: usize,
    deliveries_missed: usize,
    detect_all_ms: Option<f64>,
    detect_saw: usize,
}

impl Figures {
    fn json(&self) -> Value {
        json!({
            "converged": self.converge_ms.is_some(),
            "converge_ms": self.converge_ms,
            "launched_ms": self.launched_ms,
            "start_cpu_s": self.start_cpu_s,
            "best_alive_if_not_converged": self.best_alive,
            "nodes_listing_all": self.listing_all,
            "steady_window_s": self.steady_s,
            "false_dead_in_steady_window": self.false_dead,
            "idle_cpu_percent_per_node": self.cpu_pct_per_node,
            "idle_cpu_cores_all_nodes": self.cpu_cores_total,
            "idle_rss_mean_mib": self.rss_mean_mib,
            "idle_rss_max_mib": self.rss_max_mib,
            "broadcast_p50_ms": self.broadcast_p50_ms,
            "broadcast_p99_ms": self.broadcast_p99_ms,
            "broadcast_max_ms": self.broadcast_max_ms,
            "broadcasts": self.broadcasts,
            "deliveries_missed": self.deliveries_missed,
            "failure_seen_by_all_ms": self.detect_all_ms,
            "survivors_that_saw_the_failure": self.detect_saw,
        })
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

/// The CPU `pids` used since they started, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() as f64 / clock_ticks_per_s()
}

/// The quiet window: `dead` verdicts counted by `is_death` in the lines the
/// nodes append to `logs`, and the CPU the processes use.
fn steady_window(f: &mut Figures, secs: u64, pids: &[u32], logs: &[PathBuf], is_death: impl Fn(&str) -> bool) {
    let offsets = sizes(logs);
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs(secs));
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let ticks: u64 = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).sum();
    f.steady_s = elapsed;
    f.cpu_cores_total = ticks as f64 / clock_ticks_per_s() / elapsed;
    f.cpu_pct_per_node = 100.0 * f.cpu_cores_total / pids.len() as f64;
    f.false_dead = appended(logs, &offsets).iter().filter(|l| is_death(l)).count();
}

/// Waits until `seen_at` finds the victim's death in every survivor's file;
/// answers the last of those times after `killed_ns`, and how many saw it.
fn detection(files: &[PathBuf], killed_ns: u128, seen_at: impl Fn(&str) -> Option<u128>) -> (Option<f64>, usize) {
    let mut seen: Vec<Option<u128>> = vec![None; files.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        for (slot, file) in seen.iter_mut().zip(files) {
            if slot.is_none() {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                *slot = text.lines().filter_map(&seen_at).find(|t| *t >= killed_ns);
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let saw = seen.iter().flatten().count();
    let all = (saw == files.len())
        .then(|| seen.iter().flatten().max().map(|t| (t - killed_ns) as f64 / 1e6))
        .flatten();
    (all, saw)
}

/// `n` consecutive free ports below the kernel's ephemeral range (32768 and
/// up on Linux), so no node's outgoing connection can take one of them
/// between this check and the node binding it.
/// Convergence, the same way for both systems: the first, middle and last
/// node each list `n` alive (`alive(i)`), polled every 250 ms; the CPU the
/// processes `pids` used by then.
fn converge(
    f: &mut Figures,
    (n, pids): (usize, &[u32]),
    started: Instant,
    limit: Duration,
    mut alive: impl FnMut(usize) -> usize,
) {
    let watched = [0, n / 2, n - 1];
    let mut done: HashSet<usize> = HashSet::new();
    let converged = poll(limit, Duration::from_millis(250), || {
        for i in watched {
            if !done.contains(&i) {
                let count = alive(i);
                f.best_alive = f.best_alive.max(count);
                if count == n {
                    done.insert(i);
                }
            }
        }
        (done.len() == watched.len()).then_some(())
    });
    f.converge_ms = converged.map(|()| started.elapsed().as_secs_f64() * 1000.0);
    f.start_cpu_s = cpu_seconds(pids);
    // Under a storm one query can take seconds (Serf at 200: up to the
    // client limit of 5 s each), so the count stops at a deadline; a node
    // not asked by then is not counted as listing all.
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut asked = 0;
    for i in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        asked += 1;
        if alive(i) == n {
            f.listing_all += 1;
        }
    }
    if asked < n {
        eprintln!("listing all: only {asked} of {n} nodes asked within {PHASE_LIMIT:?}");
    }
}

/// The longest the node count after convergence, or the broadcast phase, may
/// take: a run in a storm must still finish and report what it measured.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// Whether the broadcast phase that began at `began` must stop before
/// broadcast `b` of `total`, saying so once.
fn broadcast_phase_over(began: Instant, b: usize, total: usize, system: &str) -> bool {
    let over = began.elapsed() >= PHASE_LIMIT;
    if over {
        eprintln!("{system}: broadcast phase stopped at {PHASE_LIMIT:?}, after {b} of {total} broadcasts");
    }
    over
}

// ---------------------------------------------------------------- conjoiner

/// Reads a node's `/v1/events` stream and sends (marker, arrival) pairs.
/// The node's API token goes along: without it the stream leaves bodies,
/// and so the markers, out.
fn sse_reader(
    addr: String,
    token: Option<String>,
    node: usize,
    tx: mpsc::Sender<(usize, String, Instant)>,
    ready: mpsc::Sender<()>,
) {
    let sock: SocketAddr = addr.parse().unwrap();
    let Ok(mut stream) = TcpStream::connect(sock) else {
        return;
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    if write!(
        stream,
        "GET /v1/events?address=bench.lat HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n"
    )
    .is_err()
    {
        return;
    }
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

/// A `member declared dead` line of the node logs: when, and whom.
fn conjoiner_death(line: &str) -> Option<(u128, String)> {
    // The core and the bridge both log a death; count the bridge's line,
    // which comes once per verdict.
    if !line.contains("member declared dead") || !line.contains("cluster_bridge") {
        return None;
    }
    let at = rfc3339_ns(line.split_whitespace().next()?)?;
    let member = line.split("member=").nth(1)?.split_whitespace().next()?.to_string();
    Some((at, member))
}

/// Prints what the start cost each node, from its core's counters: the
/// signatures it checked (members' proofs and status-report seals), the
/// suspicions it raised and the suspects it passed over on its rings,
/// refutations and links opened, mean and most.
fn start_costs(nodes: &mut [ConjoinerNode]) {
    let counters: Vec<Value> = nodes
        .iter_mut()
        .filter_map(|n| n.http().map(str::to_string))
        .filter_map(|addr| http(&addr, "GET", "/v1/debug/state", "", None).ok())
        .filter_map(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .map(|state| state["cluster"]["counters"].clone())
        .collect();
    let mut line = format!("conjoiner: the start, per node of {}, mean (max):", counters.len());
    for name in [
        "signatures_checked",
        "suspicions_raised",
        "passed_over",
        "refutations",
        "links_opened",
        "links_closed_for_room",
        "dials",
        "dial_failures",
        "joins_redirected",
        "anti_entropy_repairs",
    ] {
        let values: Vec<u64> = counters.iter().filter_map(|c| c[name].as_u64()).collect();
        let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
        let max = values.iter().max().copied().unwrap_or(0);
        line += &format!(" {name} {mean:.1} ({max})");
    }
    eprintln!("{line}");
}

fn bench_conjoiner(n: usize, broadcasts: usize, limit: Duration, steady: u64) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let key = {
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut f = Figures::default();
    let binds: Vec<String> = port_block(n).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let seed = binds[0].clone();
    let started = Instant::now();
    let mut nodes = vec![start_conjoiner(root.path(), 1, &key, &binds[0], &seed)];
    if poll(Duration::from_secs(30), Duration::from_millis(20), || {
        nodes[0].http().map(|_| ())
    })
    .is_none()
    {
        eprintln!("conjoiner: the seed node never answered");
        return f;
    }
    for i in 2..=n {
        nodes.push(start_conjoiner(root.path(), i, &key, &binds[i - 1], &seed));
    }
    f.launched_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pids: Vec<u32> = nodes.iter().map(|n| n.proc.child.id()).collect();
    converge(&mut f, (n, &pids), started, limit, |i| {
        nodes[i].http().map(alive_count).unwrap_or(0)
    });
    match f.converge_ms {
        Some(ms) => eprintln!(
            "conjoiner: {n} nodes converged in {ms:.0} ms (all launched at {:.0} ms), using {:.2} s of CPU",
            f.launched_ms, f.start_cpu_s
        ),
        None => eprintln!(
            "conjoiner: NOT converged within {limit:?} (best {} of {n} alive)",
            f.best_alive
        ),
    }
    start_costs(&mut nodes);
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    eprintln!("conjoiner: steady window of {steady} s");
    steady_window(&mut f, steady, &pids, &logs, |l| conjoiner_death(l).is_some());
    rss_figures(&mut f, &pids);

    // Broadcast latency at every receiver.
    let https: Vec<Option<String>> = nodes.iter_mut().map(|n| n.http().map(str::to_string)).collect();
    let tokens: Vec<Option<String>> = nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.data.join("api.token")).ok())
        .map(|t| t.map(|t| t.trim().to_string()))
        .collect();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    for (i, addr) in https.iter().enumerate() {
        if let Some(addr) = addr.clone() {
            let (tx, ready, token) = (tx.clone(), ready_tx.clone(), tokens[i].clone());
            thread::spawn(move || sse_reader(addr, token, i, tx, ready));
        }
    }
    let connected = (0..n)
        .take_while(|_| ready_rx.recv_timeout(Duration::from_secs(20)).is_ok())
        .count();
    eprintln!("conjoiner: {broadcasts} broadcasts ({connected} event streams)");
    let mut latencies = Vec::new();
    let began = Instant::now();
    for b in 0..broadcasts {
        if broadcast_phase_over(began, b, broadcasts, "conjoiner") {
            break;
        }
        f.broadcasts += 1;
        let Some(origin) = &https[b % n] else { continue };
        let marker = format!("m{b}");
        let body = json!({"address": "bench.lat", "body": {"marker": marker}}).to_string();
        let sent = Instant::now();
        if !matches!(
            http(origin, "POST", "/v1/publish", &body, tokens[b % n].as_deref()),
            Ok((202, _))
        ) {
            f.deliveries_missed += n;
            continue;
        }
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
    latency_figures(&mut f, latencies);

    // kill -9 the last node; every survivor must log it dead.
    eprintln!("conjoiner: kill -9 n{n}");
    let victim = format!("n{n}");
    let mut victim_node = nodes.pop().unwrap();
    let killed_ns = unix_ns();
    let _ = victim_node.proc.child.kill();
    let _ = victim_node.proc.child.wait();
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    (f.detect_all_ms, f.detect_saw) = detection(&logs, killed_ns, |l| {
        conjoiner_death(l).filter(|(_, m)| *m == victim).map(|(t, _)| t)
    });
    f
}

// ---------------------------------------------------------------- serf

/// Runs a `serf` client command, killed after `SERF_CLIENT_LIMIT`: under a
/// Serf storm (200 agents, load average 700 on 2-core machine, 2026-11-28)
/// one `serf members` took minutes, and the benchmark hung instead of
/// reporting a run that does not converge.
fn serf_client(args: &[&str]) -> Option<std::process::Output> {
    let mut child = Command::new("serf")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let done = poll(SERF_CLIENT_LIMIT, Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    });
    if done.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    child.wait_with_output().ok()
}

const SERF_CLIENT_LIMIT: Duration = Duration::from_secs(5);

fn serf_members_alive(rpc: &str) -> usize {
    serf_client(&["members", &format!("-rpc-addr={rpc}"), "-status=alive"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .unwrap_or(0)
}

fn bench_serf(n: usize, broadcasts: usize, limit: Duration, steady: u64) -> Figures {
    let root = tempfile::tempdir().unwrap();
    let arrivals = root.path().join("arrivals");
    let failures = root.path().join("failures");
    std::fs::create_dir_all(&arrivals).unwrap();
    std::fs::create_dir_all(&failures).unwrap();
    let handler = root.path().join("lat.sh");
    std::fs::write(
        &handler,
        format!(
            "#!/bin/sh\nt=$(date +%s%N)\nread -r payload\necho \"$payload $t\" >> {}/$1.log\n",
            arrivals.display()
        ),
    )
    .unwrap();
    // member-failed: one line per failed member, "<ns> <name>".
    let failed = root.path().join("failed.sh");
    std::fs::write(
        &failed,
        format!(
            "#!/bin/sh\nt=$(date +%s%N)\nwhile read -r name rest; do echo \"$t $name\" >> {}/$1.log; done\n",
            failures.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&handler)
        .arg(&failed)
        .status()
        .unwrap();
    let mut f = Figures::default();
    let mut procs = Vec::new();
    let mut rpcs = Vec::new();
    let ports = port_block(2 * n);
    let binds: Vec<String> = ports[..n].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let started = Instant::now();
    for i in 1..=n {
        let rpc = format!("127.0.0.1:{}", ports[n + i - 1]);
        let mut cmd = Command::new("serf");
        cmd.args([
            "agent",
            &format!("-node=s{i}"),
            &format!("-bind={}", binds[i - 1]),
            &format!("-rpc-addr={rpc}"),
            &format!("-event-handler=user:lat={} s{i}", handler.display()),
            &format!("-event-handler=member-failed={} s{i}", failed.display()),
            "-log-level=err",
        ]);
        if i > 1 {
            cmd.arg(format!("-join={}", binds[0]));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serf agent");
        procs.push(Proc { child });
        rpcs.push(rpc);
        if i == 1
            && poll(Duration::from_secs(30), Duration::from_millis(20), || {
                (serf_members_alive(&rpcs[0]) == 1).then_some(())
            })
            .is_none()
        {
            eprintln!("serf: the seed agent never answered");
            return f;
        }
    }
    f.launched_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    converge(&mut f, (n, &pids), started, limit, |i| serf_members_alive(&rpcs[i]));
    match f.converge_ms {
        Some(ms) => eprintln!(
            "serf: {n} nodes converged in {ms:.0} ms (all launched at {:.0} ms), using {:.2} s of CPU",
            f.launched_ms, f.start_cpu_s
        ),
        None => eprintln!(
            "serf: NOT converged within {limit:?} (best {} of {n} alive)",
            f.best_alive
        ),
    }
    let fail_logs: Vec<PathBuf> = (1..=n).map(|i| failures.join(format!("s{i}.log"))).collect();
    eprintln!("serf: steady window of {steady} s");
    steady_window(&mut f, steady, &pids, &fail_logs, |l| !l.trim().is_empty());
    rss_figures(&mut f, &pids);

    eprintln!("serf: {broadcasts} broadcasts");
    let mut latencies = Vec::new();
    let began = Instant::now();
    for b in 0..broadcasts {
        if broadcast_phase_over(began, b, broadcasts, "serf") {
            break;
        }
        f.broadcasts += 1;
        let origin = &rpcs[b % n];
        let sent_ns = unix_ns();
        let marker = format!("m{b}");
        let sent = serf_client(&[
            "event",
            &format!("-rpc-addr={origin}"),
            "-coalesce=false",
            "lat",
            &marker,
        ])
        .is_some_and(|o| o.status.success());
        if !sent {
            f.deliveries_missed += n;
            continue;
        }
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
    latency_figures(&mut f, latencies);

    eprintln!("serf: kill -9 s{n}");
    let victim = format!("s{n}");
    let mut victim_proc = procs.pop().unwrap();
    let killed_ns = unix_ns();
    let _ = victim_proc.child.kill();
    let _ = victim_proc.child.wait();
    (f.detect_all_ms, f.detect_saw) = detection(&fail_logs[..n - 1], killed_ns, |l| {
        let (t, name) = l.split_once(' ')?;
        (name.trim() == victim).then(|| t.parse().ok()).flatten()
    });
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

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
}

fn row(name: &str, n: usize, f: &Figures, broadcasts: usize) -> String {
    let converge = match f.converge_ms {
        Some(ms) => format!("{ms:.0}"),
        None => format!("never ({}/{n})", f.best_alive),
    };
    let missed = if f.broadcasts < broadcasts {
        format!(
            "{} ({} of {broadcasts} broadcasts sent)",
            f.deliveries_missed, f.broadcasts
        )
    } else {
        f.deliveries_missed.to_string()
    };
    format!(
        "| {name} | {converge} | {}/{n} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} ({}/{}) |",
        f.listing_all,
        f.false_dead,
        f.cpu_pct_per_node,
        f.cpu_cores_total,
        f.rss_mean_mib,
        f.broadcast_p50_ms,
        f.broadcast_p99_ms,
        f.broadcast_max_ms,
        missed,
        opt(f.detect_all_ms),
        f.detect_saw,
        n - 1,
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
    let limit = Duration::from_secs(env_usize("CONVERGE_LIMIT", 180) as u64);
    let steady = env_usize("STEADY_SECS", 60) as u64;
    eprintln!("benchmark: {n} nodes, {broadcasts} broadcasts, steady window {steady} s");
    let ours = bench_conjoiner(n, broadcasts, limit, steady);
    // `SERF=off` leaves Serf out, for runs that compare two builds of ours.
    let serf_wanted = std::env::var("SERF").map_or(true, |v| v != "off");
    let serf = if !serf_wanted {
        eprintln!("SERF=off — skipping the comparison");
        None
    } else if serf_present() {
        Some(bench_serf(n, broadcasts, limit, steady))
    } else {
        eprintln!("serf not found on PATH (apt-get install serf) — skipping the comparison");
        None
    };

    println!();
    println!(
        "N = {n} processes on loopback, {broadcasts} broadcasts, steady window {steady} s, {} cores",
        thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );
    println!(
        "| system | converge ms | listing all | false dead (steady) | idle CPU % per node | CPU cores, all | RSS mean MiB | bc p50 ms | bc p99 ms | bc max ms | missed | dead seen by all ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("conjoiner", n, &ours, broadcasts));
    let mut report = json!({"nodes": n, "broadcasts": broadcasts, "conjoiner": ours.json()});
    if let Some(serf) = &serf {
        println!("{}", row("serf", n, serf, broadcasts));
        report["serf"] = serf.json();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("cluster-{n}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written: {}", file.display());
}
