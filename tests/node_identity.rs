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

/// Says hello to `target` as `name` from `claimed` with the oldest boot,
/// proving a key of its own (`identity`) or none, and answers what the
/// node sent back before it closed the link.
fn impersonate(target: &str, key: &ClusterKey, name: &str, claimed: std::net::SocketAddr, prove: bool) -> Vec<Msg> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let mine = NodeKey::generate();
        let transport = handshake_as(&mut stream, &Keyring::new(key.clone()), &mine, true)
            .await
            .expect("the cluster key admits the link");
        let (read, write) = stream.into_split();
        let (mut tx, mut rx) = (transport.sender(write), transport.receiver(read, 1 << 20));
        let hello = Frame::Hello(Hello {
            protocol: ProtocolRange::OURS,
            cluster: "conjoiner".into(),
            id: Arc::new(NodeId::new(name, claimed, 1, BTreeMap::new())),
            incarnation: 0,
            identity: prove.then(|| mine.public()),
            admission: None,
        });
        tx.send(&hello.encode()).await.unwrap();
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
