//! A node built in this process through the library, to look inside the
//! Transponder: stamping, lamport clock, duplicates, restarts.

use conjoiner::actors::cluster_bus::FromCluster;
use conjoiner::actors::event_tap::{ReaderWants, TapStream};
use conjoiner::actors::supervisor::ListModules;
use conjoiner::actors::transponder::{PublishRefused, PublishToCluster, RequestCluster};
use conjoiner::actors::{ModuleState, StopModule, TransponderConfig};
use conjoiner::node::{Node, NodeConfig};
use conjoiner::wire::{Envelope, MessageType, Source};
use futures_util::StreamExt as _;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn start(name: &str, dir: &tempfile::TempDir) -> Node {
    Node::start(NodeConfig {
        name: name.into(),
        cluster: "test".into(),
        tags: BTreeMap::from([("dc".to_string(), "ams".to_string())]),
        data_dir: dir.path().to_path_buf(),
        transponder: TransponderConfig::default(),
        deployer: Default::default(),
        monitor: Default::default(),
        network: None,
    })
    .await
    .expect("node starts")
}

/// The node's tap, read back into envelopes from its event stream frames.
struct Tap {
    stream: TapStream,
    bytes: Vec<u8>,
}

impl Tap {
    fn of(node: &Node) -> Tap {
        let wants = ReaderWants {
            bodies: true,
            ..ReaderWants::default()
        };
        Tap {
            stream: node.handle.tap.subscribe(wants).expect("room on the tap"),
            bytes: Vec::new(),
        }
    }

    async fn next(&mut self) -> Envelope {
        loop {
            if let Some(end) = self.bytes.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.bytes.drain(..end + 2).collect();
                let frame = String::from_utf8(frame).expect("UTF-8 frames");
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("a data line");
                return serde_json::from_str(data).expect("an envelope");
            }
            // A piece may end inside a character: bytes until the frame is whole.
            let piece = self.stream.next().await.expect("the tap is open");
            self.bytes.extend_from_slice(&piece);
        }
    }
}

/// Waits for the next envelope on the tap that satisfies `pred`.
async fn next_where(rx: &mut Tap, pred: impl Fn(&Envelope) -> bool) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let env = rx.next().await;
            if pred(&env) {
                return env;
            }
        }
    })
    .await
    .expect("envelope within 10 s")
}

fn from_peer(address: &str, lamport: u64, target: Option<&str>) -> Envelope {
    let mut env = Envelope::new(
        MessageType::Event,
        Source {
            node: "peer-9".into(),
            module: "test".into(),
        },
        address,
        target.map(str::to_string),
        json!({"from": "peer"}),
    );
    env.lamport = lamport;
    env
}

/// Publishes an event as a module would, and answers it as stamped.
async fn publish(node: &Node, tap: &mut Tap, n: u32) -> Envelope {
    let transponder = node.handle.transponder().unwrap();
    let id = transponder
        .send(PublishToCluster {
            kind: MessageType::Event,
            module: "test".into(),
            address: "stamp.topic".into(),
            target: None,
            body: json!({"n": n}),
        })
        .await
        .unwrap()
        .unwrap();
    next_where(tap, |e| e.id == id).await
}

#[actix_rt::test]
async fn envelopes_are_stamped_and_the_lamport_clock_follows_peers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start("inproc-1", &dir).await;
    let mut tap = Tap::of(&node);

    let first = publish(&node, &mut tap, 1).await;
    let second = publish(&node, &mut tap, 2).await;
    assert_eq!(first.src.node, "inproc-1");
    assert_eq!(first.src.module, "test");
    assert!(second.lamport > first.lamport, "the lamport clock grows");
    let age = conjoiner::wire::now_ms().abs_diff(second.ts);
    assert!(age < 60_000, "ts is the current time in ms");

    // A peer far ahead pulls our clock past its own.
    let transponder = node.handle.transponder().unwrap();
    transponder
        .send(FromCluster(from_peer("anything", 1_000, None)))
        .await
        .unwrap();
    let after = publish(&node, &mut tap, 3).await;
    assert!(
        after.lamport > 1_000,
        "lamport = max(own, received) + 1, got {}",
        after.lamport
    );

    // A hostile or broken peer at the end of the clock's range does not
    // overflow it (it used to panic the Transponder in debug builds).
    transponder
        .send(FromCluster(from_peer("anything", u64::MAX, None)))
        .await
        .unwrap();
    let last = publish(&node, &mut tap, 4).await;
    assert_eq!(last.lamport, u64::MAX, "the clock saturates");
    assert!(
        node.handle.transponder().is_some_and(|t| t == transponder),
        "the same Transponder runs"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn duplicates_and_envelopes_for_other_nodes_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = start("inproc-2", &dir).await;
    let mut tap = Tap::of(&node);
    let transponder = node.handle.transponder().unwrap();

    let ours = from_peer("dup.topic", 1, Some("tag.dc=ams"));
    let not_ours = from_peer("dup.topic", 1, Some("tag.dc=fra"));
    let marker = from_peer("dup.topic", 1, None);
    transponder.send(FromCluster(ours.clone())).await.unwrap();
    transponder.send(FromCluster(ours.clone())).await.unwrap();
    transponder.send(FromCluster(not_ours.clone())).await.unwrap();
    transponder.send(FromCluster(marker.clone())).await.unwrap();

    // Everything up to the marker, in order.
    let mut seen = Vec::new();
    loop {
        let env = next_where(&mut tap, |e| e.dst.address == "dup.topic").await;
        seen.push(env.id);
        if env.id == marker.id {
            break;
        }
    }
    assert_eq!(seen, [ours.id, marker.id], "one copy of ours, none of the other node's");
    node.shutdown().await;
}

#[actix_rt::test]
async fn orders_as_envelopes_are_refused_whether_published_here_or_sent_by_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let node = start("inproc-5", &dir).await;
    let mut tap = Tap::of(&node);
    let transponder = node.handle.transponder().unwrap();

    for kind in [MessageType::Deploy, MessageType::Undeploy] {
        let refused = transponder
            .send(PublishToCluster {
                kind: kind.clone(),
                module: "test".into(),
                address: "mod.deployer".into(),
                target: None,
                body: json!({"name": "echo"}),
            })
            .await
            .unwrap();
        assert_eq!(refused, Err(PublishRefused::Order(kind)));
    }
    // A peer's undeploy of echo never reaches the ModBus; the marker after it does.
    let mut order = from_peer("mod.deployer", 1, None);
    order.kind = MessageType::Undeploy;
    order.body = json!({"name": "echo"});
    let marker = from_peer("orders.marker", 2, None);
    transponder.send(FromCluster(order.clone())).await.unwrap();
    transponder.send(FromCluster(marker.clone())).await.unwrap();
    let first = next_where(&mut tap, |e| e.id == order.id || e.id == marker.id).await;
    assert_eq!(first.id, marker.id, "the peer's order was delivered on the ModBus");

    let metrics = node.handle.ctx.metrics.render();
    assert!(
        metrics.contains("conjoiner_envelopes_dropped_total{reason=\"unauthorized\"} 3"),
        "each refusal counted: {metrics}"
    );
    let modules = node.handle.ctx.supervisor.send(ListModules).await.unwrap();
    let echo = modules.iter().find(|m| m.name == "echo").expect("echo is listed");
    assert_eq!(echo.state, ModuleState::Running);
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_transponder_that_dies_is_restarted_and_reattached() {
    let dir = tempfile::tempdir().unwrap();
    let node = start("inproc-3", &dir).await;
    let old = node.handle.transponder().unwrap();
    // Stop it behind the supervisor's back: an unexpected exit.
    old.send(StopModule).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some(t) = node.handle.transponder() {
            if t != old {
                break t;
            }
        }
        assert!(Instant::now() < deadline, "transponder was not restarted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let modules = node.handle.ctx.supervisor.send(ListModules).await.unwrap();
    let info = modules.iter().find(|m| m.name == "transponder").unwrap();
    assert_eq!(info.state, ModuleState::Running);
    assert_eq!(info.restarts, 1);

    // The new one is attached to the cluster bus: a round trip works.
    let outcome = new
        .send(RequestCluster::new(
            "test",
            "mod.echo",
            None,
            json!({"after": "restart"}),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.replies.len(), 1);
    assert_eq!(outcome.replies[0].body, json!({"after": "restart"}));
    assert!(outcome.missing.is_empty());
    node.shutdown().await;
}

/// `GET path` on the node's control API; answers the status code.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = addr.to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_node_whose_transponder_failed_for_good_says_it_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let node = start("inproc-4", &dir).await;
    // The control API, as the agent starts it.
    let (server, api) = conjoiner::api::serve(
        node.handle.clone(),
        "127.0.0.1:0".parse().unwrap(),
        conjoiner::node::DEFAULT_MAX_BODY,
        "token".into(),
    )
    .unwrap();
    assert_eq!(node.handle.core_fault().await, None);
    assert_eq!(http_status(api, "/v1/health").await, 200);
    // Stop it behind the supervisor's back until its restarts are used up
    // (five within 60 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let modules = node.handle.ctx.supervisor.send(ListModules).await.unwrap();
        let info = modules.iter().find(|m| m.name == "transponder").unwrap().clone();
        if info.state == ModuleState::Failed {
            break;
        }
        assert!(Instant::now() < deadline, "the transponder never failed: {info:?}");
        if info.state == ModuleState::Running {
            if let Some(t) = node.handle.transponder() {
                let _ = t.send(StopModule).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fault = node.handle.core_fault().await.expect("a failed transponder is a fault");
    assert!(fault.contains("transponder module failed"), "{fault}");
    assert_eq!(http_status(api, "/v1/health").await, 503, "health must not say ok");
    node.shutdown().await;
    server.stop(true).await;
}
