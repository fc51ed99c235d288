//! `make bench-deploy`: one deploy of a large package to N node processes
//! on loopback (default 100, package 50 MB), with some of them (default
//! 10) stopped before the deploy and started again once `conjoiner deploy`
//! has returned, twice in the same run:
//!
//! - **peer to peer**: the package is a path on the origin's host, which
//!   the origin offers over the cluster links; every other node fetches it
//!   from the origin or from a node that fetched it before;
//! - **one HTTP server**: the same deploy of a second package (the same
//!   size, other bytes, so no cache helps) from a URL served by `python3 -m
//!   http.server`, which every node fetches itself.
//!
//! For each: the time from the deploy command until every node, the
//! restarted ones too, runs the package (its install record names the
//! package's sha256, which a node writes once the module passed its
//! probation), and the bytes its source sent: the origin's Deployer
//! counter for the first, the HTTP server's log for the second.
//!
//! Figures are printed and written to `target/bench/deploy-N.json`; nothing
//! is asserted. `N`, `STOPPED`, `MB` and `LIMIT_SECS` (per deploy, default
//! 900) set the run; `KEEP=1` keeps the nodes' data dirs and logs.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::*;

/// A module folder of the built-in `uptime` kind named `name`, carrying
/// `bytes` of noise that does not compress, packaged by the CLI; answers
/// the package's path, sha256 and size.
fn big_package(root: &Path, name: &str, bytes: usize, salt: u64) -> (PathBuf, String, u64) {
    let dir = root.join(format!("src-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mod.json"),
        json!({"name": name, "version": "1.0.0", "builtin": "uptime"}).to_string(),
    )
    .unwrap();
    let mut noise = vec![0u8; bytes];
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    for word in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        word.copy_from_slice(&b[..word.len()]);
    }
    std::fs::write(dir.join("noise.bin"), noise).unwrap();
    let out = root.join(format!("{name}.tar.gz"));
    let run = Command::new(BIN)
        .arg("package")
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "package: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sha = String::from_utf8_lossy(&run.stdout)
        .split_whitespace()
        .find(|w| w.len() == 64)
        .expect("`conjoiner package` prints the sha256")
        .to_string();
    let size = std::fs::metadata(&out).unwrap().len();
    std::fs::remove_dir_all(&dir).unwrap();
    (out, sha, size)
}

/// Whether node `data` runs `module` from package `sha`: its install
/// record, written after the probation, names the package.
fn runs(data: &Path, module: &str, sha: &str) -> bool {
    std::fs::read(data.join("mods").join(module).join("install.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|r| r["sha256"] == sha)
}

struct Cluster {
    root: tempfile::TempDir,
    key: String,
    binds: Vec<String>,
    nodes: Vec<Option<ConjoinerNode>>,
}

impl Cluster {
    fn start(n: usize) -> Option<Cluster> {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let binds: Vec<String> = port_block(n).iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut c = Cluster {
            root,
            key,
            binds,
            nodes: Vec::new(),
        };
        c.nodes.push(Some(c.spawn(1)));
        poll(Duration::from_secs(30), Duration::from_millis(20), || {
            c.node(1).http().map(|_| ())
        })?;
        for i in 2..=n {
            let node = c.spawn(i);
            c.nodes.push(Some(node));
        }
        let started = Instant::now();
        let converged = poll(Duration::from_secs(180), Duration::from_millis(500), || {
            [1, n / 2, n]
                .iter()
                .all(|i| c.node(*i).http().map(alive_count) == Some(n))
                .then_some(())
        });
        match converged {
            Some(()) => eprintln!("{n} nodes converged in {:.1} s", started.elapsed().as_secs_f64()),
            None => {
                eprintln!("{n} nodes did not converge within 180 s");
                return None;
            }
        }
        Some(c)
    }

    fn spawn(&self, i: usize) -> ConjoinerNode {
        start_conjoiner(self.root.path(), i, &self.key, &self.binds[i - 1], &self.binds[0])
    }

    fn node(&mut self, i: usize) -> &mut ConjoinerNode {
        self.nodes[i - 1].as_mut().expect("node runs")
    }

    fn data(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("n{i}"))
    }

    /// Stops nodes `which` (SIGKILL), as a host that goes away does.
    fn stop(&mut self, which: &[usize]) {
        for i in which {
            self.nodes[i - 1] = None;
        }
    }

    fn restart(&mut self, which: &[usize]) {
        for i in which {
            self.nodes[i - 1] = Some(self.spawn(*i));
        }
    }

    /// Runs `conjoiner deploy MODULE --from FROM` on node 1 and answers
    /// when it returned.
    fn deploy(&mut self, module: &str, from: &str) {
        let http = self.node(1).http().unwrap().to_string();
        let out = Command::new(BIN)
            .args(["--http", &http, "--token-file"])
            .arg(self.data(1).join("api.token"))
            .args(["deploy", module, "--from", from])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        let summary: Vec<&str> = said.lines().filter(|l| !l.contains(": deployed")).collect();
        eprintln!("deploy {module}: exit {:?}; {}", out.status.code(), summary.join(" / "));
    }

    /// Waits until every node runs `module` from `sha`; answers how many
    /// did, and when the last did, since `since`.
    fn wait_all(&self, n: usize, module: &str, sha: &str, since: Instant, limit: Duration) -> (usize, Option<f64>) {
        let mut last_print = Instant::now();
        loop {
            let done = (1..=n).filter(|i| runs(&self.data(*i), module, sha)).count();
            if done == n {
                return (n, Some(since.elapsed().as_secs_f64()));
            }
            if since.elapsed() > limit {
                return (done, None);
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {module}: {done} of {n} run it after {:.0} s",
                    since.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The bytes node 1's Deployer sent to peers.
    fn origin_bytes_served(&mut self) -> Option<u64> {
        let http = self.node(1).http()?.to_string();
        let (_, body) = http_get(&http, "/v1/debug/state")?;
        let state: Value = serde_json::from_str(&body).ok()?;
        state["modules"]["deployer"]["counters"]["bytes_served"].as_u64()
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path, "", None).ok()
}

/// `python3 -m http.server` on `dir`, counting the whole-file answers it
/// logs.
struct HttpServer {
    _proc: Proc,
    port: u16,
    served: Arc<AtomicUsize>,
}

fn http_server(dir: &Path) -> Option<HttpServer> {
    let port = port_block(1)[0];
    let mut child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let served = Arc::new(AtomicUsize::new(0));
    let log = child.stderr.take()?;
    let count = served.clone();
    thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if line.contains("\"GET /") && line.contains("\" 200 ") {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })?;
    Some(HttpServer {
        _proc: Proc { child },
        port,
        served,
    })
}

#[derive(Debug, Default)]
struct Run {
    all_s: Option<f64>,
    running: usize,
    source_bytes: Option<u64>,
}

/// Stops `stopped`, deploys `module` from `from`, starts them again once
/// the command returned, and waits for every node to run `sha`.
fn one_deploy(
    c: &mut Cluster,
    n: usize,
    stopped: &[usize],
    module: &str,
    from: &str,
    sha: &str,
    limit: Duration,
) -> Run {
    c.stop(stopped);
    // Their hosts are down for a while: the cluster has seen them go.
    let names: Vec<String> = stopped.iter().map(|i| format!("n{i}")).collect();
    let gone = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let http = c.node(1).http()?.to_string();
        let (_, body) = http_get(&http, "/v1/members")?;
        let members: Vec<Value> = serde_json::from_str(&body).ok()?;
        let down = members
            .iter()
            .filter(|m| names.iter().any(|n| m["name"] == n.as_str()))
            .filter(|m| m["status"] == "dead" || m["status"] == "left")
            .count();
        (down == names.len()).then_some(())
    });
    if gone.is_none() {
        eprintln!("the stopped nodes were not seen gone within 60 s; deploying anyway");
    }
    let started = Instant::now();
    c.deploy(module, from);
    c.restart(stopped);
    let (running, all_s) = c.wait_all(n, module, sha, started, limit);
    Run {
        all_s,
        running,
        source_bytes: None,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not,
    // and a test run must not start a 100-node deploy.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("the deploy benchmark runs with `make bench-deploy` (N=100 by default)");
        return;
    }
    let n = env_usize("N", 100).max(3);
    let stopped_count = env_usize("STOPPED", 10).min(n - 2);
    let mb = env_usize("MB", 50);
    let limit = Duration::from_secs(env_usize("LIMIT_SECS", 900) as u64);
    let bytes = mb * 1_000_000;
    let work = tempfile::tempdir().unwrap();
    let (p2p_pkg, p2p_sha, p2p_size) = big_package(work.path(), "bigpeer", bytes, 1);
    let web = work.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    let (_, http_sha, http_size) = big_package(&web, "bighttp", bytes, 2);
    eprintln!("packages: {p2p_size} and {http_size} bytes");

    let Some(mut c) = Cluster::start(n) else { return };
    if std::env::var_os("KEEP").is_some() {
        eprintln!(
            "KEEP: the nodes' data dirs and logs stay in {}",
            c.root.path().display()
        );
    }
    // The last nodes stop: never the origin, node 1.
    let stopped: Vec<usize> = (n - stopped_count + 1..=n).collect();

    eprintln!("peer to peer: {stopped_count} nodes stopped, deploy, they start again");
    let mut p2p = one_deploy(
        &mut c,
        n,
        &stopped,
        "bigpeer",
        p2p_pkg.to_str().unwrap(),
        &p2p_sha,
        limit,
    );
    p2p.source_bytes = c.origin_bytes_served();
    eprintln!("peer to peer: {p2p:?}");

    let http = match http_server(&web) {
        Some(server) => {
            eprintln!("one HTTP server: {stopped_count} nodes stopped, deploy, they start again");
            let url = format!("http://127.0.0.1:{}/bighttp.tar.gz", server.port);
            let mut run = one_deploy(&mut c, n, &stopped, "bighttp", &url, &http_sha, limit);
            run.source_bytes = Some(server.served.load(Ordering::Relaxed) as u64 * http_size);
            eprintln!("one HTTP server: {run:?}");
            Some(run)
        }
        None => {
            eprintln!("python3 is missing: the HTTP server run is skipped");
            None
        }
    };

    let secs = |r: &Run| {
        r.all_s
            .map_or(format!("not all ({} of {n})", r.running), |s| format!("{s:.1}"))
    };
    let copies = |r: &Run, size: u64| {
        r.source_bytes.map_or("-".to_string(), |b| {
            format!("{:.1} MB ({:.2}× the package)", b as f64 / 1e6, b as f64 / size as f64)
        })
    };
    let mut table = String::new();
    table.push_str(&format!(
        "\n| {n} nodes, {stopped_count} stopped during the deploy, a {:.1} MB package | peer to peer | one HTTP server |\n|---|---:|---:|\n",
        p2p_size as f64 / 1e6
    ));
    table.push_str(&format!(
        "| deploy command until every node runs it (s) | {} | {} |\n",
        secs(&p2p),
        http.as_ref().map_or("-".into(), secs)
    ));
    table.push_str(&format!(
        "| bytes sent by the source (the origin; the server) | {} | {} |\n",
        copies(&p2p, p2p_size),
        http.as_ref().map_or("-".into(), |r| copies(r, http_size))
    ));
    println!("{table}");

    let report = json!({
        "nodes": n,
        "stopped": stopped_count,
        "package_bytes": p2p_size,
        "peer_to_peer": {"all_running_s": p2p.all_s, "running": p2p.running, "origin_bytes_served": p2p.source_bytes},
        "http_server": http.as_ref().map(|r| json!({"all_running_s": r.all_s, "running": r.running, "server_bytes_sent": r.source_bytes})),
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("deploy-{n}.json"));
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(serde_json::to_string_pretty(&report).unwrap().as_bytes()))
        .unwrap();
    eprintln!("written: {}", file.display());
    drop(c.nodes.drain(..));
    if std::env::var_os("KEEP").is_some() {
        let _ = c.root.keep();
    }
}
