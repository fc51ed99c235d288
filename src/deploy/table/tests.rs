//! The table's rules as tables of cases.

use super::*;
use bytes::Bytes;

const SHA: &str = "00067d4b0b1303ab4f1f24432bd76f633d3d76fea141743fe62671ddffc5409d";

fn deployment(module: &str, target: Option<&str>, action: Action) -> Deployment {
    Deployment {
        module: module.into(),
        target: target.map(str::to_string),
        action,
        source: (action == Action::Deploy).then(|| OrderSource {
            url: None,
            peer: Some("n1".into()),
            size: Some(10),
        }),
        sha256: (action == Action::Deploy).then(|| SHA.to_string()),
        config: None,
        ts: 1_000,
        rollout: None,
        driver: None,
        signature: None,
    }
}

fn entry(id: &str, clock: u64, origin: &str, d: &Deployment) -> Arc<Entry> {
    Arc::new(Entry {
        key: id.into(),
        version: Version {
            clock,
            origin: origin.into(),
        },
        body: d.to_body(),
    })
}

fn raw(id: &str, body: &str) -> Entry {
    Entry {
        key: id.into(),
        version: Version {
            clock: 1,
            origin: "n".into(),
        },
        body: Bytes::from(body.to_string()),
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn entries_a_node_cannot_act_on_are_refused_with_the_reason() {
    let good = serde_json::to_string(&deployment("web", Some("tag.role=web"), Action::Deploy)).unwrap();
    assert!(Row::read(&raw("e1", &good)).is_ok());
    let with = |from: &str, to: &str| good.replace(from, to);
    // (id, body, what the error says)
    let cases: Vec<(&str, String, &str)> = vec![
        ("e1", with("\"deploy\"", "\"reboot\""), "unknown variant"),
        ("e1", with(SHA, "xyz"), "sha256"),
        ("e1", with("tag.role=web", "tag.=web"), "target does not parse"),
        ("e1", with("\"web\"", "\"Web!\""), "name"),
        ("e1", with("\"web\"", "\"monitor\""), "core module"),
        ("e1", "{not json".into(), "malformed"),
        ("e 1", good.clone(), "not an entry id"),
        ("", good.clone(), "not an entry id"),
        ("e1", with(&format!(",\"sha256\":\"{SHA}\""), ""), "needs a sha256"),
        (
            "e1",
            with("\"peer\":\"n1\"", "\"peer\":null"),
            "neither a url nor a peer",
        ),
        (
            "e1",
            format!("{}{}", &good[..good.len() - 1], ",\"config\":[1]}"),
            "config must be a JSON object",
        ),
    ];
    for (i, (id, body, says)) in cases.iter().enumerate() {
        let err = Row::read(&raw(id, body)).unwrap_err();
        assert!(err.contains(says), "case {i}: {err}");
    }
    let big = format!(
        "{}{}\"}}}}",
        &good[..good.len() - 1],
        format_args!(",\"config\":{{\"pad\":\"{}", "x".repeat(MAX_ENTRY_BYTES))
    );
    assert!(Row::read(&raw("e1", &big)).unwrap_err().contains("over the limit"));
    // An undeploy needs neither a source nor a sha256.
    let undeploy = serde_json::to_string(&deployment("web", None, Action::Undeploy)).unwrap();
    assert!(Row::read(&raw("e2", &undeploy)).is_ok());
}

#[test]
fn the_newest_entry_in_force_wins_per_module() {
    let web = tags(&[("role", "web")]);
    let db = tags(&[("role", "db")]);
    let rows: Vec<Row> = [
        entry("a", 10, "n1", &deployment("app", None, Action::Deploy)),
        entry("b", 20, "n1", &deployment("app", Some("tag.role=web"), Action::Deploy)),
        entry("c", 30, "n2", &deployment("app", Some("name=w2"), Action::Undeploy)),
        entry("d", 5, "n1", &deployment("tool", Some("tag.role=db"), Action::Deploy)),
    ]
    .iter()
    .map(|e| Row::read(e).unwrap())
    .collect();
    // (node, tags, app's winner, tool's winner)
    let cases = [
        ("w1", &web, Some("b"), None),
        ("w2", &web, Some("c"), None),
        ("d1", &db, Some("a"), Some("d")),
    ];
    for (node, tags, app, tool) in cases {
        let won = winners(&rows, node, tags);
        assert_eq!(won.get("app").map(|r| &*r.id), app, "{node}");
        assert_eq!(won.get("tool").map(|r| &*r.id), tool, "{node}");
    }
    // Two entries at one clock: the higher origin wins, on every node.
    let tie: Vec<Row> = [
        entry("x", 50, "n1", &deployment("app", None, Action::Deploy)),
        entry("y", 50, "n2", &deployment("app", None, Action::Deploy)),
    ]
    .iter()
    .map(|e| Row::read(e).unwrap())
    .collect();
    assert_eq!(&*winners(&tie, "any", &web)["app"].id, "y");
}

fn rollout(released: f64, state: RolloutState) -> Rollout {
    Rollout {
        released,
        state,
        policy: RolloutPolicy {
            canary: Amount::Nodes(1),
            batch: Amount::Percent(25.0),
            health_window_ms: 1000,
            max_failed: Amount::Nodes(0),
            revert: true,
        },
        wave_at_ms: 0,
        wave: 1,
        reason: None,
        steer: None,
        seal: None,
    }
}

#[test]
fn a_rollout_is_in_force_only_where_released_and_nowhere_once_reverted() {
    let mut new = deployment("app", None, Action::Deploy);
    let old = Row::read(&entry("old", 10, "n1", &deployment("app", None, Action::Deploy))).unwrap();
    let none = BTreeMap::new();
    let nodes: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
    for (released, state, share) in [
        (0.0, RolloutState::Rolling, 0.0),
        (0.25, RolloutState::Rolling, 0.25),
        (0.25, RolloutState::Paused, 0.25),
        (0.5, RolloutState::Reverted, 0.0),
        (0.5, RolloutState::Done, 1.0),
    ] {
        new.rollout = Some(rollout(released, state));
        let row = Row::read(&entry("new", 20, "n1", &new)).unwrap();
        let rows = vec![old.clone(), row];
        let running_new = nodes
            .iter()
            .filter(|n| &*winners(&rows, n, &none)["app"].id == "new")
            .count() as f64
            / nodes.len() as f64;
        assert!(
            (running_new - share).abs() < 0.05,
            "{state:?} at {released}: {running_new} run the new entry"
        );
        // Every other node keeps the old entry.
        assert!(nodes.iter().all(|n| winners(&rows, n, &none).contains_key("app")));
    }
    // A node's place does not move between waves: released nodes stay released.
    let p = placement("node-7", "new");
    assert!((0.0..1.0).contains(&p));
    assert_eq!(p, placement("node-7", "new"));
    assert_ne!(p, placement("node-7", "other"));
}

#[test]
fn superseded_entries_are_pruned_and_refused_and_old_undeploys_expire() {
    let rules = DeploymentRules::default();
    let mut held = KeyedSet::default();
    let now = 10 * KEEP_UNDEPLOYS_MS;
    let web = Some("tag.role=web");
    let old = entry("old", 10, "n1", &deployment("app", web, Action::Deploy));
    let other_target = entry("other", 11, "n1", &deployment("app", None, Action::Deploy));
    let mut rolling = deployment("app", web, Action::Deploy);
    rolling.rollout = Some(rollout(0.5, RolloutState::Rolling));
    let rolling = entry("rolling", 20, "n1", &rolling);
    for e in [&old, &other_target, &rolling] {
        assert_eq!(rules.check(e, &held, now), Ok(()));
        held.insert(e.clone());
    }
    assert!(
        rules.obsolete(&held, now).is_empty(),
        "a rollout keeps the entry before it"
    );
    let mut done = deployment("app", web, Action::Deploy);
    done.rollout = Some(rollout(1.0, RolloutState::Done));
    held.insert(entry("rolling", 30, "n1", &done));
    let mut gone = rules.obsolete(&held, now);
    gone.sort();
    assert_eq!(gone, [Arc::<str>::from("old")], "only the same target is superseded");
    held.remove("old");
    assert_eq!(
        rules.check(&old, &held, now),
        Err(Refused::Obsolete),
        "it does not come back"
    );

    // An undeploy is kept 30 days after it was written.
    let mut undeploy = deployment("tool", None, Action::Undeploy);
    undeploy.ts = now - KEEP_UNDEPLOYS_MS + 1000;
    held.insert(entry("u", 40, "n1", &undeploy));
    assert!(rules.obsolete(&held, now).is_empty());
    assert_eq!(rules.obsolete(&held, now + 2000), [Arc::<str>::from("u")]);
}

#[test]
fn a_version_from_the_future_is_refused() {
    let rules = DeploymentRules::default();
    let held = KeyedSet::default();
    let now = 1_000_000_000;
    let d = deployment("app", None, Action::Deploy);
    assert_eq!(rules.check(&entry("ok", now + 1000, "n1", &d), &held, now), Ok(()));
    let far = entry("far", now + MAX_CLOCK_AHEAD_MS + 1, "n1", &d);
    match rules.check(&far, &held, now) {
        Err(Refused::Invalid(why)) => assert!(why.contains("more than a day ahead"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn amounts_read_as_nodes_or_shares() {
    assert_eq!(Amount::parse("3").unwrap(), Amount::Nodes(3));
    assert_eq!(Amount::parse("25%").unwrap(), Amount::Percent(25.0));
    assert_eq!(Amount::Percent(25.0).of(10), 3, "rounded up");
    assert_eq!(Amount::Percent(1.0).of(10), 1);
    assert_eq!(Amount::Nodes(50).of(10), 10);
    assert!(Amount::parse("150%").is_err());
    assert!(Amount::parse("x").unwrap_err().contains("25%"));
    assert_eq!(Amount::Percent(25.0).to_string(), "25%");
}
