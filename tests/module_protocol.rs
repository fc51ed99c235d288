//! A process module that breaks the stdio protocol in the middle of a
//! request, or dies with requests pending: the caller hears at once what
//! went wrong (never a silent wait for the whole timeout), the node logs
//! it, and the module's health says so.

mod common;

use common::*;
use serde_json::{json, Value};

/// A module that answers status requests with `{"health":"ok"}` and runs
/// `on_request` for each request (with `$id` set).
fn module(on_request: &str) -> String {
    format!(
        r#"#!/bin/sh
while IFS= read -r line; do
  case "$line" in
  *'"type":"request"'*)
    id=$(printf '%s\n' "$line" | sed -n 's/^{{"v":1,"id":"\([^"]*\)".*/\1/p')
{on_request}
    ;;
  *'"type":"status_request"'*)
    printf '{{"op":"status","body":{{"health":"ok"}}}}\n'
    ;;
  esac
done
"#
    )
}

/// Deploys a module named `name` that runs `script`, and asks it once
/// (with a long timeout, so an answer that comes at once is the node's).
fn deploy_and_ask(name: &str, script: &str) -> (TestNode, i32, Value) {
    let node = TestNode::start(name, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = module_dir(tmp.path(), name, "1.0.0", script, json!({}));
    let (code, out) = cli_json(&node, &["deploy", name, "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let address = format!("mod.{name}");
    let (code, out) = cli_json(&node, &["request", &address, "{}", "--timeout", "60s"]);
    (node, code, out)
}

/// The one reply's error, checked to be the node's answer and not silence.
fn error_of(out: &Value) -> String {
    assert_eq!(
        out["missing"],
        json!([]),
        "the node answered instead of staying silent: {out}"
    );
    out["replies"][0]["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_module_that_dies_on_a_request_is_answered_at_once_with_its_exit() {
    let (_node, code, out) = deploy_and_ask("dies", &module("    exit 3"));
    assert_ne!(code, 0, "{out}");
    let error = error_of(&out);
    assert!(error.contains("module `dies` exited with code 3"), "{out}");
    assert_eq!(out["replies"][0]["code"], "module_exited", "{out}");
}

#[test]
fn an_unknown_op_answers_the_request_and_degrades_the_module() {
    let (node, code, out) = deploy_and_ask(
        "sayer",
        &module(
            r#"    printf '{"op":"respond","to":"%s","body":{"ok":true}}
' "$id""#,
        ),
    );
    assert_ne!(code, 0, "{out}");
    let error = error_of(&out);
    assert!(
        error.contains("broke the stdio protocol: unknown op `respond`"),
        "{out}"
    );
    assert_eq!(out["replies"][0]["code"], "module_protocol", "{out}");
    let m = wait_module(&node, "sayer", "degraded", |m| m["health"] == "degraded");
    let reason = m["health_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("broke the stdio protocol 1 time(s)") && reason.contains("respond"),
        "{m}"
    );
    let status = node.cli(&["status"]);
    assert_eq!(status.status.code(), Some(3), "a degraded module is a problem");
}

#[test]
fn a_reply_with_data_instead_of_body_is_an_error_not_null() {
    let (_node, code, out) = deploy_and_ask(
        "datum",
        &module(
            r#"    printf '{"op":"reply","to":"%s","data":{"ok":true}}
' "$id""#,
        ),
    );
    assert_ne!(code, 0, "{out}");
    let error = error_of(&out);
    assert!(
        error.contains("`reply` needs `body`, the answer; it has `data`"),
        "{out}"
    );
}

#[test]
fn a_reply_without_to_reaches_the_caller_as_a_protocol_error() {
    let node = TestNode::start("sloppy", &[]);
    let tmp = tempfile::tempdir().unwrap();
    // A common slip: the request id written as `reply_to` instead of `to`.
    let script = &answering_module(
        "",
        r#"    printf '{"op":"reply","reply_to":"%s","body":{"ok":true}}\n' "$id""#,
    );
    let dir = module_dir(tmp.path(), "sloppy", "1.0.0", script, json!({}));
    let (code, out) = cli_json(&node, &["deploy", "sloppy", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli_json(
        &node,
        &[
            "request",
            "mod.sloppy",
            "{}",
            "--target",
            "name=sloppy",
            "--timeout",
            "10s",
        ],
    );
    assert_ne!(code, 0, "a protocol error is not a success: {out}");
    let reply = &out["replies"][0];
    assert_eq!(
        reply["node"], "sloppy",
        "the node answered instead of staying silent: {out}"
    );
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("needs `to`") && error.contains("it wrote `reply_to`"),
        "the caller is told what the module did wrong: {out}"
    );
    assert_eq!(out["missing"], json!([]), "{out}");
    assert!(node.log_text().contains("bad line from module"), "and the node logs it");
}

#[test]
fn a_line_over_the_limit_is_skipped_and_the_module_keeps_running() {
    // Two MB of stdout and of stderr in one line each, twice the limit,
    // and then a good reply: the long lines are bad lines, nothing more.
    let script = module(
        r#"    head -c 2000000 /dev/zero | tr '\0' x; echo
    head -c 2000000 /dev/zero | tr '\0' y >&2; echo >&2
    printf '{"op":"reply","to":"%s","body":{"ok":true}}\n' "$id""#,
    );
    let (node, code, out) = deploy_and_ask("longline", &script);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["replies"][0]["body"], json!({"ok": true}), "{out}");
    let (code, out) = cli_json(&node, &["request", "mod.longline", "{}", "--timeout", "60s"]);
    assert_eq!(code, 0, "the module still answers after its long lines: {out}");
    assert_eq!(out["replies"][0]["body"], json!({"ok": true}), "{out}");
    let m = module_state(&node, "longline").expect("the module is listed");
    assert_eq!(
        (m["state"].as_str(), m["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{m}"
    );
    let log = node.log_text();
    assert!(
        log.contains("longer than 1048576 bytes"),
        "the stdout line is logged as bad"
    );
    assert!(
        log.contains("a stderr line over 1048576 bytes was skipped"),
        "and so is the stderr line"
    );
}
