//! Whole nodes — actors, modules, the ClusterBridge driving the cluster
//! core — linked in one process over the in-memory transport: membership,
//! gathered requests with a silent node, a partition that heals, and a
//! node with the wrong key. No sockets, no root, a few seconds.

use conjoiner::actors::cluster_bus::{
    AttachTransponder, Broadcast, ClusterStatus, FromCluster, ListMembers, MemberStatus,
};
use conjoiner::actors::transponder::RequestCluster;
use conjoiner::cluster::memory::MemoryNetwork;
use conjoiner::cluster::{ClusterConfig, ClusterKey};
use conjoiner::node::{NetworkConfig, Node, NodeConfig, CLUSTER_ADDR_FILE};
use conjoiner::wire::{Envelope, MessageType, Source};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Started {
    node: Node,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(net: &MemoryNetwork, name: &str, key: &ClusterKey, join: Option<SocketAddr>) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig {
        name: name.into(),
        cluster: "mem".into(),
        tags: [("n".to_string(), name.to_string())].into(),
        data_dir: dir.path().to_path_buf(),
        transponder: Default::default(),
        deployer: Default::default(),
        monitor: Default::default(),
        network: Some(NetworkConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            advertise: None,
            join: join.map(|a| a.to_string()).into_iter().collect(),
            mdns: false,
            key_file: None,
            key_env: Some(key.to_base64()),
            require_admission: false,
            join_token: None,
            timing: ClusterConfig::local(),
            memory: Some(net.clone()),
        }),
    })
    .await
    .expect("node starts");
    let addr = std::fs::read_to_string(dir.path().join(CLUSTER_ADDR_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Started { node, addr, _dir: dir }
}

async fn statuses(node: &Node) -> Vec<(String, MemberStatus)> {
    node.handle
        .ctx
        .cluster
        .members
        .send(ListMembers)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.status))
        .collect()
}

/// Waits until `check` holds on every node, or panics with what they list.
async fn until(nodes: &[&Started], what: &str, limit: Duration, check: impl Fn(&[(String, MemberStatus)]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        let mut seen = Vec::new();
        for n in nodes {
            let s = statuses(&n.node).await;
            all &= check(&s);
            seen.push(s);
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "not {what} within {limit:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(list: &[(String, MemberStatus)], name: &str) -> Option<MemberStatus> {
    list.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
}

#[actix_rt::test]
async fn nodes_in_one_process_form_a_cluster_answer_requests_and_survive_a_partition() {
    let net = MemoryNetwork::new(Duration::from_millis(1));
    let key = ClusterKey::generate();
    let first = start(&net, "m1", &key, None).await;
    let mut nodes = vec![first];
    for i in 2..=5 {
        let seed = nodes[0].addr;
        nodes.push(start(&net, &format!("m{i}"), &key, Some(seed)).await);
    }
    let all: Vec<&Started> = nodes.iter().collect();
    until(&all, "five alive everywhere", Duration::from_secs(10), |s| {
        s.iter().filter(|(_, st)| *st == MemberStatus::Alive).count() == 5
    })
    .await;

    // A request is gathered from every node.
    let transponder = nodes[0].node.handle.transponder().unwrap();
    let ask = |timeout: Duration| RequestCluster::new("test", "mod.echo", None, json!({"ping": 1}), timeout);
    let outcome = transponder.send(ask(Duration::from_secs(5))).await.unwrap().unwrap();
    let mut answered: Vec<&str> = outcome.replies.iter().map(|r| r.node.as_str()).collect();
    answered.sort();
    assert_eq!(answered, ["m1", "m2", "m3", "m4", "m5"]);
    assert!(outcome.missing.is_empty());
    assert!(outcome.replies.iter().all(|r| r.body == json!({"ping": 1})));

    // Cut m5 off: it is named in `missing` rather than counted a success,
    // and then seen dead.
    let rest: Vec<SocketAddr> = nodes[..4].iter().map(|n| n.addr).collect();
    net.partition(&rest, &[nodes[4].addr], true);
    let outcome = transponder
        .send(ask(Duration::from_millis(500)))
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.missing.contains(&"m5".to_string()), "{outcome:?}");
    assert!(!outcome.replies.iter().any(|r| r.node == "m5"));
    until(&all[..4], "m5 dead", Duration::from_secs(15), |s| {
        status_of(s, "m5") == Some(MemberStatus::Dead)
    })
    .await;
    until(
        &all[4..],
        "the others dead on m5's side",
        Duration::from_secs(15),
        |s| s.iter().filter(|(_, st)| *st == MemberStatus::Dead).count() == 4,
    )
    .await;

    // Heal: everyone alive again, by itself.
    net.heal();
    until(&all, "healed", Duration::from_secs(20), |s| {
        s.iter().filter(|(_, st)| *st == MemberStatus::Alive).count() == 5
    })
    .await;
    let outcome = transponder.send(ask(Duration::from_secs(5))).await.unwrap().unwrap();
    assert_eq!(outcome.replies.len(), 5, "{outcome:?}");
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_node_with_another_key_cannot_join() {
    let net = MemoryNetwork::new(Duration::ZERO);
    let key = ClusterKey::generate();
    let a = start(&net, "k1", &key, None).await;
    let b = start(&net, "k2", &key, Some(a.addr)).await;
    let stranger = start(&net, "k3", &ClusterKey::generate(), Some(a.addr)).await;
    until(&[&a, &b], "two alive", Duration::from_secs(10), |s| {
        s.iter().filter(|(_, st)| *st == MemberStatus::Alive).count() == 2
    })
    .await;
    // Give the stranger time to try (its seed task retries).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        statuses(&stranger.node).await,
        vec![("k3".to_string(), MemberStatus::Alive)]
    );
    assert!(status_of(&statuses(&a.node).await, "k3").is_none());
    let metrics = a.node.handle.ctx.metrics.render();
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("conjoiner_link_handshake_failures_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "the failed handshakes are counted:\n{metrics}");
    for n in [a, b, stranger] {
        n.node.shutdown().await;
    }
}

/// A stand-in Transponder on its own thread that takes 20 ms per envelope
/// and holds at most 8 in its mailbox.
struct SlowSink {
    got: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl actix::Actor for SlowSink {
    type Context = actix::Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
    }
}

impl actix::Handler<FromCluster> for SlowSink {
    type Result = ();
    fn handle(&mut self, FromCluster(envelope): FromCluster, _ctx: &mut Self::Context) {
        // Its own arbiter thread: blocking here holds only this actor.
        std::thread::sleep(Duration::from_millis(20));
        // Only the flood is counted (a node's status report may arrive too).
        if envelope.dst.address == "flood.test" {
            self.got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[actix_rt::test]
async fn a_transponder_that_cannot_keep_up_loses_envelopes_counted_not_queued_without_bound() {
    use actix::Actor as _;
    let net = MemoryNetwork::new(Duration::from_millis(1));
    let key = ClusterKey::generate();
    let a = start(&net, "q1", &key, None).await;
    let b = start(&net, "q2", &key, Some(a.addr)).await;
    until(&[&a, &b], "both alive", Duration::from_secs(10), |s| {
        s.iter().filter(|(_, st)| *st == MemberStatus::Alive).count() == 2
    })
    .await;
    // Each holds the other's status report before the flood, so no report
    // is among what the sink may drop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.node.handle.status.len() < 2 || a.node.handle.status.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two never held each other's status report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let arbiter = actix::Arbiter::new();
    let counter = got.clone();
    let sink = SlowSink::start_in_arbiter(&arbiter.handle(), move |_| SlowSink { got: counter });
    b.node
        .handle
        .ctx
        .cluster
        .attach
        .send(AttachTransponder(sink.recipient()))
        .await
        .unwrap();

    let sent = 300;
    for i in 0..sent {
        let envelope = Envelope::new(
            MessageType::Event,
            Source {
                node: "q1".into(),
                module: "test".into(),
            },
            "flood.test".to_string(),
            None,
            json!({"i": i}),
        );
        a.node
            .handle
            .ctx
            .cluster
            .broadcast
            .send(Broadcast(envelope))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let summary = b.node.handle.ctx.cluster.status.send(ClusterStatus).await.unwrap();
        let delivered = got.load(std::sync::atomic::Ordering::Relaxed) as u64;
        if summary.dropped_overloaded > 0 && summary.dropped_overloaded + delivered >= sent {
            break summary.dropped_overloaded;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s: {delivered} delivered, {} dropped of {sent}",
            summary.dropped_overloaded
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivered = got.load(std::sync::atomic::Ordering::Relaxed) as u64;
    assert_eq!(
        dropped + delivered,
        sent,
        "every envelope was either delivered or counted as dropped"
    );
    assert!(delivered >= 8, "the mailbox's worth still got through ({delivered})");
    arbiter.stop();
}
