//! Node identity keys, with real processes: every node keeps one in its
//! data dir, and a holder of the cluster key who says hello under another
//! node's name cannot take that name from the node that holds it.

mod common;

use common::*;
use conjoiner::cluster::node_key::NodeKey;
use conjoiner::cluster::noise::handshake_as;
use conjoiner::cluster::protocol::{Frame, Hello, LinkMsg, Msg, ProtocolRange, Refusal};
use conjoiner::cluster::{ClusterKey, Keyring, NodeId};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn addr_of(observer: &TestNode, name: &str) -> Option<String> {
    members_json(observer)
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["addr"].as_str().map(str::to_string))
}

type Tx = conjoiner::cluster::noise::FrameSender<tokio::net::tcp::OwnedWriteHalf>;
type Rx = conjoiner::cluster::noise::FrameReceiver<tokio::net::tcp::OwnedReadHalf>;

/// Opens a link to `target` as a holder of the cluster key, with the
/// identity key `mine`, and says hello as `name` from `claimed` with the
/// oldest boot, naming `mine` or no identity.
async fn say_hello(
    target: &str,
    key: &ClusterKey,
    mine: &NodeKey,
    name: &str,
    claimed: std::net::SocketAddr,
    prove: bool,
) -> (Tx, Rx) {
    let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
    let transport = handshake_as(&mut stream, &Keyring::new(key.clone()), mine, true)
        .await
        .expect("the cluster key admits the link");
    let (read, write) = stream.into_split();
    let (mut tx, rx) = (transport.sender(write), transport.receiver(read, 1 << 20));
    let hello = Frame::Hello(Hello {
        protocol: ProtocolRange::OURS,
        cluster: "conjoiner".into(),
        id: Arc::new(NodeId::new(name, claimed, 1, BTreeMap::new())),
        incarnation: 0,
        identity: prove.then(|| mine.public()),
        admission: None,
        proof: None,
    });
    tx.send(&hello.encode()).await.unwrap();
    (tx, rx)
}

/// Says hello to `target` as `name` from `claimed` with the oldest boot,
/// proving a key of its own (`identity`) or none, and answers what the
/// node sent back before it closed the link.
fn impersonate(target: &str, key: &ClusterKey, name: &str, claimed: std::net::SocketAddr, prove: bool) -> Vec<Msg> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mine = NodeKey::generate();
        let (mut tx, mut rx) = say_hello(target, key, &mine, name, claimed, prove).await;
        tx.flush().await.unwrap();
        let mut seen = Vec::new();
        let read = async {
            while let Ok(Some(frame)) = rx.recv().await {
                if let Ok(Frame::Msgs(msgs)) = Frame::decode(frame) {
                    seen.extend(msgs);
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(15), read).await;
        seen
    })
}

#[test]
fn a_hello_under_another_nodes_name_is_refused_and_the_holder_keeps_it() {
    let key = ClusterKey::generate();
    let n1 = keyed("n1", &key, None);
    let n2 = keyed("n2", &key, Some(&n1));
    let n3 = keyed("n3", &key, Some(&n1));
    wait_converged(&[&n1, &n2, &n3], 3);
    let real = addr_of(&n1, "n2").expect("n1 lists n2");

    // Each node made its identity key at start, private to its user.
    for node in [&n1, &n2, &n3] {
        let file = node.data_dir().join("node.key");
        let mode = std::fs::metadata(&file).expect("node.key exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        assert!(node.log_text().contains("made this node's identity key"));
    }

    // Each node lists the key every other one proved on a link with it,
    // the one that node itself reports.
    wait_for(Duration::from_secs(15), "every key to be proven to n1", || {
        let members = members_json(&n1);
        [&n1, &n2, &n3]
            .iter()
            .all(|node| {
                let own = node.http("GET", "/v1/health", None).1["identity"].clone();
                own.as_str().is_some_and(|k| k.starts_with("cjnode1"))
                    && members
                        .iter()
                        .any(|m| m["name"] == node.name.as_str() && m["identity"] == own)
            })
            .then_some(())
    });

    // The attacker's address: a port nobody answers on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let claimed = listener.local_addr().unwrap();
    for prove in [true, false] {
        let answer = impersonate(&n1.cluster_addr(), &key, "n2", claimed, prove);
        assert!(
            answer.iter().any(|m| matches!(m,
                Msg::Link(LinkMsg::Refused(Refusal::NameTaken { name, .. })) if &**name == "n2")),
            "proving a key: {prove}; n1 answered {answer:?}"
        );
    }
    wait_for(Duration::from_secs(15), "n1 to log the refusal", || {
        n1.log_text()
            .contains("a node proved another identity key than the one that holds this name")
            .then_some(())
    });

    // For five seconds every node still lists n2 at its own address, and
    // n2 is still in (it did not step aside).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for observer in [&n1, &n3] {
            let seen = addr_of(observer, "n2");
            assert!(
                seen.is_none() || seen.as_deref() == Some(&real),
                "{} lists n2 at {seen:?}, not {real}",
                observer.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_converged(&[&n1, &n2, &n3], 3);
    assert_eq!(addr_of(&n1, "n2").as_deref(), Some(real.as_str()));
    assert!(!n2.log_text().contains("stays out of the cluster"), "n2 stepped aside");
}

/// How many envelopes `node` dropped for `reason`, from its metrics.
fn dropped(node: &TestNode, reason: &str) -> u64 {
    counter(node, "conjoiner_envelopes_dropped_total", reason)
}

/// The value of counter `name` with label `reason` in `node`'s metrics.
fn counter(node: &TestNode, name: &str, reason: &str) -> u64 {
    let (_, metrics) = node.http("GET", "/metrics", None);
    let line = format!("{name}{{reason=\"{reason}\"}} ");
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_peer_cannot_hand_over_answers_or_envelopes_in_another_nodes_name() {
    use common::fake_member;
    use conjoiner::cluster::protocol::{Payload, TreeMsg};
    use conjoiner::wire::envelope::{Envelope, MessageType, Source};

    let key = ClusterKey::generate();
    let (listener, fake_addr) = fake_member::bind();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let k = key.clone();
    let envelope = |src: &str, kind: MessageType, answers: bool| {
        let mut e = Envelope::new(
            kind,
            Source {
                node: src.into(),
                module: "probe".into(),
            },
            "probe.topic",
            None,
            serde_json::json!({"from": src}),
        );
        e.reply_to = answers.then(uuid::Uuid::now_v7);
        bytes::Bytes::from(e.to_vec())
    };
    let forged_direct = envelope("victim", MessageType::Event, false);
    let forged_answer = envelope("victim", MessageType::DeployResult, true);
    let genuine = envelope("fake", MessageType::Event, false);
    let (send_forged, send_genuine) = (std::sync::mpsc::channel::<()>(), std::sync::mpsc::channel::<()>());
    let (go_forged, go_genuine) = (send_forged.1, send_genuine.1);
    fake_member::spawn(move || async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let fake_member::Answered { mut tx, rx: _rx } =
            fake_member::answer_join(stream, &k, "fake", fake_addr, Duration::ZERO).await;
        let _ = tokio::task::spawn_blocking(move || go_forged.recv()).await;
        tx.send(&Frame::Direct(forged_direct).encode()).await.unwrap();
        let gossip = Frame::Msgs(vec![Msg::Tree(TreeMsg::Gossip {
            id: 7,
            hops: 0,
            payload: Payload::Envelope(forged_answer),
        })]);
        tx.send(&gossip.encode()).await.unwrap();
        tx.flush().await.unwrap();
        let _ = tokio::task::spawn_blocking(move || go_genuine.recv()).await;
        tx.send(&Frame::Direct(genuine).encode()).await.unwrap();
        tx.flush().await.unwrap();
        let _ = sent_tx.send(());
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let node = common::fake_member::node_joining("n1", &key, fake_addr);
    wait_for(Duration::from_secs(20), "n1 to list the fake member", || {
        alive_names(&node).contains(&"fake".to_string()).then_some(())
    });
    let before = dropped(&node, "unauthorized");
    send_forged.0.send(()).unwrap();
    wait_for(Duration::from_secs(15), "both forgeries to be dropped", || {
        (dropped(&node, "unauthorized") >= before + 2).then_some(())
    });
    let log = node.log_text();
    assert!(
        log.contains("a direct envelope from `fake` claims to come from `victim`; dropped"),
        "{log}"
    );
    assert!(
        log.contains("an answer comes straight from the node that gives it"),
        "{log}"
    );
    // An envelope in its own name goes through, and is not counted.
    send_genuine.0.send(()).unwrap();
    sent_rx.recv_timeout(Duration::from_secs(15)).unwrap();
    wait_for(Duration::from_secs(15), "the genuine envelope to arrive", || {
        node.log_text()
            .lines()
            .any(|l| l.contains("received from cluster") && l.contains("from=fake"))
            .then_some(())
    });
    assert_eq!(dropped(&node, "unauthorized"), before + 2);
}

/// Finds the object that describes this node's own record (`me`) in a
/// debug dump, wherever the dump nests it.
fn own_record(v: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(me) = map.get("me").filter(|m| m["name"] == name && m.get("boot").is_some()) {
                return Some(me.clone());
            }
            map.values().find_map(|v| own_record(v, name))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| own_record(v, name)),
        _ => None,
    }
}

/// How many peers' cluster inputs `node` refused for `reason`.
fn refused_input(node: &TestNode, reason: &str) -> u64 {
    counter(node, "conjoiner_cluster_input_refused_total", reason)
}

/// A member in its own name, `evil`, with its own identity key and the
/// cluster key, as a taken host is: it says hello to `target`, sends it
/// `lies` in one frame, and holds the link for three seconds.
fn lie_to(target: &TestNode, key: &ClusterKey, lies: Vec<Msg>) -> std::thread::JoinHandle<()> {
    let target = target.cluster_addr();
    let key = key.clone();
    std::thread::spawn(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let claimed = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mine = NodeKey::generate();
            let (mut tx, _rx) = say_hello(&target, &key, &mine, "evil", claimed, true).await;
            tx.send(&Frame::Msgs(lies).encode()).await.unwrap();
            tx.flush().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
    })
}

/// A taken host sent one gossip update with a healthy node's record and
/// status `left`, and every node listed it as left for good; a `dead` at
/// the top incarnation was as final, and a status report in another
/// node's name was shown as its own. Records and reports about a node are
/// now taken only as that node's own signature says them.
#[test]
fn a_forged_leave_or_death_does_not_shut_a_healthy_node_out() {
    use conjoiner::cluster::protocol::{Items, Payload, Record, Status, SyncMsg, TreeMsg, SET_MEMBERS};

    let key = ClusterKey::generate();
    let n1 = keyed("n1", &key, None);
    let n2 = keyed("n2", &key, Some(&n1));
    let n3 = keyed("n3", &key, Some(&n1));
    wait_converged(&[&n1, &n2, &n3], 3);
    let (_, dump) = n2.http("GET", "/v1/debug/state", None);
    let me = own_record(&dump, "n2").unwrap_or_else(|| panic!("n2's own record in {dump}"));
    let victim = Arc::new(NodeId::new(
        "n2",
        me["addr"].as_str().unwrap().parse().unwrap(),
        me["boot"].as_u64().unwrap(),
        BTreeMap::new(),
    ));
    let incarnation = me["incarnation"].as_u64().unwrap() as u32;
    let forged = |incarnation, status| Record {
        id: victim.clone(),
        incarnation,
        status,
    };
    let lies = vec![
        Msg::Tree(TreeMsg::Gossip {
            id: 0x1eff,
            hops: 0,
            payload: Payload::Update {
                record: forged(incarnation, Status::Left),
                accuser: None,
            },
        }),
        Msg::Sync(SyncMsg::Items {
            set: SET_MEMBERS,
            items: Items::Records(vec![forged(u32::MAX, Status::Dead)]),
        }),
        // And a status report in n2's name, unsealed.
        Msg::Sync(SyncMsg::Items {
            set: conjoiner::cluster::protocol::SET_STATES,
            items: Items::States(vec![Arc::new(conjoiner::cluster::protocol::StateRecord {
                name: "n2".into(),
                boot: victim.boot,
                version: u64::MAX / 2,
                data: bytes::Bytes::from_static(b"{\"modules\":{\"backdoor\":{}}}"),
            })]),
        }),
    ];

    // The attacker says hello to n1 and then lies about n2.
    let attacker = lie_to(&n1, &key, lies);
    wait_for(Duration::from_secs(15), "n1 to refuse the forged records", || {
        (refused_input(&n1, "record_unproven") >= 3).then_some(())
    });
    attacker.join().unwrap();
    assert!(
        n1.log_text()
            .contains("refused a record about a member that its member did not sign"),
        "{}",
        n1.log_text()
    );
    // For five seconds n2 is alive everywhere.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for observer in [&n1, &n2, &n3] {
            assert_eq!(
                member_status(observer, "n2").as_deref(),
                Some("alive"),
                "n2 at {}",
                observer.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A taken host sent 2,000 invented "alive" members in one 70 KB frame,
/// and the three real nodes answered requests only from themselves for
/// minutes. A link now introduces at most a budget of new members (a
/// burst, then a rate), and the rest is dropped, counted and logged.
#[test]
fn two_thousand_invented_members_in_one_frame_get_only_a_links_budget_in() {
    const BURST: usize = 512;
    const FAKES: usize = 2_000;
    // Past its first moments, when a node takes all it hears (see
    // `new_members_grace`): the tests' nodes are new.
    let (_dir, key, [n1, n2, mut n3]) = three_configured("[membership]\nnew_members_grace = \"1ms\"\n");

    let attacker = lie_to(&n1, &key, invented_members(FAKES));
    wait_for(Duration::from_secs(15), "n1 to drop the news over the budget", || {
        (refused_input(&n1, "news_over_budget") >= (FAKES - BURST) as u64).then_some(())
    });
    attacker.join().unwrap();
    assert!(
        n1.log_text()
            .contains("a peer brings more new members than its link may introduce; dropped the news"),
        "{}",
        n1.log_text()
    );
    for node in [&n1, &n2, &n3] {
        let fakes = invented_held(node);
        assert!(fakes <= BURST, "{} holds {fakes} invented members", node.name);
        let (_, health) = node.http("GET", "/v1/health", None);
        assert_eq!(health["status"], "ok", "{} {health}", node.name);
    }

    // The cluster is not split: a request to all, asked while the invented
    // members live, is answered by every real node (it once got only its
    // asker's reply for minutes), and the invented ones are named silent.
    let invented = invented_held(&n2);
    let answer = wait_for(Duration::from_secs(30), "n2's request to reach all real nodes", || {
        let (_, answer) = cli_json(&n2, &["request", "mod.echo", "{}", "--timeout", "5s"]);
        let repliers = answer["replies"].as_array().map_or_else(Vec::new, |replies| {
            replies
                .iter()
                .filter_map(|r| r["node"].as_str().map(str::to_string))
                .collect()
        });
        ["n1", "n2", "n3"]
            .iter()
            .all(|real| repliers.iter().any(|r| r == real))
            .then_some(answer)
    });
    // Each invented member n2 holds is named: silent while it lives
    // (`missing`), or not asked once it is dead (`absent`).
    let named = |list: &str| {
        answer[list].as_array().map_or(0, |names| {
            names
                .iter()
                .filter(|m| {
                    let name = m.as_str().or_else(|| m["node"].as_str());
                    name.is_some_and(|n| n.starts_with("fake-"))
                })
                .count()
        })
    };
    assert!(
        invented == 0 || named("missing") + named("absent") > 0,
        "n2 holds {invented} invented members, and the answer names none: {answer}"
    );

    // The invented members surround the real nodes on every ring; a real
    // node that dies among them is still seen dead, not listed alive
    // until they have all died (529 s on the in-process network, before
    // accusers passed over their suspects).
    n3.kill9();
    wait_for(Duration::from_secs(90), "n1 and n2 to list the killed n3 dead", || {
        [&n1, &n2]
            .iter()
            .all(|n| member_status(n, "n3").as_deref() == Some("dead"))
            .then_some(())
    });
}

/// Three nodes sharing a new cluster key, each started with the config
/// file `config`, converged (the directory holds the file).
fn three_configured(config: &str) -> (tempfile::TempDir, ClusterKey, [TestNode; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conjoiner.toml");
    std::fs::write(&file, config).unwrap();
    let flags = |seed: Option<&TestNode>| {
        let mut extra = vec!["--config".to_string(), file.to_str().unwrap().to_string()];
        if let Some(seed) = seed {
            extra.extend(["--join".to_string(), seed.cluster_addr()]);
        }
        extra
    };
    let key = ClusterKey::generate();
    let n1 = with_key("n1", &key, flags(None));
    let n2 = with_key("n2", &key, flags(Some(&n1)));
    let n3 = with_key("n3", &key, flags(Some(&n1)));
    wait_converged(&[&n1, &n2, &n3], 3);
    (dir, key, [n1, n2, n3])
}

/// One table exchange of `n` invented "alive" members, `fake-0` onwards.
fn invented_members(n: usize) -> Vec<Msg> {
    use conjoiner::cluster::protocol::{Items, Record, Status, SyncMsg, SET_MEMBERS};
    let fakes: Vec<Record> = (0..n)
        .map(|i| Record {
            id: Arc::new(NodeId::new(
                &format!("fake-{i}"),
                format!("127.0.0.1:{}", 40_000 + i).parse().unwrap(),
                1,
                BTreeMap::new(),
            )),
            incarnation: 0,
            status: Status::Alive,
        })
        .collect();
    vec![Msg::Sync(SyncMsg::Items {
        set: SET_MEMBERS,
        items: Items::Records(fakes),
    })]
}

/// How many invented members `conjoiner members` lists at `node`.
fn invented_held(node: &TestNode) -> usize {
    let (code, members) = cli_json(node, &["members"]);
    assert_eq!(code, 0, "{members}");
    members.as_array().map_or(0, |m| {
        m.iter()
            .filter(|m| m["name"].as_str().is_some_and(|n| n.starts_with("fake-")))
            .count()
    })
}

/// The per-link budget slows a flood; the table's bound caps what any
/// flood, however long, can hold. Here nodes in their first moments (they
/// take all news) meet 2,000 invented members with a bound of 100.
#[test]
fn a_node_holds_no_more_members_than_its_tables_bound() {
    const BOUND: usize = 100;
    const FAKES: usize = 2_000;
    let (_dir, key, [n1, n2, n3]) = three_configured(&format!("[membership]\nmax_members = {BOUND}\n"));

    let attacker = lie_to(&n1, &key, invented_members(FAKES));
    wait_for(
        Duration::from_secs(15),
        "n1 to refuse the members it has no room for",
        || (refused_input(&n1, "table_full") >= (FAKES - (BOUND - 3)) as u64).then_some(()),
    );
    attacker.join().unwrap();
    assert!(
        n1.log_text().contains("the member table is full of live members"),
        "{}",
        n1.log_text()
    );
    for node in [&n1, &n2, &n3] {
        let fakes = invented_held(node);
        assert!(fakes <= BOUND - 3, "{} holds {fakes} invented members", node.name);
        let (_, health) = node.http("GET", "/v1/health", None);
        assert_eq!(health["status"], "ok", "{} {health}", node.name);
    }
    // The real members stay listed alive everywhere.
    for node in [&n1, &n2, &n3] {
        let alive = alive_names(node);
        for name in ["n1", "n2", "n3"] {
            assert!(alive.iter().any(|n| n == name), "{} lists {alive:?}", node.name);
        }
    }
}
