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
use crate::cluster::node_key::NodePublicKey;
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
        let Ok(proven) = self.prove(link, &id, hello.identity) else {
            return;
        };
        if id.name == self.me.name {
            return self.hello_from_my_name(link, &id, remote, proven);
        }
        if let Err(why) = self.admitted(&id, proven, hello.admission.as_deref()) {
            self.counters.not_admitted += 1;
            if self.conflicts_logged.insert((id.name.clone(), id.boot)) {
                warn!(peer = %id.name, addr = %id.addr, %remote, "refused a node that is not admitted: {why}");
            }
            let seen = Refusal::NotAdmitted {
                reason: format!("the node `{}` there is not admitted: {why}", id.name),
            };
            self.answer_join_on(link, JoinError::Refused(seen));
            return self.refuse(link, Refusal::NotAdmitted { reason: why });
        }
        if let Some(holder) = self.held_by_another(&id.name, proven) {
            self.counters.identities_refused += 1;
            self.log_conflict(
                &id,
                "a node proved another identity key than the one that holds this name; refused it",
            );
            return self.refuse_name(link, &holder);
        }
        // Its proof of this very record, under the key its link proved, is
        // what this node passes on with the record (see `proofs`).
        if let (Some(proof), Some(key)) = (hello.proof.filter(|p| !p.left), proven) {
            let fits = proof.key == key && *proof.id == *id && proof.incarnation == hello.incarnation;
            if fits {
                self.take_proof(Some(link), proof, true);
            } else {
                self.counters.records_unproven += 1;
                debug!(link, peer = %id.name, "a hello's proof is not of its own record under its proven key; not held");
            }
        }
        let record = Record {
            id: id.clone(),
            incarnation: hello.incarnation,
            status: Status::Alive,
        };
        if let Applied::Conflict { holder } = self.apply(&record, Source::Hello) {
            return self.refuse_name(link, &holder);
        }
        let held = self.table.get(&id.name).map(|m| (m.id.clone(), m.status, m.record()));
        let Some((held_id, held_status, held_record)) = held else {
            return;
        };
        if held_id.boot != id.boot {
            debug!(%remote, peer = %id.name, "hello from a superseded boot; closing");
            return self.close(link, "superseded boot");
        }
        debug!(link, peer = %id.name, %remote, ?direction, protocol = version,
            identity = %proven.map_or("none".to_string(), |k| k.id()), "hello received");
        if let Some(l) = self.links.get_mut(&link) {
            l.peer = Some(id.clone());
            l.version = version;
        }
        if let Some(key) = proven {
            self.hold_name(&id.name, key);
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

    /// The identity key a hello names, if the link proved it: `Ok(None)`
    /// for a hello that names none (an earlier release) or a link that
    /// proved no key (the simulator). A hello naming a key the link was
    /// not made with is a lie about who is speaking: the link is closed.
    fn prove(&mut self, link: LinkId, id: &NodeId, named: Option<NodePublicKey>) -> Result<Option<NodePublicKey>, ()> {
        let Some(named) = named else { return Ok(None) };
        let Some(shown) = self.links.get(&link).and_then(|l| l.peer_static) else {
            return Ok(None);
        };
        if named.noise_static() == Some(shown) {
            return Ok(Some(named));
        }
        self.counters.identities_refused += 1;
        warn!(link, peer = %id.name, addr = %id.addr, named = %named.id(),
            "the hello names an identity key that did not make the link; closing it");
        self.close(link, "identity key not proven");
        Err(())
    }

    /// Whether the peer `id`, whose link proved `proven`, is admitted: by
    /// the admission its hello showed, when this node requires one.
    fn admitted(&self, id: &NodeId, proven: Option<NodePublicKey>, admission: Option<&str>) -> Result<(), String> {
        let Some(rule) = &self.admission_rule else {
            return Ok(());
        };
        let Some(key) = proven else {
            return Err("it proved no identity key (a node of an earlier release?)".into());
        };
        let Some(text) = admission else {
            return Err(format!("it showed no admission for its identity key {key}"));
        };
        rule(id, &key, text)
    }

    /// The member that holds `name` under another identity key than
    /// `proven`, while it is up. A name is held by the key first proven on
    /// a link with it, or else by the key its member's signed proof names
    /// (so a node that never linked with the holder knows it too), until
    /// its member is dead or gone; a hello that proves no key cannot take
    /// a name that a key holds.
    fn held_by_another(&self, name: &str, proven: Option<NodePublicKey>) -> Option<Arc<NodeId>> {
        let holder = self.key_of(name)?;
        if proven == Some(holder) {
            return None;
        }
        self.table.get(name).filter(|m| m.status.is_up()).map(|m| m.id.clone())
    }

    /// `key` holds `name` from now on. Names of members no longer in the
    /// table are let go, so the map never outgrows the member table.
    fn hold_name(&mut self, name: &Arc<str>, key: NodePublicKey) {
        if self.holders.insert(name.clone(), key) != Some(key) {
            debug!(peer = %name, identity = %key.id(), "name held by this identity key");
        }
        if self.holders.len() > self.table.len() + 64 {
            let table = &self.table;
            self.holders.retain(|name, _| table.get(name).is_some());
        }
    }

    /// A hello from a process with this node's name.
    pub(super) fn hello_from_my_name(
        &mut self,
        link: LinkId,
        id: &Arc<NodeId>,
        remote: SocketAddr,
        proven: Option<NodePublicKey>,
    ) {
        if id.boot == self.me.boot {
            debug!(%remote, "dialed this node itself; closing");
            if let Some(d) = self.dialing.remove(&remote) {
                if let Some(ask) = d.join {
                    self.answer_join(ask, Err(JoinError::Myself));
                }
            }
            return self.close(link, "this node");
        }
        // Between two keys, boots prove nothing (a claimed boot is just a
        // number): the process that knocks yields. A node refuses every
        // process of its name with another key that dials it, and steps
        // aside only when it dialed a seed or a discovered address itself
        // and found its name held there (a second host given the same
        // name). A dial meant for another member never makes it step aside.
        let another_key = self.identity.is_some() && proven != self.identity;
        let outbound = self
            .links
            .get(&link)
            .is_some_and(|l| l.direction == Direction::Outbound);
        let meant_for = self.dialing.get(&remote).and_then(|d| d.expect.clone());
        if another_key && outbound {
            if meant_for.is_some() {
                self.counters.identities_refused += 1;
                warn!(%remote, expected = ?meant_for, "a dialed member answered with this node's name; closing");
                return self.close(link, "answered with this node's name");
            }
            self.step_aside(id.addr, id.boot);
            return self.close(link, "name held by another live node");
        }
        if another_key || id.boot > self.me.boot {
            if another_key {
                self.counters.identities_refused += 1;
            }
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

    /// Refuses the peer on `link` a name that `holder` holds.
    fn refuse_name(&mut self, link: LinkId, holder: &NodeId) {
        let refusal = Refusal::NameTaken {
            name: holder.name.clone(),
            holder: holder.addr,
            holder_boot: holder.boot,
        };
        self.refuse(link, refusal);
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
        let refusal = Refusal::NameTaken {
            name: self.me.name.clone(),
            holder,
            holder_boot,
        };
        self.stay_out(holder, refusal);
    }

    /// A peer at `by` refused this node (`refusal`): it stays out of the
    /// cluster, keeps trying, and is in again once a peer answers its join
    /// with a table that lets it in (see `on_join_table`).
    fn stay_out(&mut self, by: SocketAddr, refusal: Refusal) {
        if matches!(self.standing, Standing::Refused { .. }) {
            return;
        }
        let reason = refusal.to_string();
        error!(peer = %by, "{reason}; this node stays out of the cluster and keeps trying");
        self.standing = Standing::Refused {
            holder: by,
            reason: reason.clone(),
        };
        for (_, ask) in std::mem::take(&mut self.joining) {
            self.answer_join(ask, Err(JoinError::Refused(refusal.clone())));
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.close(link, "refused by a peer; staying out");
        }
        for (_, d) in std::mem::take(&mut self.dialing) {
            if let Some(ask) = d.join {
                self.answer_join(ask, Err(JoinError::Refused(refusal.clone())));
            }
        }
        // Forget the cluster: a later successful join starts afresh.
        let me = self.me.clone();
        self.table = MemberTable::new(me.clone(), self.now);
        self.table.set_me(self.incarnation, Status::Alive, self.now);
        self.sign_me();
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
            } if *name == self.me.name => {
                // A peer that dialed this node cannot send it away: only a
                // node it went to itself can (see `hello_from_my_name`).
                let inbound = self.links.get(&link).is_some_and(|l| l.direction == Direction::Inbound);
                if self.identity.is_some() && inbound {
                    warn!(
                        ?remote,
                        "a peer that dialed this node says another holds its name; not stepping aside"
                    );
                } else {
                    self.step_aside(*holder, *holder_boot)
                }
            }
            // Not admitted by a node it went to before any peer sent it a
            // member table: out, and saying why, until a peer takes it in.
            // One peer's refusal does not send a member out of the cluster
            // it is in.
            Refusal::NotAdmitted { .. }
                if !self.has_table
                    && self
                        .links
                        .get(&link)
                        .is_some_and(|l| l.direction == Direction::Outbound) =>
            {
                if let Some(remote) = remote {
                    self.stay_out(remote, refusal.clone());
                }
            }
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
