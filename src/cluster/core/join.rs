//! Joining: asking a seed for the member table (sent on to another member
//! when the seed is at its link cap), and answering joiners with the
//! table, or a sample of it in a large cluster.

use super::members::Member;
use super::{Action, ClusterCore, JoinAsk, JoinError, LinkId, Source, Standing, MAX_JOIN_RECORDS, MAX_JOIN_REDIRECTS};
use crate::cluster::protocol::{Lane, LinkMsg, Msg, Record};
use rand::seq::{IteratorRandom as _, SliceRandom as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info};

impl ClusterCore {
    /// Contacts `addr` (a seed, or a peer mDNS found) and asks for the
    /// member table. Answered with [`Action::Joined`].
    pub fn join(&mut self, addr: SocketAddr, now: Instant) {
        self.now = now;
        if addr == self.me.addr {
            self.actions.push_back(Action::Joined {
                addr,
                result: Err(JoinError::Myself),
            });
            return;
        }
        self.join_via(
            addr,
            None,
            JoinAsk {
                asked: addr,
                redirects: 0,
            },
        );
        self.flush();
    }

    /// Asks `addr` (member `expect`, if known) for the member table on
    /// behalf of `ask`: on a link that is up, or on a dial. Answers false
    /// when that cannot start (a recent dial to that member, or a dial
    /// already carrying another join).
    pub(super) fn join_via(&mut self, addr: SocketAddr, expect: Option<Arc<str>>, ask: JoinAsk) -> bool {
        let ready = self
            .links
            .iter()
            .find(|(_, l)| l.peer.is_some() && (l.remote == addr || l.peer.as_ref().is_some_and(|p| p.addr == addr)))
            .map(|(id, l)| (*id, l.peer_name().cloned()));
        match ready {
            Some((link, Some(_))) => {
                self.queue(link, Lane::Control, Msg::Link(LinkMsg::Join));
                self.joining.insert(link, ask);
                true
            }
            _ => match self.dial(addr, expect) {
                Some(d) if d.join.is_none_or(|j| j.asked == ask.asked) => {
                    d.join = Some(ask);
                    true
                }
                _ => false,
            },
        }
    }

    /// The dialed node was at its link cap (see `turn_away`). Its process
    /// answered, so a probe of it counts as answered; a join goes on to one
    /// of the members it named; anything else waiting for the link is
    /// dropped and counted, as when a dial fails, and overlay links are
    /// dialed again later.
    pub(super) fn on_busy(&mut self, link: LinkId, peers: Vec<(Arc<str>, SocketAddr)>) {
        let Some(remote) = self.links.get(&link).map(|l| l.remote) else {
            return;
        };
        let d = self.dialing.remove(&remote);
        self.busy_seen.insert(remote, self.now);
        self.close(link, "the peer is at its link cap");
        let Some(d) = d else { return };
        debug!(%remote, member = d.expect.as_deref(), named = peers.len(), "the node dialed is at its link cap");
        self.counters.dropped_no_route += (d.pending.len() + d.directs.len()) as u64;
        if let Some(name) = &d.expect {
            let mut out = Vec::new();
            self.detector.answered(name, &mut out);
            self.detector_out(out);
        }
        if let Some(ask) = d.join {
            self.redirect_join(remote, ask, peers);
        }
    }

    /// Sends a join that a busy node turned away to one of the members it
    /// named; after `MAX_JOIN_REDIRECTS`, or with nobody to ask, the join
    /// is answered busy and the driver retries it later.
    pub(super) fn redirect_join(&mut self, busy: SocketAddr, ask: JoinAsk, peers: Vec<(Arc<str>, SocketAddr)>) {
        if ask.redirects < MAX_JOIN_REDIRECTS {
            let mut candidates: Vec<(Arc<str>, SocketAddr)> = peers
                .into_iter()
                .filter(|(name, addr)| *name != self.me.name && *addr != self.me.addr && *addr != busy)
                .collect();
            candidates.shuffle(&mut self.rng);
            let next = JoinAsk {
                asked: ask.asked,
                redirects: ask.redirects + 1,
            };
            for (name, addr) in candidates {
                if self.join_via(addr, Some(name.clone()), next) {
                    self.counters.joins_redirected += 1;
                    debug!(asked = %ask.asked, via = %name, %addr, "joining through a member the busy node named");
                    return;
                }
            }
        }
        self.answer_join(ask, Err(JoinError::Busy));
    }

    /// Answers the driver's join `ask` (under the address it asked, wherever
    /// the join went).
    pub(super) fn answer_join(&mut self, ask: JoinAsk, result: Result<Arc<str>, JoinError>) {
        self.actions.push_back(Action::Joined {
            addr: ask.asked,
            result,
        });
    }

    /// Up to `n` live members other than this node, at random.
    pub(super) fn sample_live(&mut self, n: usize) -> Vec<&Member> {
        let me = &self.me.name;
        self.table
            .iter()
            .filter(|m| m.id.name != *me && m.status.is_up())
            .sample(&mut self.rng, n)
    }

    /// A join asked on `link` gets no table: say why.
    pub(super) fn fail_join(&mut self, link: LinkId, reason: &str) {
        if let Some(ask) = self.joining.remove(&link) {
            self.answer_join(ask, Err(JoinError::Link(reason.to_string())));
        }
    }

    /// A joiner asks for the member table: send it (a sample past
    /// `MAX_JOIN_RECORDS`), then say it is done.
    pub(super) fn on_join(&mut self, link: LinkId) {
        self.counters.joins_answered += 1;
        self.touch(link);
        self.standing_joined();
        let records = if self.table.len() <= MAX_JOIN_RECORDS {
            self.table.snapshot()
        } else {
            // This node and a random sample of the live members.
            let me = self.table.me().record();
            let mut sample: Vec<Record> = self
                .sample_live(MAX_JOIN_RECORDS - 1)
                .into_iter()
                .map(Member::record)
                .collect();
            sample.push(me);
            sample
        };
        for chunk in records.chunks(2048) {
            self.queue(
                link,
                Lane::Bulk,
                Msg::Link(LinkMsg::JoinTable {
                    records: chunk.to_vec(),
                }),
            );
        }
        self.queue(link, Lane::Bulk, Msg::Link(LinkMsg::JoinDone));
        // In a mass start every joiner dials the same seed. Past half
        // the link cap the seed hangs up once it has answered (the
        // close follows the table on the wire), so it never holds a
        // link per joiner; a joiner that wants it as a neighbour
        // dials again.
        let busy = self.links.len() > self.config.max_links / 2;
        if busy && !self.links.get(&link).is_some_and(|l| l.i_want) {
            self.flush();
            self.close(link, "join answered; this node is busy");
        }
    }

    /// A part of the member table, in answer to this node's join: the
    /// first part answers the join.
    pub(super) fn on_join_table(&mut self, link: LinkId, records: Vec<Record>) {
        // A node refused its name is in again only on a table that no
        // longer lists the holder alive; else it would say "joined" for a
        // moment at every retry, until the table refused it again.
        let holder_alive = records.iter().any(|r| {
            r.id.name == self.me.name && r.status.is_up() && r.id.addr != self.me.addr && r.id.boot < self.me.boot
        });
        if matches!(self.standing, Standing::Refused { .. }) {
            if holder_alive {
                debug!(
                    link,
                    "the table still lists the holder of this node's name alive; staying out"
                );
                self.fail_join(link, "the name is still held");
                return self.close(link, "name held by another node");
            }
            info!("the name is free again; joined the cluster");
            self.standing = Standing::Joined;
        }
        self.has_table = true;
        self.standing_joined();
        if let Some(ask) = self.joining.remove(&link) {
            if let Some(l) = self.links.get_mut(&link) {
                l.join_answer = MAX_JOIN_RECORDS;
            }
            let peer = self.links.get(&link).and_then(|l| l.peer_name().cloned());
            if let Some(name) = peer {
                self.answer_join(ask, Ok(name));
            }
        }
        self.apply_records(Some(link), records, Source::Snapshot);
        info!(
            members = self.table.len(),
            alive = self.table.up_count(),
            "received the member table"
        );
    }

    /// The join's table was all sent: a link the joiner does not need is
    /// closed.
    pub(super) fn on_join_done(&mut self, link: LinkId, from: &Arc<str>) {
        if let Some(l) = self.links.get_mut(&link) {
            l.hangup_expected = !l.peer_wants;
            l.join_answer = 0;
        }
        let overlay = self.links.get(&link).is_some_and(|l| l.i_want || l.peer_wants);
        let subject = self.rings.is_subject(from);
        if !overlay && !subject && self.by_peer.get(from) == Some(&link) {
            self.close(link, "joined; not an overlay link");
        }
    }

    /// A node alone is in once it has a table or a peer. A refused one
    /// leaves that standing only in [`Self::on_join_table`], on a table
    /// that no longer lists the holder alive.
    pub(super) fn standing_joined(&mut self) {
        if matches!(self.standing, Standing::Alone) {
            self.standing = Standing::Joined;
        }
    }
}
