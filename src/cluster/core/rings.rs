//! The overlay: which few members this node links to.
//!
//! Every node knows every live member, so it does not need HyParView's
//! random walks to pick its partial view: it takes it from `K` hash rings
//! over the member list, as Rapid does for its monitoring graph. On ring `r`
//! the members are ordered by `hash(name, r)`; this node's *subjects* are
//! its successors on each ring (the members it probes), its *observers* its
//! predecessors (the members that probe it), and its neighbours both.
//!
//! So every live member has exactly `K` observers, whatever the size of the
//! cluster; every node holds at most `2K` overlay links; each ring alone is
//! a cycle through every member, so the overlay is connected as soon as the
//! views agree; and a join or a death changes the neighbours of only `2K`
//! nodes. Neighbours are kept incrementally: adding a member is `O(K)`, and
//! only losing a current neighbour costs a scan of the table.

use super::hash::{name_hash, ring_position};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Closest {
    distance: u64,
    name: Arc<str>,
}

/// This node's neighbours on `K` rings.
#[derive(Debug, Clone)]
pub struct Rings {
    me: Arc<str>,
    mine: Vec<u64>,
    succ: Vec<Option<Closest>>,
    pred: Vec<Option<Closest>>,
    /// Distinct successors, kept current (read on every probe).
    subjects: Vec<Arc<str>>,
}

impl Rings {
    pub fn new(me: &Arc<str>, rings: usize) -> Rings {
        let h = name_hash(me);
        let k = rings.max(1);
        Rings {
            me: me.clone(),
            mine: (0..k).map(|r| ring_position(h, r)).collect(),
            succ: vec![None; k],
            pred: vec![None; k],
            subjects: Vec::new(),
        }
    }

    pub fn count(&self) -> usize {
        self.mine.len()
    }

    /// A member became live; answers whether the neighbours changed.
    pub fn add(&mut self, name: &Arc<str>) -> bool {
        if *name == self.me {
            return false;
        }
        let h = name_hash(name);
        let mut changed = false;
        for r in 0..self.mine.len() {
            let p = ring_position(h, r);
            changed |= closer(&mut self.succ[r], p.wrapping_sub(self.mine[r]), name);
            changed |= closer(&mut self.pred[r], self.mine[r].wrapping_sub(p), name);
        }
        if changed {
            self.subjects = distinct(self.succ.iter());
        }
        changed
    }

    /// A member is no longer live. If it was a neighbour, its place is found
    /// again among `live` (every live member). Answers whether the
    /// neighbours changed.
    pub fn remove<'a>(&mut self, name: &str, live: impl Iterator<Item = &'a Arc<str>> + Clone) -> bool {
        let mut rescan = Vec::new();
        for r in 0..self.mine.len() {
            for (slot, is_succ) in [(&mut self.succ[r], true), (&mut self.pred[r], false)] {
                if slot.as_ref().is_some_and(|c| &*c.name == name) {
                    *slot = None;
                    rescan.push((r, is_succ));
                }
            }
        }
        if rescan.is_empty() {
            return false;
        }
        for candidate in live.filter(|n| &***n != name && **n != self.me) {
            let h = name_hash(candidate);
            for (r, is_succ) in &rescan {
                let p = ring_position(h, *r);
                if *is_succ {
                    closer(&mut self.succ[*r], p.wrapping_sub(self.mine[*r]), candidate);
                } else {
                    closer(&mut self.pred[*r], self.mine[*r].wrapping_sub(p), candidate);
                }
            }
        }
        self.subjects = distinct(self.succ.iter());
        true
    }

    /// The members this node probes: its successors, each once.
    pub fn subjects(&self) -> &[Arc<str>] {
        &self.subjects
    }

    /// Whether this node is one of `name`'s observers.
    pub fn is_subject(&self, name: &str) -> bool {
        self.subjects.iter().any(|n| &**n == name)
    }

    /// Successors and predecessors, each once.
    pub fn neighbours(&self) -> Vec<Arc<str>> {
        distinct(self.succ.iter().chain(self.pred.iter()))
    }
}

/// The distinct members that observe `name` (its predecessors on each of
/// `rings` rings) among `live`. A scan of the table: used rarely.
pub fn observers_of<'a>(name: &str, rings: usize, live: impl Iterator<Item = &'a Arc<str>>) -> Vec<Arc<str>> {
    let h = name_hash(name);
    let target: Vec<u64> = (0..rings.max(1)).map(|r| ring_position(h, r)).collect();
    let mut best: Vec<Option<Closest>> = vec![None; target.len()];
    for candidate in live.filter(|n| &***n != name) {
        let hc = name_hash(candidate);
        for (r, slot) in best.iter_mut().enumerate() {
            closer(slot, target[r].wrapping_sub(ring_position(hc, r)), candidate);
        }
    }
    distinct(best.iter())
}

/// Takes `name` into `slot` if it is closer; answers whether it did.
fn closer(slot: &mut Option<Closest>, distance: u64, name: &Arc<str>) -> bool {
    if distance == 0 {
        return false;
    }
    match slot {
        Some(c) if c.distance <= distance => false,
        _ => {
            *slot = Some(Closest {
                distance,
                name: name.clone(),
            });
            true
        }
    }
}

fn distinct<'a>(slots: impl Iterator<Item = &'a Option<Closest>>) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for c in slots.flatten() {
        if !out.contains(&c.name) {
            out.push(c.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    fn names(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("n{i}").as_str())).collect()
    }

    fn build(me: &Arc<str>, all: &[Arc<str>], k: usize) -> Rings {
        let mut rings = Rings::new(me, k);
        for n in all {
            rings.add(n);
        }
        rings
    }

    #[test]
    fn every_member_has_k_observers_and_the_overlay_is_connected() {
        let all = names(200);
        let k = 4;
        let rings: BTreeMap<Arc<str>, Rings> = all.iter().map(|n| (n.clone(), build(n, &all, k))).collect();
        let mut observers: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for r in rings.values() {
            assert!(r.subjects().len() <= k);
            assert!(r.neighbours().len() <= 2 * k);
            for s in r.subjects() {
                *observers.entry(s.clone()).or_default() += 1;
            }
        }
        // Distinct observers per member: between 1 and K (rings may share one).
        assert_eq!(observers.len(), all.len(), "every member is probed by someone");
        assert!(observers.values().all(|c| (1..=k).contains(c)));
        // Neighbourship is symmetric, and the graph is connected.
        for (name, r) in &rings {
            for n in r.neighbours() {
                assert!(rings[&n].neighbours().contains(name), "{name} -> {n} but not back");
            }
        }
        let mut seen = BTreeSet::from([all[0].clone()]);
        let mut queue = VecDeque::from([all[0].clone()]);
        while let Some(n) = queue.pop_front() {
            for m in rings[&n].neighbours() {
                if seen.insert(m.clone()) {
                    queue.push_back(m);
                }
            }
        }
        assert_eq!(seen.len(), all.len());
    }

    #[test]
    fn removing_a_neighbour_finds_the_next_one_like_a_fresh_build() {
        let all = names(50);
        let me = all[0].clone();
        let mut rings = build(&me, &all, 3);
        let gone = rings.subjects()[0].clone();
        let live: Vec<Arc<str>> = all.iter().filter(|n| **n != gone).cloned().collect();
        assert!(rings.remove(&gone, live.iter()));
        let fresh = build(&me, &live, 3);
        assert_eq!(rings.subjects(), fresh.subjects());
        assert_eq!(rings.neighbours(), fresh.neighbours());
        assert!(!rings.remove("not-a-neighbour", live.iter()));
    }

    #[test]
    fn observers_are_exactly_the_members_that_hold_it_as_subject() {
        let all = names(40);
        for target in &all[..5] {
            let mut holders: Vec<Arc<str>> = all
                .iter()
                .filter(|n| build(n, &all, 4).is_subject(target))
                .cloned()
                .collect();
            let mut observers = observers_of(target, 4, all.iter());
            holders.sort();
            observers.sort();
            assert_eq!(holders, observers, "observers of {target}");
        }
    }

    #[test]
    fn a_small_cluster_links_everyone() {
        let all = names(3);
        let rings = build(&all[0], &all, 4);
        let mut n = rings.neighbours();
        n.sort();
        assert_eq!(n, vec![all[1].clone(), all[2].clone()]);
    }
}
