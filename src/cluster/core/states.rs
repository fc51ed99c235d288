//! Every node's latest published state (its status report), one per
//! member, as a replicated dataset: the versions of one boot only grow, and
//! a new boot's state replaces the old boot's.

use super::hash::name_hash;
use super::replica::{bucket_mask, bucket_of, entry_hash, Digest, Replicated};
use crate::cluster::protocol::{Items, StateRecord};
use hashbrown::hash_table::{Entry, HashTable};
use std::sync::Arc;

/// The states this node holds, keyed by node name. An entry is one pointer
/// (the record holds its name), so holding every node's state costs a
/// node little beyond the states themselves.
#[derive(Default)]
pub struct StateTable {
    states: HashTable<Arc<StateRecord>>,
    digest: Digest,
}

fn key(state: &Arc<StateRecord>) -> u64 {
    name_hash(&state.name)
}

/// The hash of a state in the digest: its node, boot and version.
fn hash_of(state: &StateRecord) -> u64 {
    entry_hash(&state.name, super::hash::combine(state.boot, state.version))
}

impl StateTable {
    pub fn get(&self, name: &str) -> Option<&Arc<StateRecord>> {
        self.states.find(name_hash(name), |s| &*s.name == name)
    }

    /// The version held of `name`'s state at `boot`, 0 for none.
    pub fn version(&self, name: &str, boot: u64) -> u64 {
        self.get(name).filter(|s| s.boot == boot).map_or(0, |s| s.version)
    }

    /// Keeps `state` if it is for `boot` (the boot of the member as this
    /// node holds it) and newer than what is held. Answers whether it was
    /// kept.
    pub fn set(&mut self, state: &Arc<StateRecord>, boot: u64) -> bool {
        if state.boot != boot {
            return false;
        }
        let held = self.get(&state.name).map(|s| (s.boot, s.version));
        if held.is_some_and(|(b, v)| b == state.boot && v >= state.version) {
            return false;
        }
        self.digest.toggle(bucket_of(&state.name), hash_of(state));
        let old = match self.states.entry(key(state), |s| s.name == state.name, key) {
            Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), state.clone())),
            Entry::Vacant(e) => {
                e.insert(state.clone());
                None
            }
        };
        if let Some(old) = old {
            self.digest.toggle(bucket_of(&old.name), hash_of(&old));
        }
        true
    }

    /// Forgets `name`'s state (the member is gone, or another boot of it
    /// took over).
    pub fn remove(&mut self, name: &str) {
        if let Ok(entry) = self.states.find_entry(name_hash(name), |s| &*s.name == name) {
            let (old, _) = entry.remove();
            self.digest.toggle(bucket_of(&old.name), hash_of(&old));
        }
    }

    /// Roughly the bytes held (for the simulator and `debug dump`).
    pub fn heap_bytes(&self) -> usize {
        self.states.iter().map(|s| 9 + s.data.len() + 64).sum()
    }
}

impl Replicated for StateTable {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn len(&self) -> usize {
        self.states.len()
    }

    fn items_in(&self, buckets: &[u16]) -> Items {
        let mask = bucket_mask(buckets);
        Items::States(
            self.states
                .iter()
                .filter(|s| mask[bucket_of(&s.name)])
                .cloned()
                .collect(),
        )
    }

    fn versions_in(&self, buckets: &[u16]) -> Vec<(Arc<str>, u64)> {
        let mask = bucket_mask(buckets);
        self.states
            .iter()
            .filter(|s| mask[bucket_of(&s.name)])
            .map(|s| (s.name.clone(), hash_of(s)))
            .collect()
    }

    fn items_for(&self, keys: &[Arc<str>]) -> Items {
        Items::States(keys.iter().filter_map(|k| self.get(k)).cloned().collect())
    }

    fn versions_of(&self, items: &Items) -> Vec<(Arc<str>, u64)> {
        match items {
            Items::States(states) => states.iter().map(|s| (s.name.clone(), hash_of(s))).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn state(name: &str, boot: u64, version: u64) -> Arc<StateRecord> {
        Arc::new(StateRecord {
            name: name.into(),
            boot,
            version,
            data: Bytes::from_static(b"report"),
        })
    }

    #[test]
    fn a_state_is_kept_per_boot_and_only_if_newer() {
        let mut t = StateTable::default();
        assert!(t.set(&state("x", 1, 2), 1));
        assert!(!t.set(&state("x", 1, 1), 1), "older version");
        assert!(!t.set(&state("x", 1, 2), 1), "the same version");
        assert!(!t.set(&state("x", 9, 5), 1), "a boot the member table does not hold");
        assert_eq!(t.version("x", 1), 2);
        let before = t.digest().clone();
        assert!(t.set(&state("x", 1, 3), 1));
        assert_ne!(&before, t.digest(), "a new version shows in the digest");
        // The member restarted: its new boot's first state replaces the old.
        assert!(t.set(&state("x", 2, 1), 2));
        assert_eq!(t.version("x", 1), 0);
        assert_eq!(t.version("x", 2), 1);
    }

    #[test]
    fn two_tables_with_the_same_states_agree_and_removal_undoes_a_state() {
        let mut a = StateTable::default();
        let mut b = StateTable::default();
        a.set(&state("x", 1, 1), 1);
        a.set(&state("y", 1, 4), 1);
        b.set(&state("y", 1, 4), 1);
        assert_ne!(a.digest(), b.digest());
        let differing = a.digest().differing(b.digest().buckets());
        let versions = a.versions_in(&differing);
        assert_eq!(versions.len(), 1);
        assert_eq!(&*versions[0].0, "x");
        let Items::States(sent) = a.items_for(&[versions[0].0.clone()]) else {
            panic!()
        };
        b.set(&sent[0], 1);
        assert_eq!(a.digest(), b.digest());
        a.remove("x");
        b.remove("x");
        a.remove("nobody");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.len(), 1);
    }
}
