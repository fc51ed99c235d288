//! Who may move a signed rollout: every way a host holding only the
//! cluster key (here `x`, with its own identity key) could write progress,
//! and the operator's hand-over by a signed steer.

use super::*;
use crate::cluster::protocol::Entry;
use crate::command::operator_key::OperatorSecret;
use crate::command::signature::OperatorSignature;
use crate::command::trust::TrustedKey;
use crate::deploy::command::{admit_entry, command_bytes};
use crate::deploy::order::OrderSource;
use crate::deploy::rollout::steer;
use crate::deploy::steer::{Steer, SteerAction};
use crate::deploy::table::{Action, Amount, Deployment, RolloutPolicy, RolloutState};
use std::sync::Arc;

const NOW: u64 = 1_800_000_000_000;
const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

struct Fleet {
    alice: OperatorSecret,
    trust: Trust,
    n1: NodeKey,
    n2: NodeKey,
    x: NodeKey,
}

impl Fleet {
    fn new() -> Fleet {
        let alice = OperatorSecret::generate();
        let trust = Trust {
            keys: vec![TrustedKey::parse(&alice.public().to_string()).unwrap()],
        };
        Fleet {
            alice,
            trust,
            n1: NodeKey::generate(),
            n2: NodeKey::generate(),
            x: NodeKey::generate(),
        }
    }

    /// Entry `e1`: a rollout of `web` at its canary, signed by alice to be
    /// driven by `n1`.
    fn signed_rollout(&self) -> Deployment {
        let mut d = Deployment {
            module: "web".into(),
            target: None,
            action: Action::Deploy,
            source: Some(OrderSource {
                url: None,
                peer: Some("n1".into()),
                size: Some(10),
            }),
            sha256: Some(SHA.into()),
            config: Some(serde_json::json!({})),
            ts: NOW,
            rollout: Some(Rollout {
                released: 0.1,
                state: RolloutState::Rolling,
                policy: RolloutPolicy {
                    canary: Amount::Nodes(1),
                    batch: Amount::Nodes(1),
                    health_window_ms: 60_000,
                    max_failed: Amount::Nodes(0),
                    revert: true,
                },
                wave_at_ms: NOW,
                wave: 1,
                reason: None,
                steer: None,
                seal: None,
            }),
            driver: Some(driver("n1", &self.n1)),
            signature: None,
        };
        let bytes = command_bytes("e1", &d, d.rollout.as_ref().map(|r| &r.policy));
        d.signature = Some(OperatorSignature::by(&self.alice, &bytes));
        d
    }

    /// A steer of `e1` signed by `by` for node `name` with `key`.
    fn steer(&self, by: &OperatorSecret, action: SteerAction, name: &str, key: &NodeKey, ts: u64) -> Steer {
        let mut s = Steer {
            action,
            entry: "e1".into(),
            driver: driver(name, key),
            id: format!("steer-{ts}"),
            ts,
            signature: None,
        };
        s.signature = Some(OperatorSignature::by(by, &s.signed_bytes()));
        s
    }

    fn admits(&self, row: &Row) -> Result<(), String> {
        admit_entry(&self.trust, row, None)
    }
}

fn driver(name: &str, key: &NodeKey) -> Driver {
    Driver {
        node: name.into(),
        key: key.public().to_string(),
    }
}

/// `d` as written by `origin` at `clock`, its rollout sealed by `key`
/// (none: unsealed).
fn written(mut d: Deployment, origin: &str, clock: u64, key: Option<&NodeKey>) -> Row {
    let version = Version {
        clock,
        origin: origin.into(),
    };
    if let (Some(key), Some(r)) = (key, d.rollout.as_mut()) {
        seal(key, "e1", &version, r);
    }
    as_row(&d, version)
}

fn as_row(d: &Deployment, version: Version) -> Row {
    Row::read(&Arc::new(Entry {
        key: "e1".into(),
        version,
        body: d.to_body(),
    }))
    .unwrap()
}

/// `d` released to every node at once, as a forger would write it.
fn done(mut d: Deployment) -> Deployment {
    let r = d.rollout.as_mut().unwrap();
    r.released = 1.0;
    r.state = RolloutState::Done;
    r.wave = 9;
    d
}

#[test]
fn only_the_node_the_operator_named_moves_a_signed_rollout() {
    let f = Fleet::new();
    let d = f.signed_rollout();
    assert_eq!(f.admits(&written(d.clone(), "n1", 5, Some(&f.n1))), Ok(()));
    assert_eq!(f.admits(&written(done(d.clone()), "n1", 6, Some(&f.n1))), Ok(()));

    let refused = |row: Row, why: &str| {
        let e = f.admits(&row).unwrap_err();
        assert!(e.starts_with("not_authorized") && e.contains(why), "{e}");
    };
    refused(written(done(d.clone()), "x", 6, Some(&f.x)), "written by `x`");
    refused(written(done(d.clone()), "n1", 6, Some(&f.x)), "does not verify");
    refused(written(done(d.clone()), "n1", 6, None), "not sealed");

    // A genuine step, written again under a newer version, or changed after
    // its seal.
    let step = written(d.clone(), "n1", 5, Some(&f.n1));
    let mut later = step.clone();
    later.version.clock = 99;
    refused(as_row(&later.deployment, later.version.clone()), "does not verify");
    refused(
        as_row(&done(step.deployment.clone()), step.version.clone()),
        "does not verify",
    );

    // The driver is signed with the command: naming another breaks it.
    let mut moved = d.clone();
    moved.driver = Some(driver("x", &f.x));
    refused(written(done(moved), "x", 6, Some(&f.x)), "does not match");

    // A node that trusts no key takes any progress, as before.
    let open = Trust::default();
    assert_eq!(admit_entry(&open, &written(done(d), "x", 6, Some(&f.x)), None), Ok(()));
}

#[test]
fn a_signed_steer_hands_the_rollout_to_the_node_it_was_given_to() {
    let f = Fleet::new();
    let d = f.signed_rollout();
    let rollout = d.rollout.clone().unwrap();
    let with = |s: Steer| {
        let mut next = d.clone();
        next.rollout = Some(steer(&rollout, s).unwrap());
        next
    };
    let pause = f.steer(&f.alice, SteerAction::Pause, "n2", &f.n2, NOW + 10);
    let paused = with(pause.clone());
    assert_eq!(f.admits(&written(paused.clone(), "n2", 7, Some(&f.n2))), Ok(()));
    let e = f.admits(&written(paused, "n1", 7, Some(&f.n1))).unwrap_err();
    assert!(e.contains("not by `n2`"), "the old driver no longer writes: {e}");

    let mallory = OperatorSecret::generate();
    let forged = f.steer(&mallory, SteerAction::Revert, "x", &f.x, NOW + 10);
    let e = f.admits(&written(with(forged), "x", 7, Some(&f.x))).unwrap_err();
    assert!(e.contains("its rollout's steer") && e.contains("not trusted"), "{e}");

    let mut unsigned = pause.clone();
    unsigned.signature = None;
    let e = f.admits(&written(with(unsigned), "n2", 7, Some(&f.n2))).unwrap_err();
    assert!(e.contains("unsigned"), "{e}");

    let mut elsewhere = f.steer(&f.alice, SteerAction::Pause, "n2", &f.n2, NOW + 10);
    elsewhere.entry = "e2".into();
    elsewhere.signature = Some(OperatorSignature::by(&f.alice, &elsewhere.signed_bytes()));
    let e = f.admits(&written(with(elsewhere), "n2", 7, Some(&f.n2))).unwrap_err();
    assert!(e.contains("signed for entry e2"), "{e}");

    // x takes the genuine steer and claims to be the node it names.
    let e = f.admits(&written(with(pause), "n2", 7, Some(&f.x))).unwrap_err();
    assert!(e.contains("does not verify"), "{e}");
}

#[test]
fn a_rollout_steered_earlier_does_not_undo_a_later_steer() {
    let f = Fleet::new();
    let d = f.signed_rollout();
    let rollout = d.rollout.clone().unwrap();
    let steered = |s: Steer, name: &str, key: &NodeKey, clock: u64| {
        let mut next = d.clone();
        next.rollout = Some(steer(&rollout, s).unwrap());
        written(next, name, clock, Some(key))
    };
    // alice resumed it from n1, then reverted it from n2; n1 (now taken)
    // writes its own steer again under a newer version.
    let resumed = steered(
        f.steer(&f.alice, SteerAction::Resume, "n1", &f.n1, NOW + 5),
        "n1",
        &f.n1,
        50,
    );
    let reverted = steered(
        f.steer(&f.alice, SteerAction::Revert, "n2", &f.n2, NOW + 9),
        "n2",
        &f.n2,
        60,
    );
    let mut again = resumed.deployment.clone();
    let r = again.rollout.as_mut().unwrap();
    r.released = 1.0;
    let again = written(again, "n1", 70, Some(&f.n1));
    assert_eq!(
        admit_entry(&f.trust, &again, None),
        Ok(()),
        "a node that never saw the revert"
    );
    let e = admit_entry(&f.trust, &again, Some(&reverted)).unwrap_err();
    assert!(e.contains("before the steer this node holds"), "{e}");
    assert_eq!(admit_entry(&f.trust, &reverted, Some(&resumed)), Ok(()));
}

#[test]
fn a_rollout_signed_before_drivers_were_named_keeps_the_older_rule() {
    let f = Fleet::new();
    let mut d = f.signed_rollout();
    d.driver = None;
    let bytes = command_bytes("e1", &d, d.rollout.as_ref().map(|r| &r.policy));
    d.signature = Some(OperatorSignature::by(&f.alice, &bytes));
    assert_eq!(f.admits(&written(done(d), "x", 6, None)), Ok(()));
}

/// A driver's seal covers the share released, a fraction that travels in
/// the entry's JSON body: it must read back bit for bit, or a genuine step
/// fails its own seal at the node that wrote it (a signed canary was
/// refused so in about one run of the operators test in twelve).
#[test]
fn a_genuine_step_verifies_whatever_share_it_releases() {
    let f = Fleet::new();
    let d = f.signed_rollout();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut refused = Vec::new();
    for _ in 0..2_000 {
        // A place's share, as placement hashes give them.
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let share = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut step = d.clone();
        step.rollout.as_mut().unwrap().released = share;
        if let Err(e) = f.admits(&written(step, "n1", 5, Some(&f.n1))) {
            refused.push((share, e));
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 2,000 refused, first {:?}",
        refused.len(),
        refused.first()
    );
}
