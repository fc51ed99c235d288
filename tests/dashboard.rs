//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol).
//!
//! - A 3-node cluster, at phone width: `GET /` lists the three nodes, a
//!   click shows a node's modules with named figures, a deploy appears in
//!   the deployments table with its convergence, live envelopes arrive,
//!   and a killed node turns red without a reload.
//! - A synthetic 1,000-node board (the page and a fixed `/v1/status` served
//!   by the test), at desktop and phone widths: summary figures, failing
//!   nodes first, a filter in the `--target` syntax, and nothing wider than
//!   the screen.
//!
//! Screenshots land in `target/dashboard-*.png` for a person to look at.

mod common;

use common::browser::Browser;
use common::*;
use conjoiner::cluster::ClusterKey;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn dashboard_lists_the_nodes_and_shows_a_killed_one_dead_without_reload() {
    let key = ClusterKey::generate();
    let mut nodes = start_cluster(&[("alpha", "web"), ("beta", "web"), ("gamma", "db")], &key);
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2]], 3);

    // A phone-width window.
    let mut browser = Browser::launch(390, 844);
    browser.open(&format!("http://{}/", nodes[0].http));

    let listed = wait_for(LIMIT, "the page to list three healthy nodes", || {
        let v = browser.eval(
            "JSON.stringify([...document.querySelectorAll('tr[data-node]')].map(n => [n.dataset.node, n.dataset.health]))",
        );
        let pairs: Vec<(String, String)> = serde_json::from_str(v.as_str()?).ok()?;
        (pairs.len() == 3 && pairs.iter().all(|(_, h)| h == "ok")).then_some(pairs)
    });
    let mut names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "gamma"]);

    // A click opens a node's details: tags, and the modules with their own
    // status as named figures. A node's first report may come before its
    // last module started (a changed report goes out at once), so wait for
    // the one that lists echo.
    browser.eval("document.querySelector('tr[data-node=gamma]').click()");
    let gamma_text = wait_for(LIMIT, "gamma's details to list its echo module", || {
        let text = browser.eval("document.querySelector('[data-details=gamma]')?.textContent ?? ''");
        let text = text.as_str()?.to_string();
        (text.contains("echo") && text.contains("requests")).then_some(text)
    });
    assert!(gamma_text.contains("role=db"), "{gamma_text}");
    let figure = browser.eval(
        "document.querySelector('[data-details=gamma] [data-module-status=echo] [data-figure=requests]')?.textContent ?? ''",
    );
    assert!(
        figure.as_str().unwrap().starts_with("requests"),
        "echo's request count is a named figure: {figure}"
    );
    // The same holds for beta: on a busy machine its row may first show a
    // report from before echo started.
    browser.eval("document.querySelector('tr[data-node=beta]').click()");
    wait_for(LIMIT, "transponder, deployer, monitor and echo on beta", || {
        let modules = browser.eval("document.querySelectorAll('[data-details=beta] tr[data-module]').length");
        (modules.as_u64()? == 4).then_some(())
    });

    // The deployments table: a deploy shows up with its convergence.
    let (code, out) = cli_json(&nodes[0], &["deploy", "hello", "--from", hello_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    wait_for(
        LIMIT,
        "the deployments table to show hello converged on all three",
        || {
            let cell =
                browser.eval("document.querySelector('#deployments tr[data-module=hello] td.num')?.textContent ?? ''");
            (cell == "3/3").then_some(())
        },
    );

    // The live envelope stream shows traffic (status reports every second).
    wait_for(LIMIT, "envelopes in the live stream", || {
        let n = browser.eval("document.querySelectorAll('#events [data-envelope]').length");
        (n.as_u64()? > 0).then_some(())
    });

    // Usable at phone width: nothing sticks out sideways.
    let overflow = browser.eval("document.documentElement.scrollWidth - window.innerWidth");
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than the phone by {overflow} px"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    browser.screenshot(&root.join("dashboard-healthy.png"));

    // Mark this page load; a reload would lose the mark.
    browser.eval("window.__sameLoad = 'yes'");
    nodes[2].kill9();
    wait_for(LIMIT, "gamma to show as dead", || {
        let health = browser.eval("document.querySelector('tr[data-node=gamma]')?.dataset.health ?? ''");
        (health == "dead").then_some(())
    });
    assert_eq!(
        browser.eval("window.__sameLoad ?? 'reloaded'"),
        "yes",
        "no reload happened"
    );
    let red = browser.eval("getComputedStyle(document.querySelector('tr[data-node=gamma] .badge')).backgroundColor");
    assert_eq!(red, "rgb(198, 40, 40)", "a dead node is drawn red");
    let first = browser.eval("document.querySelector('tr[data-node]').dataset.node");
    assert_eq!(first, "gamma", "a failing node is listed first");
    let modules = browser.eval("document.querySelector('tr[data-node=gamma] td.lastknown')?.textContent ?? ''");
    assert_eq!(
        modules, "5 unknown",
        "a dead node's modules (hello too) are not counted ok"
    );
    let dead = browser.eval("document.querySelector('[data-figure=dead] .n').textContent");
    assert_eq!(dead, "1", "the summary counts it");
    let summary = browser.eval("document.getElementById('summary').textContent");
    assert!(summary.as_str().unwrap().contains("1 failing"), "{summary}");
    assert!(
        summary.as_str().unwrap().contains("5 unknown"),
        "the dead node's modules are unknown in the summary: {summary}"
    );
    let unknown = browser.eval("document.querySelector('[data-figure=\"unknown modules\"] .n').textContent");
    assert_eq!(unknown, "5");
    browser.screenshot(&root.join("dashboard-dead-node.png"));
}

/// A board of 1,000 nodes: 20 dead, 30 stale, 50 degraded, the rest ok;
/// every tenth has `role=db`. Filtered by `target` as a node would.
fn synthetic_status(target: Option<&str>) -> Result<serde_json::Value, String> {
    use conjoiner::wire::Target;
    let target = target.map(Target::parse).transpose().map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    let mut by_health = std::collections::BTreeMap::new();
    let (mut ok_modules, mut unknown_modules) = (0, 0);
    for i in 0..1000 {
        let health = match i {
            _ if i % 50 == 7 => "dead",
            _ if i % 33 == 5 => "stale",
            _ if i % 20 == 3 => "degraded",
            _ => "ok",
        };
        *by_health.entry(health).or_insert(0usize) += 1;
        let role = if i % 10 == 0 { "db" } else { "web" };
        let tags = std::collections::BTreeMap::from([("role".to_string(), role.to_string())]);
        let name = format!("host-{i:04}");
        if target.as_ref().is_some_and(|t| !t.matches(&name, &tags)) {
            continue;
        }
        let failing: Vec<&str> = if health == "degraded" { vec!["disk"] } else { vec![] };
        let current = health == "ok" || health == "degraded";
        let counts = if current {
            serde_json::json!({"total": 2, "ok": 2 - failing.len(), "failing": failing.len(), "unknown": 0})
        } else {
            serde_json::json!({"total": 2, "ok": 0, "failing": 0, "unknown": 2})
        };
        if current {
            ok_modules += 2 - failing.len();
        } else {
            unknown_modules += 2;
        }
        nodes.push(serde_json::json!({
            "node": name, "member": if health == "dead" { "dead" } else { "alive" },
            "member_since_ms": 3_600_000, "addr": format!("10.0.{}.{}:7946", i / 250, i % 250),
            "tags": tags, "health": health, "stale": health == "stale" || health == "dead",
            "status_age_ms": if health == "stale" { 95_000 } else { 800 }, "stale_after_ms": 30_000,
            "version": "0.1.0", "uptime_ms": 86_400_000,
            "host": {"load": [0.42, 0.3, 0.2], "memory": {"available_bytes": 3_221_225_472u64}},
            "cluster": {"peers": 12},
            "modules": [
                {"name": "transponder", "kind": "builtin", "version": "0.1.0", "state": "running", "health": "ok",
                 "restarts": 0, "uptime_ms": 86_400_000, "status": {"queued": 0, "delivered": 123_456}},
                {"name": "disk", "kind": "process", "version": "2.1.0", "state": "running",
                 "health": if failing.is_empty() { "ok" } else { "degraded" }, "restarts": 1, "uptime_ms": 600_000,
                 "status": {"health": if failing.is_empty() { "ok" } else { "degraded" }, "used_pct": 91.5,
                            "mounts": ["/", "/var"], "detail": {"inodes": 12}}}
            ],
            "module_counts": counts,
            "failing": failing,
        }));
    }
    let answer = serde_json::json!({
        "node": "host-0000", "cluster": "synthetic", "status_interval_ms": 10_000, "isolated": null,
        "summary": {"nodes": 1000, "ok": by_health["ok"], "failing_nodes": 1000 - by_health["ok"],
                    "modules": 2000, "ok_modules": ok_modules, "failing_modules": by_health["degraded"],
                    "unknown_modules": unknown_modules, "by_health": by_health},
        "shown": nodes.len(),
        "nodes": nodes,
    });
    // The board has the shape of the node's real answer.
    serde_json::from_value::<conjoiner::monitor::answer::StatusAnswer>(answer.clone())
        .expect("the synthetic board reads as a status answer");
    Ok(answer)
}

/// Serves the dashboard and a synthetic `/v1/status` on a loopback port
/// (one request per connection, for the life of the test process).
fn serve_synthetic_board() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, kind, body) = if path == "/" {
                (
                    "200 OK",
                    "text/html",
                    include_str!("../src/dashboard/index.html").to_string(),
                )
            } else if path.starts_with("/v1/status") {
                let url = reqwest::Url::parse(&format!("http://board{path}")).unwrap();
                let target = url
                    .query_pairs()
                    .find(|(k, _)| k == "target")
                    .map(|(_, v)| v.into_owned());
                match synthetic_status(target.as_deref()) {
                    Ok(v) => ("200 OK", "application/json", v.to_string()),
                    Err(e) => (
                        "400 Bad Request",
                        "application/json",
                        serde_json::json!({"error": e, "code": "bad_selector"}).to_string(),
                    ),
                }
            } else {
                // No event stream here: 204 tells EventSource not to retry.
                ("204 No Content", "text/plain", String::new())
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_thousand_node_board_stays_usable_at_desktop_and_phone_width() {
    let addr = serve_synthetic_board();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    for (width, height, shot) in [
        (1280, 900, "dashboard-1000-desktop.png"),
        (390, 844, "dashboard-1000-phone.png"),
    ] {
        let mut browser = Browser::launch(width, height);
        browser.open(&format!("http://{addr}/"));
        wait_for(LIMIT, "1,000 rows", || {
            let rows = browser.eval("document.querySelectorAll('tr[data-node]').length");
            (rows.as_u64()? == 1000).then_some(())
        });
        // The summary's named figures, from the board.
        let figures = browser.eval(
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#figures [data-figure]')].map(f => [f.dataset.figure, f.querySelector('.n').textContent])))",
        );
        let figures: serde_json::Value = serde_json::from_str(figures.as_str().unwrap()).unwrap();
        let expected = synthetic_status(None).unwrap();
        for health in ["ok", "degraded", "stale", "dead"] {
            assert_eq!(
                figures[health].as_str().unwrap(),
                expected["summary"]["by_health"][health].to_string(),
                "{health}: {figures}"
            );
        }
        assert_eq!(figures["nodes"], "1000");
        // Failing nodes first: no failing row after the first ok one.
        let healths =
            browser.eval("JSON.stringify([...document.querySelectorAll('tr[data-node]')].map(r => r.dataset.health))");
        let healths: Vec<String> = serde_json::from_str(healths.as_str().unwrap()).unwrap();
        let first_ok = healths.iter().position(|h| h == "ok").unwrap();
        assert!(
            first_ok > 0 && healths[first_ok..].iter().all(|h| h == "ok"),
            "failing nodes first"
        );
        // Nothing sticks out sideways, with 1,000 rows.
        let overflow = browser.eval("document.documentElement.scrollWidth - window.innerWidth");
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{width} px: the page is wider by {overflow} px"
        );
        browser.screenshot(&root.join(shot));

        // The filter: the node evaluates it; a bad one says why and keeps the list.
        let type_filter = |browser: &mut Browser, text: &str| {
            browser.eval(&format!(
                "(() => {{ const f = document.getElementById('filter'); f.value = {text:?}; f.dispatchEvent(new Event('input')); }})()"
            ));
        };
        type_filter(&mut browser, "tag.role=db");
        wait_for(LIMIT, "the 100 db nodes only", || {
            let rows = browser.eval("document.querySelectorAll('tr[data-node]').length");
            (rows.as_u64()? == 100).then_some(())
        });
        let shown = browser.eval("document.getElementById('shown').textContent");
        assert_eq!(shown, "showing 100 of 1000");
        assert!(
            browser.eval("location.hash").as_str().unwrap().contains("target="),
            "the filter is in the address"
        );
        type_filter(&mut browser, "tag.=db");
        let why = wait_for(LIMIT, "the bad selector's reason", || {
            let text = browser.eval("document.getElementById('filtererror').textContent");
            let text = text.as_str()?.to_string();
            (!text.is_empty()).then_some(text)
        });
        assert!(why.contains("tag.=db"), "{why}");
        let rows = browser.eval("document.querySelectorAll('tr[data-node]').length");
        assert_eq!(rows, 100, "the last good list stays");

        // A click opens named figures; the raw JSON is one more click away.
        browser.eval("document.querySelector('tr[data-node]').click()");
        let used = browser.eval(
            "document.querySelector('tr.details [data-module-status=disk] [data-figure=used_pct]')?.textContent ?? ''",
        );
        assert_eq!(used, "used_pct91.50");
        let json = browser.eval("document.querySelector('tr.details details.json pre').textContent");
        assert!(json.as_str().unwrap().contains("\"used_pct\": 91.5"), "{json}");
    }
}
