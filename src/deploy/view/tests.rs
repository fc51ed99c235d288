//! The table's view, as cases: which nodes count, and why one is behind.

use super::*;
use crate::deploy::converge::Goal;
use crate::deploy::order::OrderSource;
use crate::deploy::table::Deployment;
use crate::monitor::board::{NodeReport, StatusBoard};
use std::time::Instant;

const SHA: &str = "00067d4b0b1303ab4f1f24432bd76f633d3d76fea141743fe62671ddffc5409d";

fn entry(id: &str, clock: u64, module: &str, target: Option<&str>) -> Arc<Entry> {
    let d = Deployment {
        module: module.into(),
        target: target.map(str::to_string),
        action: Action::Deploy,
        source: Some(OrderSource {
            url: None,
            peer: Some("a".into()),
            size: Some(1),
        }),
        sha256: Some(SHA.into()),
        config: None,
        ts: 1000,
        rollout: None,
        driver: None,
        signature: None,
    };
    Arc::new(Entry {
        key: id.into(),
        version: Version {
            clock,
            origin: "a".into(),
        },
        body: d.to_body(),
    })
}

fn member(name: &str, status: MemberStatus, role: &str) -> Member {
    Member {
        name: name.into(),
        addr: None,
        status,
        tags: [("role".to_string(), role.to_string())].into(),
        incarnation: 0,
        since_ms: 0,
        boot_ms: 0,
        identity: None,
    }
}

fn report(node: &str, goals: &[(&str, &str, GoalState)]) -> NodeReport {
    NodeReport {
        node: node.into(),
        tags: Default::default(),
        version: "0.1.0".into(),
        started_ms: 1,
        round: 1,
        uptime_ms: 1,
        interval_ms: 1000,
        refresh_ms: 1000,
        host: serde_json::Value::Null,
        cluster: serde_json::Value::Null,
        modules: Vec::new(),
        desired: goals
            .iter()
            .map(|(module, entry, state)| Goal {
                module: module.to_string(),
                entry: entry.to_string(),
                clock: 1,
                action: Action::Deploy,
                state: *state,
                reason: Some("no route to the package".into()),
                code: Some("fetch_failed".into()),
                failures: 2,
                retry_in_ms: Some(9500),
            })
            .collect(),
    }
}

#[test]
fn each_entry_counts_the_nodes_it_wins_on_and_says_why_the_rest_are_behind() {
    let entries = vec![
        entry("e-old", 10, "web", None),
        entry("e-new", 20, "web", Some("tag.role=web")),
    ];
    let members = [
        member("w1", MemberStatus::Alive, "web"),
        member("w2", MemberStatus::Alive, "web"),
        member("w3", MemberStatus::Alive, "web"),
        member("w4", MemberStatus::Dead, "web"),
        member("d1", MemberStatus::Alive, "db"),
    ];
    let board = StatusBoard::default();
    let now = Instant::now();
    board.record(report("w1", &[("web", "e-new", GoalState::Converged)]), now);
    board.record(report("w2", &[("web", "e-new", GoalState::Failed)]), now);
    board.record(report("w3", &[("web", "e-old", GoalState::Converged)]), now);
    board.record(report("d1", &[("web", "e-old", GoalState::Converged)]), now);
    let views = board.view(&members, now);
    let listed = view(&entries, &members, &views, 5000);
    let new = listed.iter().find(|e| e.id == "e-new").unwrap();
    assert_eq!((new.converged, new.nodes), (1, 3));
    assert_eq!(new.absent, ["w4"]);
    let behind: Vec<(&str, bool)> = new.behind.iter().map(|b| (b.node.as_str(), b.failed)).collect();
    assert_eq!(behind, [("w2", true), ("w3", false)]);
    assert!(
        new.behind[0]
            .reason
            .contains("fetch_failed: no route to the package (try 3 in 10 s)"),
        "{:?}",
        new.behind
    );
    assert!(new.behind[1].reason.contains("follows entry"), "{:?}", new.behind);
    // The older entry wins only on the db node now.
    let old = listed.iter().find(|e| e.id == "e-old").unwrap();
    assert_eq!((old.converged, old.nodes, old.superseded_on), (1, 1, 3));
    assert_eq!(listed[0].id, "e-new", "newest first");
    assert_eq!(new.age_ms, 4000);
}

#[test]
fn an_entry_is_found_by_its_id_or_a_unique_start_or_end() {
    let entries = vec![
        entry("01a23c70-0000-7000-8000-aaaaaaaa1111", 1, "a", None),
        entry("01a23c70-0000-7000-8000-bbbbbbbb2222", 2, "b", None),
    ];
    assert_eq!(
        &*find(&entries, "bbbbbbbb2222").unwrap().key,
        "01a23c70-0000-7000-8000-bbbbbbbb2222"
    );
    assert_eq!(short_id("01a23c70-0000-7000-8000-aaaaaaaa1111"), "aaaa1111");
    assert!(find(&entries, "aaaa1111").is_ok());
    assert!(find(&entries, "01a23c70").unwrap_err().contains("more than one"));
    assert!(find(&entries, "zzzz").unwrap_err().contains("no entry"));
    assert!(find(&entries, "01").unwrap_err().contains("too short"));
}
