//! What travels to many nodes or to one: ClusterBus broadcasts along the
//! tree, direct envelopes, and acting on what the tree delivers.

use super::datasets::EntriesVia;
use super::tree::{Round, TreeOut};
use super::{Action, ClusterCore, CoreError, Source};
use crate::cluster::protocol::{Frame, Lane, Msg, MsgId, Payload, TreeMsg};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

impl ClusterCore {
    /// Sends a ClusterBus envelope to every node (not delivered here: the
    /// driver hands it to this node's Transponder itself).
    pub fn broadcast(&mut self, id: MsgId, envelope: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("envelope", envelope.len())?;
        self.counters.broadcasts += 1;
        let mut out = Vec::new();
        self.tree.broadcast(id, Payload::Envelope(envelope), now, &mut out);
        self.tree_out(out);
        self.flush();
        Ok(())
    }

    /// Sends an envelope to one node, over its link (dialed if need be).
    pub fn send_direct(&mut self, to: &str, envelope: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("envelope", envelope.len())?;
        let member = self
            .table
            .get(to)
            .filter(|m| m.status.is_up() && m.id.name != self.me.name)
            .ok_or_else(|| CoreError::NotAlive(to.to_string()))?;
        let (name, addr) = (member.id.name.clone(), member.id.addr);
        self.counters.directs_sent += 1;
        match self.by_peer.get(&name).copied() {
            Some(link) => {
                self.touch(link);
                self.actions.push_back(Action::Send {
                    link,
                    lane: Lane::Bulk,
                    frame: Frame::Direct(envelope),
                });
            }
            None => {
                if let Some(d) = self.dial(addr, Some(name)) {
                    d.directs.push(envelope);
                }
            }
        }
        self.flush();
        Ok(())
    }

    pub(super) fn check_size(&self, what: &'static str, size: usize) -> Result<(), CoreError> {
        // Room for the frame's own bytes around the payload.
        let max = self.config.max_frame.saturating_sub(1024);
        if size > max {
            return Err(CoreError::TooLarge { what, size, max });
        }
        Ok(())
    }

    /// A broadcast-tree message from neighbour `from`.
    pub(super) fn on_tree(&mut self, from: &Arc<str>, msg: TreeMsg) {
        let mut out = Vec::new();
        match msg {
            TreeMsg::Gossip { id, hops, payload } => {
                // A lie about a member, a state its node did not seal, or
                // news over its link's budget goes no further than this
                // node (a copy already had is dropped below, and costs no
                // budget). A genuine state is taken here, before it is
                // passed on, so its delivery below finds it held.
                let unseen = !self.tree.has_seen(id);
                let passed_on = match (&payload, unseen) {
                    (Payload::Update { record, .. }, true) => {
                        let link = self.by_peer.get(from).copied();
                        self.news_fits(link, record) && self.worth_passing_on(record)
                    }
                    (Payload::State(state), true) => self.on_state(state.clone()),
                    _ => true,
                };
                if !passed_on {
                    self.tree.refuse(id, self.now);
                    return;
                }
                self.tree.on_gossip(from, id, hops, payload, self.now, &mut out)
            }
            TreeMsg::IHave { ids } => self.tree.on_ihave(from, &ids, self.now),
            TreeMsg::Beacon {
                root,
                rank,
                boot,
                round,
                hops,
            } => {
                let root_up = self
                    .table
                    .get(&root)
                    .is_some_and(|m| m.status.is_up() && m.id.boot == boot);
                let round = Round {
                    root,
                    rank,
                    boot,
                    round,
                };
                self.tree.on_beacon(from, round, hops, root_up, self.now, &mut out);
            }
            TreeMsg::Parent { yes } => self.tree.on_parent(from, yes),
            TreeMsg::Graft { ids } => self.tree.on_graft(from, &ids, &mut out),
            TreeMsg::Prune => self.tree.on_prune(from),
            TreeMsg::Orphan => self.tree.on_orphan(from, &mut out),
        }
        self.tree_out(out);
    }

    pub(super) fn tree_out(&mut self, out: Vec<TreeOut>) {
        for o in out {
            match o {
                TreeOut::Send { to, msg, lane } => match self.by_peer.get(&to).copied() {
                    Some(link) => self.queue(link, lane, Msg::Tree(msg)),
                    None => self.counters.dropped_no_route += 1,
                },
                TreeOut::Deliver {
                    payload, from, hops, ..
                } => self.on_payload(payload, from, hops),
            }
        }
    }

    /// Acts on a new broadcast.
    pub(super) fn on_payload(&mut self, payload: Payload, from: Arc<str>, hops: u16) {
        match payload {
            Payload::Update { record, accuser } => {
                if record.id.name == self.me.name {
                    self.about_me(&record, None);
                } else {
                    self.apply(
                        &record,
                        Source::Gossip {
                            accuser: accuser.as_ref(),
                        },
                    );
                }
            }
            // Judged and taken in `on_tree`, before it was passed on: the
            // tree delivers only what `on_tree` let through.
            Payload::State(_) => {}
            Payload::Entry { set, entry } => self.take_entries(EntriesVia::Peer(None), set, vec![entry]),
            Payload::Envelope(envelope) => {
                self.counters.delivered += 1;
                self.actions.push_back(Action::Deliver {
                    from,
                    envelope,
                    direct: false,
                    hops: hops.saturating_add(1),
                });
            }
        }
    }
}
