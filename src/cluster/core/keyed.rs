//! A keyed dataset that every node holds a copy of, for what lives above
//! the cluster (the deployments table): entries under keys, the newer
//! version of a key wins, and the dataset's owner says which entries may be
//! held ([`EntryRules`]). The core replicates it by anti-entropy and
//! spreads new entries along the broadcast tree; it never reads a body.

use super::replica::{bucket_mask, bucket_of, entry_hash, Digest, Replicated};
use crate::cluster::protocol::{Entry, Items, Version};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why an entry is not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// It breaks the dataset's rules (a malformed body, a bad field, a
    /// version from the future): logged and counted as bad input.
    Invalid(String),
    /// It is valid, but a newer entry already makes it pointless (a deploy
    /// superseded and pruned here, arriving again from a peer that has not
    /// pruned it yet): dropped quietly.
    Obsolete,
}

/// The owner's rules of a keyed dataset.
pub trait EntryRules: Send {
    /// Whether `entry` may be held, given what is held and the time.
    fn check(&self, entry: &Entry, held: &KeyedSet, now_ms: u64) -> Result<(), Refused>;

    /// The keys of held entries no longer needed (superseded, or expired).
    fn obsolete(&self, held: &KeyedSet, now_ms: u64) -> Vec<Arc<str>>;
}

/// Rules that admit every entry and prune none: for a dataset whose
/// bodies mean nothing (the simulator's, the core's tests).
pub struct AnyEntry;

impl EntryRules for AnyEntry {
    fn check(&self, _entry: &Entry, _held: &KeyedSet, _now_ms: u64) -> Result<(), Refused> {
        Ok(())
    }

    fn obsolete(&self, _held: &KeyedSet, _now_ms: u64) -> Vec<Arc<str>> {
        Vec::new()
    }
}

/// The entries held of one keyed dataset, with their digest.
#[derive(Default)]
pub struct KeyedSet {
    entries: BTreeMap<Arc<str>, Arc<Entry>>,
    digest: Digest,
}

fn version_hash(version: &Version) -> u64 {
    super::hash::combine(version.clock, super::hash::name_hash(&version.origin))
}

fn hash_of(entry: &Entry) -> u64 {
    entry_hash(&entry.key, version_hash(&entry.version))
}

impl KeyedSet {
    pub fn get(&self, key: &str) -> Option<&Arc<Entry>> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest clock of any version held (0 for none).
    pub fn max_clock(&self) -> u64 {
        self.entries.values().map(|e| e.version.clock).max().unwrap_or(0)
    }

    /// Whether `entry` is newer than what is held under its key.
    pub fn is_newer(&self, entry: &Entry) -> bool {
        self.entries
            .get(&entry.key)
            .is_none_or(|held| entry.version > held.version)
    }

    /// Holds `entry` if it is newer than what is held under its key;
    /// answers whether it was taken.
    pub fn insert(&mut self, entry: Arc<Entry>) -> bool {
        if !self.is_newer(&entry) {
            return false;
        }
        self.digest.toggle(bucket_of(&entry.key), hash_of(&entry));
        if let Some(old) = self.entries.insert(entry.key.clone(), entry) {
            self.digest.toggle(bucket_of(&old.key), hash_of(&old));
        }
        true
    }

    pub fn remove(&mut self, key: &str) -> Option<Arc<Entry>> {
        let old = self.entries.remove(key)?;
        self.digest.toggle(bucket_of(&old.key), hash_of(&old));
        Some(old)
    }

    /// Roughly the bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| 96 + e.key.len() + e.body.len() + e.version.origin.len())
            .sum()
    }
}

impl Replicated for KeyedSet {
    fn digest(&self) -> &Digest {
        &self.digest
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn items_in(&self, buckets: &[u16]) -> Items {
        let mask = bucket_mask(buckets);
        Items::Entries(
            self.entries
                .values()
                .filter(|e| mask[bucket_of(&e.key)])
                .cloned()
                .collect(),
        )
    }

    fn versions_in(&self, buckets: &[u16]) -> Vec<(Arc<str>, u64)> {
        let mask = bucket_mask(buckets);
        self.entries
            .values()
            .filter(|e| mask[bucket_of(&e.key)])
            .map(|e| (e.key.clone(), version_hash(&e.version)))
            .collect()
    }

    fn items_for(&self, keys: &[Arc<str>]) -> Items {
        Items::Entries(keys.iter().filter_map(|k| self.entries.get(k)).cloned().collect())
    }

    fn versions_of(&self, items: &Items) -> Vec<(Arc<str>, u64)> {
        match items {
            Items::Entries(entries) => entries
                .iter()
                .map(|e| (e.key.clone(), version_hash(&e.version)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A keyed dataset this node holds, with its owner's rules.
pub struct HeldSet {
    pub entries: KeyedSet,
    pub rules: Box<dyn EntryRules>,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Held now (new, or newer than the one held).
    New,
    /// Held already, or older than the one held.
    Stale,
    Refused(Refused),
}

impl HeldSet {
    pub fn new(rules: Box<dyn EntryRules>) -> HeldSet {
        HeldSet {
            entries: KeyedSet::default(),
            rules,
        }
    }

    /// Applies one entry by the rules.
    pub fn take(&mut self, entry: Arc<Entry>, now_ms: u64) -> Taken {
        if !self.entries.is_newer(&entry) {
            return Taken::Stale;
        }
        if let Err(why) = self.rules.check(&entry, &self.entries, now_ms) {
            return Taken::Refused(why);
        }
        self.entries.insert(entry);
        Taken::New
    }

    /// A new version of `key`, written by `origin`: its clock is the wall
    /// clock, or above every version held if that is higher (a hybrid
    /// clock), so it wins wherever it arrives; or `clock`, when the writer
    /// signed the body for that version (see [`next_clock`]). Held once the
    /// rules admit it.
    pub fn write(
        &mut self,
        key: &str,
        body: bytes::Bytes,
        origin: &Arc<str>,
        now_ms: u64,
        clock: Option<u64>,
    ) -> Result<Arc<Entry>, Refused> {
        let clock = clock.unwrap_or_else(|| next_clock(now_ms, self.entries.max_clock()));
        let entry = Arc::new(Entry {
            key: key.into(),
            version: Version {
                clock,
                origin: origin.clone(),
            },
            body,
        });
        match self.take(entry.clone(), now_ms) {
            Taken::New => Ok(entry),
            Taken::Stale => Err(Refused::Obsolete),
            Taken::Refused(why) => Err(why),
        }
    }

    /// Drops what the rules call obsolete; answers the keys dropped.
    pub fn prune(&mut self, now_ms: u64) -> Vec<Arc<str>> {
        let gone = self.rules.obsolete(&self.entries, now_ms);
        gone.into_iter().filter(|k| self.entries.remove(k).is_some()).collect()
    }
}

/// The clock of a new version written at wall time `now_ms` into a set
/// whose highest version clock is `max_clock`.
pub fn next_clock(now_ms: u64, max_clock: u64) -> u64 {
    now_ms.max(max_clock.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(key: &str, clock: u64, origin: &str, body: &'static [u8]) -> Arc<Entry> {
        Arc::new(Entry {
            key: key.into(),
            version: Version {
                clock,
                origin: origin.into(),
            },
            body: Bytes::from_static(body),
        })
    }

    /// Refuses bodies that say "bad", and calls "old" obsolete.
    struct Rules;
    impl EntryRules for Rules {
        fn check(&self, entry: &Entry, _held: &KeyedSet, _now_ms: u64) -> Result<(), Refused> {
            match &entry.body[..] {
                b"bad" => Err(Refused::Invalid("a bad body".into())),
                b"old" => Err(Refused::Obsolete),
                _ => Ok(()),
            }
        }
        fn obsolete(&self, held: &KeyedSet, _now_ms: u64) -> Vec<Arc<str>> {
            held.iter()
                .filter(|e| &e.body[..] == b"expired")
                .map(|e| e.key.clone())
                .collect()
        }
    }

    #[test]
    fn the_newer_version_of_a_key_wins_whatever_the_order() {
        let mut a = HeldSet::new(Box::new(Rules));
        let mut b = HeldSet::new(Box::new(Rules));
        let v1 = entry("k", 5, "n1", b"one");
        let v2 = entry("k", 5, "n2", b"two");
        assert_eq!(a.take(v1.clone(), 0), Taken::New);
        assert_eq!(a.take(v2.clone(), 0), Taken::New, "same clock: the higher origin wins");
        assert_eq!(b.take(v2.clone(), 0), Taken::New);
        assert_eq!(b.take(v1, 0), Taken::Stale);
        assert_eq!(a.entries.get("k").unwrap().body, v2.body);
        assert_eq!(a.entries.digest(), b.entries.digest());
        assert_eq!(a.take(v2, 0), Taken::Stale, "held already");
        assert_eq!(a.entries.max_clock(), 5);
    }

    #[test]
    fn the_rules_refuse_and_prune() {
        let mut s = HeldSet::new(Box::new(Rules));
        assert_eq!(
            s.take(entry("x", 1, "n", b"bad"), 0),
            Taken::Refused(Refused::Invalid("a bad body".into()))
        );
        assert_eq!(s.take(entry("y", 1, "n", b"old"), 0), Taken::Refused(Refused::Obsolete));
        assert!(s.entries.is_empty());
        s.take(entry("z", 1, "n", b"expired"), 0);
        s.take(entry("w", 1, "n", b"fine"), 0);
        let empty = KeyedSet::default();
        assert_ne!(s.entries.digest(), empty.digest());
        assert_eq!(s.prune(0), vec![Arc::<str>::from("z")]);
        assert_eq!(s.entries.len(), 1);
        let mut only_w = KeyedSet::default();
        only_w.insert(entry("w", 1, "n", b"fine"));
        assert_eq!(s.entries.digest(), only_w.digest(), "a pruned entry leaves the digest");
    }

    #[test]
    fn versions_and_entries_are_read_by_bucket() {
        let mut s = KeyedSet::default();
        for i in 0..200 {
            s.insert(entry(&format!("key-{i}"), i, "n", b"{}"));
        }
        let all: Vec<u16> = (0..super::super::replica::BUCKETS as u16).collect();
        assert_eq!(s.versions_in(&all).len(), 200);
        let one = [bucket_of("key-7") as u16];
        let Items::Entries(in_one) = s.items_in(&one) else {
            panic!()
        };
        assert!(in_one.iter().any(|e| &*e.key == "key-7"));
        assert!(in_one.len() < 200);
        let Items::Entries(asked) = s.items_for(&["key-3".into(), "nope".into()]) else {
            panic!()
        };
        assert_eq!(asked.len(), 1);
    }
}
