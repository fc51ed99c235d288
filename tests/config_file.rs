//! The agent's config file: a node runs from it, flags win over it,
//! `--check` prints what it leads to, errors name the file, the line and
//! the key, and SIGHUP applies what may change at run time while a
//! broken file changes nothing.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// `conjoiner agent ARGS`, with no setting from this process's environment.
fn agent(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("agent").args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("CONJOINER_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.output().expect("run conjoiner agent")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// The log lines written since `from` bytes of it.
fn log_since(node: &TestNode, from: usize) -> String {
    node.log_text().get(from..).unwrap_or_default().to_string()
}

fn tags_of(node: &TestNode) -> serde_json::Value {
    node.http("GET", "/v1/tags", None).1["tags"].clone()
}

#[test]
fn check_prints_every_setting_flags_win_and_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conjoiner.toml");
    write(
        &file,
        "name = \"web-1\"\ncluster = \"prod\"\ndata_dir = \"state\"\nprofile = \"wan\"\n\n[membership]\nprobe_interval = \"3s\"\n",
    );
    let f = file.to_str().unwrap();
    let out = agent(&["--config", f, "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: toml::Table = toml::from_str(&stdout(&out)).expect("--check prints TOML");
    assert_eq!(printed["cluster"].as_str(), Some("prod"));
    assert_eq!(printed["membership"]["probe_interval"].as_str(), Some("3s"));
    // The wan preset beneath the file, and a path relative to the file.
    assert_eq!(printed["membership"]["suspicion_max"].as_str(), Some("30s"));
    assert_eq!(
        printed["data_dir"].as_str().map(PathBuf::from),
        Some(dir.path().join("state"))
    );
    assert!(!dir.path().join("state").exists(), "--check starts nothing");

    // A flag wins over the file; what --check prints reads back the same.
    let out = agent(&["--config", f, "--check", "--cluster", "flagged", "--tag", "role=web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("cluster = \"flagged\"") && printed.contains("role = \"web\""),
        "{printed}"
    );
    let again = dir.path().join("again.toml");
    write(&again, &printed);
    let out = agent(&["--config", again.to_str().unwrap(), "--check"]);
    assert_eq!(
        stdout(&out).lines().skip(1).collect::<Vec<_>>(),
        printed.lines().skip(1).collect::<Vec<_>>(),
        "{}",
        stderr(&out)
    );

    // Errors name the file, the line and the key, and exit 2.
    let cases = [
        (
            "name = \"a\"\n[membership]\nprobe_intervall = \"1s\"\n",
            ":3: `membership.probe_intervall`: unknown field",
        ),
        (
            "mdns = \"yes\"\n",
            ":1: `mdns`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "name = \"a\"\n\n[membership]\nmax_links = 3\n",
            ":4: `membership.max_links`: must be at least 14",
        ),
        ("name = \"a b\"\n", ":1: `name`: "),
    ];
    for (text, want) in cases {
        write(&file, text);
        let out = agent(&["--config", f, "--check"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let said = stderr(&out);
        assert!(said.contains(&format!("{f}{want}")), "{text:?}: {said}");
    }
    // A bad flag is named as the setting it stands for, not as the file's.
    write(&file, "name = \"a\"\n");
    let out = agent(&["--config", f, "--check", "--bind", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`bind`: `nowhere` is not an address"),
        "{}",
        stderr(&out)
    );
    let out = agent(&["--config", &format!("{f}.missing"), "--check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn sighup_takes_tags_log_level_and_operators_refuses_the_rest_by_name_and_survives_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conjoiner.toml");
    write(
        &file,
        "cluster = \"cf\"\nlog_level = \"info\"\n[tags]\nrole = \"web\"\n[membership]\nprobe_interval = \"500ms\"\n",
    );
    let node = TestNode::launch(
        "cf1",
        Launch {
            extra: vec!["--config".into(), file.display().to_string()],
            // Empty: the file's log_level decides.
            env: vec![("RUST_LOG".into(), String::new())],
            ..Launch::default()
        },
    );
    assert_eq!(tags_of(&node)["role"], "web", "the file's tags");
    // A change made at run time, which a reload must keep.
    let out = node.cli(&["tags", "--set", "zone=b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["cluster"], "cf");
    assert_eq!(status["operator_keys"].as_array().map(Vec::len), Some(0));
    assert!(!node.log_text().contains(" DEBUG "), "logging at info");

    // An operator key to trust on reload.
    let key_file = dir.path().join("alice.key");
    let out = Command::new(BIN)
        .args(["keygen", "--operator", "-o", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let mark = node.log_text().len();
    write(
        &file,
        "cluster = \"other\"\nlog_level = \"conjoiner=debug,info\"\noperators = [\"@alice.key.pub\"]\n\
         [tags]\nrole = \"db\"\ndc = \"ams\"\n[membership]\nprobe_interval = \"2s\"\n",
    );
    node.signal(libc::SIGHUP);
    let said = wait_for(LIMIT, "the reload to be logged", || {
        let said = log_since(&node, mark);
        said.contains("these settings change only at the next start")
            .then_some(said)
    });
    for key in ["log_level", "operators", "tags"] {
        assert!(said.contains(&format!("key={key}")), "{key} not said changed:\n{said}");
    }
    assert!(said.contains("keys=cluster, membership.probe_interval"), "{said}");
    let tags = tags_of(&node);
    assert_eq!(
        (tags["role"].as_str(), tags["dc"].as_str(), tags["zone"].as_str()),
        (Some("db"), Some("ams"), Some("b"))
    );
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["cluster"], "cf", "refused: kept until the next start");
    assert_eq!(status["operator_keys"].as_array().map(Vec::len), Some(1), "{status}");
    wait_for(LIMIT, "debug lines after the reload", || {
        log_since(&node, mark).contains(" DEBUG ").then_some(())
    });
    // Who may command this node, and which tags it has, changed: both
    // are in its signed audit trail, as carried out by its own settings.
    let (_, audit) = node.http("GET", "/v1/audit", None);
    let lines = audit["lines"].as_array().cloned().unwrap_or_default();
    let line_of = |kind: &str| {
        lines
            .iter()
            .find(|l| l["type"] == kind && l["decision"] == "carried_out" && l["status"] == "reloaded")
            .unwrap_or_else(|| panic!("no {kind} line: {audit}"))
            .clone()
    };
    let alice_id = std::fs::read_to_string(dir.path().join("alice.key.pub")).unwrap();
    let alice_id = conjoiner::command::operator_key::OperatorKey::parse(alice_id.trim())
        .unwrap()
        .id();
    let trust = line_of("operators");
    let reason = trust["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("added {alice_id}")) && reason.contains("removed none"),
        "{trust}"
    );
    assert!(trust["sig"].is_string(), "signed by the node: {trust}");
    let tags = line_of("tags");
    let reason = tags["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("{dc=ams,role=db}") && reason.contains("zone=b"),
        "{tags}"
    );
    // The trusted key is enforced at once: an unsigned deploy is refused.
    let hello = hello_dir();
    let out = node.cli(&["deploy", "hello", "--from", hello.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not_authorized"), "{}", stderr(&out));

    // A broken file changes nothing, and the node runs on.
    let mark = node.log_text().len();
    write(&file, "log_level = \"info\"\n[tags]\nrole = \n");
    node.signal(libc::SIGHUP);
    let said = wait_for(LIMIT, "the refusal to be logged", || {
        let said = log_since(&node, mark);
        said.contains("settings not reloaded").then_some(said)
    });
    assert!(
        said.contains(&format!("{}:3", file.display())),
        "names the line: {said}"
    );
    assert_eq!(tags_of(&node)["role"], "db");
    let (code, _) = node.http("GET", "/v1/health", None);
    assert_eq!(code, 200);
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["operator_keys"].as_array().map(Vec::len), Some(1));

    // A restart with other settings changes whom the node obeys as a
    // reload does, and is audited the same way, against the last run.
    let mut node = node;
    write(&file, "cluster = \"cf\"\n[tags]\nrole = \"api\"\n");
    node.restart();
    let started = |node: &TestNode| -> Vec<serde_json::Value> {
        let (_, audit) = node.http("GET", "/v1/audit", None);
        let lines = audit["lines"].as_array().cloned().unwrap_or_default();
        lines.into_iter().filter(|l| l["status"] == "started").collect()
    };
    let lines = started(&node);
    let of = |kind: &str| {
        lines
            .iter()
            .find(|l| l["type"] == kind && l["decision"] == "carried_out")
            .unwrap_or_else(|| panic!("no {kind} line at the restart: {lines:?}"))
            .clone()
    };
    let trust = of("operators");
    let reason = trust["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("since the last start")
            && reason.contains(&format!("removed {alice_id}"))
            && reason.ends_with("(it now trusts none)"),
        "{trust}"
    );
    assert!(trust["sig"].is_string(), "signed by the node: {trust}");
    let tags = of("tags");
    let reason = tags["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("from {dc=ams,role=db} to {role=api}"), "{tags}");
    // The same settings again: nothing changed, and nothing is written.
    node.restart();
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["operator_keys"].as_array().map(Vec::len), Some(0), "{status}");
    assert_eq!(started(&node).len(), 2, "{:?}", started(&node));
}

/// The settings the operator guide shows `--check` printing come from
/// the file it shows, as a real run prints them.
#[test]
fn the_guides_check_transcript_is_what_check_prints() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let block = |first: &str| -> String {
        let start = guide
            .find(first)
            .unwrap_or_else(|| panic!("docs/operations.md has no block starting {first:?}"));
        let rest = &guide[start..];
        rest[..rest.find("\n```").expect("the block ends")].to_string() + "\n"
    };
    let example = block("# /etc/conjoiner/conjoiner.toml\n");
    let shown = block("$ conjoiner agent --config /etc/conjoiner/conjoiner.toml --check\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conjoiner.toml");
    write(&file, &example);
    let out = agent(&["--config", file.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = format!(
        "$ conjoiner agent --config /etc/conjoiner/conjoiner.toml --check\n{}",
        stdout(&out).replace(&file.display().to_string(), "/etc/conjoiner/conjoiner.toml")
    );
    assert_eq!(printed, shown, "docs/operations.md shows another output");
}
