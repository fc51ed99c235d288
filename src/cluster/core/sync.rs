//! Anti-entropy of the replicated datasets with a neighbour, by the one
//! mechanism of [`super::replica`]: a digest, the buckets that differ, the
//! entries; and what applying each dataset's entries means here. Also
//! publishing this node's state.

use super::datasets::EntriesVia;
use super::members::Applied;
use super::proofs::Claim;
use super::replica::{compare_versions, within_budget, Replicated};
use super::{Action, ClusterCore, CoreError, LinkId, Source};
use crate::cluster::protocol::{
    Items, Lane, Msg, MsgId, Payload, Record, SetId, StateRecord, SyncMsg, SET_MEMBERS, SET_STATES,
};
use bytes::Bytes;
use rand::seq::IteratorRandom as _;
use rand::RngExt as _;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// States sent per message: a state is up to `max_state_bytes`.
const STATES_PER_MESSAGE: usize = 32;
/// The most claims remembered per neighbour and dataset.
const MAX_CLAIMS: usize = 4096;
/// How long a neighbour may take to send what it said it held.
const CLAIM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

impl ClusterCore {
    /// Brings the next anti-entropy round forward to a tenth of its interval.
    pub(super) fn anti_entropy_soon(&mut self) {
        let soon = self.now + self.config.anti_entropy_interval / 10;
        self.next_anti_entropy = self.next_anti_entropy.min(soon);
    }

    /// The datasets this node holds, by id.
    fn replica(&self, set: SetId) -> Option<&dyn Replicated> {
        match set {
            SET_MEMBERS => Some(&self.table),
            SET_STATES => Some(&self.states),
            other => self.held.get(&other).map(|h| &h.entries as &dyn Replicated),
        }
    }

    /// Every dataset's digest, as an exchange opens: the root alone, or
    /// every bucket for sets that open with them.
    pub(super) fn digests(&self) -> Vec<(SetId, Vec<u64>)> {
        [SET_MEMBERS, SET_STATES]
            .into_iter()
            .chain(self.held.keys().copied())
            .filter_map(|set| self.replica(set).map(|r| (set, r)))
            .map(|(set, r)| {
                let hashes = if r.opens_with_buckets() {
                    r.digest().buckets().to_vec()
                } else {
                    vec![r.digest().root()]
                };
                (set, hashes)
            })
            .collect()
    }

    /// Opens an exchange with one overlay neighbour, picked at random.
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
        let sets = self.digests();
        self.queue(link, Lane::Control, Msg::Sync(SyncMsg::Digest { sets }));
    }

    pub(super) fn on_sync(&mut self, link: LinkId, msg: SyncMsg) {
        match msg {
            SyncMsg::Digest { sets } => {
                for (set, hashes) in sets {
                    self.on_digest(link, set, &hashes);
                }
            }
            SyncMsg::Differ { set, buckets, have } => self.on_differ(link, set, &buckets, have),
            SyncMsg::Items { set, items } => {
                self.check_claims(link, set, &items);
                self.apply_items(Some(link), set, items, Source::AntiEntropy)
            }
            SyncMsg::Want { set, keys } => self.on_want(link, set, &keys),
            SyncMsg::Proofs { proofs, seals } => {
                self.take_proofs(link, proofs);
                self.take_seals(seals);
            }
        }
    }

    /// A neighbour's digest of one dataset: a differing root is answered
    /// with our bucket hashes, differing buckets with what we hold in them.
    fn on_digest(&mut self, link: LinkId, set: SetId, theirs: &[u64]) {
        let start = self.rng.random::<u32>() as usize;
        let Some(r) = self.replica(set) else {
            self.counters.unknown_sets += 1;
            debug!(link, set, "a digest of a dataset this node does not hold; skipped");
            return;
        };
        let reply = if theirs.len() == 1 {
            (theirs[0] != r.digest().root()).then(|| SyncMsg::Digest {
                sets: vec![(set, r.digest().buckets().to_vec())],
            })
        } else {
            // While a set changes fast (a mass start) most buckets differ;
            // a bounded number of entries per exchange keeps each one
            // cheap at any size.
            let differing = within_budget(r.digest().differing(theirs), r.len(), start);
            (!differing.is_empty()).then(|| {
                let have = if r.differs_with_entries() {
                    r.items_in(&differing)
                } else {
                    Items::Versions(r.versions_in(&differing))
                };
                SyncMsg::Differ {
                    set,
                    buckets: differing,
                    have,
                }
            })
        };
        if let Some(reply) = reply {
            self.queue(link, Lane::Control, Msg::Sync(reply));
        }
    }

    /// The answer to our digest: what the neighbour holds in the buckets
    /// that differ. Entries are applied, and ours for those buckets sent
    /// back; versions are compared, and each side gets what it lacks.
    fn on_differ(&mut self, link: LinkId, set: SetId, buckets: &[u16], have: Items) {
        let Some(r) = self.replica(set) else {
            self.counters.unknown_sets += 1;
            return;
        };
        // What to send back is read before theirs is applied: the records
        // we held, for the side that sent its own.
        let (send, apply, want, claimed) = match have {
            Items::Versions(theirs) => {
                let (send, want) = compare_versions(&r.versions_in(buckets), &theirs);
                (r.items_for(&send), None, want, theirs)
            }
            have => (r.items_in(buckets), Some(have), Vec::new(), Vec::new()),
        };
        // Sets differ: compare again soon, until they agree.
        self.anti_entropy_soon();
        if let Some(theirs) = apply {
            self.apply_items(Some(link), set, theirs, Source::AntiEntropy);
        }
        self.send_items(link, set, send);
        if !want.is_empty() {
            self.remember_claims(link, set, &want, &claimed);
            self.queue(link, Lane::Control, Msg::Sync(SyncMsg::Want { set, keys: want }));
        }
    }

    /// A neighbour said it holds these versions, and is asked for them:
    /// what it sends must match. Claims still open from an exchange long
    /// ago (`CLAIM_PATIENCE`) were never answered.
    fn remember_claims(&mut self, link: LinkId, set: SetId, want: &[Arc<str>], theirs: &[(Arc<str>, u64)]) {
        let now = self.now;
        let fresh: Vec<(Arc<str>, u64)> = theirs.iter().filter(|(k, _)| want.contains(k)).cloned().collect();
        let (since, open) = self.claims.remove(&(link, set)).unwrap_or((now, Vec::new()));
        let mut claims = if now.saturating_duration_since(since) > CLAIM_PATIENCE && !open.is_empty() {
            self.counters.sync_unanswered += open.len() as u64;
            let peer = self.links.get(&link).and_then(|l| l.peer_name().cloned());
            warn!(link, peer = ?peer.as_deref(), set, unanswered = open.len(),
                "a neighbour never sent entries it said it held; asking again");
            (now, Vec::new())
        } else {
            (since, open)
        };
        for claim in fresh {
            if claims.1.len() < MAX_CLAIMS && !claims.1.iter().any(|(k, _)| *k == claim.0) {
                claims.1.push(claim);
            }
        }
        self.claims.insert((link, set), claims);
    }

    /// Entries from a neighbour that it said it held: each must be the
    /// version it claimed. A mismatch is a neighbour whose digest lies (or,
    /// for states that change all the time, one that published anew in
    /// between); it is logged and counted, and the entries are judged by
    /// the dataset's rules as any others.
    fn check_claims(&mut self, link: LinkId, set: SetId, items: &Items) {
        let Some((since, claims)) = self.claims.remove(&(link, set)) else {
            return;
        };
        let sent = self.replica(set).map(|r| r.versions_of(items)).unwrap_or_default();
        let mut open = Vec::new();
        let mut mismatched = 0usize;
        for (key, claimed) in claims {
            match sent.iter().find(|(k, _)| *k == key) {
                Some((_, hash)) if *hash != claimed => mismatched += 1,
                Some(_) => {}
                None => open.push((key, claimed)),
            }
        }
        if mismatched > 0 {
            self.counters.sync_mismatches += mismatched as u64;
            let peer = self.links.get(&link).and_then(|l| l.peer_name().cloned());
            if set == SET_STATES {
                debug!(link, peer = ?peer.as_deref(), set, mismatched, "a neighbour sent newer states than it said it held");
            } else {
                warn!(link, peer = ?peer.as_deref(), set, mismatched,
                    "a neighbour sent other versions than its digest claimed");
            }
        }
        if !open.is_empty() {
            self.claims.insert((link, set), (since, open));
        }
    }

    fn on_want(&mut self, link: LinkId, set: SetId, keys: &[Arc<str>]) {
        let Some(r) = self.replica(set) else {
            self.counters.unknown_sets += 1;
            return;
        };
        let items = r.items_for(keys);
        self.send_items(link, set, items);
    }

    /// Queues `items` of `set` for `link`, states a few at a time.
    fn send_items(&mut self, link: LinkId, set: SetId, items: Items) {
        match items {
            Items::States(states) => {
                for chunk in states.chunks(STATES_PER_MESSAGE) {
                    let items = Items::States(chunk.to_vec());
                    self.queue(link, Lane::Bulk, Msg::Sync(SyncMsg::Items { set, items }));
                }
            }
            items if !items.is_empty() => self.queue(link, Lane::Bulk, Msg::Sync(SyncMsg::Items { set, items })),
            _ => {}
        }
    }

    /// Applies entries of a dataset by that dataset's rules. Entries of the
    /// wrong shape for the set are counted and dropped.
    pub(super) fn apply_items(&mut self, via: Option<LinkId>, set: SetId, items: Items, source: Source<'_>) {
        match (set, items) {
            (SET_MEMBERS, Items::Records(records)) => {
                let changed = self.apply_records(via, records, source);
                if source == Source::AntiEntropy && changed > 0 {
                    self.counters.anti_entropy_repairs += changed as u64;
                }
            }
            (SET_STATES, Items::States(states)) => {
                for state in states {
                    let _genuine = self.on_state(state);
                }
            }
            (set, Items::Entries(entries)) if self.held.contains_key(&set) => {
                self.take_entries(EntriesVia::Peer(via), set, entries)
            }
            (set, items) => {
                self.counters.unknown_sets += 1;
                debug!(
                    ?via,
                    set,
                    items = items.len(),
                    "entries for a dataset this node does not hold, or of the wrong shape; skipped"
                );
            }
        }
    }

    /// Applies member records (news about this node is answered, not
    /// applied); answers how many changed something.
    pub(super) fn apply_records(&mut self, via: Option<LinkId>, records: Vec<Record>, source: Source<'_>) -> usize {
        let mut changed = 0usize;
        for record in records {
            if record.id.name == self.me.name {
                self.about_me(&record, via);
                continue;
            }
            if !self.news_fits(via, &record) {
                continue;
            }
            let applied = self.apply(&record, source);
            if !matches!(applied, Applied::Stale | Applied::SameSuspicion) {
                changed += 1;
            }
        }
        changed
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
        self.states.set(&record, self.me.boot);
        self.seal_my_state(&record);
        let id = state_id(&record);
        let mut out = Vec::new();
        self.tree.broadcast(id, Payload::State(record), now, &mut out);
        self.tree_out(out);
        self.flush();
        Ok(())
    }

    /// A member's new state, by the tree or by anti-entropy: kept if it is
    /// for the boot of the member this node holds, newer, and sealed as its
    /// node's key requires. Answers false only for a forgery (a new state
    /// its keyed node did not seal), which the tree does not pass on; what
    /// this node cannot judge (a member it does not hold, another boot, a
    /// version it has) is not a forgery.
    pub(super) fn on_state(&mut self, state: Arc<StateRecord>) -> bool {
        if state.name == self.me.name {
            // Only this node publishes its states: one of this boot above
            // the last it published is forged.
            let forged = state.boot == self.me.boot && state.version > self.state_version;
            if forged {
                let name = state.name.clone();
                self.unproven(
                    &name,
                    Claim::Report(state.version),
                    "a status report this node never published",
                );
            }
            return !forged;
        }
        let Some(boot) = self.table.get(&state.name).map(|m| m.id.boot) else {
            return true;
        };
        if state.boot != boot || self.states.version(&state.name, boot) >= state.version {
            return true;
        }
        if !self.state_sealed(&state) {
            return false;
        }
        if self.states.set(&state, boot) {
            self.actions.push_back(Action::State {
                node: state.name.clone(),
                data: state.data.clone(),
            });
        }
        true
    }
}

/// The broadcast id of a state: the same state from two nodes is one message.
pub(super) fn state_id(state: &StateRecord) -> MsgId {
    use super::hash::{combine, name_hash};
    let hi = combine(combine(name_hash(&state.name), state.boot), state.version);
    let lo = combine(hi, 0x27d4_eb2f);
    (u128::from(hi) << 64) | u128::from(lo) | 1
}
