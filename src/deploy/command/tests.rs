//! The deploy command's signed form, its gate on each node, and what the
//! origin takes: every refusal the operator model promises, as a table of
//! cases, and the replay that must lose.

use super::*;
use crate::cluster::core::keyed::{EntryRules, KeyedSet, Refused};
use crate::cluster::protocol::{Entry, Version};
use crate::command::operator_key::OperatorSecret;
use crate::command::trust::TrustedKey;
use crate::deploy::order::OrderSource;
use crate::deploy::table::{winners, Action, DeploymentRules, Rollout, RolloutState};
use std::sync::Arc;

const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NOW: u64 = 1_800_000_000_000;

fn web(config: Value, ts: u64) -> Deployment {
    Deployment {
        module: "web".into(),
        target: None,
        action: Action::Deploy,
        source: Some(OrderSource {
            url: None,
            peer: Some("n1".into()),
            size: Some(10),
        }),
        sha256: Some(SHA.into()),
        config: Some(config),
        ts,
        rollout: None,
        driver: None,
        signature: None,
    }
}

fn sign(secret: &OperatorSecret, id: &str, mut d: Deployment) -> Deployment {
    let bytes = command_bytes(id, &d, d.rollout.as_ref().map(|r| &r.policy));
    d.signature = Some(OperatorSignature {
        key: secret.public().to_string(),
        sig: secret.sign(&bytes),
    });
    d
}

fn row(id: &str, clock: u64, d: &Deployment) -> Row {
    Row::read(&entry(id, clock, d)).unwrap()
}

fn entry(id: &str, clock: u64, d: &Deployment) -> Arc<Entry> {
    Arc::new(Entry {
        key: id.into(),
        version: Version {
            clock,
            origin: "n1".into(),
        },
        body: d.to_body(),
    })
}

/// The origin of these cases, as a rollout's driver.
fn me() -> Driver {
    Driver {
        node: "n1".into(),
        key: "cjnode1one".into(),
    }
}

fn trusting(secret: &OperatorSecret) -> Trust {
    Trust {
        keys: vec![TrustedKey::parse(&secret.public().to_string()).unwrap()],
    }
}

#[test]
fn a_node_carries_out_only_what_a_trusted_key_signed_and_the_rollout_may_move() {
    let alice = OperatorSecret::generate();
    let mallory = OperatorSecret::generate();
    let trust = trusting(&alice);
    let tags = BTreeMap::new();
    let good = sign(&alice, "e1", web(json!({"port": 80}), NOW));
    assert!(authorize_row(&trust, &row("e1", 1, &good), "n2", &tags).is_ok());

    // The driver moves a signed rollout on: progress is not signed.
    let mut rolling = good.clone();
    rolling.rollout = Some(Rollout {
        released: 0.2,
        state: RolloutState::Rolling,
        policy: crate::deploy::table::RolloutPolicy {
            canary: crate::deploy::table::Amount::Nodes(1),
            batch: crate::deploy::table::Amount::Nodes(1),
            health_window_ms: 1000,
            max_failed: crate::deploy::table::Amount::Nodes(0),
            revert: true,
        },
        wave_at_ms: NOW,
        wave: 1,
        reason: None,
        steer: None,
        seal: None,
    });
    let rolling = sign(&alice, "e2", rolling);
    let mut moved = rolling.clone();
    if let Some(r) = moved.rollout.as_mut() {
        r.released = 1.0;
        r.state = RolloutState::Done;
        r.wave = 4;
    }
    assert!(authorize_row(&trust, &row("e2", 2, &moved), "n2", &tags).is_ok());

    let mut other_config = good.clone();
    other_config.config = Some(json!({"port": 81}));
    let mut other_package = good.clone();
    other_package.sha256 = Some("b".repeat(64));
    let mut other_policy = rolling.clone();
    if let Some(r) = other_policy.rollout.as_mut() {
        r.policy.max_failed = crate::deploy::table::Amount::Nodes(100);
    }
    let mut no_rollout = rolling.clone();
    no_rollout.rollout = None;
    let cases: Vec<(&str, Row, &str)> = vec![
        ("unsigned", row("e1", 1, &web(json!({"port": 80}), NOW)), "unsigned"),
        (
            "another key",
            row("e1", 1, &sign(&mallory, "e1", web(json!({}), NOW))),
            "not trusted",
        ),
        ("signed for another id", row("e9", 1, &good), "does not match"),
        ("config changed", row("e1", 1, &other_config), "does not match"),
        ("package changed", row("e1", 1, &other_package), "does not match"),
        ("rollout policy changed", row("e2", 1, &other_policy), "does not match"),
        ("rollout dropped", row("e2", 1, &no_rollout), "does not match"),
    ];
    for (what, r, why) in cases {
        let e = authorize_row(&trust, &r, "n2", &tags).unwrap_err();
        assert!(e.to_string().contains(why), "{what}: {e}");
        assert_eq!(e.code(), "not_authorized");
        assert!(
            admit_entry(&trust, &r, None).is_err(),
            "{what}: the table does not hold it either"
        );
    }
    // An open node takes them all.
    assert!(authorize_row(&Trust::default(), &row("e1", 1, &other_config), "n2", &tags).is_ok());
}

#[test]
fn a_key_scoped_to_some_nodes_acts_only_there_and_its_table_entry_is_held_everywhere() {
    let alice = OperatorSecret::generate();
    let trust = Trust {
        keys: vec![
            TrustedKey::parse(&format!(r#"{{"key":"{}","target":"tag.env=staging"}}"#, alice.public())).unwrap(),
        ],
    };
    let r = row("e1", 1, &sign(&alice, "e1", web(json!({}), NOW)));
    let staging: BTreeMap<String, String> = [("env".to_string(), "staging".to_string())].into();
    assert!(authorize_row(&trust, &r, "n1", &staging).is_ok());
    let e = authorize_row(&trust, &r, "n2", &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("only nodes matching"), "{e}");
    assert!(
        admit_entry(&trust, &r, None).is_ok(),
        "held, so it reaches the staging nodes"
    );
}

#[test]
fn an_old_signed_entry_written_again_under_a_new_version_loses_and_prunes_nothing() {
    let alice = OperatorSecret::generate();
    let v1 = sign(&alice, "e1", web(json!({"v": 1}), NOW));
    let v2 = sign(&alice, "e2", web(json!({"v": 2}), NOW + 60_000));
    // A host that holds the cluster key writes e1 again, at a clock above e2's.
    let rows = vec![row("e2", 200, &v2), row("e1", 900, &v1)];
    let won = winners(&rows, "n2", &BTreeMap::new());
    assert_eq!(
        &*won["web"].id, "e2",
        "the newer signed time wins, whatever the version"
    );

    let rules = DeploymentRules::default();
    let mut held = KeyedSet::default();
    held.insert(entry("e2", 200, &v2));
    assert_eq!(rules.check(&entry("e1", 900, &v1), &held, NOW), Err(Refused::Obsolete));
    held.insert(entry("e1", 900, &v1));
    assert_eq!(rules.obsolete(&held, NOW + 60_000), vec![Arc::<str>::from("e1")]);
}

#[test]
fn a_time_far_ahead_is_refused_by_the_table() {
    let d = web(json!({}), NOW + crate::deploy::table::MAX_CLOCK_AHEAD_MS + 1);
    match DeploymentRules::default().check(&entry("e1", NOW, &d), &KeyedSet::default(), NOW) {
        Err(Refused::Invalid(why)) => assert!(why.contains("more than a day ahead"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_origin_refuses_replays_stale_skewed_unsigned_and_forged_commands() {
    let alice = OperatorSecret::generate();
    let trust = trusting(&alice);
    let id = Uuid::now_v7().to_string();
    let signed_given = |id: &str, d: &Deployment, ts: u64| {
        let mut d = d.clone();
        d.ts = ts;
        let s = sign(&alice, id, d).signature;
        Given {
            id: Some(id.to_string()),
            ts: Some(ts),
            signature: s,
            driver: None,
        }
    };
    let d = web(json!({"v": 1}), 0);
    let mut recent = RecentIds::default();

    let (taken, body) = take_at_origin(
        &trust,
        &mut recent,
        &[],
        &me(),
        signed_given(&id, &d, NOW),
        d.clone(),
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(taken.to_string(), id);
    assert_eq!(body.ts, NOW, "a signed command keeps its operator's time");
    assert!(body.signature.is_some());

    let refused = |r: Result<(Uuid, Deployment), OriginRefusal>| r.err().map(|e| (e.code(), e.to_string())).unwrap();
    let held = vec![row(&id, NOW, &body)];

    let (code, why) = refused(take_at_origin(
        &trust,
        &mut recent,
        &[],
        &me(),
        signed_given(&id, &d, NOW),
        d.clone(),
        None,
        NOW + 1,
    ));
    assert_eq!((code, why.starts_with("replayed")), ("not_authorized", true), "{why}");
    let (code, why) = refused(take_at_origin(
        &trust,
        &mut RecentIds::default(),
        &held,
        &me(),
        signed_given(&id, &d, NOW),
        d.clone(),
        None,
        NOW,
    ));
    assert_eq!(
        (code, why.contains("in the table already")),
        ("not_authorized", true),
        "{why}"
    );

    let old = Uuid::now_v7().to_string();
    let (code, why) = refused(take_at_origin(
        &trust,
        &mut recent,
        &[],
        &me(),
        signed_given(&old, &d, NOW - 6 * 60_000),
        d.clone(),
        None,
        NOW,
    ));
    assert_eq!((code, why.starts_with("clock_skew")), ("not_authorized", true), "{why}");

    // The signature names the id: the same command under a new id does not check.
    let mut new_id = signed_given(&id, &d, NOW);
    new_id.id = Some(Uuid::now_v7().to_string());
    let (code, why) = refused(take_at_origin(
        &trust,
        &mut recent,
        &[],
        &me(),
        new_id,
        d.clone(),
        None,
        NOW,
    ));
    assert_eq!(
        (code, why.contains("does not match")),
        ("not_authorized", true),
        "{why}"
    );

    let older = Uuid::now_v7().to_string();
    let (code, why) = refused(take_at_origin(
        &trust,
        &mut recent,
        &held,
        &me(),
        signed_given(&older, &d, NOW - 1000),
        d.clone(),
        None,
        NOW,
    ));
    assert_eq!(code, "stale", "{why}");

    let (code, why) = refused(take_at_origin(
        &trust,
        &mut recent,
        &[],
        &me(),
        Given::default(),
        d.clone(),
        None,
        NOW,
    ));
    assert_eq!((code, why.starts_with("unsigned")), ("not_authorized", true), "{why}");

    let no_ts = Given {
        ts: None,
        ..signed_given(&Uuid::now_v7().to_string(), &d, NOW)
    };
    assert_eq!(
        refused(take_at_origin(
            &trust,
            &mut recent,
            &[],
            &me(),
            no_ts,
            d.clone(),
            None,
            NOW
        ))
        .0,
        "invalid_request"
    );

    // Open: unsigned is taken, timed after every entry of its module.
    let ahead = vec![row("x", NOW, &web(json!({}), NOW + 5000))];
    let (_, body) = take_at_origin(
        &Trust::default(),
        &mut recent,
        &ahead,
        &me(),
        Given::default(),
        d,
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(body.ts, NOW + 5001);
}
