//! Operator keys with the real binary: `keygen --operator`, an agent that
//! trusts a key (`--trust-operator @FILE`), the CLI signing with
//! `--operator-key`, and each command the control API must refuse with
//! `not_authorized` while the running module stays as it was.

mod common;

use common::*;
use conjoiner::command::operator_key::OperatorSecret;
use conjoiner::command::signature::OperatorSignature;
use conjoiner::command::tag_change::TagChange;
use conjoiner::deploy::command::command_bytes;
use conjoiner::deploy::steer::{Driver, Steer, SteerAction};
use conjoiner::deploy::table::{Action, Deployment};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// Whether `hello` runs on `node`.
fn hello_runs(node: &TestNode) -> bool {
    let (_, nodes) = cli_json(node, &["modules"]);
    nodes.as_array().into_iter().flatten().any(|n| {
        n["modules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "hello" && m["state"] == "running")
    })
}

/// What `node` counted as `unauthorized` among the envelopes it dropped.
fn unauthorized_count(node: &TestNode) -> Option<u64> {
    let (_, metrics) = node.http("GET", "/metrics", None);
    metrics
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("conjoiner_envelopes_dropped_total{reason=\"unauthorized\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// An undeploy of `hello` as the API takes it, signed by `secret` over
/// `signed_module` at `ts`.
fn signed_undeploy(secret: &OperatorSecret, signed_module: &str, sent_module: &str, ts: u64) -> Value {
    let id = uuid::Uuid::now_v7().to_string();
    let d = Deployment {
        module: signed_module.into(),
        target: None,
        action: Action::Undeploy,
        source: None,
        sha256: None,
        config: None,
        ts,
        rollout: None,
        driver: None,
        signature: None,
    };
    let sig = secret.sign(&command_bytes(&id, &d, None));
    json!({
        "module": sent_module,
        "id": id,
        "ts": ts,
        "signature": OperatorSignature { key: secret.public().to_string(), sig },
        "timeout_ms": 5000,
    })
}

#[test]
fn a_node_that_trusts_an_operator_key_takes_only_commands_it_signed() {
    let keys = tempfile::tempdir().unwrap();
    let alice_file = keys.path().join("alice.key");
    let bob_file = keys.path().join("bob.key");
    let make = |file: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_conjoiner"))
            .args(["keygen", "--operator", "-o", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let alice_public = make(&alice_file);
    make(&bob_file);
    assert!(alice_public.starts_with("cjop1"), "{alice_public}");
    assert_eq!(
        std::fs::metadata(&alice_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pub_file = format!("@{}.pub", alice_file.display());
    let node = TestNode::start("op1", &["--trust-operator", &pub_file]);
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["operator_keys"].as_array().map(Vec::len), Some(1), "{status}");
    assert!(!stderr(&node.cli(&["status"])).contains("trusts no operator key"));
    let hello = hello_dir();
    let hello = hello.to_str().unwrap();

    // Unsigned, and signed by a key the node does not trust: refused.
    let out = node.cli(&["deploy", "hello", "--from", hello]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not_authorized") && stderr(&out).contains("unsigned"),
        "{}",
        stderr(&out)
    );
    let out = node.cli(&[
        "deploy",
        "hello",
        "--from",
        hello,
        "--operator-key",
        bob_file.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));
    assert!(!hello_runs(&node));

    // A private key others may read is not used.
    std::fs::set_permissions(&alice_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = node.cli(&[
        "deploy",
        "hello",
        "--from",
        hello,
        "--operator-key",
        alice_file.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("mode 0644"), "{}", stderr(&out));
    std::fs::set_permissions(&alice_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Signed by alice: deployed.
    let out = node.cli(&[
        "deploy",
        "hello",
        "--from",
        hello,
        "--operator-key",
        alice_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    wait_for(LIMIT, "hello to run", || hello_runs(&node).then_some(()));

    // Commands the API must refuse; hello runs on after each.
    let alice = OperatorSecret::load(&alice_file).unwrap();
    let now = conjoiner::wire::now_ms();
    let mut oversized = signed_undeploy(&alice, "hello", "hello", now);
    oversized["signature"]["sig"] = json!("A".repeat(5000));
    let valid = signed_undeploy(&alice, "hello", "hello", now);
    let mut new_id = valid.clone();
    new_id["id"] = json!(uuid::Uuid::now_v7().to_string());
    for (what, body, why) in [
        (
            "signature over other fields",
            signed_undeploy(&alice, "other", "hello", now),
            "does not match",
        ),
        (
            "expired",
            signed_undeploy(&alice, "hello", "hello", now - 10 * 60_000),
            "clock_skew",
        ),
        ("oversized signature", oversized, "oversized"),
        ("a captured command under a new id", new_id, "does not match"),
    ] {
        let (status, answer) = node.http("POST", "/v1/undeploy", Some(body.to_string().as_bytes()));
        assert_eq!(status, 403, "{what}: {answer}");
        assert_eq!(answer["code"], "not_authorized", "{what}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains(why),
            "{what}: {answer}"
        );
        assert!(hello_runs(&node), "{what}: hello stopped");
    }
    assert!(node.log_text().contains("refused a command at its origin"));

    // The valid one is taken once; sent again, it is a replay.
    let (status, answer) = node.http("POST", "/v1/undeploy", Some(valid.to_string().as_bytes()));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node.http("POST", "/v1/undeploy", Some(valid.to_string().as_bytes()));
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("not_authorized")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("replayed"),
        "{answer}"
    );
    wait_for(LIMIT, "hello to be removed", || (!hello_runs(&node)).then_some(()));

    // The audit trail holds each decision, in a private file.
    let audit = node.data_dir().join("audit.jsonl");
    assert_eq!(std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, trail) = cli_json(&node, &["audit", "--module", "hello", "--since", "1h"]);
    assert_eq!(code, 0, "{trail}");
    let lines = trail["lines"].as_array().cloned().unwrap_or_default();
    let has = |decision: &str, pred: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .any(|l| l["decision"] == decision && l["node"] == "op1" && pred(l))
    };
    let alice_id = OperatorSecret::load(&alice_file).unwrap().public().id();
    assert!(
        has("refused", &|l| l["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unsigned")),
        "{trail}"
    );
    assert!(
        has("refused", &|l| l["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("replayed")),
        "{trail}"
    );
    assert!(
        has("taken", &|l| l["type"] == "deploy" && l["key"] == alice_id.as_str()),
        "{trail}"
    );
    assert!(
        has("carried_out", &|l| l["type"] == "deploy" && l["status"] == "deployed"),
        "{trail}"
    );
    assert!(
        has("carried_out", &|l| l["type"] == "undeploy"
            && l["status"] == "undeployed"),
        "{trail}"
    );
    let times: Vec<u64> = lines.iter().filter_map(|l| l["ts"].as_u64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by time: {times:?}");
    let (status, own) = node.http("GET", "/v1/audit?module=hello", None);
    assert_eq!(status, 200);
    assert_eq!(own["lines"].as_array().map(Vec::len), Some(lines.len()), "{own}");
    let table = stdout(&node.cli(&["audit"]));
    assert!(
        table.starts_with("TIME (UTC)") && table.contains("carried_out"),
        "{table}"
    );
    // Each line is signed by the node's identity key, and checks.
    assert!(
        lines.iter().all(|l| l["signature"] == "valid" && l["sig"].is_string()),
        "{trail}"
    );
    // A line edited in the file afterwards no longer checks.
    let text = std::fs::read_to_string(&audit).unwrap();
    let edited = text.replacen("\"decision\":\"refused\"", "\"decision\":\"carried_out\"", 1);
    assert_ne!(edited, text, "a refused line to edit");
    std::fs::write(&audit, edited).unwrap();
    let (code, trail) = cli_json(&node, &["audit", "--module", "hello", "--since", "1h"]);
    assert_eq!(code, 3, "an altered line makes the answer partial: {trail}");
    let invalid = trail["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["signature"] == "invalid")
        .count();
    assert_eq!(invalid, 1, "{trail}");
    let out = node.cli(&["audit", "--module", "hello"]);
    assert!(
        stderr(&out).contains("1 line(s) whose signature does not verify"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("INVALID"), "{}", stdout(&out));

    let refused = unauthorized_count(&node);
    assert!(refused >= Some(7), "every refusal counted: {refused:?}");
}

/// A steer of entry `entry` signed by `secret`, made for `driver`, as the
/// body `POST /v1/deployments/{id}/{action}` takes.
fn signed_steer(secret: &OperatorSecret, action: SteerAction, entry: &str, driver: Driver) -> Value {
    let mut steer = Steer {
        action,
        entry: entry.into(),
        driver,
        id: uuid::Uuid::now_v7().to_string(),
        ts: conjoiner::wire::now_ms(),
        signature: None,
    };
    steer.signature = Some(OperatorSignature::by(secret, &steer.signed_bytes()));
    json!({"id": steer.id, "ts": steer.ts, "driver": steer.driver, "signature": steer.signature})
}

#[test]
fn a_trusting_node_steers_a_rollout_only_by_a_signed_command_made_for_it() {
    let keys = tempfile::tempdir().unwrap();
    let alice_file = keys.path().join("alice.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conjoiner"))
        .args(["keygen", "--operator", "-o", alice_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let alice = OperatorSecret::load(&alice_file).unwrap();
    let key = alice_file.to_str().unwrap();
    let node = TestNode::start("op3", &["--trust-operator", &format!("@{key}.pub")]);
    let hello = hello_dir();

    // A signed rollout (one node: its canary is all of it).
    let out = node.cli(&[
        "deploy",
        "hello",
        "--from",
        hello.to_str().unwrap(),
        "--canary",
        "1",
        "--operator-key",
        key,
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    wait_for(LIMIT, "hello to run", || hello_runs(&node).then_some(()));
    let (_, table) = cli_json(&node, &["deployments"]);
    let id = table[0]["id"].as_str().unwrap().to_string();
    assert_eq!(table[0]["rollout"]["state"], "done", "{table}");

    // Unsigned, and signed for another node: refused, and hello runs on.
    let out = node.cli(&["deployments", "revert", &id[..8]]);
    assert!(
        !out.status.success() && stderr(&out).contains("not_authorized") && stderr(&out).contains("unsigned"),
        "{}",
        stderr(&out)
    );
    let (_, health) = node.http("GET", "/v1/health", None);
    let me = Driver {
        node: "op3".into(),
        key: health["identity"].as_str().unwrap().into(),
    };
    let elsewhere = Driver {
        node: "op9".into(),
        key: me.key.clone(),
    };
    let path = format!("/v1/deployments/{id}/revert");
    let body = signed_steer(&alice, SteerAction::Revert, &id, elsewhere);
    let (status, answer) = node.http("POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("not_authorized")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("made for node `op9`"),
        "{answer}"
    );
    assert!(hello_runs(&node), "hello stopped after a refused steer");

    // Signed for this node: reverted, and hello goes; sent again, a replay.
    let body = signed_steer(&alice, SteerAction::Revert, &id, me);
    let (status, answer) = node.http("POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rollout"]["state"], "reverted", "{answer}");
    wait_for(LIMIT, "hello to be removed", || (!hello_runs(&node)).then_some(()));
    let (status, answer) = node.http("POST", &path, Some(body.to_string().as_bytes()));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("replayed"),
        "{answer}"
    );

    // The CLI signs a steer the gate takes (a reverted rollout then cannot resume).
    let out = node.cli(&["deployments", "resume", &id[..8], "--operator-key", key]);
    assert!(
        !out.status.success() && stderr(&out).contains("cannot resume"),
        "{}",
        stderr(&out)
    );

    let (_, trail) = cli_json(&node, &["audit", "--module", "hello", "--since", "1h"]);
    let lines = trail["lines"].as_array().cloned().unwrap_or_default();
    let reverts = |decision: &str| {
        lines
            .iter()
            .filter(|l| l["type"] == "revert" && l["decision"] == decision)
            .count()
    };
    assert_eq!((reverts("taken"), reverts("refused")), (1, 3), "{trail}");
    // The removal the revert caused here is audited too, though no entry
    // is in force for hello any more.
    let removed = lines
        .iter()
        .filter(|l| l["type"] == "undeploy" && l["decision"] == "carried_out" && l["status"] == "undeployed")
        .count();
    assert_eq!(removed, 1, "{trail}");
}

/// This node's tags, as its API answers them.
fn tags_of(node: &TestNode) -> Value {
    node.http("GET", "/v1/tags", None).1["tags"].clone()
}

#[test]
fn a_trusting_node_changes_its_tags_only_by_a_signed_change_that_keeps_it_in_scope() {
    let keys = tempfile::tempdir().unwrap();
    let (alice, staging) = (OperatorSecret::generate(), OperatorSecret::generate());
    let staging_file = keys.path().join("staging.key");
    staging.write_pair(&staging_file).unwrap();
    let scoped = format!(r#"{{"key":"{}","target":"tag.env=staging"}}"#, staging.public());
    let alice_trusted = alice.public().to_string();
    let node = TestNode::start(
        "tg1",
        &[
            "--tag",
            "env=staging",
            "--trust-operator",
            &alice_trusted,
            "--trust-operator",
            &scoped,
        ],
    );
    let staging_key = staging_file.to_str().unwrap();

    // Unsigned: refused, and nothing changed.
    let out = node.cli(&["tags", "--set", "role=db"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not_authorized") && stderr(&out).contains("unsigned"),
        "{}",
        stderr(&out)
    );
    // A key scoped to staging cannot move the node out of staging.
    let out = node.cli(&["tags", "--set", "env=prod", "--operator-key", staging_key]);
    assert!(stderr(&out).contains("out of the key's scope"), "{}", stderr(&out));
    assert_eq!(tags_of(&node), json!({"env": "staging"}));

    // Inside its scope, it may.
    let out = node.cli(&["tags", "--set", "role=db", "--operator-key", staging_key]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("role=db"), "{}", stdout(&out));
    assert_eq!(tags_of(&node), json!({"env": "staging", "role": "db"}));

    // Changes the API must refuse, as a taken host's client would send them.
    let change = |set: &str, node_name: &str, ts: u64| TagChange {
        set: [("tier".to_string(), set.to_string())].into(),
        node: node_name.into(),
        id: uuid::Uuid::now_v7().to_string(),
        ts,
        ..TagChange::default()
    };
    let sign = |mut c: TagChange| {
        c.signature = Some(OperatorSignature {
            key: alice.public().to_string(),
            sig: alice.sign(&c.signed_bytes()),
        });
        c
    };
    let now = conjoiner::wire::now_ms();
    let valid = sign(change("gold", "tg1", now));
    let mut tampered = valid.clone();
    tampered.set.insert("tier".into(), "lead".into());
    let mut new_id = valid.clone();
    new_id.id = uuid::Uuid::now_v7().to_string();
    for (what, body, why) in [
        (
            "signed for another node",
            sign(change("gold", "tg2", now)),
            "signed for node `tg2`",
        ),
        ("expired", sign(change("gold", "tg1", now - 10 * 60_000)), "clock_skew"),
        ("a signature over other tags", tampered, "does not match"),
        ("a captured change under a new id", new_id, "does not match"),
    ] {
        let (status, answer) = node.http("POST", "/v1/tags", Some(json!(body).to_string().as_bytes()));
        assert_eq!(status, 403, "{what}: {answer}");
        assert_eq!(answer["code"], "not_authorized", "{what}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains(why),
            "{what}: {answer}"
        );
    }
    assert_eq!(tags_of(&node), json!({"env": "staging", "role": "db"}));
    let (status, answer) = node.http("POST", "/v1/tags", Some(json!(valid).to_string().as_bytes()));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node.http("POST", "/v1/tags", Some(json!(valid).to_string().as_bytes()));
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("not_authorized")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap_or_default().contains("replayed"),
        "{answer}"
    );
    assert_eq!(tags_of(&node)["tier"], "gold");
    assert!(node.log_text().contains("tags command refused"));

    // Each decision is in the audit, with the key that signed it.
    let (code, trail) = cli_json(&node, &["audit", "--module", "tags", "--since", "1h"]);
    assert_eq!(code, 0, "{trail}");
    let lines = trail["lines"].as_array().cloned().unwrap_or_default();
    let count = |decision: &str| {
        lines
            .iter()
            .filter(|l| l["decision"] == decision && l["type"] == "tags")
            .count()
    };
    assert_eq!((count("refused"), count("carried_out")), (7, 2), "{trail}");
    assert!(
        lines.iter().any(|l| l["decision"] == "carried_out"
            && l["status"] == "set role=db"
            && l["key"] == staging.public().id().as_str()),
        "{trail}"
    );

    let refused = unauthorized_count(&node);
    assert_eq!(refused, Some(7), "every refusal counted");
}

#[test]
fn a_node_that_trusts_no_key_says_so_at_start_and_in_status() {
    let node = TestNode::start("open1", &[]);
    wait_for(LIMIT, "the warning in the log", || {
        node.log_text().contains("trusts no operator key").then_some(())
    });
    let out = node.cli(&["status"]);
    assert!(
        stderr(&out).contains("open1 trusts no operator key"),
        "{}",
        stderr(&out)
    );
    let (_, status) = node.http("GET", "/v1/status", None);
    assert_eq!(status["operator_keys"], json!([]));
}

/// A module that, once asked, publishes a deploy of `hello` and an
/// undeploy of itself as envelopes, then replies; it answers status
/// requests with `ok`.
fn module_sending_orders(hello: &std::path::Path) -> String {
    let deploy = json!({"op": "publish", "address": "mod.deployer", "type": "deploy",
        "body": {"name": "hello", "source": {"path": hello}}});
    let undeploy = json!({"op": "publish", "address": "mod.deployer", "type": "undeploy",
        "body": {"name": "sneaky"}});
    format!(
        r#"#!/bin/sh
while IFS= read -r line; do
  case "$line" in
  *'"type":"request"'*)
    id=$(printf '%s\n' "$line" | sed -n 's/^{{"v":1,"id":"\([^"]*\)".*/\1/p')
    printf '%s\n' '{deploy}' '{undeploy}'
    printf '{{"op":"reply","to":"%s","body":{{"sent":2}}}}\n' "$id"
    ;;
  *'"type":"status_request"'*)
    printf '{{"op":"status","body":{{"health":"ok"}}}}\n'
    ;;
  esac
done
"#
    )
}

#[test]
fn orders_dressed_as_envelopes_are_refused_on_every_other_path() {
    let keys = tempfile::tempdir().unwrap();
    let alice = OperatorSecret::generate();
    let alice_file = keys.path().join("alice.key");
    alice.write_pair(&alice_file).unwrap();
    let trusted = alice.public().to_string();
    let node = TestNode::start("og1", &["--trust-operator", &trusted]);
    let hello = hello_dir();
    let tmp = tempfile::tempdir().unwrap();
    let sneaky = module_dir(tmp.path(), "sneaky", "1.0.0", &module_sending_orders(&hello), json!({}));
    let out = node.cli(&[
        "deploy",
        "sneaky",
        "--from",
        sneaky.to_str().unwrap(),
        "--operator-key",
        alice_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    wait_module(&node, "sneaky", "running", |m| m["state"] == "running");

    // Through the control API (and so the CLI), with a target or without.
    for (kind, body) in [
        ("deploy", json!({"name": "hello", "source": {"path": hello}})),
        ("undeploy", json!({"name": "sneaky"})),
    ] {
        for target in [None, Some("name=og1")] {
            let request = json!({"address": "mod.deployer", "type": kind, "body": body, "target": target});
            let (status, answer) = node.http("POST", "/v1/publish", Some(request.to_string().as_bytes()));
            assert_eq!(
                (status, answer["code"].as_str()),
                (403, Some("not_authorized")),
                "{kind} {target:?}: {answer}"
            );
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("travels only as a deployments-table entry"),
                "{answer}"
            );
        }
    }
    let out = node.cli(&["publish", "mod.deployer", r#"{"name":"sneaky"}"#, "--type", "undeploy"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("not_authorized"), "{}", stderr(&out));

    // As a request to the Deployer: no such operation.
    let (code, out) = cli_json(&node, &["request", "mod.deployer", r#"{"op":"deploy","name":"hello"}"#]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out["replies"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`deploy`"),
        "{out}"
    );

    // From a module's stdout: a protocol error, which its health shows.
    let (code, out) = cli_json(&node, &["request", "mod.sneaky", "{}"]);
    assert_eq!((code, &out["replies"][0]["body"]), (0, &json!({"sent": 2})), "{out}");
    let m = wait_module(&node, "sneaky", "degraded", |m| m["health"] == "degraded");
    let reason = m["health_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("broke the stdio protocol 2 time(s)")
            && reason.contains("a publish of type `undeploy` is refused"),
        "{m}"
    );

    // Nothing was installed or removed, and every refusal is counted and logged.
    assert_eq!(m["state"], "running", "{m}");
    assert!(!hello_runs(&node), "hello runs");
    assert!(module_state(&node, "hello").is_none(), "hello is installed");
    let refused = unauthorized_count(&node);
    assert_eq!(refused, Some(7), "4 API publishes, 1 from the CLI, 2 module lines");
    let log = node.log_text();
    assert!(
        log.contains("refused a `deploy` envelope"),
        "the API's refusal is logged"
    );
    assert!(
        log.contains("a publish of type `deploy` is refused"),
        "the module's line is logged"
    );
}
