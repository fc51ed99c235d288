//! Ids seen lately, for dedup, in two generations instead of a timestamp
//! per id.
//!
//! A simultaneous start of 10,000 nodes sends each node 10,000 ids within a
//! few seconds; with a time-ordered queue beside the set each id cost about
//! 37 bytes, and the queue kept its peak size forever. Here an id costs its
//! slot in one set, and a whole generation is dropped at once.

use super::hash::StableSet;
use std::time::{Duration, Instant};

/// Remembers each id for at least `ttl` and at most twice that.
pub struct RecentIds {
    ttl: Duration,
    new: StableSet<u64>,
    old: StableSet<u64>,
    /// When `new` started; `None` until the first id.
    started: Option<Instant>,
}

impl RecentIds {
    pub fn new(ttl: Duration) -> RecentIds {
        RecentIds {
            ttl,
            new: StableSet::default(),
            old: StableSet::default(),
            started: None,
        }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.new.contains(&id) || self.old.contains(&id)
    }

    /// Adds `id`; answers false if it was already there.
    pub fn insert(&mut self, id: u64, now: Instant) -> bool {
        if self.old.contains(&id) {
            return false;
        }
        self.started.get_or_insert(now);
        self.new.insert(id)
    }

    /// Drops the older generation once the newer one is `ttl` old, so every
    /// id in it was held at least `ttl`.
    pub fn expire(&mut self, now: Instant) {
        let Some(started) = self.started else { return };
        if now.saturating_duration_since(started) < self.ttl {
            return;
        }
        self.old = std::mem::take(&mut self.new);
        self.started = (!self.old.is_empty()).then_some(now);
    }

    pub fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Roughly the bytes held: the sets' slots, used or not.
    pub fn heap_bytes(&self) -> usize {
        (self.new.capacity() + self.old.capacity()) * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_held_at_least_ttl_and_forgotten_within_twice_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(20);
        let mut ids = RecentIds::new(ttl);
        assert!(ids.insert(1, t0));
        assert!(!ids.insert(1, t0), "a repeat is refused");
        // Just before the generation turns, a second id arrives.
        assert!(ids.insert(2, t0 + ttl - Duration::from_millis(1)));
        ids.expire(t0 + ttl);
        assert!(ids.contains(1) && ids.contains(2), "both held at least ttl so far");
        assert!(!ids.insert(2, t0 + ttl), "still a repeat after one turn");
        ids.expire(t0 + ttl + ttl / 2);
        assert!(ids.contains(2), "not yet ttl after the turn");
        ids.expire(t0 + 2 * ttl);
        assert!(!ids.contains(1) && !ids.contains(2));
        assert!(ids.is_empty());
        assert!(ids.insert(1, t0 + 2 * ttl), "a forgotten id is new again");
    }

    #[test]
    fn an_idle_set_gives_its_room_back() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let mut ids = RecentIds::new(ttl);
        for i in 0..10_000 {
            ids.insert(i, t0);
        }
        assert!(ids.heap_bytes() >= 10_000 * 9);
        ids.expire(t0 + ttl);
        ids.expire(t0 + 2 * ttl);
        assert_eq!(ids.len(), 0);
        assert_eq!(ids.heap_bytes(), 0, "both generations were dropped, not cleared");
    }
}
