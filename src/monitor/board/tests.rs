//! The board's rules, with a mocked clock: freshness, health, counts.

use super::*;
use serde_json::json;

fn member(name: &str, status: MemberStatus) -> Member {
    Member {
        name: name.into(),
        addr: Some("10.0.0.1:7946".into()),
        status,
        tags: BTreeMap::from([("role".to_string(), "web".to_string())]),
        incarnation: 0,
        since_ms: 0,
        boot_ms: 0,
        identity: None,
    }
}

fn module(name: &str, health: Health) -> ModuleReport {
    ModuleReport {
        name: name.into(),
        kind: "process".into(),
        version: "1.0.0".into(),
        state: "running".into(),
        health,
        restarts: 0,
        uptime_ms: 10,
        status: json!({"ok": true}),
        status_error: None,
        health_reason: None,
        sha256: None,
        last_exit: None,
        reported_health: None,
    }
}

fn report(node: &str, round: u64, modules: Vec<ModuleReport>) -> NodeReport {
    NodeReport {
        node: node.into(),
        tags: BTreeMap::new(),
        version: "0.1.0".into(),
        started_ms: 1000,
        round,
        uptime_ms: 5000,
        interval_ms: 1000,
        refresh_ms: 1000,
        host: json!({}),
        cluster: json!({}),
        modules,
        desired: Vec::new(),
    }
}

#[test]
fn older_reports_never_replace_newer_ones() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    assert!(board.record(report("a", 2, vec![]), t0));
    assert!(!board.record(report("a", 1, vec![]), t0));
    let mut restarted = report("a", 0, vec![]);
    restarted.started_ms = 2000;
    assert!(board.record(restarted, t0), "a restarted node starts counting again");
}

#[test]
fn fresh_reports_are_ok_old_ones_stale_and_dead_members_dead() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    board.record(report("a", 1, vec![module("m", Health::Ok)]), t0);
    board.record(report("b", 1, vec![module("m", Health::Unresponsive)]), t0);
    board.record(report("c", 1, vec![]), t0);
    let members = [
        member("a", MemberStatus::Alive),
        member("b", MemberStatus::Alive),
        member("c", MemberStatus::Dead),
        member("d", MemberStatus::Alive),
    ];
    let views = board.view(&members, t0 + Duration::from_millis(500));
    let health: Vec<_> = views.iter().map(|v| (v.node.as_str(), v.health, v.stale)).collect();
    assert_eq!(
        health,
        [
            ("a", NodeHealth::Ok, false),
            ("b", NodeHealth::Degraded, false),
            ("c", NodeHealth::Dead, true),
            ("d", NodeHealth::Stale, true),
        ]
    );
    assert_eq!(views[1].failing, ["m"]);
    assert_eq!(
        views[0].modules[0].uptime_ms, 510,
        "a running module ages with its report"
    );
    assert!(views[3].error.as_deref().unwrap().contains("no status"));

    // Three intervals later, a's report is stale.
    let later = board.view(&members, t0 + Duration::from_millis(3500));
    assert_eq!(later[0].health, NodeHealth::Stale);
    assert!(later[0].error.as_deref().unwrap().contains("stale"));
    let summary = summarize(&later);
    assert_eq!(summary.nodes, 4);
    assert_eq!(summary.failing_nodes, 4);
    assert_eq!(
        (summary.failing_modules, summary.unknown_modules),
        (0, 2),
        "stale reports say nothing of now"
    );
    let by_health: Vec<(NodeHealth, usize)> = summary.by_health.into_iter().collect();
    assert_eq!(
        by_health,
        [
            (NodeHealth::Ok, 0),
            (NodeHealth::Degraded, 0),
            (NodeHealth::Stale, 3),
            (NodeHealth::Suspect, 0),
            (NodeHealth::Dead, 1),
            (NodeHealth::Left, 0)
        ],
        "every health is named, with its count"
    );
}

#[test]
fn a_module_may_say_it_is_degraded_or_failing() {
    assert_eq!(
        Health::self_reported(&json!({"health": "degraded", "q": 1})),
        Health::Degraded
    );
    assert_eq!(Health::self_reported(&json!({"health": "failing"})), Health::Failing);
    assert_eq!(Health::self_reported(&json!({"health": "ok"})), Health::Ok);
    assert_eq!(
        Health::self_reported(&json!({"health": "great"})),
        Health::Ok,
        "unknown words are ignored"
    );
    assert_eq!(Health::self_reported(&json!([1, 2])), Health::Ok);
    assert!(Health::Degraded.is_failing() && Health::Failing.is_failing());
}

#[test]
fn reports_of_nodes_membership_forgot_are_forgotten_after_a_while() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    board.record(report("kept", 1, vec![]), t0);
    board.record(report("gone", 1, vec![]), t0);
    let members = [member("kept", MemberStatus::Dead)];
    assert!(
        board.forget_gone(&members, t0 + Duration::from_secs(60)).is_empty(),
        "not yet"
    );
    let later = t0 + FORGET_UNLISTED_AFTER + Duration::from_secs(1);
    assert_eq!(board.forget_gone(&members, later), ["gone"]);
    assert_eq!(board.len(), 1, "a listed member keeps its report, dead or not");
}

#[test]
fn absurd_numbers_from_a_peer_neither_panic_nor_keep_a_report_fresh() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    let mut r = report("a", 1, vec![module("m", Health::Ok)]);
    r.interval_ms = u64::MAX;
    r.refresh_ms = u64::MAX;
    r.modules[0].uptime_ms = u64::MAX;
    board.record(r, t0);
    let members = [member("a", MemberStatus::Alive)];
    let now = board.view(&members, t0 + Duration::from_secs(1));
    assert_eq!(now[0].health, NodeHealth::Ok);
    assert_eq!(now[0].modules[0].uptime_ms, u64::MAX);
    let hours_later = board.view(&members, t0 + Duration::from_secs(3 * 3600 + 1));
    assert_eq!(hours_later[0].health, NodeHealth::Stale, "held to three hours");
}

#[test]
fn reports_are_published_on_change_or_refresh_only() {
    let t0 = Instant::now();
    let mut p = Publication::default();
    let refresh = Duration::from_secs(10);
    let mut r = report("a", 1, vec![module("m", Health::Ok)]);
    assert_eq!(p.due(&r, t0, refresh), Some(Publish::First));
    r.round = 2;
    r.modules[0].status = json!({"requests": 9});
    r.modules[0].uptime_ms = 99;
    assert_eq!(p.due(&r, t0 + Duration::from_secs(2), refresh), None, "figures wait");
    r.modules[0].health = Health::Unresponsive;
    assert_eq!(
        p.due(&r, t0 + Duration::from_millis(2500), refresh),
        Some(Publish::Changed),
        "health goes out at once"
    );
    r.modules[0].restarts = 1;
    assert_eq!(
        p.held(&r, t0 + Duration::from_millis(2800)),
        Some(Duration::from_millis(700))
    );
    assert_eq!(
        p.due(&r, t0 + Duration::from_millis(2800), refresh),
        None,
        "at most one change a second"
    );
    assert_eq!(
        p.held(&r, t0 + Duration::from_millis(2800)),
        Some(Duration::from_millis(700)),
        "the held change may go out 700 ms later"
    );
    assert_eq!(
        p.due(&r, t0 + Duration::from_millis(3600), refresh),
        Some(Publish::Changed)
    );
    assert_eq!(
        p.held(&r, t0 + Duration::from_millis(3700)),
        None,
        "nothing held once it went out"
    );
    assert_eq!(p.due(&r, t0 + Duration::from_secs(13), refresh), None);
    assert_eq!(p.due(&r, t0 + Duration::from_secs(14), refresh), Some(Publish::Refresh));
}

#[test]
fn larger_clusters_refresh_less_often_so_the_total_stays_flat() {
    let interval = Duration::from_secs(10);
    assert_eq!(refresh_interval(interval, 3), interval);
    assert_eq!(refresh_interval(interval, 100), Duration::from_secs(50));
    assert_eq!(refresh_interval(interval, 10_000), Duration::from_secs(5000));
    // Stale after three refresh periods of the sender.
    let board = StatusBoard::default();
    let t0 = Instant::now();
    let mut r = report("a", 1, vec![]);
    r.refresh_ms = 50_000;
    board.record(r, t0);
    let members = [member("a", MemberStatus::Alive)];
    assert_eq!(
        board.view(&members, t0 + Duration::from_secs(149))[0].health,
        NodeHealth::Ok
    );
    assert_eq!(
        board.view(&members, t0 + Duration::from_secs(151))[0].health,
        NodeHealth::Stale
    );
}

/// Every rule of a module's health, one row each: the supervisor's
/// state, the module's answer to the status request, and what the
/// report must say.
#[test]
fn module_health_rules_table() {
    use ModuleState::*;
    let said = |health: &str| Some(Ok(serde_json::json!({"queue": 7, "health": health})));
    let plain = Some(Ok(serde_json::json!({"queue": 7})));
    let silent = Some(Err("no status within 1000 ms".to_string()));
    // (state, answer, expected health, why it is not heard)
    type Row = (ModuleState, Option<Result<Value, String>>, Health, Option<&'static str>);
    let rows: Vec<Row> = vec![
        (Running, plain.clone(), Health::Ok, None),
        (Running, said("ok"), Health::Ok, None),
        (Running, said("degraded"), Health::Degraded, None),
        (Running, said("failing"), Health::Failing, None),
        (Running, said("something else"), Health::Ok, None),
        (Running, silent.clone(), Health::Unresponsive, Some("no status within")),
        (Running, None, Health::Unresponsive, Some("not asked")),
        (Starting, plain.clone(), Health::Starting, None),
        (Restarting, None, Health::Restarting, None),
        (Stopping, silent, Health::Stopping, None),
        (Stopped, None, Health::Stopped, None),
        (Failed, plain, Health::Failed, None),
    ];
    for (i, (state, answer, want, why)) in rows.iter().enumerate() {
        let (health, error) = Health::of_module(state, answer.as_ref());
        assert_eq!(health, *want, "row {i}: {state:?}, {answer:?}");
        assert_eq!(
            error.is_some(),
            why.is_some(),
            "row {i}: {state:?}, {answer:?} gave {error:?}"
        );
        if let (Some(error), Some(why)) = (error, why) {
            assert!(error.contains(why), "row {i}: {error:?}");
        }
        // Only a running module that answered is ok.
        if health == Health::Ok {
            assert!(matches!((state, answer), (Running, Some(Ok(_)))), "row {i}");
        }
    }
}

/// Every rule of a node's health, one row each: what membership says,
/// how old its report is (reports here are stale after 3 s), what its
/// modules say; and what `status` must show.
#[test]
fn node_health_rules_table() {
    use MemberStatus::*;
    use NodeHealth as N;
    let ok = Health::Ok;
    let bad = Health::Unresponsive;
    // (member, report age in ms or no report, module health, expected health, failing?, error mentions)
    type Row = (
        Option<MemberStatus>,
        Option<u64>,
        Health,
        NodeHealth,
        bool,
        &'static str,
    );
    let rows: &[Row] = &[
        (Some(Alive), Some(500), ok, N::Ok, false, ""),
        (Some(Alive), Some(500), Health::Degraded, N::Degraded, true, ""),
        (Some(Alive), Some(500), bad, N::Degraded, true, ""),
        (Some(Alive), Some(500), Health::Restarting, N::Degraded, true, ""),
        (Some(Alive), Some(3500), ok, N::Stale, true, "stale"),
        (Some(Alive), None, ok, N::Stale, true, "no status report"),
        (Some(Suspect), Some(500), ok, N::Suspect, true, ""),
        (Some(Dead), Some(500), ok, N::Dead, true, "dead"),
        (Some(Dead), None, ok, N::Dead, true, "no status report"),
        (Some(Left), Some(500), ok, N::Left, false, "left"),
        (None, Some(500), ok, N::Dead, true, ""),
    ];
    let t0 = Instant::now();
    for (i, &(status, age, module_health, want, failing, error)) in rows.iter().enumerate() {
        let board = StatusBoard::default();
        let name = format!("n{i}");
        if let Some(age) = age {
            board.record(report(&name, 1, vec![module("m", module_health)]), t0);
            let members: Vec<Member> = status.map(|s| member(&name, s)).into_iter().collect();
            let views = board.view(&members, t0 + Duration::from_millis(age));
            let view = views.iter().find(|v| v.node == name).expect("listed");
            let row = format!("row {i}: {status:?}, report {age} ms old, module {module_health:?}");
            assert_eq!(view.health, want, "{row}");
            assert_eq!(view.is_failing(), failing, "{row}");
            assert_eq!(view.stale, !matches!(want, N::Ok | N::Degraded | N::Suspect), "{row}");
            let said = view.error.clone().unwrap_or_default();
            assert!(said.contains(error), "{row}: error {said:?}");
            assert_eq!(error.is_empty(), view.error.is_none(), "{row}: error {said:?}");
        } else {
            let members = vec![member(&name, status.expect("a row without a report has a member"))];
            let views = board.view(&members, t0);
            let row = format!("row {i}: {status:?}, no report");
            assert_eq!(views[0].health, want, "{row}");
            assert_eq!(views[0].is_failing(), failing, "{row}");
            assert!(views[0].error.as_deref().unwrap_or_default().contains(error), "{row}");
        }
    }
}

/// A module counts as ok or failing only while its node is current
/// (alive, report fresh); otherwise it is unknown, with the report's
/// word kept as history. One row per membership and report age.
#[test]
fn modules_of_nodes_not_current_are_unknown_never_ok() {
    use MemberStatus::*;
    // (member, report age in ms, expected (ok, failing, unknown) of [ok, unresponsive, starting])
    type Row = (Option<MemberStatus>, u64, (usize, usize, usize));
    let rows: &[Row] = &[
        (Some(Alive), 500, (1, 1, 0)),
        (Some(Alive), 3500, (0, 0, 3)),
        (Some(Suspect), 500, (0, 0, 3)),
        (Some(Dead), 500, (0, 0, 3)),
        (Some(Left), 500, (0, 0, 3)),
        (None, 500, (0, 0, 3)),
    ];
    let t0 = Instant::now();
    for (i, &(status, age, (ok, failing, unknown))) in rows.iter().enumerate() {
        let board = StatusBoard::default();
        let mut starting = module("s", Health::Starting);
        starting.state = "starting".into();
        let modules = vec![module("m", Health::Ok), module("u", Health::Unresponsive), starting];
        board.record(report("a", 1, modules), t0);
        let members: Vec<Member> = status.map(|s| member("a", s)).into_iter().collect();
        let views = board.view(&members, t0 + Duration::from_millis(age));
        let view = &views[0];
        let row = format!("row {i}: {status:?}, {age} ms");
        let want = ModuleCounts {
            total: 3,
            ok,
            failing,
            unknown,
        };
        assert_eq!(view.module_counts, want, "{row}");
        assert_eq!(view.failing.len(), failing, "{row}");
        if unknown > 0 {
            assert!(view.modules.iter().all(|m| m.health == Health::Unknown), "{row}");
            let said: Vec<_> = view.modules.iter().map(|m| m.reported_health).collect();
            assert_eq!(
                said,
                [Some(Health::Ok), Some(Health::Unresponsive), Some(Health::Starting)],
                "{row}"
            );
        } else {
            assert!(view.modules.iter().all(|m| m.reported_health.is_none()), "{row}");
        }
        let summary = summarize(&views);
        assert_eq!(
            (
                summary.modules,
                summary.ok_modules,
                summary.failing_modules,
                summary.unknown_modules
            ),
            (3, ok, failing, unknown),
            "{row}"
        );
    }
}

#[test]
fn health_words_are_those_of_the_api() {
    for h in Health::ALL {
        assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
    }
    for h in [
        NodeHealth::Ok,
        NodeHealth::Degraded,
        NodeHealth::Stale,
        NodeHealth::Suspect,
        NodeHealth::Dead,
        NodeHealth::Left,
    ] {
        assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
    }
}

#[test]
fn views_and_summaries_read_back_as_they_were_written() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    board.record(report("a", 1, vec![module("m", Health::Ok)]), t0);
    board.record(report("b", 1, vec![module("m", Health::Ok)]), t0);
    let views = board.view(&[member("a", MemberStatus::Alive), member("b", MemberStatus::Dead)], t0);
    let text = serde_json::to_string(&views).unwrap();
    let back: Vec<NodeView> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, views);
    let summary = summarize(&views);
    let back: Summary = serde_json::from_str(&serde_json::to_string(&summary).unwrap()).unwrap();
    assert_eq!(back, summary);
}

#[test]
fn a_node_that_left_is_not_failing() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    board.record(report("a", 1, vec![]), t0);
    let views = board.view(&[member("a", MemberStatus::Left)], t0);
    assert_eq!(views[0].health, NodeHealth::Left);
    assert!(!views[0].is_failing());
}

/// A restarted node showed its previous run's report as `ok`
/// (`report=6.5s mods=4/4`) before the new process had reported anything.
#[test]
fn a_restarted_node_is_not_ok_on_its_previous_runs_report() {
    let board = StatusBoard::default();
    let t0 = Instant::now();
    board.record(report("a", 7, vec![module("web", Health::Ok)]), t0);
    let mut restarted = member("a", MemberStatus::Alive);
    restarted.boot_ms = 5000; // the old report's run started at 1000
    let now = t0 + Duration::from_millis(500);
    let view = &board.view(&[restarted.clone()], now)[0];
    assert_eq!(view.health, NodeHealth::Stale);
    assert!(view.stale);
    assert_eq!(view.module_counts.unknown, 1, "{:?}", view.module_counts);
    assert!(
        view.error.as_deref().unwrap_or_default().contains("restarted"),
        "{:?}",
        view.error
    );

    // Its first report of this run is news again.
    let mut fresh = report("a", 0, vec![module("web", Health::Ok)]);
    fresh.started_ms = 5000;
    assert!(board.record(fresh, now));
    let view = &board.view(&[restarted], now)[0];
    assert_eq!(view.health, NodeHealth::Ok);
    assert_eq!(view.module_counts.ok, 1);

    // A member whose boot is not known (0) is judged by age alone.
    let unknown_boot = member("a", MemberStatus::Alive);
    assert_eq!(board.view(&[unknown_boot], now)[0].health, NodeHealth::Ok);
}
