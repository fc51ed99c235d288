//! A bounded set of recently seen envelope ids, so duplicates are dropped
//! without remembering every id forever. The oldest id is forgotten first.

use std::collections::{HashSet, VecDeque};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct SeenIds {
    capacity: usize,
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
}

impl SeenIds {
    /// Room grows with use rather than up front: a hash set touches its
    /// memory at random, so 16,384 slots reserved at start were all resident
    /// (about 0.8 MiB) after a few hundred ids on an idle node.
    pub fn new(capacity: usize) -> SeenIds {
        SeenIds {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Records `id`; answers `true` if it is new, `false` if already seen.
    pub fn insert(&mut self, id: Uuid) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_capacity() {
        let mut seen = SeenIds::new(2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        assert!(seen.insert(ids[0]));
        assert!(!seen.insert(ids[0]), "a duplicate is reported");
        assert!(seen.insert(ids[1]));
        assert!(seen.insert(ids[2]));
        assert_eq!(seen.len(), 2);
        assert!(seen.insert(ids[0]), "the oldest was forgotten");
        assert!(!seen.insert(ids[2]));
    }
}
