//! One mechanism for every dataset that each node holds a copy of: the
//! member table, every node's published state, and the deployments table.
//!
//! Each dataset keeps a [`Digest`]: its entries hashed into
//! [`BUCKETS`] buckets, updated as entries change. Anti-entropy between two
//! neighbours then runs the same way for all of them (the core's `sync.rs`):
//!
//! 1. one side sends a digest: per dataset the root hash alone (quiet sets,
//!    so an unchanged 1,000-entry table costs 8 bytes a round) or every
//!    bucket's hash (the member table, which changes all the time);
//! 2. a differing root is answered with the bucket hashes;
//! 3. differing buckets are answered with what the other side holds in
//!    them: the entries themselves where they are small (member records),
//!    else their versions;
//! 4. each side sends the entries the other lacks or holds older, and asks
//!    for those it lacks; applying follows each dataset's own rules.
//!
//! A dataset only says how it digests and what it holds: [`Replicated`].

use super::hash::{combine, name_hash};
use crate::cluster::protocol::Items;
use std::sync::Arc;

/// Buckets of every dataset's digest.
pub const BUCKETS: usize = 64;
const _: () = assert!(BUCKETS <= 256, "a bucket number fits in a u8");

/// An exchange ships about this many entries at most: every differing
/// bucket in a small cluster, one or two in a large one.
pub const MAX_ITEMS_PER_EXCHANGE: usize = 256;

/// ... and this many when most buckets differ, as for a node that has just
/// joined a large cluster or during a mass start: at 10,000 members, one
/// bucket (about 156 records) per exchange every 200 ms made a joiner take
/// 8-10 s to list everyone.
pub const MAX_ITEMS_CATCHING_UP: usize = 2048;

/// The bucket an entry with this key falls in.
pub fn bucket_of(key: &str) -> usize {
    (name_hash(key) % BUCKETS as u64) as usize
}

/// A hash per bucket of what a node holds of one dataset: the XOR of its
/// entries' hashes, so adding and removing an entry is one XOR each, in any
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: [u64; BUCKETS],
}

impl Default for Digest {
    fn default() -> Digest {
        Digest { buckets: [0; BUCKETS] }
    }
}

impl Digest {
    /// Adds an entry's hash to `bucket`, or takes it out again.
    pub fn toggle(&mut self, bucket: usize, hash: u64) {
        self.buckets[bucket % BUCKETS] ^= hash;
    }

    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// One hash of every bucket.
    pub fn root(&self) -> u64 {
        self.buckets.iter().fold(0x243f_6a88_85a3_08d3, |h, b| combine(h, *b))
    }

    /// The buckets where `theirs` differs from ours (all of them if it has
    /// the wrong length).
    pub fn differing(&self, theirs: &[u64]) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|b| theirs.get(*b) != Some(&self.buckets[*b]))
            .map(|b| b as u16)
            .collect()
    }
}

/// Which buckets a list of bucket numbers names, ignoring numbers out of
/// range (a peer's word).
pub fn bucket_mask(buckets: &[u16]) -> [bool; BUCKETS] {
    let mut wanted = [false; BUCKETS];
    for b in buckets {
        if let Some(w) = wanted.get_mut(usize::from(*b)) {
            *w = true;
        }
    }
    wanted
}

/// The hash of one entry in its bucket: its key and a hash of its version.
pub fn entry_hash(key: &str, version: u64) -> u64 {
    combine(name_hash(key), version)
}

/// A dataset as anti-entropy sees it.
pub trait Replicated {
    fn digest(&self) -> &Digest;

    /// How many entries it holds.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an exchange opens with every bucket's hash rather than the
    /// root alone: for a set whose root would rarely match anyway.
    fn opens_with_buckets(&self) -> bool {
        false
    }

    /// Whether its entries are small enough to send where the buckets
    /// differ, rather than their versions first.
    fn differs_with_entries(&self) -> bool {
        false
    }

    /// Its entries in `buckets`.
    fn items_in(&self, buckets: &[u16]) -> Items;

    /// Its keys in `buckets`, each with a hash of the version held.
    fn versions_in(&self, buckets: &[u16]) -> Vec<(Arc<str>, u64)>;

    /// The entries held under `keys` (those it holds).
    fn items_for(&self, keys: &[Arc<str>]) -> Items;

    /// The key and version hash (as [`Replicated::versions_in`] gives
    /// them) of each entry in `items`, to check a peer sent what it said
    /// it holds.
    fn versions_of(&self, _items: &Items) -> Vec<(Arc<str>, u64)> {
        Vec::new()
    }
}

/// Of the differing `buckets`, the ones to settle in this exchange: all of
/// them while that is at most `MAX_ITEMS_PER_EXCHANGE` entries (or
/// `MAX_ITEMS_CATCHING_UP` when most buckets differ), else that many
/// buckets' worth, starting at `start`, so a large difference is settled a
/// part at a time without any one exchange growing with the set.
pub fn within_budget(mut buckets: Vec<u16>, entries: usize, start: usize) -> Vec<u16> {
    let per_bucket = entries.div_ceil(BUCKETS).max(1);
    let budget = if buckets.len() > BUCKETS / 2 {
        MAX_ITEMS_CATCHING_UP
    } else {
        MAX_ITEMS_PER_EXCHANGE
    };
    let most = (budget / per_bucket).max(1);
    if buckets.len() > most {
        let start = start % buckets.len();
        buckets.rotate_left(start);
        buckets.truncate(most);
    }
    buckets
}

/// Given what a peer holds in some buckets (key, version hash) and what we
/// hold there, the keys to send it (it lacks them or holds another
/// version) and the keys to ask it for (we lack them or hold another
/// version). Where both hold a version and they differ, each sends its
/// own, and each side keeps the newer by its dataset's rules.
pub fn compare_versions(ours: &[(Arc<str>, u64)], theirs: &[(Arc<str>, u64)]) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    use std::collections::HashMap;
    let mine: HashMap<&str, u64> = ours.iter().map(|(k, v)| (&**k, *v)).collect();
    let other: HashMap<&str, u64> = theirs.iter().map(|(k, v)| (&**k, *v)).collect();
    let send = ours
        .iter()
        .filter(|(k, v)| other.get(&**k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    let want = theirs
        .iter()
        .filter(|(k, v)| mine.get(&**k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    (send, want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_the_entries_not_the_order_they_came_in() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        let x = (bucket_of("x"), entry_hash("x", 1));
        let y = (bucket_of("y"), entry_hash("y", 2));
        a.toggle(x.0, x.1);
        a.toggle(y.0, y.1);
        b.toggle(y.0, y.1);
        b.toggle(x.0, x.1);
        assert_eq!(a, b);
        assert_eq!(a.root(), b.root());
        assert!(a.differing(b.buckets()).is_empty());
        // x moves to version 2 on b only.
        b.toggle(x.0, x.1);
        b.toggle(x.0, entry_hash("x", 2));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing(b.buckets()), [x.0 as u16]);
        assert_eq!(
            a.differing(&[1, 2]).len(),
            BUCKETS,
            "a digest of the wrong length differs everywhere"
        );
        // An empty set and a set whose entries cancel out agree.
        assert_eq!(Digest::default().root(), Digest::default().root());
    }

    #[test]
    fn large_differences_are_settled_a_part_at_a_time() {
        let all: Vec<u16> = (0..BUCKETS as u16).collect();
        // 64 entries, one per bucket: every bucket fits.
        assert_eq!(within_budget(all.clone(), 64, 0).len(), BUCKETS);
        // 10,000 entries (157 a bucket), all differing: 2048 / 157 = 13 buckets.
        let part = within_budget(all.clone(), 10_000, 5);
        assert_eq!(part.len(), 13);
        assert_eq!(part[0], 5, "from the start given");
        // A few differing buckets of a large set: 256 / 157 = 1.
        assert_eq!(within_budget(vec![3, 9, 12], 10_000, 1), [9]);
    }

    #[test]
    fn versions_compared_say_what_to_send_and_what_to_ask_for() {
        let v = |k: &str, h: u64| (Arc::<str>::from(k), h);
        let ours = [v("a", 1), v("b", 2), v("c", 3)];
        let theirs = [v("a", 1), v("b", 5), v("d", 4)];
        let (send, want) = compare_versions(&ours, &theirs);
        let names = |v: Vec<Arc<str>>| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(names(send), ["b", "c"]);
        assert_eq!(names(want), ["b", "d"]);
    }

    #[test]
    fn bucket_numbers_from_a_peer_out_of_range_are_ignored() {
        let mask = bucket_mask(&[0, 63, 64, 9999]);
        assert!(mask[0] && mask[63]);
        assert_eq!(mask.iter().filter(|b| **b).count(), 2);
    }
}
