//! Desired state on the in-memory network, in one process: real nodes
//! (their actors, cores, Deployers and Monitors) on links that a test can
//! cut and heal. A deploy is an entry of the replicated deployments table,
//! so it reaches the nodes that were down, cut off, or join later; two at
//! once end with one winner everywhere; a tag change picks a module up or
//! drops it; a rollout with a failing canary goes back by itself, and one
//! whose origin is gone is resumed from another node.

use conjoiner::actors::cluster_bus::{ListEntries, ListMembers, MemberStatus};
use conjoiner::cluster::protocol::SET_DEPLOYMENTS;
use conjoiner::deploy::rollout::{steer, write_rollout};
use conjoiner::deploy::steer::{Steer, SteerAction};
use conjoiner::deploy::table::{Amount, RolloutPolicy, RolloutState, Row};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::lab::*;

#[actix_rt::test]
async fn a_node_that_was_down_during_a_deploy_converges_when_it_returns_and_so_does_an_undeploy() {
    let lab = Lab::new();
    let mut nodes = lab.cluster(&[("d1", "web"), ("d2", "web"), ("d3", "web")]).await;
    let pkg = lab.builtin_package("clock");
    let d3 = nodes.pop().unwrap();
    d3.node.shutdown().await;

    let outcome = deploy(
        &lab,
        &nodes[0],
        "clock",
        &pkg,
        Some(json!({"who": "first"})),
        None,
        None,
    )
    .await;
    assert_eq!(
        names(&outcome),
        [("d1".into(), "deployed".into()), ("d2".into(), "deployed".into())]
    );
    let absent: Vec<(&str, MemberStatus)> = outcome.absent.iter().map(|a| (a.node.as_str(), a.member)).collect();
    assert_eq!(absent, [("d3", MemberStatus::Left)], "the node that is away is named");

    // It returns, as itself, and converges with no command.
    let d3 = lab.start("d3", &[("role", "web")], Some(nodes[0].addr)).await;
    converge(
        &[&d3],
        "clock",
        Some(json!({"who": "first"})),
        "d3 to run clock after its return",
    )
    .await;

    // An undeploy while it is away again removes the module when it returns.
    d3.node.shutdown().await;
    let outcome = undeploy(&nodes[1], "clock", None).await;
    assert_eq!(
        names(&outcome),
        [("d1".into(), "undeployed".into()), ("d2".into(), "undeployed".into())]
    );
    let d3 = lab.start("d3", &[("role", "web")], Some(nodes[0].addr)).await;
    converge(&[&d3, &nodes[0], &nodes[1]], "clock", None, "clock gone everywhere").await;

    // The results d3 sent after each gather had ended are late answers at
    // their origins, not envelopes that no module handles.
    for n in &nodes {
        let transponder = eventually(LIMIT, "the origin to receive d3's late result", || async {
            let state = n.node.handle.dump_state().await;
            let transponder = state["modules"]["transponder"].clone();
            (transponder["counters"]["late_replies"].as_u64() >= Some(1)).then_some(transponder)
        })
        .await;
        assert_eq!(
            transponder["counters"]["no_handler"], 0,
            "{}: late results counted as unhandled: {transponder}",
            n.name
        );
    }
    for n in nodes.into_iter().chain([d3]) {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn after_a_partition_heals_every_node_converges_to_the_newest_deploy() {
    let lab = Lab::new();
    let nodes = lab
        .cluster(&[
            ("p1", "web"),
            ("p2", "web"),
            ("p3", "web"),
            ("p4", "web"),
            ("p5", "web"),
        ])
        .await;
    let pkg = lab.builtin_package("clock");
    let (left, right) = nodes.split_at(2);
    let left_addrs: Vec<SocketAddr> = left.iter().map(|n| n.addr).collect();
    let right_addrs: Vec<SocketAddr> = right.iter().map(|n| n.addr).collect();
    lab.net.partition(&left_addrs, &right_addrs, true);
    let l: Vec<&Started> = left.iter().collect();
    let r: Vec<&Started> = right.iter().collect();
    alive(&l, 2).await;
    alive(&r, 3).await;

    // A deploy on each side: each side runs its own.
    deploy(&lab, &left[0], "clock", &pkg, Some(json!({"side": "left"})), None, None).await;
    converge(
        &l,
        "clock",
        Some(json!({"side": "left"})),
        "the left side to run its deploy",
    )
    .await;
    deploy(
        &lab,
        &right[0],
        "clock",
        &pkg,
        Some(json!({"side": "right"})),
        None,
        None,
    )
    .await;
    converge(
        &r,
        "clock",
        Some(json!({"side": "right"})),
        "the right side to run its deploy",
    )
    .await;

    // Healed: the newer deploy (the right side's) wins on every node.
    lab.net.heal();
    let all: Vec<&Started> = nodes.iter().collect();
    alive(&all, 5).await;
    converge(
        &all,
        "clock",
        Some(json!({"side": "right"})),
        "every node to run the newest deploy",
    )
    .await;
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_node_joining_a_cluster_with_twenty_entries_converges() {
    let lab = Lab::new();
    let nodes = lab.cluster(&[("j1", "web"), ("j2", "web")]).await;
    let mut expected = Vec::new();
    for i in 0..20 {
        let module = format!("c{i:02}");
        let pkg = lab.builtin_package(&module);
        let target = if i % 2 == 0 { None } else { Some("tag.role=web") };
        deploy(&lab, &nodes[i % 2], &module, &pkg, None, target, None).await;
        expected.push(module);
    }
    let table = nodes[0]
        .node
        .handle
        .ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .unwrap();
    assert_eq!(table.len(), 20);

    let j3 = lab.start("j3", &[("role", "web")], Some(nodes[1].addr)).await;
    eventually(LIMIT, "j3 to run all twenty modules", || async {
        for module in &expected {
            running(&j3, module).await?;
        }
        Some(())
    })
    .await;
    let held = j3
        .node
        .handle
        .ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .unwrap();
    assert_eq!(held.len(), 20, "the joiner holds the whole table");
    // It keeps the table on disk, too.
    let file = lab.root.path().join("j3/deployments.json");
    eventually(LIMIT, "j3 to keep the table on disk", || async {
        let text = std::fs::read_to_string(&file).ok()?;
        (text.matches("\"key\"").count() == 20).then_some(())
    })
    .await;
    for n in nodes.into_iter().chain([j3]) {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn two_deploys_at_once_from_two_nodes_end_with_one_winner_everywhere() {
    let lab = Lab::new();
    let nodes = lab.cluster(&[("c1", "web"), ("c2", "web"), ("c3", "web")]).await;
    let pkg = lab.builtin_package("clock");
    let (a, b) = tokio::join!(
        deploy(&lab, &nodes[0], "clock", &pkg, Some(json!({"from": "c1"})), None, None),
        deploy(&lab, &nodes[1], "clock", &pkg, Some(json!({"from": "c2"})), None, None),
    );
    // Each origin heard from every node: what it ran, or that it lost.
    assert_eq!(a.results.len() + a.missing.len(), 3, "{a:?}");
    assert_eq!(b.results.len() + b.missing.len(), 3, "{b:?}");
    let all: Vec<&Started> = nodes.iter().collect();
    let winner = eventually(LIMIT, "every node to run the same deploy", || async {
        let mut seen = Vec::new();
        for n in &all {
            seen.push(running(n, "clock").await?);
        }
        seen.windows(2).all(|w| w[0] == w[1]).then(|| seen[0].clone())
    })
    .await;
    // The one with the higher version, and it stays.
    let table = nodes[2]
        .node
        .handle
        .ctx
        .cluster
        .list_entries
        .send(ListEntries(SET_DEPLOYMENTS))
        .await
        .unwrap();
    let rows: Vec<Row> = table.iter().map(|e| Row::read(e).unwrap()).collect();
    let newest = rows.iter().max_by(|x, y| x.version.cmp(&y.version)).unwrap();
    assert_eq!(Some(&winner), newest.deployment.config.as_ref());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in &all {
        assert_eq!(
            running(n, "clock").await,
            Some(winner.clone()),
            "{} stays on the winner",
            n.name
        );
    }
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_tag_change_makes_a_node_pick_up_or_drop_a_module() {
    let lab = Lab::new();
    let nodes = lab.cluster(&[("t1", "web"), ("t2", "db")]).await;
    let pkg = lab.builtin_package("clock");
    let outcome = deploy(&lab, &nodes[0], "clock", &pkg, None, Some("tag.role=db"), None).await;
    assert_eq!(names(&outcome), [("t2".into(), "deployed".into())]);
    let t1 = &nodes[0];
    assert!(running(t1, "clock").await.is_none());

    let tags = t1
        .node
        .handle
        .change_tags(
            BTreeMap::from([("role".into(), "db".into())]),
            Vec::new(),
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    assert_eq!(tags["role"], "db");
    converge(&[t1], "clock", Some(json!({})), "t1 to pick the module up").await;
    // The other node sees the new tag, so selectors there match it too.
    eventually(LIMIT, "t2 to list t1 with role=db", || async {
        let members = nodes[1].node.handle.ctx.cluster.members.send(ListMembers).await.ok()?;
        members
            .iter()
            .any(|m| m.name == "t1" && m.tags.get("role").map(String::as_str) == Some("db"))
            .then_some(())
    })
    .await;

    t1.node
        .handle
        .change_tags(BTreeMap::new(), vec!["role".into()], |_, _| Ok(()))
        .await
        .unwrap();
    converge(&[t1], "clock", None, "t1 to drop the module").await;
    assert!(running(&nodes[1], "clock").await.is_some(), "t2 keeps it");
    for n in nodes {
        n.node.shutdown().await;
    }
}

/// A process module that leaves a mark for its node, then exits 7.
const MARK_AND_FAIL: &str = "#!/bin/sh\ntouch \"$MARKS/$CONJOINER_NODE\"\nexit 7\n";

fn policy(canary: Amount, window_ms: u64) -> RolloutPolicy {
    RolloutPolicy {
        canary,
        batch: Amount::Percent(100.0),
        health_window_ms: window_ms,
        max_failed: Amount::Nodes(0),
        revert: true,
    }
}

#[actix_rt::test]
async fn a_rollout_whose_canary_fails_reverts_and_the_rest_never_run_it() {
    let lab = Lab::new();
    let nodes = lab
        .cluster(&[
            ("r1", "web"),
            ("r2", "web"),
            ("r3", "web"),
            ("r4", "web"),
            ("r5", "web"),
        ])
        .await;
    let marks = lab.root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = MARK_AND_FAIL.replace("$MARKS", marks.to_str().unwrap());
    let bad = lab.process_package("shaky", "2.0.0", &script);
    let outcome = deploy(
        &lab,
        &nodes[0],
        "shaky",
        &bad,
        None,
        None,
        Some(policy(Amount::Nodes(1), 500)),
    )
    .await;
    nodes[0].node.handle.drive_rollout(outcome.id);
    assert_eq!(outcome.results.len(), 1, "one canary: {outcome:?}");
    assert_eq!(outcome.later.len(), 4);
    let canary = outcome.results[0].node.clone();
    assert_eq!(outcome.results[0].status.as_str(), "failed");

    let id = outcome.id.to_string();
    let reverted = eventually(LIMIT, "the rollout to be reverted", || async {
        let r = row_at(&nodes[0], &id).await?.deployment.rollout?;
        (r.state == RolloutState::Reverted).then_some(r)
    })
    .await;
    assert!(reverted.reason.unwrap().contains(&format!("{canary}: start_failed")));
    // Give the others time to act on it, were they wrong to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut marked: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    marked.sort();
    assert_eq!(marked, [canary], "only the canary ever started the bad version");
    for n in &nodes {
        assert!(n.node.handle.deploy.store.read("shaky").is_err(), "{}", n.name);
    }
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_rollout_whose_origin_is_gone_stays_where_it_is_and_resumes_from_another_node() {
    let lab = Lab::new();
    let mut nodes = lab
        .cluster(&[("o1", "web"), ("o2", "web"), ("o3", "web"), ("o4", "web")])
        .await;
    let pkg = lab.builtin_package("clock");
    let origin = nodes.remove(0);
    // A long health window: the origin is gone before the first wave ends.
    // The package is at a URL every node reaches, so the origin is not the
    // only place to fetch it from.
    let url = format!("file://{}", pkg.display());
    let outcome = deploy_from(
        &lab,
        &origin,
        "clock",
        Source::Url(&url),
        None,
        None,
        Some(policy(Amount::Nodes(1), 60_000)),
    )
    .await;
    origin.node.handle.drive_rollout(outcome.id);
    let id = outcome.id.to_string();
    assert_eq!(outcome.results.len() + outcome.missing.len(), 1, "{outcome:?}");
    origin.node.shutdown().await;
    let rest: Vec<&Started> = nodes.iter().collect();
    alive(&rest, 3).await;

    // Nobody drives it: it stays released to the canary only.
    let before = row_at(&nodes[0], &id).await.unwrap().deployment.rollout.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = row_at(&nodes[0], &id).await.unwrap().deployment.rollout.unwrap();
    assert_eq!(
        (still.state, still.released, still.wave),
        (before.state, before.released, before.wave)
    );
    let running_now = {
        let mut count = 0;
        for n in &rest {
            count += usize::from(running(n, "clock").await.is_some());
        }
        count
    };
    assert!(running_now <= 1, "only the canary (if it was not the origin) runs it");

    // o2 resumes it with a short window, and drives it to the end.
    let row = row_at(&nodes[0], &id).await.unwrap();
    let handle = &nodes[0].node.handle;
    let resume = Steer {
        action: SteerAction::Resume,
        entry: id.clone(),
        driver: handle.driver(),
        id: uuid::Uuid::now_v7().to_string(),
        ts: conjoiner::wire::now_ms(),
        signature: None,
    };
    let mut resumed = steer(row.deployment.rollout.as_ref().unwrap(), resume).unwrap();
    resumed.policy.health_window_ms = 300;
    write_rollout(&handle.ctx, &handle.settings.node_key, &row, resumed)
        .await
        .unwrap();
    nodes[0].node.handle.drive_rollout(outcome.id);
    eventually(LIMIT, "the resumed rollout to be done", || async {
        let r = row_at(&nodes[1], &id).await?.deployment.rollout?;
        (r.state == RolloutState::Done).then_some(())
    })
    .await;
    converge(&rest, "clock", Some(json!({})), "every node left to run the module").await;
    for n in nodes {
        n.node.shutdown().await;
    }
}

/// The Deployer's counters on `n`.
async fn deploy_counters(n: &Started) -> Value {
    let state = n.node.handle.dump_state().await;
    state["modules"]["deployer"]["counters"].clone()
}

#[actix_rt::test]
async fn a_package_spreads_from_node_to_node_so_its_origin_sends_it_only_a_few_times() {
    let mut lab = Lab::new();
    lab.chunk_bytes = 64 * 1024;
    lab.max_uploads = 1;
    let names: Vec<(String, &str)> = (1..=7).map(|i| (format!("s{i}"), "web")).collect();
    let names: Vec<(&str, &str)> = names.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    let mut nodes = lab.cluster(&names).await;
    let pkg = lab.padded_package("spread", 1024 * 1024);
    let size = std::fs::metadata(&pkg).unwrap().len();
    let away = nodes.pop().unwrap();
    away.node.shutdown().await;

    deploy(&lab, &nodes[0], "spread", &pkg, None, None, None).await;
    let all: Vec<&Started> = nodes.iter().collect();
    converge(&all, "spread", Some(json!({})), "every node to run the package").await;
    // The node that was away comes back and fetches it too.
    nodes.push(lab.start("s7", &[("role", "web")], Some(nodes[0].addr)).await);
    converge(&[&nodes[6]], "spread", Some(json!({})), "s7 to run the package").await;

    // Six nodes fetched the package. Each sends to one peer at a time, and
    // the origin only while no other node holds it: the rest came from
    // nodes that fetched it before them.
    let mut served = Vec::new();
    for n in &nodes {
        let counters = deploy_counters(n).await;
        served.push(counters["bytes_served"].as_u64().expect("bytes_served is counted"));
    }
    let total: u64 = served.iter().sum();
    assert_eq!(
        total,
        6 * size,
        "each fetcher got the package once: {served:?} of {size}"
    );
    assert!(
        served[0] <= 2 * size,
        "the origin sent {} copies of the package: {served:?}",
        served[0] as f64 / size as f64
    );
    let relays = served[1..].iter().filter(|b| **b > 0).count();
    assert!(relays >= 1, "no fetcher served another: {served:?}");
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_new_config_is_reported_deployed_only_once_its_probation_passed() {
    let lab = Lab::new();
    let nodes = lab.cluster(&[("c1", "web"), ("c2", "web"), ("c3", "web")]).await;
    let pkg = lab.padded_package("cfg", 512 * 1024);
    let first = deploy(&lab, &nodes[0], "cfg", &pkg, Some(json!({"v": 1})), None, None).await;
    assert!(
        names(&first).iter().all(|(_, s)| s == "deployed"),
        "{:?}",
        names(&first)
    );
    // The same package with another config: each node restarts the module
    // with it, and says `deployed` after the probation, never `unchanged`
    // while the new config is still on probation.
    let started = Instant::now();
    let second = deploy(&lab, &nodes[0], "cfg", &pkg, Some(json!({"v": 2})), None, None).await;
    assert_eq!(
        names(&second),
        [
            ("c1".to_string(), "deployed".to_string()),
            ("c2".to_string(), "deployed".to_string()),
            ("c3".to_string(), "deployed".to_string())
        ]
    );
    assert!(
        started.elapsed() >= lab.deployer().probation,
        "results came before any probation could pass"
    );
    for n in nodes {
        n.node.shutdown().await;
    }
}
