//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol) loads `GET /` from a 3-node cluster
//! once, lists the three nodes with their modules and live envelopes, and
//! turns a killed node red without a reload, at phone width.
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
            "JSON.stringify([...document.querySelectorAll('[data-node]')].map(n => [n.dataset.node, n.dataset.health]))",
        );
        let pairs: Vec<(String, String)> = serde_json::from_str(v.as_str()?).ok()?;
        (pairs.len() == 3 && pairs.iter().all(|(_, h)| h == "ok")).then_some(pairs)
    });
    let mut names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta", "gamma"]);

    // Tags and the module tables with each module's own status. A node's
    // first report may come before its last module started (a changed
    // report goes out at once), so wait for the one that lists echo.
    let gamma_text = wait_for(LIMIT, "gamma's card to list its echo module", || {
        let text = browser.eval("document.querySelector('[data-node=gamma]').textContent");
        let text = text.as_str()?.to_string();
        (text.contains("echo") && text.contains("requests")).then_some(text)
    });
    assert!(gamma_text.contains("role=db"), "{gamma_text}");
    // The same holds for beta: on a busy machine its card may first show
    // a report from before echo started.
    wait_for(LIMIT, "transponder, deployer, monitor and echo on beta", || {
        let modules = browser.eval("document.querySelectorAll('[data-node=beta] tr[data-module]').length");
        (modules.as_u64()? == 4).then_some(())
    });

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
        let health = browser.eval("document.querySelector('[data-node=gamma]')?.dataset.health ?? ''");
        (health == "dead").then_some(())
    });
    assert_eq!(
        browser.eval("window.__sameLoad ?? 'reloaded'"),
        "yes",
        "no reload happened"
    );
    let red = browser.eval("getComputedStyle(document.querySelector('[data-node=gamma]')).borderLeftColor");
    assert_eq!(red, "rgb(198, 40, 40)", "a dead node is drawn red");
    let summary = browser.eval("document.getElementById('summary').textContent");
    assert!(summary.as_str().unwrap().contains("1 failing"), "{summary}");
    browser.screenshot(&root.join("dashboard-dead-node.png"));
}
