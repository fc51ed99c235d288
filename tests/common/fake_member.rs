//! A stand-in cluster member on loopback that speaks the link protocol, for
//! tests that need a peer to misbehave in one precise way (answer a join
//! late, hang up before hello).

#![allow(dead_code)] // each test binary uses its own part

use conjoiner::cluster::noise::{handshake, FrameReceiver, FrameSender};
use conjoiner::cluster::protocol::{Frame, Hello, LinkMsg, Msg, ProtocolRange, Record, Status};
use conjoiner::cluster::{ClusterKey, NodeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A loopback listener for the stand-in (non-blocking, for tokio) and its
/// address.
pub fn bind() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("non-blocking");
    (listener, addr)
}

/// A real node with `key` that joins through the stand-in at `seed`.
pub fn node_joining(name: &str, key: &ClusterKey, seed: SocketAddr) -> crate::common::TestNode {
    crate::common::TestNode::launch(
        name,
        crate::common::Launch {
            env: vec![("CONJOINER_KEY".into(), key.to_base64())],
            extra: vec!["--join".into(), seed.to_string()],
            ..crate::common::Launch::default()
        },
    )
}

/// One accepted link of the stand-in, after it answered a join.
pub struct Answered {
    pub tx: FrameSender<OwnedWriteHalf>,
    pub rx: FrameReceiver<OwnedReadHalf>,
}

/// Completes the handshake on `stream` as the member `name` at `addr`,
/// says hello at once, and sends a member table listing only itself after
/// `table_after` (a busy seed answers late).
pub async fn answer_join(
    mut stream: TcpStream,
    key: &ClusterKey,
    name: &str,
    addr: SocketAddr,
    table_after: Duration,
) -> Answered {
    let transport = handshake(&mut stream, &conjoiner::cluster::Keyring::new(key.clone()), false)
        .await
        .expect("handshake");
    let (read, write) = stream.into_split();
    let mut tx = transport.sender(write);
    let rx = transport.receiver(read, 1 << 20);
    let me = Arc::new(NodeId::new(name, addr, 1, BTreeMap::new()));
    let hello = Frame::Hello(Hello {
        protocol: ProtocolRange::OURS,
        cluster: "conjoiner".into(),
        id: me.clone(),
        incarnation: 0,
        identity: None,
        admission: None,
        proof: None,
    });
    tx.send(&hello.encode()).await.expect("send hello");
    tx.flush().await.expect("flush");
    tokio::time::sleep(table_after).await;
    let table = Frame::Msgs(vec![
        Msg::Link(LinkMsg::JoinTable {
            records: vec![Record {
                id: me,
                incarnation: 0,
                status: Status::Alive,
            }],
        }),
        Msg::Link(LinkMsg::JoinDone),
    ]);
    tx.send(&table.encode()).await.expect("send table");
    tx.flush().await.expect("flush");
    Answered { tx, rx }
}

/// Runs `body` on a runtime of its own, on a thread of its own.
pub fn spawn<F>(body: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<()>
where
    F: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body())
    })
}
