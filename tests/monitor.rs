//! How operators see the fleet, on real node processes: every node's module
//! statuses reach every other node through the Monitors; unresponsive
//! modules and killed nodes show up in `conjoiner status` (exit code 3);
//! `/metrics` is Prometheus text whose counters move with traffic; `debug
//! dump` prints every actor's state, and an envelope can be followed by its
//! id through the debug logs of two nodes.

mod common;

use common::*;
use conjoiner::cluster::ClusterKey;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
/// The harness runs every node with `--status-interval 1s`.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The modules on `node` as `observer`'s `modules --json` lists them, if
/// it has `node`'s report.
fn modules_of(observer: &TestNode, node: &str) -> Option<Vec<Value>> {
    let (_, nodes) = cli_json(observer, &["modules"]);
    let modules = nodes.as_array()?.iter().find(|n| n["node"] == node)?.get("modules")?;
    modules.as_array().cloned()
}

/// The module `module` on `node` as `observer`'s `modules --json` lists it.
fn module_on(observer: &TestNode, node: &str, module: &str) -> Option<Value> {
    modules_of(observer, node)?.into_iter().find(|m| m["name"] == module)
}

/// `node` as `observer`'s `status --json` shows it, with the exit code.
fn status_of(observer: &TestNode, node: &str) -> (i32, Option<Value>) {
    let (code, status) = cli_json(observer, &["status"]);
    let entry = status["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == node).cloned());
    (code, entry)
}

/// A process module that reports its status until it gets a request, then
/// hangs without reading stdin again (a wedged module).
const WEDGING_MODULE: &str = r#"#!/bin/sh
n=0
while IFS= read -r line; do
    case "$line" in
    *'"type":"status_request"'*)
        n=$((n + 1))
        printf '{"op":"status","body":{"answered":%s}}\n' "$n"
        ;;
    *'"type":"request"'*)
        exec sleep 1000
        ;;
    esac
done
"#;

/// A process module that exits with code 1 when it gets a request.
const CRASH_ON_REQUEST: &str = r#"#!/bin/sh
while IFS= read -r line; do
    case "$line" in
    *'"type":"status_request"'*) printf '{"op":"status","body":{"up":true}}\n' ;;
    *'"type":"request"'*) exit 1 ;;
    esac
done
"#;

#[test]
fn a_module_restart_reaches_other_nodes_at_once_not_on_the_next_round() {
    let key = ClusterKey::generate();
    let env = vec![("CONJOINER_KEY".to_string(), key.to_base64())];
    // Rounds a minute apart: only an immediate report can beat that.
    let slow_rounds = vec!["--status-interval".to_string(), "60s".to_string()];
    let a = TestNode::launch(
        "rs-a",
        Launch {
            env: env.clone(),
            extra: slow_rounds.clone(),
            ..Launch::default()
        },
    );
    let mut extra = slow_rounds;
    extra.extend(["--join".to_string(), a.cluster_addr()]);
    let b = TestNode::launch(
        "rs-b",
        Launch {
            env,
            extra,
            ..Launch::default()
        },
    );
    wait_for(LIMIT, "rs-a and rs-b to converge", || {
        (alive_names(&b) == ["rs-a", "rs-b"]).then_some(())
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = module_dir(tmp.path(), "crashy", "1.0.0", CRASH_ON_REQUEST, json!({}));
    let (code, out) = cli_json(
        &a,
        &[
            "deploy",
            "crashy",
            "--from",
            dir.to_str().unwrap(),
            "--target",
            "name=rs-a",
        ],
    );
    assert_eq!(code, 0, "{out}");
    wait_for(LIMIT, "rs-b to list crashy running on rs-a", || {
        module_on(&b, "rs-a", "crashy").filter(|m| m["state"] == "running")
    });
    let (_, out) = cli_json(
        &a,
        &[
            "request",
            "mod.crashy",
            "{}",
            "--target",
            "name=rs-a",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(
        out["replies"][0]["code"], "module_exited",
        "it crashed, and the caller hears so at once: {out}"
    );
    let crashed = Instant::now();
    // Well inside the 60 s between rounds (and before any refresh).
    let seen = wait_for(Duration::from_secs(20), "rs-b to see the restart", || {
        module_on(&b, "rs-a", "crashy").filter(|m| m["restarts"].as_u64() >= Some(1))
    });
    eprintln!("rs-b saw the restart {:?} after the crash: {seen}", crashed.elapsed());
}

/// The modules `node`'s own first report lists, as soon as there is one.
fn first_report(node: &TestNode) -> Vec<String> {
    wait_for(LIMIT, "the node's first report", || {
        let modules = modules_of(node, &node.name)?;
        Some(
            modules
                .iter()
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect(),
        )
    })
}

/// A node's first report lists every module it runs: the core modules, and
/// those installed here before it last stopped. (It used to list only the
/// modules started before the Monitor, and that report stood for a whole
/// round, however long, until a second one went out.)
#[test]
fn a_nodes_first_report_lists_every_module_it_runs() {
    // Rounds a minute apart: any report seen sooner is the first.
    let mut node = TestNode::start("first-report", &["--status-interval", "60s"]);
    let listed = first_report(&node);
    for core in ["transponder", "deployer", "monitor", "echo"] {
        assert!(listed.iter().any(|m| m == core), "{core} missing from {listed:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    // It answers status requests, and is sent nothing else here.
    let dir = module_dir(tmp.path(), "steady", "1.0.0", CRASH_ON_REQUEST, json!({}));
    let (code, out) = cli_json(&node, &["deploy", "steady", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    node.restart();
    let listed = first_report(&node);
    assert!(
        listed.iter().any(|m| m == "steady"),
        "the module installed before the restart is missing from {listed:?}"
    );
    assert_eq!(listed.len(), 5, "{listed:?}");
}

#[test]
fn statuses_reach_every_node_and_failures_show_in_status() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(&[("a", "web"), ("b", "web"), ("c", "db")], &key);
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]], 3);
    let a = &nodes[0];

    // hello on every node, deployed from a.
    let (code, out) = cli_json(a, &["deploy", "hello", "--from", hello_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // b's hello counts a request in its status. a learns the new status
    // from b's Monitor within two intervals (plus a second of slack for a
    // loaded machine); c's hello is listed with its own status too.
    let (code, asked) = cli_json(a, &["request", "mod.hello", "{}", "--target", "name=b"]);
    assert_eq!(code, 0, "{asked}");
    let asked_at = Instant::now();
    let seen = wait_for(
        STATUS_INTERVAL * 2 + Duration::from_secs(1),
        "b's new hello status on a",
        || {
            let hello_b = module_on(a, "b", "hello")?;
            let hello_c = module_on(a, "c", "hello")?;
            (hello_b["status"]["requests"] == 1 && hello_c["status"]["greeting"] == "hello")
                .then_some((hello_b, hello_c))
        },
    );
    eprintln!("b's status reached a {:?} after the request", asked_at.elapsed());
    let (hello_b, hello_c) = seen;
    assert_eq!(hello_b["health"], "ok");
    assert_eq!(hello_b["state"], "running");
    assert!(hello_c["status"]["pid"].as_u64().is_some(), "{hello_c}");
    assert_ne!(hello_b["status"]["pid"], hello_c["status"]["pid"]);

    // Built-ins report their real state; the node its host facts.
    let (_, listed) = cli_json(a, &["modules"]);
    let entry_b = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "b")
        .unwrap()
        .clone();
    let module = |name: &str| {
        entry_b["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} on b: {entry_b}"))
    };
    assert!(module("transponder")["status"]["lamport"].as_u64().unwrap() > 0);
    assert!(module("deployer")["status"]["counters"]["deployed"].as_u64().unwrap() >= 1);
    assert!(module("echo")["status"]["requests"].is_u64());
    assert!(module("monitor")["status"]["round"].as_u64().unwrap() >= 1);
    assert_eq!(entry_b["stale"], false);
    assert!(entry_b["host"]["load"].is_array(), "{entry_b}");
    assert!(entry_b["host"]["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(entry_b["cluster"]["peers"], 2, "b's bridge reports its peers");

    // Everything is fine: `status` exits 0.
    let all_ok = wait_for(LIMIT, "status to be all ok", || {
        let out = a.cli(&["status"]);
        (out.status.code() == Some(0)).then(|| stdout(&out))
    });
    assert!(all_ok.contains("3 nodes: 3 ok, 0 failing"), "{all_ok}");

    // A module that stops answering is unresponsive, and status says so.
    let root = tempfile::tempdir().unwrap();
    let wedge = module_dir(root.path(), "wedge", "1.0.0", WEDGING_MODULE, json!({}));
    let (code, out) = cli_json(
        a,
        &[
            "deploy",
            "wedge",
            "--from",
            wedge.to_str().unwrap(),
            "--target",
            "name=c",
        ],
    );
    assert_eq!(code, 0, "{out}");
    wait_for(LIMIT, "wedge on c to report a status", || {
        module_on(a, "c", "wedge").filter(|m| m["health"] == "ok" && m["status"]["answered"].is_u64())
    });
    let _ = cli_json(
        a,
        &["request", "mod.wedge", "{}", "--target", "name=c", "--timeout", "200ms"],
    );
    let wedged = wait_for(LIMIT, "wedge on c to be unresponsive", || {
        module_on(a, "c", "wedge").filter(|m| m["health"] == "unresponsive")
    });
    assert_eq!(wedged["state"], "running", "the process is alive, just not answering");
    assert!(
        wedged["status_error"].as_str().unwrap().contains("no reply"),
        "{wedged}"
    );
    let out = a.cli(&["status"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("c/wedge: unresponsive"), "{text}");
    assert!(text.contains("1 failing"), "{text}");

    // A killed node goes stale, then dead; status keeps exiting 3.
    nodes[2].kill9();
    let a = &nodes[0];
    let (code, stale) = wait_for(LIMIT, "c to be stale or suspect on a", || {
        let (code, c) = status_of(a, "c");
        c.filter(|c| c["stale"] == true || c["member"] != "alive")
            .map(|c| (code, c))
    });
    eprintln!(
        "c first seen failing as health={} member={} stale={}",
        stale["health"], stale["member"], stale["stale"]
    );
    assert_eq!(code, 3);
    let dead = wait_for(LIMIT, "c to be dead on a", || {
        let (code, c) = status_of(a, "c");
        c.filter(|c| c["health"] == "dead").map(|c| (code, c))
    });
    assert_eq!(dead.0, 3);
    assert_eq!(dead.1["stale"], true);
    let out = a.cli(&["status"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let line = text.lines().find(|l| l.starts_with("c ")).expect("c listed");
    assert!(line.contains("dead"), "{text}");
    // Its modules are unknown now: never counted ok, in the row or the sum.
    let c_modules = dead.1["modules"].as_array().unwrap().len();
    assert!(c_modules >= 4, "{}", dead.1);
    assert!(line.contains(&format!("{c_modules} unknown")), "{text}");
    assert!(!line.contains(" ok"), "a dead node's modules are not ok: {text}");
    assert_eq!(dead.1["module_counts"]["unknown"], c_modules, "{}", dead.1);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" modules: "))
        .expect("a summary line");
    assert!(summary.contains(&format!("{c_modules} unknown")), "{text}");
    let (_, listed) = cli_json(a, &["status"]);
    let s = &listed["summary"];
    assert_eq!(
        s["ok_modules"].as_u64().unwrap()
            + s["failing_modules"].as_u64().unwrap()
            + s["unknown_modules"].as_u64().unwrap(),
        s["modules"].as_u64().unwrap(),
        "every module is ok, failing or unknown here: {s}"
    );
    assert!(s["unknown_modules"].as_u64().unwrap() >= c_modules as u64, "{s}");
    let c_hello = module_on(a, "c", "hello").expect("c's hello, as last reported");
    assert_eq!(c_hello["health"], "unknown", "{c_hello}");
    assert_eq!(c_hello["reported_health"], "ok", "{c_hello}");
    assert!(
        text.lines().next().unwrap().starts_with("NODE") && text.lines().nth(1).unwrap().starts_with("c "),
        "failing nodes come first: {text}"
    );
    let (code, _) = cli_json(a, &["modules"]);
    assert_eq!(code, 3, "modules names the dead node as stale");
}

/// One sample of Prometheus text: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format strictly enough to catch a malformed
/// line: `# HELP`/`# TYPE` comments, and `name{k="v",…} value` samples whose
/// family was typed before.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, what) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "bad metric name in `{line}`");
            match kind {
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&what),
                        "`{line}`"
                    );
                    typed.insert(name.to_string(), what.to_string());
                }
                "HELP" => {}
                _ => panic!("unknown comment `{line}`"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in `{line}`"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in `{line}`")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in `{line}`"));
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in `{line}`"));
                    assert!(valid_name(k), "bad label name in `{line}`");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad metric name in `{line}`");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "`{line}` has no # TYPE before it");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn metrics(node: &TestNode) -> Vec<Sample> {
    let (code, text) = http(&node.http, "GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(code, 200);
    parse_prometheus(&text)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_are_prometheus_text_and_counters_move_with_traffic() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("m1", "web"), ("m2", "web")], &key);
    wait_converged(&[&nodes[0], &nodes[1]], 2);
    let (m1, m2) = (&nodes[0], &nodes[1]);

    let before1 = metrics(m1);
    let before2 = metrics(m2);
    for family in [
        "conjoiner_envelopes_in_total",
        "conjoiner_envelopes_out_total",
        "conjoiner_members",
        "conjoiner_peers",
        "conjoiner_peer_queue_bytes",
        "conjoiner_congested",
        "conjoiner_congested_episodes_total",
        "conjoiner_modules",
        "conjoiner_module_restarts_total",
        "conjoiner_modbus_request_duration_seconds_bucket",
        "process_cpu_seconds_total",
    ] {
        assert!(before1.iter().any(|(n, _, _)| n == family), "{family} missing");
    }
    // Counters exist from zero, every documented reason with them, so a
    // rate over them is defined before the first event.
    for reason in [
        "duplicate",
        "oversize",
        "malformed",
        "unauthorized",
        "bad_target",
        "overloaded",
    ] {
        let series = before1.iter().find(|(n, l, _)| {
            n == "conjoiner_envelopes_dropped_total" && l.get("reason").map(String::as_str) == Some(reason)
        });
        assert!(series.is_some(), "no dropped series for {reason}");
    }
    assert!(before1
        .iter()
        .any(|(n, l, v)| n == "conjoiner_link_handshake_failures_total" && l.is_empty() && *v == 0.0));
    assert!(before1
        .iter()
        .any(|(n, l, _)| n == "conjoiner_cluster_input_refused_total"
            && l.get("reason").map(String::as_str) == Some("record_invalid")));
    assert_eq!(
        value(
            &before1,
            "conjoiner_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&before1, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    // A module's own health: echo is ok, and exactly one health is 1.
    let echo_health = wait_for(LIMIT, "echo's health in the metrics", || {
        let now = metrics(m1);
        let ones: Vec<String> = now
            .iter()
            .filter(|(n, l, v)| {
                n == "conjoiner_module_health" && l.get("module").map(String::as_str) == Some("echo") && *v == 1.0
            })
            .filter_map(|(_, l, _)| l.get("health").cloned())
            .collect();
        (!ones.is_empty()).then_some(ones)
    });
    assert_eq!(echo_health, ["ok"]);
    // Text a real Prometheus reads: `promtool check metrics` finds
    // nothing, where it is installed.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write as _;
        let (_, text) = http(&m1.http, "GET", "/metrics", None).expect("GET /metrics");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}");
    }
    assert_eq!(value(&before1, "conjoiner_members", &[("status", "alive")]), 2.0);
    assert_eq!(value(&before1, "conjoiner_peers", &[]), 1.0);
    assert_eq!(value(&before1, "conjoiner_modules", &[("state", "running")]), 4.0);

    // Five requests from m1 to echo on m2.
    for i in 0..5 {
        let (code, out) = cli_json(
            m1,
            &["request", "mod.echo", &format!("{{\"i\":{i}}}"), "--target", "name=m2"],
        );
        assert_eq!(code, 0, "{out}");
    }
    // A publish to an address nobody handles is a `no_handler` drop on m2.
    let (code, _) = cli_json(m1, &["publish", "nobody.listens", "{}", "--target", "name=m2"]);
    assert_eq!(code, 0);

    let after2 = wait_for(LIMIT, "m2 to count the publish as no_handler", || {
        let after = metrics(m2);
        let drops = |s: &[Sample]| value(s, "conjoiner_envelopes_dropped_total", &[("reason", "no_handler")]);
        (drops(&after) > drops(&before2)).then_some(after)
    });
    let after1 = metrics(m1);
    let delta = |a: &[Sample], b: &[Sample], name: &str, labels: &[(&str, &str)]| {
        value(a, name, labels) - value(b, name, labels)
    };
    assert!(
        delta(
            &after1,
            &before1,
            "conjoiner_envelopes_out_total",
            &[("type", "request")]
        ) >= 5.0
    );
    assert!(
        delta(
            &after2,
            &before2,
            "conjoiner_envelopes_in_total",
            &[("type", "request")]
        ) >= 5.0
    );
    assert!(delta(&after2, &before2, "conjoiner_envelopes_out_total", &[("type", "reply")]) >= 5.0);
    assert!(delta(&after1, &before1, "conjoiner_envelopes_in_total", &[("type", "reply")]) >= 5.0);
    assert!(
        delta(
            &after1,
            &before1,
            "conjoiner_request_duration_seconds_count",
            &[("type", "request")]
        ) >= 5.0,
        "each reply is timed"
    );
    assert!(
        value(
            &after1,
            "conjoiner_request_duration_seconds_bucket",
            &[("type", "request"), ("le", "+Inf")]
        ) >= 5.0
    );
}

#[test]
fn debug_dump_prints_every_actor_and_an_envelope_can_be_followed_by_id() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("d1", "web"), ("d2", "web")], &key);
    wait_converged(&[&nodes[0], &nodes[1]], 2);
    let (d1, d2) = (&nodes[0], &nodes[1]);

    let out = d1.cli(&["debug", "dump"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dump: Value = serde_json::from_str(&stdout(&out)).expect("debug dump prints JSON");
    for module in ["transponder", "deployer", "monitor", "echo"] {
        assert!(dump["modules"][module].is_object(), "{module} missing from {dump}");
    }
    assert!(dump["modbus"]["subscriptions"]["mod.monitor"].is_array(), "{dump}");
    assert_eq!(dump["cluster"]["kind"], "bridge");
    wait_for(LIMIT, "every actor's snapshot in the log", || {
        let log = d1.log_text();
        [
            "module=transponder",
            "module=monitor",
            "module=modbus",
            "module=cluster",
        ]
        .iter()
        .all(|m| log.lines().any(|l| l.contains("state snapshot") && l.contains(m)))
        .then_some(())
    });

    // A request from d1 to d2's echo, followed by its id in both logs.
    let (code, out) = cli_json(d1, &["request", "mod.echo", "{}", "--target", "name=d2"]);
    assert_eq!(code, 0, "{out}");
    let id = out["id"].as_str().expect("request id").to_string();
    let hops = |node: &TestNode| -> Vec<String> {
        node.log_text()
            .lines()
            .filter(|l| l.contains(&id))
            .map(str::to_string)
            .collect()
    };
    let on_d2 = wait_for(LIMIT, "the request in d2's log", || {
        let lines = hops(d2);
        (lines.iter().any(|l| l.contains("received from cluster"))
            && lines.iter().any(|l| l.contains("delivered") && l.contains("to=echo")))
        .then_some(lines)
    });
    let on_d1 = hops(d1);
    assert!(
        on_d1
            .iter()
            .any(|l| l.contains("sending to cluster") && l.contains("module=transponder")),
        "{on_d1:#?}"
    );
    assert!(
        on_d1
            .iter()
            .any(|l| l.contains("pushing envelope to the cluster") && l.contains("module=cluster")),
        "{on_d1:#?}"
    );
    assert!(
        on_d1.iter().any(|l| l.contains("reply gathered")),
        "the reply names the request: {on_d1:#?}"
    );
    assert!(on_d2.iter().all(|l| l.contains("node=d2")), "every line names its node");
}
