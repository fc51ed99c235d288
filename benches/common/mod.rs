//! What both benchmarks need: polling, HTTP, `/proc` figures, ports, and
//! starting release node processes.

#![allow(dead_code)] // each benchmark uses its own part

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_conjoiner");

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Polls `check` until it answers, or gives up at `limit`.
pub fn poll<T>(limit: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// One HTTP/1.1 request; answers status and body.
/// One HTTP/1.1 request; `token` is the node's API token, which a POST needs.
pub fn http(addr: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field of the whole line, utime the 14th and stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn port_block(n: usize) -> Vec<u16> {
    let mut base: u16 = 10_000 + (std::process::id() % 8_000) as u16;
    loop {
        let ports: Vec<u16> = (0..n as u16).map(|i| base + i).collect();
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return ports;
        }
        base = if base as usize + 2 * n < 32_000 {
            base + n as u16
        } else {
            10_000
        };
    }
}

pub struct ConjoinerNode {
    pub proc: Proc,
    pub data: PathBuf,
    pub log: PathBuf,
    pub http: Option<String>,
}

impl ConjoinerNode {
    pub fn http(&mut self) -> Option<&str> {
        if self.http.is_none() {
            self.http = std::fs::read_to_string(self.data.join("http.addr"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        self.http.as_deref()
    }
}

pub fn start_conjoiner(root: &Path, i: usize, key: &str, bind: &str, seed: &str) -> ConjoinerNode {
    let data = root.join(format!("n{i}"));
    let log = root.join(format!("n{i}.log"));
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "--name",
        &format!("n{i}"),
        "--http",
        "127.0.0.1:0",
        "--bind",
        bind,
    ])
    .args(["--no-mdns", "--data-dir"])
    .arg(&data)
    .env("CONJOINER_KEY", key)
    .env("RUST_LOG", std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    if i > 1 {
        cmd.args(["--join", seed]);
    }
    let child = cmd.spawn().expect("spawn conjoiner");
    ConjoinerNode {
        proc: Proc { child },
        data,
        log,
        http: None,
    }
}

pub fn alive_count(http_addr: &str) -> usize {
    http(http_addr, "GET", "/v1/members?status=alive", "", None)
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Vec<Value>>(&b).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}
