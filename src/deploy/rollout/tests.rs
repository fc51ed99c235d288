//! The rollout's rules as tables of cases.

use super::*;
use crate::deploy::converge::Goal;
use crate::deploy::steer::Driver;
use crate::deploy::table::Action;
use crate::monitor::board::{Health, ModuleReport, NodeReport, StatusBoard};
use std::collections::BTreeMap;

fn policy(canary: Amount, batch: Amount, max_failed: Amount, revert: bool) -> RolloutPolicy {
    RolloutPolicy {
        canary,
        batch,
        health_window_ms: 1000,
        max_failed,
        revert,
    }
}

#[test]
fn a_share_releases_exactly_the_nodes_asked_for() {
    let places: Vec<f64> = (0..10).map(|i| placement(&format!("n{i}"), "entry")).collect();
    for count in 0..=10 {
        let share = release_share(places.clone(), count);
        let inside = places.iter().filter(|p| **p < share).count();
        assert_eq!(inside, count, "{count}");
    }
    assert_eq!(release_share(Vec::new(), 3), 1.0);
}

fn member(name: &str) -> Member {
    Member {
        name: name.into(),
        addr: None,
        status: MemberStatus::Alive,
        tags: BTreeMap::new(),
        incarnation: 0,
        since_ms: 0,
        boot_ms: 0,
        identity: None,
    }
}

#[test]
fn the_first_wave_is_the_canary_and_a_canary_of_all_is_done_at_once() {
    let d = Deployment {
        module: "m".into(),
        target: None,
        action: Action::Undeploy,
        source: None,
        sha256: None,
        config: None,
        ts: 0,
        rollout: None,
        driver: None,
        signature: None,
    };
    let members: Vec<Member> = (0..10).map(|i| member(&format!("n{i}"))).collect();
    let one = first_wave(
        &d,
        "e",
        &members,
        policy(Amount::Nodes(1), Amount::Nodes(3), Amount::Nodes(0), true),
    );
    assert_eq!(one.state, RolloutState::Rolling);
    assert_eq!(one.wave, 1);
    let released = members
        .iter()
        .filter(|m| placement(&m.name, "e") < one.released)
        .count();
    assert_eq!(released, 1);
    let all = first_wave(
        &d,
        "e",
        &members,
        policy(Amount::Percent(100.0), Amount::Nodes(3), Amount::Nodes(0), true),
    );
    assert_eq!((all.state, all.released), (RolloutState::Done, 1.0));
}

fn rollout(released: f64, wave: u32, p: RolloutPolicy) -> Rollout {
    Rollout {
        released,
        state: RolloutState::Rolling,
        policy: p,
        wave_at_ms: 10_000,
        wave,
        reason: None,
        steer: None,
        seal: None,
    }
}

/// Ten nodes at places 0.05, 0.15, … 0.95; `judged` for the released ones.
fn nodes(released: usize, judged: &[Judged]) -> Vec<(String, f64, Option<Judged>)> {
    (0..10)
        .map(|i| {
            let j = (i < released).then(|| judged.get(i).cloned().unwrap_or(Judged::Healthy));
            (format!("n{i}"), 0.05 + i as f64 / 10.0, j)
        })
        .collect()
}

#[test]
fn the_driver_waits_releases_finishes_or_stops() {
    let p = policy(Amount::Nodes(1), Amount::Nodes(3), Amount::Nodes(0), true);
    let bad = Judged::Failed("start_failed: exit 7".into());
    let pending = Judged::Pending("fetching".into());
    // (released nodes, their judgements, now, decision)
    let cases: Vec<(usize, Vec<Judged>, u64, Decision)> = vec![
        // Healthy, but the health window is not over.
        (1, vec![], 10_500, Decision::Wait),
        // Still working when the window ends: wait.
        (1, vec![pending], 12_000, Decision::Wait),
        // Healthy through the window: three more.
        (1, vec![], 11_000, Decision::Next { released: 0.4, wave: 2 }),
        // The last wave went well.
        (10, vec![], 11_000, Decision::Done),
        // A failure stops it at once, window or not.
        (
            4,
            vec![Judged::Healthy, bad.clone()],
            10_001,
            Decision::Stop {
                state: RolloutState::Reverted,
                reason: String::new(),
            },
        ),
    ];
    for (i, (released, judged, now, want)) in cases.into_iter().enumerate() {
        let r = rollout(released as f64 / 10.0, 1, p);
        let got = decide(&r, &nodes(released, &judged), now);
        match (&got, &want) {
            (Decision::Next { released: a, wave: w }, Decision::Next { released: b, wave: v }) => {
                assert!((a - b).abs() < 1e-9 && w == v, "case {i}: {got:?}")
            }
            (Decision::Stop { state, reason }, Decision::Stop { state: s, .. }) => {
                assert_eq!(state, s, "case {i}");
                assert!(reason.contains("n1: start_failed: exit 7"), "case {i}: {reason}");
                assert!(
                    reason.contains("1 of 4 released node(s) failed (at most 0 allowed)"),
                    "{reason}"
                );
            }
            _ => assert_eq!(got, want, "case {i}"),
        }
    }
    // Failures within max_failed go on; without revert, too many pause.
    let lenient = policy(Amount::Nodes(1), Amount::Nodes(3), Amount::Percent(50.0), false);
    let r = rollout(0.4, 2, lenient);
    assert!(matches!(
        decide(&r, &nodes(4, std::slice::from_ref(&bad)), 11_000),
        Decision::Next { .. }
    ));
    let three_bad = [bad.clone(), bad.clone(), bad];
    assert!(matches!(
        decide(&r, &nodes(4, &three_bad), 11_000),
        Decision::Stop {
            state: RolloutState::Paused,
            ..
        }
    ));
}

fn report(node: &str, module_health: Health, goal: Option<(&str, GoalState)>) -> NodeReport {
    NodeReport {
        node: node.into(),
        tags: BTreeMap::new(),
        version: "0.1.0".into(),
        started_ms: 1,
        round: 1,
        uptime_ms: 1,
        interval_ms: 1000,
        refresh_ms: 1000,
        host: serde_json::Value::Null,
        cluster: serde_json::Value::Null,
        modules: vec![ModuleReport {
            name: "m".into(),
            kind: "process".into(),
            version: "2.0".into(),
            state: "running".into(),
            health: module_health,
            restarts: 0,
            uptime_ms: 1,
            status: serde_json::Value::Null,
            status_error: None,
            health_reason: None,
            sha256: None,
            last_exit: None,
            reported_health: None,
        }],
        desired: goal
            .map(|(entry, state)| Goal {
                module: "m".into(),
                entry: entry.into(),
                clock: 1,
                action: Action::Deploy,
                state,
                reason: Some("exit 7".into()),
                code: Some("start_failed".into()),
                failures: 1,
                retry_in_ms: None,
            })
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_released_node_is_judged_by_its_fresh_report() {
    let now = Instant::now();
    // (member status, report, judgement starts with)
    let cases: Vec<(MemberStatus, Option<NodeReport>, &str)> = vec![
        (
            MemberStatus::Alive,
            Some(report("x", Health::Ok, Some(("e", GoalState::Converged)))),
            "healthy",
        ),
        (
            MemberStatus::Alive,
            Some(report("x", Health::Failed, Some(("e", GoalState::Converged)))),
            "failed",
        ),
        (
            MemberStatus::Alive,
            Some(report("x", Health::Ok, Some(("e", GoalState::Failed)))),
            "failed",
        ),
        (
            MemberStatus::Alive,
            Some(report("x", Health::Ok, Some(("e", GoalState::Working)))),
            "pending",
        ),
        (
            MemberStatus::Alive,
            Some(report("x", Health::Ok, Some(("older", GoalState::Converged)))),
            "pending",
        ),
        (MemberStatus::Alive, Some(report("x", Health::Ok, None)), "pending"),
        (MemberStatus::Alive, None, "pending"),
        (
            MemberStatus::Dead,
            Some(report("x", Health::Ok, Some(("e", GoalState::Converged)))),
            "failed",
        ),
    ];
    for (i, (status, r, want)) in cases.into_iter().enumerate() {
        let board = StatusBoard::default();
        if let Some(r) = r {
            board.record(r, now);
        }
        let mut m = member("x");
        m.status = status;
        let views = board.view(&[m], now);
        let view = views.iter().find(|v| v.node == "x");
        let got = match judge(view, status, "m", "e") {
            Judged::Healthy => "healthy",
            Judged::Pending(_) => "pending",
            Judged::Failed(_) => "failed",
        };
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn operators_steer_a_rollout_from_any_state_that_allows_it() {
    let p = policy(Amount::Nodes(1), Amount::Nodes(3), Amount::Nodes(0), true);
    let rolling = rollout(0.1, 1, p);
    let paused = steer(&rolling, asked(SteerAction::Pause)).unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    assert_eq!(paused.released, 0.1, "a pause keeps what is released");
    assert_eq!(
        paused.steer,
        Some(asked(SteerAction::Pause)),
        "the rollout keeps the command"
    );
    let resumed = steer(&paused, asked(SteerAction::Resume)).unwrap();
    assert_eq!(resumed.state, RolloutState::Rolling);
    let reverted = steer(&paused, asked(SteerAction::Revert)).unwrap();
    assert_eq!(reverted.state, RolloutState::Reverted);
    assert!(steer(&reverted, asked(SteerAction::Resume))
        .unwrap_err()
        .contains("reverted"));
    assert!(steer(&reverted, asked(SteerAction::Pause)).is_err());
    assert!(describe_policy(&p).contains("canary 1, then 3 a wave"));
}

/// An unsigned steer of entry `e` from node `n1`.
fn asked(action: SteerAction) -> Steer {
    Steer {
        action,
        entry: "e".into(),
        driver: Driver {
            node: "n1".into(),
            key: "cjnode1one".into(),
        },
        id: "s".into(),
        ts: 1,
        signature: None,
    }
}
