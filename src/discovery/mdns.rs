//! Zero-config discovery on the LAN with mDNS (mdns-sd).
//!
//! Each node registers `_conjoiner._tcp.local.` with TXT `cluster=<name>` and
//! `node=<name>`, and browses for the same service. A resolved peer of our
//! cluster becomes a candidate for the ClusterBridge; other clusters, this
//! node itself, and loopback or link-local addresses are skipped. mdns-sd
//! resolves the same instance many times, so recent candidates are not handed
//! on again; but it resolves a peer anew only when that peer announces
//! itself, so every peer resolved lately is offered again every few seconds
//! (a node refused its name rejoins soon after the holder leaves). If the
//! browse channel closes, browsing starts again.

use crate::actors::cluster_bridge::Candidate;
use actix::Recipient;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument as _};

/// The service every node registers and browses.
pub const SERVICE_TYPE: &str = "_conjoiner._tcp.local.";

/// How long a handed-on candidate is not handed on again.
const REPEAT_AFTER: Duration = Duration::from_secs(15);
/// How often peers resolved before are offered again. mdns-sd resolves a
/// peer again only when it announces itself, which can take minutes; a
/// node that is alone, or was refused its name until the holder left,
/// must not wait that long to try them (the bridge ignores the ones it
/// already lists up).
const OFFER_AGAIN_EVERY: Duration = Duration::from_secs(5);
/// How long a resolved peer is offered again without being seen anew.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A running mDNS responder and browser.
pub struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
    task: JoinHandle<()>,
}

impl Mdns {
    /// Registers this node at `advertise` and starts browsing.
    pub fn start(
        cluster: &str,
        node: &str,
        advertise: SocketAddr,
        candidates: Recipient<Candidate>,
        span: tracing::Span,
    ) -> anyhow::Result<Mdns> {
        let daemon = ServiceDaemon::new().map_err(|e| anyhow::anyhow!("cannot start mDNS: {e}"))?;
        let instance = format!("{node}@{cluster}");
        let host = format!("{node}.local.");
        let properties = [("cluster", cluster), ("node", node)];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            advertise.ip(),
            advertise.port(),
            &properties[..],
        )
        .map_err(|e| anyhow::anyhow!("cannot describe this node for mDNS: {e}"))?;
        let fullname = info.get_fullname().to_string();
        daemon
            .register(info)
            .map_err(|e| anyhow::anyhow!("cannot register this node with mDNS: {e}"))?;
        span.in_scope(
            || info!(service = SERVICE_TYPE, instance = %instance, %advertise, "mDNS registered; browsing for peers"),
        );
        let browser = Browser {
            cluster: cluster.to_string(),
            node: node.to_string(),
            candidates,
            handed: HashMap::new(),
            resolved: HashMap::new(),
        };
        let task = tokio::spawn(browser.run(daemon.clone()).instrument(span));
        Ok(Mdns { daemon, fullname, task })
    }

    /// Says goodbye on the LAN and stops the daemon.
    pub fn stop(self) {
        self.task.abort();
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

struct Browser {
    cluster: String,
    node: String,
    candidates: Recipient<Candidate>,
    handed: HashMap<(String, SocketAddr), Instant>,
    /// Peers of this cluster resolved, by instance name: their addresses
    /// and when they were last resolved (forgotten when they say goodbye).
    resolved: HashMap<String, (String, Vec<SocketAddr>, Instant)>,
}

/// Addresses a remote peer cannot usefully be reached at.
pub fn usable_peer_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

impl Browser {
    async fn run(mut self, daemon: ServiceDaemon) {
        loop {
            match daemon.browse(SERVICE_TYPE) {
                Ok(events) => {
                    let mut again = tokio::time::interval(OFFER_AGAIN_EVERY);
                    loop {
                        tokio::select! {
                            event = events.recv_async() => match event {
                                Ok(ServiceEvent::ServiceResolved(service)) => self.on_resolved(&service),
                                Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                                    self.resolved.remove(&fullname);
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            },
                            _ = again.tick() => self.offer_again(),
                        }
                    }
                    if !self.candidates.connected() {
                        return;
                    }
                    warn!("mDNS browse channel closed; browsing again");
                }
                Err(e) => warn!(error = %e, "mDNS browse failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn on_resolved(&mut self, service: &mdns_sd::ResolvedService) {
        let cluster = service.get_property_val_str("cluster").unwrap_or_default();
        let node = service.get_property_val_str("node").unwrap_or_default().to_string();
        if cluster != self.cluster {
            debug!(instance = %service.fullname, %cluster, "mDNS peer of another cluster ignored");
            return;
        }
        if node == self.node || node.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut addrs = Vec::new();
        for scoped in &service.addresses {
            let ip = scoped.to_ip_addr();
            if !usable_peer_ip(ip) {
                debug!(%node, %ip, "mDNS address skipped (loopback or link-local)");
                continue;
            }
            addrs.push(SocketAddr::new(ip, service.port));
        }
        self.resolved
            .insert(service.fullname.clone(), (node.clone(), addrs.clone(), now));
        self.offer(&node, &addrs, now);
    }

    /// Every peer resolved lately, offered again (see [`OFFER_AGAIN_EVERY`]).
    fn offer_again(&mut self) {
        let now = Instant::now();
        self.resolved
            .retain(|_, (_, _, at)| now.duration_since(*at) < FORGET_AFTER);
        let peers: Vec<(String, Vec<SocketAddr>)> =
            self.resolved.values().map(|(n, a, _)| (n.clone(), a.clone())).collect();
        for (node, addrs) in peers {
            self.offer(&node, &addrs, now);
        }
    }

    /// Hands `node`'s addresses to the bridge, each at most once per
    /// [`REPEAT_AFTER`].
    fn offer(&mut self, node: &str, addrs: &[SocketAddr], now: Instant) {
        self.handed.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        for &addr in addrs {
            let node = node.to_string();
            let key = (node.clone(), addr);
            if self.handed.contains_key(&key) {
                continue;
            }
            self.handed.insert(key, now);
            debug!(%node, %addr, "mDNS found a peer");
            self.candidates.do_send(Candidate {
                addr,
                node: node.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_peers_are_unusable() {
        for bad in ["127.0.0.1", "169.254.3.4", "0.0.0.0", "::1", "fe80::1", "224.0.0.251"] {
            assert!(!usable_peer_ip(bad.parse().unwrap()), "{bad}");
        }
        for good in ["10.0.0.2", "192.168.1.9", "fd00::2", "2001:db8::1"] {
            assert!(usable_peer_ip(good.parse().unwrap()), "{good}");
        }
    }
}
