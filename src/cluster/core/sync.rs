//! Anti-entropy and node states: comparing member tables with a neighbour
//! by digest and exchanging the records that differ, and keeping the
//! latest published state of every node.

use super::hash::{combine, name_hash};
use super::members::Applied;
use super::{
    members, Action, ClusterCore, CoreError, LinkId, Source, MAX_RECORDS_CATCHING_UP, MAX_RECORDS_PER_EXCHANGE,
};
use crate::cluster::protocol::{Lane, Msg, MsgId, Payload, Record, StateRecord};
use bytes::Bytes;
use rand::seq::IteratorRandom as _;
use rand::RngExt as _;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

impl ClusterCore {
    /// Brings the next anti-entropy round forward to a tenth of its interval.
    pub(super) fn anti_entropy_soon(&mut self) {
        let soon = self.now + self.config.anti_entropy_interval / 10;
        self.next_anti_entropy = self.next_anti_entropy.min(soon);
    }

    pub(super) fn anti_entropy(&mut self) {
        let overlay: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.peer.is_some() && (l.i_want || l.peer_wants))
            .map(|(id, _)| *id)
            .collect();
        let Some(link) = overlay.into_iter().choose(&mut self.rng) else {
            return;
        };
        self.counters.anti_entropy_rounds += 1;
        self.queue(
            link,
            Lane::Control,
            Msg::Digest {
                buckets: self.table.digest(),
            },
        );
    }

    /// A neighbour's member digest: answer with our records in the buckets
    /// that differ.
    pub(super) fn on_digest(&mut self, link: LinkId, buckets: &[u64]) {
        let mut differing = self.table.differing(buckets);
        // While tables change fast (a mass start) most buckets
        // differ; a bounded number of records per exchange keeps
        // each one cheap at any size.
        let per_bucket = self.table.len().div_ceil(members::DIGEST_BUCKETS).max(1);
        let budget = if differing.len() > members::DIGEST_BUCKETS / 2 {
            MAX_RECORDS_CATCHING_UP
        } else {
            MAX_RECORDS_PER_EXCHANGE
        };
        let most = (budget / per_bucket).max(1);
        if differing.len() > most {
            let start = self.rng.random_range(0..differing.len());
            differing.rotate_left(start);
            differing.truncate(most);
        }
        if !differing.is_empty() {
            let records = self.table.records_in(&differing);
            self.queue(link, Lane::Control, Msg::DigestReply { differing, records });
        }
    }

    /// The answer to our digest: take its records, and send ours for the
    /// same buckets.
    pub(super) fn on_digest_reply(&mut self, link: LinkId, differing: &[u16], records: Vec<Record>) {
        // Tables differ: compare again soon, until they agree.
        self.anti_entropy_soon();
        let mine = self.table.records_in(differing);
        self.on_members(link, records, false);
        self.queue(
            link,
            Lane::Control,
            Msg::Members {
                records: mine,
                snapshot: false,
            },
        );
    }

    pub(super) fn on_members(&mut self, link: LinkId, records: Vec<Record>, snapshot: bool) {
        if snapshot {
            self.has_table = true;
            self.standing_joined();
            if let Some(ask) = self.joining.remove(&link) {
                let peer = self.links.get(&link).and_then(|l| l.peer_name().cloned());
                if let Some(name) = peer {
                    self.answer_join(ask, Ok(name));
                }
            }
        }
        let source = if snapshot {
            Source::Snapshot
        } else {
            Source::AntiEntropy
        };
        let mut want = Vec::new();
        let mut changed = 0usize;
        for record in records {
            if record.id.name == self.me.name {
                self.about_me(&record, Some(link));
                continue;
            }
            let applied = self.apply(&record, source);
            if !matches!(applied, Applied::Stale | Applied::SameSuspicion) {
                changed += 1;
            }
            let held = self.table.get(&record.id.name);
            if held.is_some_and(|m| m.id.boot == record.id.boot && record.state_version > m.state_version()) {
                want.push(record.id.name.clone());
            }
        }
        if !snapshot && changed > 0 {
            self.counters.anti_entropy_repairs += changed as u64;
        }
        if snapshot {
            info!(
                members = self.table.len(),
                alive = self.table.up_count(),
                "received the member table"
            );
        }
        for chunk in want.chunks(512) {
            self.queue(link, Lane::Control, Msg::StateWant { names: chunk.to_vec() });
        }
    }

    /// Publishes this node's state (its status report) to every node.
    pub fn set_state(&mut self, data: Bytes, now: Instant) -> Result<(), CoreError> {
        self.now = now;
        self.check_size("state", data.len())?;
        if data.len() > self.config.max_state_bytes {
            return Err(CoreError::TooLarge {
                what: "state",
                size: data.len(),
                max: self.config.max_state_bytes,
            });
        }
        self.state_version += 1;
        let record = Arc::new(StateRecord {
            name: self.me.name.clone(),
            boot: self.me.boot,
            version: self.state_version,
            data,
        });
        self.table.set_state(&record);
        let id = state_id(&record);
        let mut out = Vec::new();
        self.tree.broadcast(id, Payload::State(record), now, &mut out);
        self.tree_out(out);
        self.flush();
        Ok(())
    }

    pub(super) fn on_state(&mut self, state: Arc<StateRecord>) {
        if state.name == self.me.name {
            return;
        }
        if self.table.set_state(&state) {
            self.actions.push_back(Action::State {
                node: state.name.clone(),
                data: state.data.clone(),
            });
        }
    }

    /// A neighbour asks for these nodes' states.
    pub(super) fn on_state_want(&mut self, link: LinkId, names: &[Arc<str>]) {
        let states: Vec<Arc<StateRecord>> = names
            .iter()
            .filter_map(|n| self.table.get(n))
            .filter_map(|m| m.state.clone())
            .collect();
        for chunk in states.chunks(32) {
            self.queue(link, Lane::Bulk, Msg::States { states: chunk.to_vec() });
        }
    }
}

pub(super) fn state_id(state: &StateRecord) -> MsgId {
    let hi = combine(combine(name_hash(&state.name), state.boot), state.version);
    let lo = combine(hi, 0x27d4_eb2f);
    (u128::from(hi) << 64) | u128::from(lo) | 1
}
