//! An in-process network for tests: whole nodes (actors and all) link to
//! each other through channels, with a latency, cut links and key checks,
//! and without sockets, root or network namespaces.
//!
//! A frame sent while its link is cut waits until the cut heals (TCP would
//! retransmit it); dialing across a cut fails after the dial timeout, and
//! dialing an address nobody listens on is refused at once.

use super::core::Direction;
use super::link::{next_link_id, DownReason, FailedAt, LinkEvent, LinkHandle, LinkSetup, Outgoing};
use super::transport::Transport;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Default)]
struct Net {
    listeners: HashMap<SocketAddr, LinkSetup>,
    /// Address pairs that cannot reach each other, both ways.
    cuts: HashSet<(SocketAddr, SocketAddr)>,
    latency: Duration,
    next_port: u16,
}

/// The network: cheap to clone; every node of a test shares one.
#[derive(Clone, Default)]
pub struct MemoryNetwork(Arc<Mutex<Net>>);

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryNetwork")
    }
}

impl MemoryNetwork {
    pub fn new(latency: Duration) -> MemoryNetwork {
        let net = MemoryNetwork::default();
        if let Ok(mut n) = net.0.lock() {
            n.latency = latency;
        }
        net
    }

    /// A transport with a fresh address on this network.
    pub fn transport(&self) -> MemoryTransport {
        let port = match self.0.lock() {
            Ok(mut n) => {
                n.next_port += 1;
                n.next_port
            }
            Err(_) => 0,
        };
        MemoryTransport {
            net: self.clone(),
            addr: SocketAddr::from(([10, 77, 0, 1], 10_000 + port)),
        }
    }

    /// Cuts (or heals) every path between the two groups of addresses.
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr], cut: bool) {
        if let Ok(mut n) = self.0.lock() {
            for x in a {
                for y in b {
                    for pair in [(*x, *y), (*y, *x)] {
                        if cut {
                            n.cuts.insert(pair);
                        } else {
                            n.cuts.remove(&pair);
                        }
                    }
                }
            }
        }
    }

    /// Heals every cut.
    pub fn heal(&self) {
        if let Ok(mut n) = self.0.lock() {
            n.cuts.clear();
        }
    }

    fn is_cut(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.0.lock().map(|n| n.cuts.contains(&(a, b))).unwrap_or(false)
    }

    fn latency(&self) -> Duration {
        self.0.lock().map(|n| n.latency).unwrap_or_default()
    }
}

/// One node's place on a [`MemoryNetwork`].
pub struct MemoryTransport {
    net: MemoryNetwork,
    addr: SocketAddr,
}

/// Unregisters a listener when its task ends.
struct Registration {
    net: MemoryNetwork,
    addr: SocketAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut n) = self.net.0.lock() {
            n.listeners.remove(&self.addr);
        }
    }
}

impl Transport for MemoryTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn listen(&self, setup: LinkSetup) -> tokio::task::JoinHandle<()> {
        if let Ok(mut n) = self.net.0.lock() {
            n.listeners.insert(self.addr, setup);
        }
        let registration = Registration {
            net: self.net.clone(),
            addr: self.addr,
        };
        tokio::spawn(async move {
            let _registration = registration;
            std::future::pending::<()>().await;
        })
    }

    fn dial(&self, remote: SocketAddr, timeout: Duration, setup: LinkSetup) {
        let net = self.net.clone();
        let local = self.addr;
        tokio::spawn(async move {
            let fail = |reason: String, stage: FailedAt| {
                setup.events.do_send(LinkEvent::Failed {
                    remote,
                    direction: Direction::Outbound,
                    reason,
                    stage,
                })
            };
            if net.is_cut(local, remote) {
                tokio::time::sleep(timeout).await;
                return fail(format!("connect timed out after {timeout:?}"), FailedAt::Connect);
            }
            let peer = net.0.lock().ok().and_then(|n| n.listeners.get(&remote).cloned());
            let Some(peer) = peer else {
                return fail("Connection refused (os error 111)".into(), FailedAt::Connect);
            };
            tokio::time::sleep(net.latency() * 3).await;
            let (theirs, ours) = (peer.keys.current(), setup.keys.current());
            if !ours.ids().iter().any(|id| theirs.by_id(id).is_some()) {
                peer.events.do_send(LinkEvent::Failed {
                    remote: local,
                    direction: Direction::Inbound,
                    reason: "handshake failed: decrypt error (wrong cluster key, or not a conjoiner node)".into(),
                    stage: FailedAt::HandshakeRefused,
                });
                // Over TCP the dialer finishes its half and sees the peer
                // hang up before hello, which it reports as a refusal too.
                return fail(
                    "the peer closed the connection during the handshake".into(),
                    FailedAt::HandshakeRefused,
                );
            }
            let (a_id, b_id) = (next_link_id(), next_link_id());
            let (a_close, a_closed) = oneshot::channel();
            let (b_close, b_closed) = oneshot::channel();
            let (a_start, a_outgoing) = oneshot::channel::<Outgoing>();
            let (b_start, b_outgoing) = oneshot::channel::<Outgoing>();
            // A pump per direction: what one side queues arrives at the other.
            let a_pump = tokio::spawn(pump(
                net.clone(),
                (local, remote),
                a_outgoing,
                a_closed,
                peer.clone(),
                b_id,
            ));
            let b_pump = tokio::spawn(pump(
                net.clone(),
                (remote, local),
                b_outgoing,
                b_closed,
                setup.clone(),
                a_id,
            ));
            // Each side learns the other's identity, as a handshake shows it.
            let (a, a_out) = LinkHandle::new(a_id, remote, Direction::Outbound, a_pump.abort_handle(), a_close);
            let a = a.with_peer_static(peer.node_key.public().noise_static());
            let (b, b_out) = LinkHandle::new(b_id, local, Direction::Inbound, b_pump.abort_handle(), b_close);
            let b = b.with_peer_static(setup.node_key.public().noise_static());
            let _ = a_start.send(a_out);
            let _ = b_start.send(b_out);
            peer.events.do_send(LinkEvent::Up(b));
            setup.events.do_send(LinkEvent::Up(a));
        });
    }
}

/// Carries one side's frames to the other side's bridge, in order.
async fn pump(
    net: MemoryNetwork,
    (from, to): (SocketAddr, SocketAddr),
    outgoing: oneshot::Receiver<Outgoing>,
    mut closed: oneshot::Receiver<()>,
    receiver: LinkSetup,
    receiver_link: u64,
) {
    let Ok(mut outgoing) = outgoing.await else { return };
    loop {
        let frame = tokio::select! {
            biased;
            f = outgoing.next() => f,
            _ = &mut closed => None,
        };
        let Some(frame) = frame else { break };
        let latency = net.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        while net.is_cut(from, to) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let len = frame.len();
        if receiver
            .events
            .send(LinkEvent::Frame {
                id: receiver_link,
                frame,
            })
            .await
            .is_err()
        {
            return;
        }
        outgoing.written(len);
    }
    receiver.events.do_send(LinkEvent::Down {
        id: receiver_link,
        reason: DownReason::PeerClosed,
    });
}
