//! One real node, driven through its CLI and control API.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

#[test]
fn echo_request_round_trips() {
    let node = TestNode::start("solo-1", &[]);
    let out = node.cli(&["request", "mod.echo", r#"{"x":1}"#]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"solo-1: {"x":1}"#);

    let out = node.cli(&["--json", "request", "mod.echo", r#"{"deep":{"list":[1,2]}}"#]);
    assert_eq!(out.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(answer["replies"][0]["node"], "solo-1");
    assert_eq!(answer["replies"][0]["body"], json!({"deep": {"list": [1, 2]}}));
    assert_eq!(answer["missing"], json!([]));
    assert!(Uuid::parse_str(answer["id"].as_str().unwrap()).is_ok());
}

#[test]
fn request_to_an_address_nobody_handles_fails_clearly() {
    let node = TestNode::start("solo-2", &[]);
    let out = node.cli(&["request", "mod.nobody", "{}"]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("no module handles address `mod.nobody`"), "stderr: {err}");
    assert!(err.contains("no_handler"), "stderr: {err}");
    assert!(stdout(&out).is_empty(), "no reply is printed as a success");
}

#[test]
fn tail_sees_a_published_event() {
    let node = TestNode::start("solo-3", &[]);
    let tail = node.cli_spawn(&["--json", "tail", "--address", "test.topic"]);
    Streaming::line_where(&tail.stderr, Duration::from_secs(20), |l| {
        l.contains("tailing envelopes")
    });

    let marker = Uuid::now_v7().to_string();
    let out = node.cli(&["publish", "test.topic", &format!(r#"{{"marker":"{marker}"}}"#)]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let published_id = stdout(&out)
        .trim()
        .strip_prefix("published ")
        .expect("prints the id")
        .to_string();

    let line = Streaming::line_where(&tail.stdout, Duration::from_secs(20), |l| l.contains(&marker));
    let envelope: Value = serde_json::from_str(&line).expect("tail --json prints envelopes");
    assert_eq!(envelope["id"], published_id.as_str());
    assert_eq!(envelope["type"], "event");
    assert_eq!(envelope["src"]["node"], "solo-3", "the transponder stamps the node");
    assert!(
        envelope["lamport"].as_u64().unwrap() > 0,
        "the transponder stamps the lamport clock"
    );
    assert_eq!(envelope["dst"]["address"], "test.topic");
}

#[test]
fn targets_decide_who_receives() {
    let node = TestNode::start("web-7", &["--tag", "dc=ams", "--tag", "role=api"]);
    let tail = node.cli_spawn(&["--json", "tail", "--address", "targeted"]);
    Streaming::line_where(&tail.stderr, Duration::from_secs(20), |l| {
        l.contains("tailing envelopes")
    });

    // Not for this node: the Transponder drops it before the ModBus.
    let miss = Uuid::now_v7().to_string();
    let out = node.cli(&[
        "publish",
        "targeted",
        &format!(r#"{{"m":"{miss}"}}"#),
        "--target",
        "tag.dc=fra",
    ]);
    assert_eq!(out.status.code(), Some(0));
    // For this node (any of several --target matches).
    let hit = Uuid::now_v7().to_string();
    let out = node.cli(&[
        "publish",
        "targeted",
        &format!(r#"{{"m":"{hit}"}}"#),
        "--target",
        "name=db-*",
        "--target",
        "name=web-*,tag.role=api",
    ]);
    assert_eq!(out.status.code(), Some(0));
    // Both went through the same path in order, so if the first had been
    // delivered it would show before the second.
    let line = Streaming::line_where(&tail.stdout, Duration::from_secs(20), |l| {
        l.contains(&hit) || l.contains(&miss)
    });
    assert!(line.contains(&hit), "the non-matching event was delivered: {line}");

    // Requests: a target that matches nobody is an error, not a silent success.
    let out = node.cli(&["request", "mod.echo", "{}", "--target", "!tag.dc=ams"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no alive node matches the target"),
        "{}",
        stderr(&out)
    );
    let out = node.cli(&["request", "mod.echo", "{}", "--target", "tag.role=a*"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = node.cli(&["--json", "members", "--target", "tag.dc=ams", "--status", "alive"]);
    let members: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(members[0]["name"], "web-7");
    assert_eq!(members[0]["tags"], json!({"dc": "ams", "role": "api"}));
    let out = node.cli(&["--json", "members", "--status", "dead"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!([]));
}

#[test]
fn bad_input_gets_spec_errors_and_the_node_keeps_serving() {
    let node = TestNode::start("solo-4", &[]);
    let oversized = format!(r#"{{"address":"x","body":"{}"}}"#, "a".repeat(1_200_000));
    // 100,000 levels of nesting, well under the size limit: refused by the
    // parser's depth limit, not by a stack overflow.
    let nested = format!(
        r#"{{"address":"x","body":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/publish", b"{not json".to_vec(), 400, "malformed_json"),
        ("POST", "/v1/request", b"{not json".to_vec(), 400, "malformed_json"),
        (
            "POST",
            "/v1/publish",
            br#"{"body":{}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/request",
            br#"{"body":{}}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/publish",
            br#"{"address":"x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/request",
            br#"{"address":"x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/publish",
            br#"{"address":"","body":1}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/request",
            br#"{"address":"mod.echo","body":1,"timeout_ms":0}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/publish",
            oversized.clone().into_bytes(),
            413,
            "payload_too_large",
        ),
        ("POST", "/v1/request", oversized.into_bytes(), 413, "payload_too_large"),
        (
            "POST",
            "/v1/publish",
            nested.clone().into_bytes(),
            400,
            "malformed_json",
        ),
        ("POST", "/v1/request", nested.into_bytes(), 400, "malformed_json"),
        (
            "POST",
            "/v1/publish",
            br#"{"address":"x","body":1,"target":"nme=web"}"#.to_vec(),
            400,
            "bad_selector",
        ),
        (
            "POST",
            "/v1/request",
            br#"{"address":"x","body":1,"target":"name=a,,b"}"#.to_vec(),
            400,
            "bad_selector",
        ),
        ("GET", "/v1/members?target=tag.nokey", Vec::new(), 400, "bad_selector"),
        ("GET", "/v1/members?status=zombie", Vec::new(), 400, "bad_status"),
        ("GET", "/v1/nowhere", Vec::new(), 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = node.http(method, path, Some(&body));
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(answer["code"], code, "{method} {path}: {answer}");
        let message = answer["error"].as_str().expect("a human sentence in `error`");
        assert!(message.len() > 10, "{message}");
    }
    // The bad selector error points at the bad term.
    let (_, answer) = node.http(
        "POST",
        "/v1/publish",
        Some(br#"{"address":"x","body":1,"target":"name=web-*,nme=x"}"#),
    );
    assert!(
        answer["error"].as_str().unwrap().contains("`nme=x` at position 11"),
        "{answer}"
    );

    // Every rejection was logged, naming the node and module.
    let log = node.log_text();
    let rejections = log
        .lines()
        .filter(|l| l.contains("rejected API request") && l.contains("actor{node=solo-4 module=api}"))
        .count();
    assert!(rejections >= 16, "log:\n{log}");

    // And the node still serves, with its state intact.
    let (status, health) = node.http("GET", "/v1/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node"], "solo-4");
    assert_eq!(health["members_alive"], 1);
    let out = node.cli(&["request", "mod.echo", r#"{"still":"alive"}"#]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains(r#"{"still":"alive"}"#));
}

#[test]
fn cli_usage_errors_exit_2_before_sending_anything() {
    let node = TestNode::start("solo-5", &[]);
    let out = node.cli(&["request", "mod.echo", "{}", "--target", "name=web,bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad selector term `bogus`"), "{}", stderr(&out));
    let out = node.cli(&["publish", "topic", "{broken"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not valid JSON"));
    let out = node.cli(&["request", "mod.echo", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = node.cli(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing reached the node: no request was gathered, nothing published.
    let log = node.log_text();
    assert!(
        !log.contains("gathering request"),
        "a rejected command reached the node:\n{log}"
    );
    assert!(
        !log.contains("published through the API"),
        "a rejected command reached the node:\n{log}"
    );
}

#[test]
fn an_unreachable_node_is_a_clear_error() {
    let out = std::process::Command::new(BIN)
        .args(["--http", "127.0.0.1:1", "members"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the node's control API at http://127.0.0.1:1"));
}

#[test]
fn sigusr1_makes_every_actor_log_its_state() {
    let node = TestNode::start("solo-6", &[]);
    // Some traffic first, so the snapshots have something to show.
    assert_eq!(node.cli(&["request", "mod.echo", "{}"]).status.code(), Some(0));
    node.signal(libc::SIGUSR1);
    let actors = [
        "supervisor",
        "modbus",
        "cluster",
        "transponder",
        "deployer",
        "monitor",
        "echo",
    ];
    let log = wait_for(Duration::from_secs(20), "a state snapshot from every actor", || {
        let log = node.log_text();
        let all = actors.iter().all(|a| {
            log.lines()
                .any(|l| l.contains("state snapshot") && l.contains(&format!("module={a}}}")))
        });
        all.then_some(log)
    });
    let line = |actor: &str| {
        log.lines()
            .find(|l| l.contains("state snapshot") && l.contains(&format!("module={actor}}}")))
            .unwrap()
            .to_string()
    };
    assert!(
        line("modbus").contains(r#""mod.echo":["echo"]"#),
        "subscriptions are shown"
    );
    let modbus = line("modbus");
    let snapshot: serde_json::Value =
        serde_json::from_str(&modbus[modbus.find("state=").unwrap() + 6..]).expect("the snapshot is JSON");
    let depths: Vec<&String> = snapshot["queue_depths"]
        .as_object()
        .expect("queue depths are shown")
        .keys()
        .collect();
    assert_eq!(depths, ["deployer", "echo", "monitor", "transponder"], "{modbus}");
    assert!(
        line("transponder").contains(r#""lamport":"#),
        "the lamport clock is shown"
    );
    assert!(
        line("echo").contains(r#""requests":1"#),
        "the echo module's count is shown"
    );
    let sup = line("supervisor");
    assert!(
        sup.contains(r#""name":"transponder""#) && sup.contains(r#""restarts":0"#),
        "{sup}"
    );
    assert!(sup.contains(r#""state":"running""#), "{sup}");
    // The node carries on after the dump.
    assert_eq!(node.cli(&["request", "mod.echo", "{}"]).status.code(), Some(0));
}

#[test]
fn sigterm_stops_modules_in_reverse_order_and_exits_cleanly() {
    let mut node = TestNode::start("solo-7", &[]);
    assert!(
        node.data_dir().join("http.addr").exists(),
        "the agent created its data dir"
    );
    node.signal(libc::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let log = node.log_text();
    let echo = log.find("stopping module module_name=echo").expect("echo stopped");
    let transponder = log
        .find("stopping module module_name=transponder")
        .expect("transponder stopped");
    assert!(echo < transponder, "modules stop in reverse start order");
    assert!(log.contains("node stopped"));
}

#[test]
fn debug_logs_follow_an_envelope_by_its_id() {
    let node = TestNode::start("solo-8", &[]);
    let out = node.cli(&["--json", "request", "mod.echo", r#"{"trace":true}"#]);
    assert_eq!(out.status.code(), Some(0));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();
    let log = wait_for(Duration::from_secs(10), "the reply to be logged", || {
        let log = node.log_text();
        log.contains(&format!("request={id}")).then_some(log)
    });
    let hops: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    for step in [
        "sending to cluster",
        "received from cluster",
        "delivered",
        "reply matched to pending request",
    ] {
        assert!(
            hops.iter().any(|l| l.contains(step)),
            "missing hop `{step}` for {id}:\n{}",
            hops.join("\n")
        );
    }
}

/// Web pages cannot drive the API through a browser: a foreign `Origin` is
/// refused (cross-site posts), and so is a `Host` that is a domain name
/// (DNS rebinding). The CLI, curl and the node's own dashboard get through.
#[test]
fn web_pages_from_elsewhere_are_refused() {
    let node = TestNode::start("solo-web", &[]);
    let publish = br#"{"address":"web.test","body":{}}"#;
    let addr = node.http.as_str();
    let origin = format!("http://{addr}");
    // A page would not have the token; these carry it, so only the browser
    // guard is tried.
    let token = format!("Bearer {}", node.api_token());
    let auth = ("Authorization", token.as_str());
    // (headers, expected status, expected error code)
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case; 5] = [
        (&[("Host", addr), auth], 202, ""),
        (&[("Host", addr), ("Origin", &origin), auth], 202, ""),
        (
            &[("Host", addr), ("Origin", "https://evil.example"), auth],
            403,
            "forbidden_origin",
        ),
        (&[("Host", addr), ("Origin", "null"), auth], 403, "forbidden_origin"),
        (
            &[
                ("Host", "evil.example:7373"),
                ("Origin", "http://evil.example:7373"),
                auth,
            ],
            403,
            "forbidden_host",
        ),
    ];
    for (headers, status, code) in cases {
        let (got, text) = http_with_headers(addr, "POST", "/v1/publish", headers, Some(publish)).unwrap();
        assert_eq!(got, status, "{headers:?}: {text}");
        if !code.is_empty() {
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(body["code"], code, "{text}");
        }
    }
    let (got, _) = http_with_headers(addr, "GET", "/", &[("Host", "localhost")], None).unwrap();
    assert_eq!(got, 200, "the dashboard is served to localhost");
    let own = conjoiner::node::system_hostname().expect("this host has a name");
    let (got, text) = http_with_headers(addr, "GET", "/v1/health", &[("Host", &own)], None).unwrap();
    assert_eq!(got, 200, "the host's own name is fine: {text}");
    assert!(node.log_text().contains("refused a request from a web page"));
    // Still serving.
    assert_eq!(node.cli(&["request", "mod.echo", "{}"]).status.code(), Some(0));
}

/// Loopback is no trust boundary: without the node's token (0600 in its
/// data dir), another local user can read but change nothing.
#[test]
fn changing_anything_needs_the_api_token() {
    let node = TestNode::start("solo-auth", &[]);
    let addr = node.http.as_str();
    let publish = br#"{"address":"auth.test","body":{}}"#;
    for (path, body) in [
        ("/v1/publish", &publish[..]),
        ("/v1/request", br#"{"address":"mod.echo","body":{}}"#),
        ("/v1/deploy", br#"{"module":"x","source":{"path":"/etc/shadow"}}"#),
        ("/v1/packages", b"a package's bytes"),
        ("/v1/undeploy", br#"{"module":"echo"}"#),
    ] {
        for headers in [
            vec![("Host", addr)],
            vec![("Host", addr), ("Authorization", "Bearer wrong-token-of-some-length")],
        ] {
            let (got, text) = http_with_headers(addr, "POST", path, &headers, Some(body)).unwrap();
            assert_eq!(got, 401, "{path} {headers:?}: {text}");
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["code"], "unauthorized", "{text}");
        }
    }
    let mode = std::fs::metadata(node.data_dir().join("api.token"))
        .unwrap()
        .permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    // Reading needs no token.
    let (got, _) = http_with_headers(addr, "GET", "/v1/status", &[("Host", addr)], None).unwrap();
    assert_eq!(got, 200);
    // The CLI with no way to the token says where it looked.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conjoiner"))
        .args(["publish", "auth.test", "{}"])
        .env("CONJOINER_HTTP", addr)
        .env("CONJOINER_TOKEN_FILE", "/nonexistent/api.token")
        .env_remove("CONJOINER_TOKEN")
        .env_remove("CONJOINER_DATA_DIR")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unauthorized") && err.contains("/nonexistent/api.token"),
        "{err}"
    );
    // With it (as the tests' CLI runs), it works.
    assert_eq!(node.cli(&["publish", "auth.test", "{}"]).status.code(), Some(0));
    assert!(node.log_text().contains("refused a request without the API token"));
}

#[test]
fn modules_writes_whole_statuses_when_piped() {
    let node = TestNode::start("solo-wide", &[]);
    // The Monitor's own status is longer than a terminal's column.
    let line = wait_for(Duration::from_secs(30), "the monitor's status in `modules`", || {
        let table = stdout(&node.cli(&["modules"]));
        table
            .lines()
            .find(|l| l.contains(" monitor ") && l.contains("\"round\""))
            .map(str::to_string)
    });
    assert!(!line.contains('…'), "not cut when not on a terminal: {line}");
    let status = &line[line.find('{').expect("a JSON status")..];
    let parsed: Value = serde_json::from_str(status.trim()).expect("the whole status, as JSON");
    assert!(
        parsed.to_string().len() > 60,
        "longer than the terminal column: {parsed}"
    );
}

/// `conjoiner modules | head -1` made the CLI panic ("failed printing to
/// stdout: Broken pipe"). A client command whose reader has gone ends
/// quietly, as `ls` does: killed by SIGPIPE, nothing on stderr.
#[test]
fn a_command_whose_reader_went_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let node = TestNode::start("solo-pipe", &[]);
    wait_for(Duration::from_secs(30), "the modules to be listed", || {
        stdout(&node.cli(&["modules"])).contains(" monitor ").then_some(())
    });
    // A pipe whose read end is closed before the command writes.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conjoiner"))
        .arg("modules")
        .env("CONJOINER_HTTP", &node.http)
        .env("CONJOINER_TOKEN_FILE", node.data_dir().join("api.token"))
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run conjoiner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "nothing to say: {stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// Slowloris and a crowd of event streams against the control API: 200
/// connections that send half a request head and stall, and 500 open
/// `/v1/events` streams. The API keeps answering, every stream gets a
/// published event (its body only where the reader showed the API token),
/// and the stalled connections are closed by the node.
#[test]
fn stalled_and_crowded_api_clients_do_not_stop_the_api() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let node = TestNode::start("solo-crowd", &[]);
    let addr = node.http.clone();

    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
            .unwrap();
        stalled.push(s);
    }
    let mut streams = Vec::new();
    let token = node.api_token();
    for i in 0..500 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let auth = if i % 2 == 0 {
            format!("Authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        s.write_all(format!("GET /v1/events HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        streams.push((s, String::new()));
    }
    // Every stream is open (its first bytes arrived) before the event.
    let read_into = |s: &mut TcpStream, seen: &mut String| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = s.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    for (s, seen) in streams.iter_mut() {
        wait_for(Duration::from_secs(30), "an event stream to open", || {
            read_into(s, seen);
            seen.contains(": connected").then_some(())
        });
    }
    let (code, health) = node.http("GET", "/v1/health", None);
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")), "{health}");

    let (code, answer) = node.http(
        "POST",
        "/v1/publish",
        Some(br#"{"address":"crowd.test","body":{"marker":"m-crowd-1"}}"#),
    );
    assert_eq!(code, 202, "{answer}");
    for (i, (s, seen)) in streams.iter_mut().enumerate() {
        let (shows, hides) = if i % 2 == 0 {
            ("m-crowd-1", "body_hidden")
        } else {
            ("\"body_hidden\":true", "m-crowd-1")
        };
        wait_for(Duration::from_secs(30), &format!("the event on stream {i}"), || {
            read_into(s, seen);
            seen.contains(shows).then_some(())
        });
        assert!(!seen.contains(hides), "stream {i}: {seen}");
    }

    // The stalled heads are cut off by the node, not held for ever.
    for s in stalled.iter_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    for (i, s) in stalled.iter_mut().enumerate() {
        wait_for(
            Duration::from_secs(60),
            &format!("stalled connection {i} to be closed"),
            || {
                let mut buf = [0u8; 1024];
                match s.read(&mut buf) {
                    Ok(0) => Some(()),
                    // A 408 answer first, then the close.
                    Ok(_) => None,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        None
                    }
                    Err(_) => Some(()),
                }
            },
        );
    }
    let (code, _) = node.http("GET", "/v1/health", None);
    assert_eq!(code, 200);
}
