//! A cluster of five real node processes on loopback, joined by `--join`:
//! membership, targeted publish counted at the receivers, requests gathered
//! from every node, crash detection, restart under the same name, and leave.

mod common;

use common::fake_member;
use common::*;
use conjoiner::cluster::ClusterKey;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Waits until `observer` lists `member` with `status`; on timeout the panic
/// shows what it listed and the end of its log.
fn wait_status(observer: &TestNode, member: &str, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while member_status(observer, member).as_deref() != Some(status) {
        if Instant::now() > deadline {
            let log = observer.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} did not see {member} {status} within {limit:?}; it lists {:?}\nlast log lines:\n{}",
                observer.name,
                members_json(observer),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A second live process under a taken name stays out of the cluster. It
/// used to say so only in its log: its `status` read `1 nodes: 1 ok` and
/// exited 0 (or blamed the cluster key), and its health was `ok`. Now
/// both say it is refused, why and by whom.
#[test]
fn a_refused_duplicate_says_so_in_status_and_health() {
    let key = ClusterKey::generate();
    let env = vec![("CONJOINER_KEY".to_string(), key.to_base64())];
    let holder = TestNode::launch(
        "twin",
        Launch {
            env: env.clone(),
            ..Launch::default()
        },
    );
    let duplicate = TestNode::launch(
        "twin",
        Launch {
            env,
            extra: vec!["--join".into(), holder.cluster_addr()],
            ..Launch::default()
        },
    );
    let (code, stdout_text, stderr_text) = wait_for(Duration::from_secs(20), "the duplicate to be refused", || {
        let out = duplicate.cli(&["status"]);
        let err = stderr(&out);
        err.contains("refused").then(|| (out.status.code(), stdout(&out), err))
    });
    assert_eq!(code, Some(3), "a refused node's status is not ok: {stdout_text}");
    assert!(
        stderr_text.contains(&holder.cluster_addr()),
        "names the holder's address {}: {stderr_text}",
        holder.cluster_addr()
    );
    assert!(
        !stderr_text.contains("isolated"),
        "does not blame the key or network: {stderr_text}"
    );
    let (http_code, health) = duplicate.http("GET", "/v1/health", None);
    assert_eq!(http_code, 503, "{health}");
    assert_eq!(health["code"], "refused", "{health}");
    assert!(
        health["error"].as_str().unwrap_or_default().contains("twin"),
        "{health}"
    );
    let (_, status) = duplicate.http("GET", "/v1/status", None);
    assert_eq!(status["refused"]["holder"], holder.cluster_addr().as_str(), "{status}");
    // The holder is untouched.
    let out = holder.cli(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// Starts `tail --json --address ADDRESS` on every node and waits until each
/// is connected.
fn tails(nodes: &[&TestNode], address: &str) -> Vec<Streaming> {
    nodes
        .iter()
        .map(|n| {
            let t = n.cli_spawn(&["--json", "tail", "--address", address]);
            Streaming::line_where(&t.stderr, Duration::from_secs(20), |l| l.contains("tailing envelopes"));
            t
        })
        .collect()
}

/// Collects every envelope a tail prints until all of `expected` arrived
/// and then nothing more for a quiet spell, so a late duplicate would be
/// counted too. Relays may deliver envelopes in any order.
fn collect(tail: &Streaming, expected: &[String]) -> Vec<(String, Value)> {
    let mut seen: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all_in = expected.iter().all(|e| seen.iter().any(|(id, _)| id == e));
        let wait = if all_in {
            Duration::from_millis(500)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match tail.stdout.recv_timeout(wait) {
            Ok(line) => {
                let envelope: Value = serde_json::from_str(&line).expect("tail --json prints envelopes");
                seen.push((envelope["id"].as_str().unwrap_or_default().to_string(), envelope));
            }
            Err(_) if all_in => return seen,
            Err(e) => panic!("not every expected envelope arrived: {e}; got {}", seen.len()),
        }
    }
}

fn publish(from: &TestNode, address: &str, body: &str, target: Option<&str>) -> String {
    let mut args = vec!["publish", address, body];
    if let Some(t) = target {
        args.extend(["--target", t]);
    }
    let out = from.cli(&args);
    assert_eq!(out.status.code(), Some(0), "publish failed: {}", stderr(&out));
    stdout(&out)
        .trim()
        .strip_prefix("published ")
        .expect("prints the id")
        .to_string()
}

#[test]
fn five_nodes_membership_bus_requests_failures_and_leave() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(
        &[("n1", "db"), ("n2", "api"), ("n3", "db"), ("n4", "api"), ("n5", "db")],
        &key,
    );
    let all: Vec<&TestNode> = nodes.iter().collect();
    wait_converged(&all, 5);

    // Tags reach every member.
    let members = members_json(&nodes[0]);
    let n4 = members.iter().find(|m| m["name"] == "n4").expect("n4 listed");
    assert_eq!(n4["tags"]["role"], "api");
    assert!(n4["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    let api_only = nodes[2].cli(&["--json", "members", "--target", "tag.role=api"]);
    let api_names: Vec<String> = serde_json::from_slice::<Vec<Value>>(&api_only.stdout)
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(api_names, ["n2", "n4"]);

    // A targeted publish reaches exactly the matching nodes, once each.
    let streams = tails(&all, "count.me");
    let targeted: Vec<String> = (0..3)
        .map(|i| publish(&nodes[i], "count.me", &format!(r#"{{"n":{i}}}"#), Some("tag.role=api")))
        .collect();
    // A 300 KB body crosses the links in several Noise messages.
    let big = "x".repeat(300 * 1024);
    let request = serde_json::json!({"address": "count.me", "body": {"big": big}});
    let (status, answer) = nodes[4].http("POST", "/v1/publish", Some(request.to_string().as_bytes()));
    assert_eq!(status, 202, "{answer}");
    let big_id = answer["id"].as_str().unwrap().to_string();
    for (node, stream) in nodes.iter().zip(&streams) {
        let is_api = node.name == "n2" || node.name == "n4";
        let mut expected = vec![big_id.clone()];
        if is_api {
            expected.extend(targeted.iter().cloned());
        }
        let seen = collect(stream, &expected);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, _) in &seen {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        for id in &targeted {
            let expected = usize::from(is_api);
            assert_eq!(
                counts.get(id.as_str()).copied().unwrap_or(0),
                expected,
                "{} received targeted envelope {id} the wrong number of times",
                node.name
            );
        }
        assert_eq!(
            counts.get(big_id.as_str()),
            Some(&1),
            "{} got the big envelope once",
            node.name
        );
        let big_body = &seen.iter().find(|(id, _)| *id == big_id).unwrap().1["body"]["big"];
        assert_eq!(
            big_body.as_str().map(str::len),
            Some(300 * 1024),
            "{}: big body intact",
            node.name
        );
    }
    drop(streams);

    // A request gathers one reply per node.
    let out = nodes[2].cli(&["--json", "request", "mod.echo", r#"{"ping":1}"#]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut repliers: Vec<&str> = answer["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    repliers.sort();
    assert_eq!(
        repliers,
        ["n1", "n2", "n3", "n4", "n5"],
        "answer: {answer}\nlog of n3:\n{}",
        nodes[2].log_text()
    );
    assert_eq!(answer["missing"], serde_json::json!([]));

    // kill -9: every survivor marks it dead.
    nodes[4].kill9();
    let killed = Instant::now();
    for observer in &nodes[..4] {
        wait_status(observer, "n5", "dead", Duration::from_secs(15));
    }
    eprintln!("n5 seen dead by all survivors after {:?}", killed.elapsed());
    // Logged for people: the member's name as is, not Debug-quoted.
    let log = nodes[0].log_text();
    let death = log
        .lines()
        .find(|l| l.contains("conjoiner::actors::cluster_bridge") && l.contains("member declared dead"))
        .unwrap_or_else(|| panic!("no death logged by the bridge:\n{log}"));
    assert!(death.contains(" member=n5 "), "{death}");
    let out = nodes[0].cli(&["--json", "request", "mod.echo", "{}"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["replies"].as_array().unwrap().len(), 4);
    assert_eq!(
        (
            out.status.code(),
            &answer["absent"][0]["node"],
            &answer["absent"][0]["member"]
        ),
        (Some(3), &serde_json::json!("n5"), &serde_json::json!("dead")),
        "a dead node is not asked, and named: {answer}"
    );

    // Restarted, it is alive again under the same name everywhere.
    nodes[4].restart();
    for observer in &nodes {
        wait_status(observer, "n5", "alive", Duration::from_secs(15));
    }
    wait_for(Duration::from_secs(15), "n5 to see everyone", || {
        (alive_names(&nodes[4]).len() == 5).then_some(())
    });

    // SIGTERM: it says it leaves, and the others list it as left.
    nodes[3].signal(libc::SIGTERM);
    let status = nodes[3].wait_exit(Duration::from_secs(15));
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    for i in [0, 1, 2, 4] {
        wait_status(&nodes[i], "n4", "left", Duration::from_secs(10));
    }
    let left_only = nodes[0].cli(&["--json", "members", "--status", "left"]);
    let left: Vec<Value> = serde_json::from_slice(&left_only.stdout).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["name"], "n4");
    // A request to all names the node that left, and is not a success.
    let out = nodes[0].cli(&["request", "mod.echo", "{}"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not alive: n4 (left the cluster: not asked)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_request_names_the_nodes_that_stay_silent() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(&[("s1", "a"), ("s2", "a"), ("s3", "b")], &key);
    let all: Vec<&TestNode> = nodes.iter().collect();
    wait_converged(&all, 3);
    // Freeze s3: still a member for a moment, but it cannot answer.
    nodes[2].signal(libc::SIGSTOP);
    let out = nodes[0].cli(&["--json", "request", "mod.echo", "{}", "--timeout", "300ms"]);
    nodes[2].signal(libc::SIGCONT);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(out.status.code(), Some(3), "partial result exits 3: {answer}");
    assert_eq!(answer["missing"], serde_json::json!(["s3"]));
    assert_eq!(answer["replies"].as_array().unwrap().len(), 2);
    // Not calling a silent node a success is also what the plain output says.
    nodes[2].signal(libc::SIGSTOP);
    let out = nodes[0].cli(&["request", "mod.echo", "{}", "--timeout", "300ms"]);
    nodes[2].signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("s3") || stdout(&out).contains("s3"),
        "names s3: {}",
        stdout(&out)
    );
    nodes[2].kill9();
}

#[test]
fn a_restarted_node_finds_its_cluster_through_the_peers_it_knew() {
    let key = ClusterKey::generate();
    let env = vec![("CONJOINER_KEY".to_string(), key.to_base64())];
    let a = TestNode::launch(
        "kp-a",
        Launch {
            env: env.clone(),
            ..Launch::default()
        },
    );
    let mut b = TestNode::launch(
        "kp-b",
        Launch {
            env,
            extra: vec!["--join".into(), a.cluster_addr()],
            ..Launch::default()
        },
    );
    wait_for(Duration::from_secs(20), "kp-a and kp-b to converge", || {
        (alive_names(&b) == ["kp-a", "kp-b"]).then_some(())
    });
    let seed = a.cluster_addr();
    wait_for(Duration::from_secs(20), "kp-b to save kp-a as a known peer", || {
        let saved = std::fs::read_to_string(b.data_dir().join("peers.json")).ok()?;
        saved.contains(&seed).then_some(())
    });

    // Restart b without --join or mDNS: only what it saved can lead it back.
    b.set_extra_flags(&[]);
    b.restart();
    wait_for(Duration::from_secs(20), "kp-b to rejoin through its known peer", || {
        (alive_names(&b) == ["kp-a", "kp-b"] && alive_names(&a) == ["kp-a", "kp-b"]).then_some(())
    });
    // Nothing else could lead it back: no seeds, no mDNS, and kp-a knows
    // only kp-b's old port.
    assert!(b
        .log_text()
        .contains("dialing the peers known from the last run until one answers"));
}

#[test]
fn a_stopped_process_is_not_declared_dead_while_its_host_still_acks() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("st1", "a"), ("st2", "a"), ("st3", "b")], &key);
    let all: Vec<&TestNode> = nodes.iter().collect();
    wait_converged(&all, 3);
    // SIGSTOP: the process runs nothing, its kernel still acks. Four
    // seconds is four times the shortest suspicion (the LAN preset's stall
    // grace is ten): before stalls were told from crashes, st1 and st2
    // declared st3 dead within about two seconds.
    nodes[2].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let mut seen = Vec::new();
    while stopped.elapsed() < Duration::from_secs(4) {
        for observer in &nodes[..2] {
            let status = member_status(observer, "st3").unwrap_or_default();
            if status != "alive" && !seen.contains(&status) {
                seen.push(status);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[2].signal(libc::SIGCONT);
    let about_st3 = |node: &TestNode| {
        node.log_text()
            .lines()
            .filter(|l| l.contains("st3") || l.contains("probe"))
            .map(|l| format!("{}: {l}", node.name))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !seen.iter().any(|s| s == "dead"),
        "st3 was declared dead while stopped (statuses seen: {seen:?}); what st1 and st2 logged about it:\n{}\n{}",
        about_st3(&nodes[0]),
        about_st3(&nodes[1])
    );
    for observer in &nodes[..2] {
        wait_status(observer, "st3", "alive", Duration::from_secs(10));
        assert_eq!(deaths_logged(observer), 0, "{} logged a death", observer.name);
    }
    let log = nodes[0].log_text() + &nodes[1].log_text();
    assert!(
        log.contains("not suspecting a stalled process yet"),
        "the observers saw the stall through the kernel's acks"
    );
}

#[test]
fn a_flooding_module_leaves_every_node_alive_and_deploys_answered() {
    let key = ClusterKey::generate();
    let nodes = start_cluster(&[("fl1", "a"), ("fl2", "a"), ("fl3", "b"), ("fl4", "b")], &key);
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    wait_for(Duration::from_secs(30), "four nodes to converge", || {
        nodes.iter().all(|n| alive_names(n) == names).then_some(())
    });
    // Publish lines in a tight loop, for ever, to the whole cluster.
    let tmp = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\nwhile :; do echo '{\"op\":\"publish\",\"address\":\"flood.all\",\"body\":{\"pad\":\"0123456789012345678901234567890123456789\"}}'; done\n";
    let flood = module_dir(tmp.path(), "flood", "1.0.0", script, serde_json::json!({}));
    let (code, out) = cli_json(
        &nodes[0],
        &[
            "deploy",
            "flood",
            "--from",
            flood.to_str().unwrap(),
            "--target",
            "name=fl1",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let deaths_before: Vec<usize> = nodes.iter().map(deaths_logged).collect();
    let flooding = Instant::now();
    wait_for(Duration::from_secs(30), "the flood to be held to its limit", || {
        let (_, state) = nodes[0].http("GET", "/v1/debug/state", None);
        (state["modules"]["flood"]["counters"]["publish_dropped"].as_u64()? > 10_000).then_some(())
    });

    // Meanwhile a deploy to every node is answered by every node.
    let hello = hello_dir();
    let (code, out) = cli_json(&nodes[3], &["deploy", "hello", "--from", hello.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let deployed = out["results"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|x| x["status"] == "deployed").count());
    assert_eq!(deployed, 4, "{out}");
    // Twenty seconds of flood in all.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(flooding.elapsed()));
    assert!(nodes.iter().all(|n| alive_names(n) == names), "everyone alive");
    let deaths_after: Vec<usize> = nodes.iter().map(deaths_logged).collect();
    assert_eq!(deaths_after, deaths_before, "no false death during the flood");
    let (_, state) = nodes[0].http("GET", "/v1/debug/state", None);
    let counters = &state["modules"]["flood"]["counters"];
    eprintln!(
        "flood for {:?}: {} published, {} dropped",
        flooding.elapsed(),
        counters["published"],
        counters["publish_dropped"]
    );
}

/// A seed busy with a mass start may say hello at once and send its member
/// table seconds later. The join waited 7 s for the table, then called the
/// seed unreachable ("cannot reach join seed yet; retrying") and asked it
/// again, although the table was on its way. A seed that is down fails the
/// join at once (its dial or link fails), so a join that got a hello waits.
#[test]
fn a_seed_that_sends_its_table_late_is_not_reported_unreachable() {
    let key = ClusterKey::generate();
    let (listener, seed_addr) = fake_member::bind();
    let k = key.clone();
    fake_member::spawn(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let fake_member::Answered { tx, mut rx } =
            fake_member::answer_join(stream, &k, "busy-seed", seed_addr, Duration::from_secs(9)).await;
        // Keep the link, reading, for the rest of the test.
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(_)) = rx.recv().await {}
        })
        .await;
        drop(tx);
    });
    let node = fake_member::node_joining("late-table", &key, seed_addr);
    wait_for(Duration::from_secs(30), "the node to settle its join", || {
        let log = node.log_text();
        (log.contains("reached join seed") || log.contains("cannot reach join seed")).then_some(())
    });
    let log = node.log_text();
    assert!(
        !log.contains("cannot reach join seed"),
        "a seed that answered late was called unreachable:\n{log}"
    );
    assert!(log.contains("received the member table"), "{log}");
}
