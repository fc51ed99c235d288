//! Every process of a module ends with it: double-forked daemons too,
//! which leave the module's session after their parent exits and so are
//! in no process tree. Each process module runs in a cgroup of its own,
//! killed whole on undeploy, and groups a killed node left are swept at
//! its next start.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// A module that starts three `setsid` double-forked daemons that ignore
/// SIGTERM, and answers each request with their pids.
fn daemonizing_module() -> String {
    answering_module(
        r#"for n in 1 2 3; do
  (setsid sh -c 'trap "" TERM; echo $$ > daemon-'$n'.pid; exec sleep 1003' &)
done"#,
        r#"    printf '{"op":"reply","to":"%s","body":{"pids":[%s,%s,%s]}}\n' "$id" "$(cat daemon-1.pid)" "$(cat daemon-2.pid)" "$(cat daemon-3.pid)""#,
    )
}

/// The daemons' pids, once all three run.
fn daemons(node: &TestNode) -> Vec<i32> {
    wait_for(LIMIT, "the three daemons to run", || {
        let (code, out) = cli_json(node, &["request", "mod.daemons", "{}", "--timeout", "5s"]);
        if code != 0 {
            return None;
        }
        let pids: Vec<i32> = out["replies"][0]["body"]["pids"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_i64().map(|p| p as i32))
            .collect();
        (pids.len() == 3 && pids.iter().all(|p| process_running(*p))).then_some(pids)
    })
}

/// Whether this host gives the node cgroups (root, cgroup v2 mounted); the
/// node says which in its status.
fn contained(node: &TestNode) -> bool {
    let (_, status) = node.http("GET", "/v1/status", None);
    let mode = status["module_containment"].as_str().unwrap_or_default().to_string();
    if mode != "cgroup" {
        eprintln!("skipped: this host gives the node no cgroups ({mode}); CI runs as root with cgroup v2");
    }
    mode == "cgroup"
}

/// Kills whatever is left in the test node's module cgroups, however the
/// test ends (declared before the node, so it runs after the node is gone).
struct SweepGroups(&'static str);

impl Drop for SweepGroups {
    fn drop(&mut self) {
        conjoiner::cgroup::Containment::detect(self.0);
    }
}

#[test]
fn double_forked_daemons_die_on_undeploy_and_after_a_killed_node_restarts() {
    let _sweep = SweepGroups("contained");
    let mut node = TestNode::start("contained", &[]);
    if !contained(&node) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = module_dir(
        tmp.path(),
        "daemons",
        "1.0.0",
        &daemonizing_module(),
        json!({"stop_grace_secs": 1}),
    );
    let (code, out) = cli_json(&node, &["deploy", "daemons", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let pids = daemons(&node);
    let _cleanup = KillOnDrop(pids.clone());
    for pid in &pids {
        let session = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let parent: i32 = session
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(parent, node.pid(), "daemon {pid} is not the node's child");
    }
    let (code, removed) = cli_json(&node, &["undeploy", "daemons"]);
    assert_eq!(code, 0, "{removed}");
    for pid in &pids {
        wait_for(LIMIT, &format!("daemon {pid} to be gone"), || {
            (!process_running(*pid)).then_some(())
        });
    }

    // A node killed outright cannot stop its modules; the daemons it
    // left are killed when it starts again.
    let (code, out) = cli_json(&node, &["deploy", "daemons", "--from", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let pids = daemons(&node);
    let _cleanup_again = KillOnDrop(pids.clone());
    node.kill9();
    assert!(
        pids.iter().all(|p| process_running(*p)),
        "the daemons outlive a node killed with SIGKILL"
    );
    node.restart();
    for pid in &pids {
        wait_for(LIMIT, &format!("daemon {pid} to be gone after the restart"), || {
            (!process_running(*pid)).then_some(())
        });
    }
    assert!(node.log_text().contains("removed a module cgroup an earlier run left"));
}
