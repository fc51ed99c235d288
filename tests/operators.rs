//! Operator keys on the in-memory network, in one process: nodes that
//! trust an operator key carry out only what it signed, whatever a host
//! that holds the cluster key writes into the deployments table. Node `x`
//! stands for such a host: it trusts no key, so it takes and spreads
//! anything, as a taken host running its own code would.

use conjoiner::actors::cluster_bus::WriteEntry;
use conjoiner::cluster::protocol::SET_DEPLOYMENTS;
use conjoiner::command::operator_key::OperatorSecret;
use conjoiner::command::signature::OperatorSignature;
use conjoiner::command::trust::{Trust, TrustedKey};
use conjoiner::deploy::command::Given;
use conjoiner::deploy::rollout::{steer, write_rollout};
use conjoiner::deploy::steer::{Steer, SteerAction};
use conjoiner::deploy::table::{Amount, Deployment, RolloutPolicy, RolloutState};
use serde_json::json;
use std::sync::Arc;

mod common;

use common::lab::*;

/// A lab whose nodes trust `alice`, but for `x`.
fn lab_trusting(alice: &OperatorSecret) -> Lab {
    let mut lab = Lab::new();
    lab.trust = Arc::new(Trust {
        keys: vec![TrustedKey::parse(&alice.public().to_string()).unwrap()],
    });
    lab.open_nodes = vec!["x".into()];
    lab
}

/// Whether `n` holds entry `id` in its deployments table.
async fn holds(n: &Started, id: &str) -> bool {
    row_at(n, id).await.is_some()
}

/// `x` writes `body` into the table under `key` itself, past any origin check.
async fn write_raw(x: &Started, key: &str, d: &Deployment) {
    x.node
        .handle
        .ctx
        .cluster
        .write_entry
        .send(WriteEntry {
            set: SET_DEPLOYMENTS,
            key: key.into(),
            body: d.to_body(),
            clock: None,
        })
        .await
        .unwrap()
        .expect("x's own table takes anything");
}

#[actix_rt::test]
async fn only_signed_deploys_run_on_trusting_nodes_even_one_that_was_down_and_forgeries_run_nowhere() {
    let alice = OperatorSecret::generate();
    let lab = lab_trusting(&alice);
    let mut nodes = lab
        .cluster(&[("a1", "web"), ("a2", "web"), ("a3", "web"), ("x", "web")])
        .await;
    let x = nodes.pop().unwrap();
    let pkg = lab.builtin_package("clock");

    // An unsigned deploy is refused at a trusting origin, before anything is written.
    let d = deployment_at(
        &lab,
        &nodes[0],
        "clock",
        Source::Path(&pkg),
        Some(json!({"v": 0})),
        None,
    )
    .await;
    let refused = command(&nodes[0], Given::default(), d, None).await.err().unwrap();
    assert!(refused.starts_with("not_authorized: unsigned"), "{refused}");

    // From x, it is written and spread, and x runs it; no trusting node holds or runs it.
    let d = deployment_at(
        &lab,
        &x,
        "clock",
        Source::Path(&pkg),
        Some(json!({"v": "forged"})),
        None,
    )
    .await;
    write_raw(&x, "forged-1", &d).await;
    converge(&[&x], "clock", Some(json!({"v": "forged"})), "x to run its own entry").await;

    // a3 goes down; alice signs a deploy at a1.
    let a3 = nodes.pop().unwrap();
    a3.node.shutdown().await;
    let d = deployment_at(
        &lab,
        &nodes[0],
        "clock",
        Source::Path(&pkg),
        Some(json!({"v": 1})),
        None,
    )
    .await;
    let (given, d) = signed(&alice, d, None);
    let signed_id = given.id.clone().unwrap();
    let v1 = d.clone();
    command(&nodes[0], given, d, None)
        .await
        .expect("a signed deploy is taken");
    converge(
        &[&nodes[0], &nodes[1]],
        "clock",
        Some(json!({"v": 1})),
        "the signed deploy to run",
    )
    .await;
    let a3 = lab.start("a3", &[("role", "web")], Some(nodes[0].addr)).await;
    converge(
        &[&a3],
        "clock",
        Some(json!({"v": 1})),
        "a3 to run the signed deploy after its return",
    )
    .await;
    for n in [&nodes[0], &nodes[1], &a3] {
        assert!(!holds(n, "forged-1").await, "{} holds the unsigned entry", n.name);
    }

    // x changes the signed entry's config and writes it under a new id:
    // the signature no longer matches, so no trusting node holds it.
    let invalid_before = refused_count(&nodes[0], "entry_invalid");
    let mut tampered = v1.clone();
    tampered.config = Some(json!({"v": "tampered"}));
    let tampered_id = signed_id.replace('-', "");
    write_raw(&x, &tampered_id, &tampered).await;
    eventually(LIMIT, "a1 to refuse the tampered entry", || async {
        (refused_count(&nodes[0], "entry_invalid") > invalid_before).then_some(())
    })
    .await;

    // (An old signed entry written again under a newer version loses to
    // the newer signed time: `deploy::command`'s unit tests show that
    // rule, which x's own table applies too, so x cannot send one here.)
    for n in [&nodes[0], &nodes[1], &a3] {
        assert_eq!(
            running(n, "clock").await,
            Some(json!({"v": 1})),
            "{} runs what x wrote",
            n.name
        );
        assert!(!holds(n, &tampered_id).await, "{} holds the tampered entry", n.name);
    }

    // Each trusting node audits both refusals, with why: each once,
    // though x offers them again at every table exchange.
    let refusals = |n: &Started, id: &str| {
        n.node
            .handle
            .deploy
            .audit
            .read(&Default::default())
            .into_iter()
            .filter(|l| l.id.as_deref() == Some(id) && l.decision == conjoiner::audit::Decision::Refused)
            .collect::<Vec<_>>()
    };
    for n in [&nodes[0], &nodes[1], &a3] {
        for id in ["forged-1", tampered_id.as_str()] {
            eventually(LIMIT, &format!("{} to audit refusing {id}", n.name), || async {
                (!refusals(n, id).is_empty()).then_some(())
            })
            .await;
        }
    }
    let offered = refused_count(&nodes[0], "entry_invalid");
    eventually(LIMIT, "x to offer a1 the refused entries again", || async {
        (refused_count(&nodes[0], "entry_invalid") >= offered + 2).then_some(())
    })
    .await;
    for id in ["forged-1", tampered_id.as_str()] {
        let lines = refusals(&nodes[0], id);
        assert_eq!(lines.len(), 1, "a1 audits the refusal of {id} once: {lines:?}");
        let line = &lines[0];
        assert_eq!((line.kind.as_str(), line.module.as_str()), ("deploy", "clock"));
        assert_eq!(line.origin.as_deref(), Some("x"));
        let reason = line.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("not_authorized"), "{reason}");
    }
    assert_eq!(
        refusals(&nodes[0], "forged-1")[0].key,
        None,
        "the forged entry was signed by no key"
    );
}

/// `conjoiner_cluster_input_refused_total{reason}` on `n`.
fn refused_count(n: &Started, reason: &str) -> u64 {
    let text = n.node.handle.ctx.metrics.render();
    let prefix = format!("conjoiner_cluster_input_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_key_scoped_to_staging_deploys_there_and_prod_refuses_it_and_says_so() {
    let alice = OperatorSecret::generate();
    let mut lab = Lab::new();
    lab.trust = Arc::new(Trust {
        keys: vec![TrustedKey::parse(&format!(
            r#"{{"key":"{}","target":"tag.role=staging"}}"#,
            alice.public()
        ))
        .unwrap()],
    });
    let nodes = lab.cluster(&[("s1", "staging"), ("p1", "prod")]).await;
    let pkg = lab.builtin_package("clock");
    let d = deployment_at(
        &lab,
        &nodes[0],
        "clock",
        Source::Path(&pkg),
        Some(json!({"v": 1})),
        None,
    )
    .await;
    let (given, d) = signed(&alice, d, None);
    let id = given.id.clone().unwrap();
    let outcome = command(&nodes[0], given, d, None)
        .await
        .expect("the signed deploy is taken");
    assert_eq!(
        names(&outcome),
        [("p1".into(), "failed".into()), ("s1".into(), "deployed".into())]
    );
    let p1_result = outcome.results.iter().find(|r| r.node == "p1").unwrap();
    assert_eq!(p1_result.code.as_deref(), Some("not_authorized"));
    assert!(
        p1_result
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("only nodes matching"),
        "{p1_result:?}"
    );

    let p1 = &nodes[1].node.handle;
    assert!(running(&nodes[1], "clock").await.is_none(), "p1 does not run it");
    let goals = p1.deploy.goals.lock().unwrap().report(std::time::Instant::now());
    let goal = goals
        .iter()
        .find(|g| g.module == "clock")
        .expect("p1's status names the module");
    assert_eq!(goal.code.as_deref(), Some("not_authorized"), "{goal:?}");
    let audit = p1.deploy.audit.read(&Default::default());
    assert!(
        audit.iter().any(|l| l.id.as_deref() == Some(id.as_str())
            && l.decision == conjoiner::audit::Decision::Refused
            && l.key.as_deref() == Some(alice.public().id().as_str())),
        "{audit:?}"
    );
    let s1_audit = nodes[0].node.handle.deploy.audit.read(&Default::default());
    let decisions: Vec<&str> = s1_audit
        .iter()
        .filter(|l| l.id.as_deref() == Some(id.as_str()))
        .map(|l| l.decision.as_str())
        .collect();
    assert_eq!(decisions, ["taken", "carried_out"]);
    assert!(p1
        .ctx
        .metrics
        .render()
        .lines()
        .any(|l| l == "conjoiner_envelopes_dropped_total{reason=\"unauthorized\"} 1"));
}

#[actix_rt::test]
async fn a_signed_rollout_moves_only_as_the_node_its_operator_named_seals_it() {
    let alice = OperatorSecret::generate();
    let lab = lab_trusting(&alice);
    let mut nodes = lab
        .cluster(&[("a1", "web"), ("a2", "web"), ("a3", "web"), ("x", "edge")])
        .await;
    let x = nodes.pop().unwrap();
    let pkg = lab.builtin_package("clock");
    let policy = RolloutPolicy {
        canary: Amount::Nodes(1),
        batch: Amount::Nodes(1),
        health_window_ms: 600_000,
        max_failed: Amount::Nodes(0),
        revert: true,
    };
    let d = deployment_at(
        &lab,
        &nodes[0],
        "clock",
        Source::Path(&pkg),
        Some(json!({"v": 1})),
        Some("tag.role=web"),
    )
    .await;

    // Signed for a2 to drive, given to a1: refused at a1.
    let (given, signed_elsewhere) = signed_rollout(&alice, &nodes[1], d.clone(), &policy);
    let refused = command(&nodes[0], given, signed_elsewhere, Some(policy))
        .await
        .err()
        .unwrap();
    assert!(refused.contains("driven by node `a2`"), "{refused}");

    // Signed for a1: its canary runs it, and every node holds it at wave 1.
    let (given, signed) = signed_rollout(&alice, &nodes[0], d, &policy);
    let id = given.id.clone().unwrap();
    command(&nodes[0], given, signed, Some(policy))
        .await
        .expect("a signed rollout is taken at the node it names");
    let first = eventually(LIMIT, "every node to hold the rollout at wave 1", || async {
        let mut rows = Vec::new();
        for n in nodes.iter().chain([&x]) {
            rows.push(row_at(n, &id).await?);
        }
        Some(rows[0].deployment.rollout.clone().unwrap())
    })
    .await;
    assert_eq!((first.wave, first.state), (1, RolloutState::Rolling));

    // x, which holds the cluster key, releases it to every node and
    // writes that as its own version: no trusting node takes it.
    let invalid_before = refused_count(&nodes[1], "entry_invalid");
    let mut forged = row_at(&x, &id).await.unwrap().deployment;
    let r = forged.rollout.as_mut().unwrap();
    r.released = 1.0;
    r.state = RolloutState::Done;
    write_raw(&x, &id, &forged).await;
    eventually(LIMIT, "a2 to refuse x's progress", || async {
        (refused_count(&nodes[1], "entry_invalid") > invalid_before).then_some(())
    })
    .await;
    for n in &nodes {
        let held = row_at(n, &id).await.unwrap().deployment.rollout.unwrap();
        assert_eq!(
            (held.released, held.state),
            (first.released, RolloutState::Rolling),
            "{} took x's progress",
            n.name
        );
    }
    let mut running_now = 0;
    for n in &nodes {
        running_now += usize::from(running(n, "clock").await.is_some());
    }
    assert_eq!(running_now, 1, "only the canary runs it");

    // alice hands the rollout to a3 with a signed pause: every node takes
    // a3's sealed progress.
    let row = row_at(&nodes[2], &id).await.unwrap();
    let mut pause = Steer {
        action: SteerAction::Pause,
        entry: id.clone(),
        driver: nodes[2].node.handle.driver(),
        id: uuid::Uuid::now_v7().to_string(),
        ts: conjoiner::wire::now_ms(),
        signature: None,
    };
    pause.signature = Some(OperatorSignature::by(&alice, &pause.signed_bytes()));
    let pause_id = pause.id.clone();
    let next = steer(row.deployment.rollout.as_ref().unwrap(), pause).unwrap();
    let handle = &nodes[2].node.handle;
    write_rollout(&handle.ctx, &handle.settings.node_key, &row, next)
        .await
        .expect("a3 writes the steer it was given");
    eventually(LIMIT, "every trusting node to hold the rollout paused", || async {
        for n in &nodes {
            let r = row_at(n, &id).await?.deployment.rollout?;
            if r.state != RolloutState::Paused {
                return None;
            }
        }
        Some(())
    })
    .await;

    // Every trusting node audits the pause it now holds, once, with the
    // key that signed it.
    for n in &nodes {
        let audit = n.node.handle.deploy.audit.read(&Default::default());
        let pauses: Vec<_> = audit
            .iter()
            .filter(|l| l.id.as_deref() == Some(pause_id.as_str()))
            .collect();
        assert_eq!(pauses.len(), 1, "{}: {pauses:?}", n.name);
        let line = pauses[0];
        assert_eq!(
            (line.kind.as_str(), line.decision, line.status.as_deref()),
            ("pause", conjoiner::audit::Decision::CarriedOut, Some("paused")),
            "{}",
            n.name
        );
        assert_eq!(line.key.as_deref(), Some(alice.public().id().as_str()));
        assert_eq!(line.origin.as_deref(), Some("a3"), "the node that drives it now");
    }
    // a2, which was seen to refuse x's progress, audited that too.
    let audit = nodes[1].node.handle.deploy.audit.read(&Default::default());
    assert!(
        audit.iter().any(|l| l.id.as_deref() == Some(id.as_str())
            && l.decision == conjoiner::audit::Decision::Refused
            && l.origin.as_deref() == Some("x")
            && l.reason
                .as_deref()
                .is_some_and(|r| r.contains("the node that drives it"))),
        "{audit:?}"
    );
}
