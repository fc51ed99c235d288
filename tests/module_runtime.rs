//! Process modules at run time, on a real node: bad lines, a module that
//! prints in a loop or publishes past its limit, one that fails to start,
//! one that says it is degraded, undeploy ending every process a module
//! started, and the module guide's own example.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn bad_lines_from_a_module_are_counted_and_it_keeps_running() {
    let node = TestNode::start("listener", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // On each request: a line that is not JSON, an unknown op, a stderr
    // line, then a proper reply.
    let script = &answering_module(
        "",
        r#"    echo 'this is not json'
    echo '{"op":"explode"}'
    echo "noisy says hi on stderr" >&2
    printf '{"op":"reply","to":"%s","body":{"ok":true}}\n' "$id""#,
    );
    let dir = module_dir(tmp.path(), "noisy", "1.0.0", script, json!({}));
    let (code, out) = cli_json(&node, &["deploy", "noisy", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for _ in 0..2 {
        assert_eq!(
            ask_node(&node, "mod.noisy"),
            Some(json!({"ok": true})),
            "it still answers"
        );
    }
    let (status, state) = node.http("GET", "/v1/debug/state", None);
    assert_eq!(status, 200);
    let counters = &state["modules"]["noisy"]["counters"];
    assert_eq!(counters["bad_lines"], 4, "two bad lines per request: {state}");
    assert_eq!(counters["stderr_lines"], 2, "one stderr line per request: {state}");
    assert_eq!(counters["replies"], 2);
    let module = wait_module(&node, "noisy", "listed", |_| true);
    assert_eq!(
        (module["state"].as_str(), module["restarts"].as_u64()),
        (Some("running"), Some(0))
    );
    let log = node.log_text();
    assert!(log.contains("unknown op `explode`"), "bad lines are logged");
    let stderr_line = log
        .lines()
        .find(|l| l.contains("noisy says hi on stderr"))
        .expect("stderr reaches the log");
    assert!(stderr_line.contains("module=noisy"), "{stderr_line}");
}

#[test]
fn a_module_printing_in_a_loop_does_not_flood_the_node_log() {
    let node = TestNode::start("chatty", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // 3,000 stderr lines and 3,000 `log` lines as fast as sh can write
    // them, then answers requests.
    let script = &answering_module(
        r#"i=0
while [ $i -lt 3000 ]; do
  echo "stderr spam $i" >&2
  echo '{"op":"log","level":"info","msg":"log spam"}'
  i=$((i+1))
done"#,
        r#"    echo "stderr after a request" >&2
    echo '{"op":"log","level":"info","msg":"log after a request"}'
    printf '{"op":"reply","to":"%s","body":{"ok":true}}\n' "$id""#,
    );
    let dir = module_dir(tmp.path(), "chatty", "1.0.0", script, json!({}));
    let started = Instant::now();
    let (code, out) = cli_json(&node, &["deploy", "chatty", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    wait_for(Duration::from_secs(30), "every stderr line to be read", || {
        let (_, state) = node.http("GET", "/v1/debug/state", None);
        (state["modules"]["chatty"]["counters"]["stderr_lines"] == 3000).then_some(())
    });
    // Once the flood's second is over, the next line is logged, and the
    // node says how many it left out before it.
    wait_for(Duration::from_secs(20), "the node to say it left lines out", || {
        assert_eq!(
            ask_node(&node, "mod.chatty"),
            Some(json!({"ok": true})),
            "it still answers"
        );
        let log = node.log_text();
        let noted = |stream: &str| {
            log.lines()
                .any(|l| l.contains("lines left out (still counted)") && l.contains(&format!("stream={stream}")))
        };
        (noted("stderr") && noted("log")).then_some(())
    });
    let secs = started.elapsed().as_secs() + 1;
    let log = node.log_text();
    let stderr_logged = log.lines().filter(|l| l.contains("stderr spam")).count() as u64;
    let log_logged = log.lines().filter(|l| l.contains("log spam")).count() as u64;
    // At most 100 a second each (two seconds' burst at the start).
    let bound = 100 * (secs + 2);
    assert!(
        stderr_logged < 3000 && stderr_logged <= bound,
        "{stderr_logged} stderr lines logged in about {secs} s"
    );
    assert!(
        log_logged < 3000 && log_logged <= bound,
        "{log_logged} log lines logged in about {secs} s"
    );
    assert!(stderr_logged > 0 && log_logged > 0, "some lines are still logged");
}

#[test]
fn undeploy_stops_every_process_the_module_started() {
    let node = TestNode::start("tidy", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // Two children that ignore SIGTERM: one in the module's session, one
    // that starts a session of its own. Each request answers their pids.
    let script = &answering_module(
        r#"(trap '' TERM; exec sleep 1001) &
stubborn=$!
setsid sh -c "trap '' TERM; exec sleep 1002" &
escaped=$!"#,
        r#"    printf '{"op":"reply","to":"%s","body":{"pids":[%s,%s]}}\n' "$id" "$stubborn" "$escaped""#,
    );
    let dir = module_dir(tmp.path(), "spawner", "1.0.0", script, json!({"stop_grace_secs": 1}));
    let (code, out) = cli_json(&node, &["deploy", "spawner", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let body = wait_for(LIMIT, "the spawner to answer", || ask_node(&node, "mod.spawner"));
    let pids: Vec<i32> = body["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_i64().unwrap() as i32)
        .collect();
    let _cleanup = KillOnDrop(pids.clone());
    assert_eq!(pids.len(), 2, "{body}");
    wait_for(LIMIT, "both children to run", || {
        pids.iter().all(|p| process_running(*p)).then_some(())
    });

    let (code, removed) = cli_json(&node, &["undeploy", "spawner"]);
    assert_eq!(code, 0, "{removed}");
    for pid in &pids {
        wait_for(LIMIT, &format!("child {pid} to be gone"), || {
            (!process_running(*pid)).then_some(())
        });
    }
    assert!(
        node.log_text().contains("killed processes the module left running"),
        "the leftovers are logged"
    );
}

#[test]
fn a_module_publishing_past_its_limit_is_held_to_it_and_the_drops_are_counted() {
    let node = TestNode::start("chatty", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // 2,000 publishes at once, then it answers requests.
    let script = &answering_module(
        r#"i=0
while [ $i -lt 2000 ]; do
  echo '{"op":"publish","address":"flood.sink","body":{}}'
  i=$((i+1))
done"#,
        r#"    printf '{"op":"reply","to":"%s","body":{"ok":true}}\n' "$id""#,
    );
    let dir = module_dir(tmp.path(), "flood", "1.0.0", script, json!({"publish_per_sec": 50}));
    let (code, out) = cli_json(&node, &["deploy", "flood", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let counters = wait_for(LIMIT, "all 2,000 publish lines to be read", || {
        let (_, state) = node.http("GET", "/v1/debug/state", None);
        let c = state["modules"]["flood"]["counters"].clone();
        let seen = c["published"].as_u64()? + c["publish_dropped"].as_u64()?;
        (seen == 2000).then_some(c)
    });
    let published = counters["published"].as_u64().unwrap();
    // A burst of two seconds' worth (100), plus 50 a second while the lines
    // were read: far below 2,000 whatever the machine's speed.
    assert!((100..1000).contains(&published), "{counters}");
    assert_eq!(
        ask_node(&node, "mod.flood"),
        Some(json!({"ok": true})),
        "it still answers"
    );
    let log = node.log_text();
    let lines = log.matches("publishes faster than its limit").count();
    assert!(
        (1..=5).contains(&lines),
        "drops are logged, but not per drop: {lines} lines"
    );
    let (status, health) = node.http("GET", "/v1/health", None);
    assert_eq!(status, 200, "{health}");
}

#[test]
fn a_module_that_fails_to_start_reports_the_end_of_its_stderr() {
    let node = TestNode::start("teller", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\necho 'starting up' >&2\necho 'fatal: no such setting: colour' >&2\nexit 1\n";
    let dir = module_dir(
        tmp.path(),
        "grumpy",
        "1.0.0",
        script,
        json!({"restart": {"policy": "never"}}),
    );
    let (code, out) = cli_json(&node, &["deploy", "grumpy", "--from", dir.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    let (_, status, reason) = deploy_results(&out).into_iter().next().expect("a result");
    assert_eq!(status, "failed", "{out}");
    assert!(
        reason.contains("exited with code 1") && reason.contains("fatal: no such setting: colour"),
        "the deploy result carries the module's last stderr lines: {reason}"
    );
    let line = node
        .log_text()
        .lines()
        .find(|l| l.contains("module process failed"))
        .map(str::to_string)
        .expect("the failure is logged");
    assert!(line.contains("module=grumpy"), "{line}");
}

/// The files `docs/modules.md` shows after `<!-- guide-example: PATH -->`
/// markers, written under `root`.
fn write_guide_example(root: &Path) {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/modules.md")).unwrap();
    let mut written = 0;
    let mut rest = guide.as_str();
    while let Some(at) = rest.find("<!-- guide-example: ") {
        rest = &rest[at + "<!-- guide-example: ".len()..];
        let (path, after) = rest.split_once(" -->").expect("a closed marker");
        let body = after.split_once("```").expect("a code block").1;
        let body = body.split_once('\n').expect("a fence line").1;
        let code = body.split_once("```").expect("a closed code block").0;
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, code).unwrap();
        if path.contains("/bin/") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        written += 1;
    }
    assert_eq!(written, 2, "the guide shows mod.json and the program");
}

#[test]
fn the_module_guides_python_example_deploys_and_answers() {
    let node = TestNode::start("guided", &[]);
    let tmp = tempfile::tempdir().unwrap();
    write_guide_example(tmp.path());
    let dir = tmp.path().join("counter");
    let (code, out) = cli_json(
        &node,
        &[
            "deploy",
            "counter",
            "--from",
            dir.to_str().unwrap(),
            "--config",
            r#"{"step":10}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(ask_node(&node, "mod.counter"), Some(json!({"count": 10})));
    assert_eq!(ask_node(&node, "mod.counter"), Some(json!({"count": 20})));
    let module = wait_module(&node, "counter", "ok with its own status", |m| {
        m["health"] == "ok" && m["status"]["answered"] == 2
    });
    assert_eq!(module["status"]["step"], 10, "{module}");
    assert!(node.log_text().contains("counter ready, step 10"));
}

#[test]
fn a_module_that_says_it_is_degraded_is_shown_degraded() {
    let node = TestNode::start("honest", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // Degraded until it is asked once, then ok.
    let script = r#"#!/bin/sh
health=degraded
while IFS= read -r line; do
  case "$line" in
  *'"type":"request"'*)
    id=$(printf '%s\n' "$line" | sed -n 's/^{"v":1,"id":"\([^"]*\)".*/\1/p')
    health=ok
    printf '{"op":"reply","to":"%s","body":{}}\n' "$id"
    ;;
  *'"type":"status_request"'*)
    printf '{"op":"status","body":{"queue":7,"health":"%s","reason":"upstream db-primary.internal:5432 refused 14 connections in the last minute; serving from cache"}}\n' "$health"
    ;;
  esac
done
"#;
    let dir = module_dir(tmp.path(), "honest", "1.0.0", script, json!({}));
    let (code, out) = cli_json(&node, &["deploy", "honest", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    wait_module(&node, "honest", "degraded", |m| m["health"] == "degraded");
    let out = node.cli(&["status"]);
    assert_eq!(out.status.code(), Some(3), "a degraded module is a problem to see");
    let text = stdout(&out) + &stderr(&out);
    assert!(
        text.contains("honest/honest: degraded (upstream db-primary.internal:5432 refused 14 connections in the last minute; serving from cache)"),
        "the reason the module gives is shown whole: {text}"
    );
    let module = wait_module(&node, "honest", "degraded", |m| m["health"] == "degraded");
    assert_eq!(
        module["health_reason"],
        "upstream db-primary.internal:5432 refused 14 connections in the last minute; serving from cache"
    );
    assert_eq!(ask_node(&node, "mod.honest"), Some(json!({})));
    wait_module(&node, "honest", "ok again", |m| m["health"] == "ok");
    assert_eq!(node.cli(&["status"]).status.code(), Some(0));
}
