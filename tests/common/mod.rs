//! Test harness: runs the real `conjoiner` binary as a node with a temporary
//! data dir and a free port, and talks to it through the CLI or raw HTTP.
//!
//! Every wait is a polling loop bounded by a deadline. A node is killed when
//! its `TestNode` is dropped, so a failing test leaves no process behind.

#![allow(dead_code)]

pub mod browser;
pub mod fake_member;
pub mod lab;
pub mod netlab;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_conjoiner");

/// Polls `check` every 20 ms until it answers `Some`, or panics with `what`
/// after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct TestNode {
    pub name: String,
    pub http: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    launch: Launch,
    child: Option<Child>,
}

/// How a test node is started; kept so it can be restarted the same way.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Where the control API listens; default `127.0.0.1:0`.
    pub http: Option<String>,
    /// Extra environment, e.g. `CONJOINER_KEY`.
    pub env: Vec<(String, String)>,
    /// Flags after the defaults.
    pub extra: Vec<String>,
    /// Leave out `--bind 127.0.0.1:0 --no-mdns` (for multi-host tests).
    pub no_loopback_defaults: bool,
    /// Start the agent under this umask (else the test's own).
    pub umask: Option<u32>,
}

impl TestNode {
    /// Starts a node named `name` on loopback (no mDNS, free ports) with
    /// extra agent flags, and waits until its control API answers.
    pub fn start(name: &str, extra: &[&str]) -> TestNode {
        TestNode::launch(
            name,
            Launch {
                extra: extra.iter().map(|s| s.to_string()).collect(),
                ..Launch::default()
            },
        )
    }

    pub fn launch(name: &str, launch: Launch) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("agent.log");
        let mut node = TestNode {
            name: name.to_string(),
            http: String::new(),
            dir,
            log,
            launch,
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        // A data dir that does not exist yet: the agent must create it.
        let data = self.data_dir();
        let addr_file = data.join("http.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match &self.launch.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        command
            .args(["agent", "--name", &self.name])
            .arg("--http")
            .arg(self.launch.http.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(&data);
        if !self.launch.no_loopback_defaults {
            command.args(["--bind", "127.0.0.1:0", "--no-mdns"]);
        }
        // Reports every second, so tests see changes quickly.
        if !self.launch.extra.iter().any(|a| a == "--status-interval") {
            command.args(["--status-interval", "1s"]);
        }
        if let Some(mask) = self.launch.umask {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: umask is async-signal-safe and changes the child only.
            unsafe {
                command.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let child = command
            .args(&self.launch.extra)
            .env("RUST_LOG", "conjoiner=debug,info")
            // A test's own environment wins, RUST_LOG included.
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env_remove("CONJOINER_HTTP")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn conjoiner agent");
        self.child = Some(child);
        let http = wait_for(Duration::from_secs(20), "the node to write http.addr", || {
            if let Some(status) = self.try_exit() {
                panic!(
                    "node {} exited early with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        });
        self.http = match &self.launch.http {
            // Inside a namespace the file names the address we asked for.
            Some(asked) if !asked.ends_with(":0") => asked.clone(),
            _ => http,
        };
        // Up, or up and refused by the holder of its name (a test may
        // start a duplicate on purpose).
        wait_for(Duration::from_secs(20), "the control API to answer", || {
            http_request(&self.http, "GET", "/v1/health", None)
                .ok()
                .filter(|(status, body)| *status == 200 || body.contains("\"code\":\"refused\""))
        });
    }

    /// Starts the node again, same name, data dir and flags (after it exited).
    /// Replaces the extra agent flags used from the next (re)start on.
    pub fn set_extra_flags(&mut self, extra: &[String]) {
        self.launch.extra = extra.to_vec();
    }

    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// The address peers dial to reach this node (`--join` it).
    pub fn cluster_addr(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("cluster.addr"))
            .expect("cluster.addr")
            .trim()
            .to_string()
    }

    /// Kills the node with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        // Same path on every start, so a restarted node finds its state.
        self.dir.path().join("nested").join("data")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("node is running").id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the node to exit (after a signal) and answers its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = wait_for(limit, "the node to exit", || self.try_exit());
        self.child = None;
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a CLI command against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("CONJOINER_HTTP", &self.http)
            .env("CONJOINER_TOKEN_FILE", self.data_dir().join("api.token"))
            .stdin(Stdio::null())
            .output()
            .expect("run conjoiner")
    }

    /// Starts a long-running CLI command (e.g. `tail`) with piped output.
    pub fn cli_spawn(&self, args: &[&str]) -> Streaming {
        let mut child = Command::new(BIN)
            .args(args)
            .env("CONJOINER_HTTP", &self.http)
            .env("CONJOINER_TOKEN_FILE", self.data_dir().join("api.token"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conjoiner");
        Streaming {
            stdout: lines(child.stdout.take().unwrap()),
            stderr: lines(child.stderr.take().unwrap()),
            child,
        }
    }

    /// The node's API token, which every request that changes anything needs.
    pub fn api_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("api.token"))
            .expect("api.token")
            .trim()
            .to_string()
    }

    /// An HTTP request to the node's API, with its token unless it is a GET.
    pub fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {}", self.api_token());
        let mut headers = vec![("Host", self.http.as_str())];
        if method != "GET" {
            headers.push(("Authorization", &bearer));
        }
        let (status, text) = http_with_headers(&self.http, method, path, &headers, body).expect("HTTP request");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // A node killed outright leaves its modules' cgroups; remove
            // them (and kill what is in them) as its next start would.
            conjoiner::cgroup::Containment::detect(&self.name);
        }
    }
}

/// A running CLI command whose output lines arrive on channels.
pub struct Streaming {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Streaming {
    /// Waits for a line on `which` that satisfies `pred`; answers it.
    pub fn line_where(which: &mpsc::Receiver<String>, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match which.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no matching line within {limit:?}: {e}"),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn lines<R: Read + Send + 'static>(reader: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A minimal HTTP/1.1 client (one request per connection), so tests can send
/// exactly the bytes they want, malformed ones included.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<(u16, String)> {
    http_request(addr, method, path, body)
}

fn http_request(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<(u16, String)> {
    http_with_headers(addr, method, path, &[("Host", addr)], body)
}

/// A raw HTTP/1.1 request with the given headers (a `Host` among them, or
/// none at all), answering the status and the body.
pub fn http_with_headers(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address {addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or(b"");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) and close before reading a huge body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in answer: {text:?}")))?;
    let (headers, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    Ok((status, payload))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// `GET /v1/members` of a node; empty while the node does not answer.
pub fn members_json(node: &TestNode) -> Vec<serde_json::Value> {
    http_request(&node.http, "GET", "/v1/members", None)
        .ok()
        .and_then(|(status, body)| (status == 200).then(|| serde_json::from_str(&body).ok()).flatten())
        .unwrap_or_default()
}

/// What `observer` says `member`'s status is.
pub fn member_status(observer: &TestNode, member: &str) -> Option<String> {
    members_json(observer)
        .iter()
        .find(|m| m["name"] == member)
        .and_then(|m| m["status"].as_str().map(str::to_string))
}

/// Death verdicts in `node`'s log so far (the bridge logs each once).
pub fn deaths_logged(node: &TestNode) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.contains("member declared dead") && l.contains("cluster_bridge"))
        .count()
}

/// The members `observer` lists as alive, sorted.
pub fn alive_names(observer: &TestNode) -> Vec<String> {
    let mut names: Vec<String> = members_json(observer)
        .iter()
        .filter(|m| m["status"] == "alive")
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// A node on loopback with the cluster key `key` and `extra` agent flags.
pub fn with_key(name: &str, key: &conjoiner::cluster::ClusterKey, extra: Vec<String>) -> TestNode {
    TestNode::launch(
        name,
        Launch {
            env: vec![("CONJOINER_KEY".into(), key.to_base64())],
            extra,
            ..Launch::default()
        },
    )
}

/// A node with the cluster key `key` that joins `join`, if given.
pub fn keyed(name: &str, key: &conjoiner::cluster::ClusterKey, join: Option<&TestNode>) -> TestNode {
    let extra = join.map_or_else(Vec::new, |seed| vec!["--join".to_string(), seed.cluster_addr()]);
    with_key(name, key, extra)
}

/// Starts `names` as one cluster: the first is the seed the others join.
pub fn start_cluster(names: &[(&str, &str)], key: &conjoiner::cluster::ClusterKey) -> Vec<TestNode> {
    let env = vec![("CONJOINER_KEY".to_string(), key.to_base64())];
    let mut nodes: Vec<TestNode> = Vec::new();
    for (name, role) in names {
        let mut extra = vec!["--tag".to_string(), format!("role={role}")];
        if let Some(seed) = nodes.first() {
            extra.extend(["--join".to_string(), seed.cluster_addr()]);
        }
        nodes.push(TestNode::launch(
            name,
            Launch {
                env: env.clone(),
                extra,
                ..Launch::default()
            },
        ));
    }
    nodes
}

/// Waits until each of `nodes` sees `expected` alive members.
pub fn wait_converged(nodes: &[&TestNode], expected: usize) {
    for node in nodes {
        wait_for(
            Duration::from_secs(20),
            &format!("{} to see {expected} alive", node.name),
            || (alive_names(node).len() == expected).then_some(()),
        );
    }
}

/// Writes a module folder: `mod.json` (with `manifest` merged in) and an
/// executable `bin/run` holding `script`.
pub fn module_dir(root: &Path, name: &str, version: &str, script: &str, manifest: Value) -> PathBuf {
    let dir = root.join(format!("{name}-{version}"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let mut doc = json!({"name": name, "version": version, "main": "bin/run"});
    for (k, v) in manifest.as_object().unwrap() {
        doc[k] = v.clone();
    }
    std::fs::write(dir.join("mod.json"), doc.to_string()).unwrap();
    std::fs::write(dir.join("bin/run"), script).unwrap();
    std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs a CLI command with `--json`; answers its exit code and output.
pub fn cli_json(node: &TestNode, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = node.cli(&all);
    let value = serde_json::from_str(&stdout(&output)).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), value)
}

/// The example process module in `mods/hello`.
pub fn hello_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mods/hello")
}

/// A process module in sh: runs `prelude` once, then for every request it
/// reads sets `$id` to the request's id and runs `on_request` (which writes
/// the reply, or does not).
pub fn answering_module(prelude: &str, on_request: &str) -> String {
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(prelude);
    script.push_str(
        r#"
while IFS= read -r line; do
  case "$line" in
  *'"type":"request"'*)
    id=$(printf '%s\n' "$line" | sed -n 's/^{"v":1,"id":"\([^"]*\)".*/\1/p')
"#,
    );
    script.push_str(on_request);
    script.push_str("\n    ;;\n  esac\ndone\n");
    script
}

/// The module `name` on `node` as `conjoiner modules --json` lists it.
pub fn module_state(node: &TestNode, name: &str) -> Option<Value> {
    let (_, nodes) = cli_json(node, &["modules", "--target", &format!("name={}", node.name)]);
    nodes
        .as_array()?
        .iter()
        .flat_map(|n| n["modules"].as_array().cloned().unwrap_or_default())
        .find(|m| m["name"] == name)
}

pub fn wait_module(node: &TestNode, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        Duration::from_secs(30),
        &format!("{name} on {} to be {what}", node.name),
        || module_state(node, name).filter(|m| pred(m)),
    )
}

/// Is `pid` a live process (not gone, not a zombie nobody reaped)?
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Kills the listed processes when dropped, so a failed test leaves none.
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: kill(2) on pids this test's module started.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
}

/// `len` bytes that do not compress (xorshift from `seed`), for packages
/// whose size on the wire must be their size on disk.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Whether the tests run as root (needed to give files away, mount, or
/// make cgroups; CI runs as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Each node's result, by node name: (status, code).
pub fn deploy_results(outcome: &Value) -> Vec<(String, String, String)> {
    let mut r: Vec<(String, String, String)> = outcome["results"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or("?").to_string(),
                r["status"].as_str().unwrap_or("?").to_string(),
                format!(
                    "{} {}",
                    r["code"].as_str().unwrap_or(""),
                    r["error"].as_str().unwrap_or("")
                ),
            )
        })
        .collect();
    r.sort();
    r
}

/// Asks `address` on the one node; answers the reply body if it answered well.
pub fn ask_node(node: &TestNode, address: &str) -> Option<Value> {
    let (code, out) = cli_json(
        node,
        &["request", address, "{}", "--target", &format!("name={}", node.name)],
    );
    (code == 0).then(|| out["replies"][0]["body"].clone())
}
