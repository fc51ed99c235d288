//! The hello on a new link: who the peer is, whether it may link (cluster
//! name, protocol, a second live process of one name), and stepping aside
//! when an older live process holds this node's name.

use super::detector::Detector;
use super::hash::{name_hash, ring_position};
use super::members::{Applied, MemberTable};
use super::rings::Rings;
use super::tree::BroadcastTree;
use super::{Action, ClusterCore, Direction, JoinError, LinkId, Source, Standing};
use crate::cluster::identity::NodeId;
use crate::cluster::protocol::{
    Frame, Hello, Items, Lane, LinkMsg, Msg, Record, Refusal, Status, SyncMsg, SET_MEMBERS,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, error, warn};

impl ClusterCore {
    pub(super) fn on_hello(&mut self, link: LinkId, hello: Hello) {
        let Some(l) = self.links.get(&link) else { return };
        let (remote, direction) = (l.remote, l.direction);
        let Some(version) = self.protocol.agree(hello.protocol) else {
            warn!(%remote, peer = %hello.id.name, theirs = %hello.protocol, ours = %self.protocol,
                "the peer shares no link protocol version with this node; closing");
            let seen = Refusal::Protocol {
                min: hello.protocol.min,
                max: hello.protocol.max,
            };
            self.answer_join_on(link, JoinError::Refused(seen));
            return self.refuse(
                link,
                Refusal::Protocol {
                    min: self.protocol.min,
                    max: self.protocol.max,
                },
            );
        };
        if hello.cluster != self.cluster {
            warn!(%remote, peer = %hello.id.name, cluster = %hello.cluster, "peer belongs to another cluster; closing");
            let seen = Refusal::OtherCluster {
                cluster: hello.cluster.clone(),
            };
            self.answer_join_on(link, JoinError::Refused(seen));
            return self.refuse(
                link,
                Refusal::OtherCluster {
                    cluster: self.cluster.clone(),
                },
            );
        }
        let id = hello.id;
        if let Err(why) = id.check() {
            self.refuse_record(&why);
            return self.close(link, "identity out of bounds");
        }
        if id.name == self.me.name {
            return self.hello_from_my_name(link, &id, remote);
        }
        let record = Record {
            id: id.clone(),
            incarnation: hello.incarnation,
            status: Status::Alive,
        };
        if let Applied::Conflict { holder } = self.apply(&record, Source::Hello) {
            return self.refuse(
                link,
                Refusal::NameTaken {
                    name: id.name.clone(),
                    holder: holder.addr,
                    holder_boot: holder.boot,
                },
            );
        }
        let held = self.table.get(&id.name).map(|m| (m.id.clone(), m.status, m.record()));
        let Some((held_id, held_status, held_record)) = held else {
            return;
        };
        if held_id.boot != id.boot {
            debug!(%remote, peer = %id.name, "hello from a superseded boot; closing");
            return self.close(link, "superseded boot");
        }
        debug!(link, peer = %id.name, %remote, ?direction, protocol = version, "hello received");
        if let Some(l) = self.links.get_mut(&link) {
            l.peer = Some(id.clone());
            l.version = version;
        }
        // One preferred link per peer: the one dialed by the lower name, so
        // both sides pick the same; a second link idles out.
        let preferred = match self.by_peer.get(&id.name).and_then(|other| self.links.get(other)) {
            None => true,
            Some(other) if other.peer.as_ref().is_some_and(|p| p.boot != id.boot) => true,
            Some(_) => (direction == Direction::Outbound) == (*self.me.name < *id.name),
        };
        if preferred {
            self.by_peer.insert(id.name.clone(), link);
        }
        if direction == Direction::Outbound {
            if let Some(d) = self.dialing.remove(&remote) {
                if d.expect.as_ref().is_none_or(|e| *e == id.name) {
                    for (lane, msg) in d.pending {
                        self.queue(link, lane, msg);
                    }
                    for envelope in d.directs {
                        self.actions.push_back(Action::Send {
                            link,
                            lane: Lane::Bulk,
                            frame: Frame::Direct(envelope),
                        });
                    }
                } else {
                    self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
                }
                if let Some(ask) = d.join {
                    self.queue(link, Lane::Control, Msg::Link(LinkMsg::Join));
                    self.joining.insert(link, ask);
                }
            }
        }
        if matches!(self.standing, Standing::Refused { .. }) && !self.joining.contains_key(&link) {
            // A peer that takes this refused node's hello may know the
            // holder is gone: its table says (see `on_join_table`).
            self.queue(link, Lane::Control, Msg::Link(LinkMsg::Join));
        }
        if self.wanted.contains_key(&id.name) {
            self.want(link, &id.name);
        }
        if !held_status.is_up() {
            // It says hello, but we hold it dead (a healed partition): tell
            // it, so it refutes, and compare every dataset.
            self.queue(
                link,
                Lane::Control,
                Msg::Sync(SyncMsg::Items {
                    set: SET_MEMBERS,
                    items: Items::Records(vec![held_record]),
                }),
            );
            let sets = self.digests();
            self.queue(link, Lane::Control, Msg::Sync(SyncMsg::Digest { sets }));
        }
    }

    /// A hello from a process with this node's name.
    pub(super) fn hello_from_my_name(&mut self, link: LinkId, id: &Arc<NodeId>, remote: SocketAddr) {
        if id.boot == self.me.boot {
            debug!(%remote, "dialed this node itself; closing");
            if let Some(d) = self.dialing.remove(&remote) {
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Myself));
                }
            }
            return self.close(link, "this node");
        }
        if id.boot > self.me.boot {
            self.log_conflict(id, "another process with this node's name tried to join; refused it");
            self.refuse(
                link,
                Refusal::NameTaken {
                    name: id.name.clone(),
                    holder: self.me.addr,
                    holder_boot: self.me.boot,
                },
            );
        } else {
            self.step_aside(id.addr, id.boot);
            self.close(link, "name held by an older live node");
        }
    }

    /// A join that waits for `link` (asked on it, or on the dial that
    /// opened it) fails with `error`: the driver learns why at once.
    fn answer_join_on(&mut self, link: LinkId, error: JoinError) {
        let Some(l) = self.links.get(&link) else { return };
        let dial = (l.direction == Direction::Outbound)
            .then(|| self.dialing.get_mut(&l.remote).and_then(|d| d.join.take()))
            .flatten();
        if let Some(ask) = self.joining.remove(&link).or(dial) {
            self.answer_join(ask, Err(error));
        }
    }

    pub(super) fn refuse(&mut self, link: LinkId, refusal: Refusal) {
        self.queue(link, Lane::Control, Msg::Link(LinkMsg::Refused(refusal)));
        self.flush();
        self.close(link, "refused");
    }

    pub(super) fn log_conflict(&mut self, other: &Arc<NodeId>, what: &str) {
        self.counters.name_conflicts += 1;
        if self.conflicts_logged.insert((other.name.clone(), other.boot)) {
            warn!(name = %other.name, addr = %other.addr, boot = other.boot, "{what}");
        }
    }

    /// Another, older, live process holds this node's name: stay out of the
    /// cluster until it is gone (joins are retried by the caller).
    pub(super) fn step_aside(&mut self, holder: SocketAddr, holder_boot: u64) {
        if matches!(self.standing, Standing::Refused { .. }) {
            return;
        }
        let reason = Refusal::NameTaken {
            name: self.me.name.clone(),
            holder,
            holder_boot,
        }
        .to_string();
        error!(%holder, holder_boot, "{reason}; this node stays out of the cluster and keeps trying");
        self.standing = Standing::Refused {
            holder,
            reason: reason.clone(),
        };
        let refusal = Refusal::NameTaken {
            name: self.me.name.clone(),
            holder,
            holder_boot,
        };
        for (_, ask) in std::mem::take(&mut self.joining) {
            self.answer_join(ask, Err(JoinError::Refused(refusal.clone())));
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.close(link, "name held by another node");
        }
        for (_, d) in std::mem::take(&mut self.dialing) {
            if let Some(ask) = d.join {
                self.answer_join(
                    ask,
                    Err(JoinError::Refused(Refusal::NameTaken {
                        name: self.me.name.clone(),
                        holder,
                        holder_boot,
                    })),
                );
            }
        }
        // Forget the cluster: a later successful join starts afresh.
        let me = self.me.clone();
        self.table = MemberTable::new(me.clone(), self.now);
        self.table.set_me(self.incarnation, Status::Alive, self.now);
        self.rings = Rings::new(&me.name, self.config.rings);
        self.detector = Detector::new(self.config.detector(), self.now);
        self.tree = BroadcastTree::new(&me.name, self.config.tree());
        self.root = (ring_position(name_hash(&me.name), 0), me.name.clone());
        self.tree.set_root(&me.name, me.boot, self.now);
        self.wanted.clear();
    }

    pub(super) fn on_refused(&mut self, link: LinkId, refusal: Refusal) {
        let remote = self.links.get(&link).map(|l| l.remote);
        match &refusal {
            Refusal::NameTaken {
                name,
                holder,
                holder_boot,
            } if *name == self.me.name => self.step_aside(*holder, *holder_boot),
            other => warn!(?remote, reason = %other, "a peer refused this node's link"),
        }
        if let Some(ask) = self.joining.remove(&link) {
            self.answer_join(ask, Err(JoinError::Refused(refusal)));
        } else if let Some(remote) = remote {
            if let Some(d) = self.dialing.remove(&remote) {
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Refused(refusal)));
                }
            }
        }
        self.close(link, "refused by the peer");
    }
}
