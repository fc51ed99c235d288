//! The keyed datasets the core holds for the layers above (the deployments
//! table): writing an entry here, taking entries from peers by the owner's
//! rules, and pruning what the rules call obsolete. Replication itself is
//! `sync.rs`'s, as for every dataset.

use super::hash::{combine, name_hash};
use super::keyed::{EntryRules, HeldSet, Refused, Taken};
use super::{Action, ClusterCore, CoreError, LinkId};
use crate::cluster::protocol::{Entry, MsgId, Payload, SetId};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

impl ClusterCore {
    /// Holds keyed dataset `set`, whose entries `rules` admit and prune.
    pub fn hold(&mut self, set: SetId, rules: Box<dyn EntryRules>) {
        self.held.insert(set, HeldSet::new(rules));
    }

    /// The wall clock, in ms since the epoch, was `ms` at `now`. Keyed
    /// entries' versions are a hybrid clock: never below the wall clock,
    /// always above every version held.
    pub fn set_wall_clock(&mut self, ms: u64, now: Instant) {
        self.wall_ms = ms;
        self.wall_at = now;
    }

    /// The wall clock now, by the core's own clock.
    pub(super) fn wall_now(&self) -> u64 {
        self.wall_ms
            .saturating_add(self.now.saturating_duration_since(self.wall_at).as_millis() as u64)
    }

    /// Every entry held of `set`.
    pub fn entries(&self, set: SetId) -> Vec<Arc<Entry>> {
        self.held
            .get(&set)
            .map(|h| h.entries.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many entries of `set` are held (without copying them).
    pub fn entry_count(&self, set: SetId) -> usize {
        self.held.get(&set).map_or(0, |h| h.entries.len())
    }

    /// Writes a new version of `key` in `set` from this node, and spreads
    /// it to every node. Its version is above every version held, so it
    /// wins wherever it arrives (unless another node wrote the same key at
    /// the same moment: then the higher origin name wins everywhere).
    ///
    /// `clock` is the version's clock when the writer chose it (it signed
    /// the body for that version); else the core chooses.
    pub fn write_entry(
        &mut self,
        set: SetId,
        key: &str,
        body: Bytes,
        clock: Option<u64>,
        now: Instant,
    ) -> Result<Arc<Entry>, CoreError> {
        self.now = now;
        self.check_size("entry", body.len() + key.len())?;
        let wall = self.wall_now();
        let held = self.held.get_mut(&set).ok_or(CoreError::UnknownSet(set))?;
        let entry = held
            .write(key, body, &self.me.name, wall, clock)
            .map_err(|why| match why {
                Refused::Invalid(why) => CoreError::Refused(why),
                Refused::Obsolete => CoreError::Refused("a newer entry already supersedes it".into()),
            })?;
        let clock = entry.version.clock;
        self.counters.entries_taken += 1;
        info!(set, key, clock, "wrote a dataset entry; spreading it");
        self.actions.push_back(Action::Entries {
            set,
            changed: vec![entry.clone()],
            removed: Vec::new(),
        });
        let id = entry_id(set, &entry);
        let mut out = Vec::new();
        self.tree.broadcast(
            id,
            Payload::Entry {
                set,
                entry: entry.clone(),
            },
            now,
            &mut out,
        );
        self.tree_out(out);
        self.flush();
        Ok(entry)
    }

    /// Entries this node kept on disk, taken at start before any peer's:
    /// the node has its table before it reconciles. Answers how many were
    /// taken.
    pub fn load_entries(&mut self, set: SetId, entries: Vec<Arc<Entry>>, now: Instant) -> usize {
        self.now = now;
        let before = self.counters.entries_taken;
        self.take_entries(EntriesVia::Disk, set, entries);
        (self.counters.entries_taken - before) as usize
    }

    /// Entries of `set` from a peer (by the tree or by anti-entropy), or
    /// from disk: each is taken by the dataset's rules, and what changed is
    /// handed to the driver.
    pub(super) fn take_entries(&mut self, via: EntriesVia, set: SetId, entries: Vec<Arc<Entry>>) {
        let wall = self.wall_now();
        let Some(held) = self.held.get_mut(&set) else {
            self.counters.unknown_sets += 1;
            debug!(?via, set, "entries of a dataset this node does not hold; skipped");
            return;
        };
        let mut changed = Vec::new();
        let mut refused = Vec::new();
        for entry in entries {
            match held.take(entry.clone(), wall) {
                Taken::New => changed.push(entry),
                Taken::Stale => {}
                Taken::Refused(Refused::Obsolete) => self.counters.entries_obsolete += 1,
                Taken::Refused(Refused::Invalid(why)) => {
                    self.counters.entries_refused += 1;
                    warn!(?via, set, key = %entry.key, origin = %entry.version.origin, clock = entry.version.clock,
                        reason = %why, "refused a dataset entry from a peer; it is not held or spread");
                    if via != EntriesVia::Disk {
                        refused.push((entry, why));
                    }
                }
            }
        }
        if !changed.is_empty() {
            self.counters.entries_taken += changed.len() as u64;
            debug!(?via, set, taken = changed.len(), "took dataset entries");
            self.actions.push_back(Action::Entries {
                set,
                changed,
                removed: Vec::new(),
            });
        }
        if !refused.is_empty() {
            self.actions.push_back(Action::EntriesRefused { set, refused });
        }
    }

    /// Drops the entries each dataset's rules call obsolete.
    pub(super) fn prune_entries(&mut self) {
        let wall = self.wall_now();
        let mut pruned = Vec::new();
        for (set, held) in &mut self.held {
            let removed = held.prune(wall);
            if !removed.is_empty() {
                pruned.push((*set, removed));
            }
        }
        for (set, removed) in pruned {
            self.counters.entries_pruned += removed.len() as u64;
            debug!(set, pruned = removed.len(), "pruned obsolete dataset entries");
            self.actions.push_back(Action::Entries {
                set,
                changed: Vec::new(),
                removed,
            });
        }
    }
}

/// Where entries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntriesVia {
    /// This node's own table file.
    Disk,
    /// A peer: by anti-entropy over this link, or by the broadcast tree
    /// (`None`: a broadcast is passed on by many).
    Peer(Option<LinkId>),
}

/// The broadcast id of an entry's version: the same version from two nodes
/// is one message.
pub(super) fn entry_id(set: SetId, entry: &Entry) -> MsgId {
    let hi = combine(
        combine(name_hash(&entry.key), u64::from(set)),
        combine(entry.version.clock, name_hash(&entry.version.origin)),
    );
    let lo = combine(hi, 0x1656_67b1);
    (u128::from(hi) << 64) | u128::from(lo) | 2
}
