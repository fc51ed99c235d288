//! Passing over a suspect on the rings.
//!
//! The rings give every live member `rings` observers, but only observers
//! that probe watch anything. A member that never probes (a crashed
//! process, or one of many members that a peer holding the cluster key
//! invented, on a fleet that does not require admission) leaves the
//! members behind it on each ring unwatched. Invented members on both
//! sides of a real one hid its crash: 500 of them beside three real nodes
//! kept a killed node listed alive for 529 s, until enough of them had
//! died one by one as each real node's subject.
//!
//! So while this node suspects a member it accused itself, it passes over
//! that member on its rings: the next member on each ring takes its place
//! among this node's subjects and neighbours. When no link to the suspect
//! could be opened and the failed probe's helpers all answered that they
//! could not reach it either (so this node's own network is not the
//! cause), the member that comes next is probed at once, out of turn;
//! otherwise (a probe lost on a lossy link, say) the walk goes at the
//! normal, health-stretched pace of probes. A suspect is taken back when it
//! refutes, and dropped when it dies. Other nodes' rings do not change:
//! they still hold the suspect as a subject, so they confirm it as before.

use super::ClusterCore;
use std::sync::Arc;
use tracing::debug;

impl ClusterCore {
    /// This node accused `name`: pass over it on the rings while the
    /// suspicion runs. `walk_on`: probe the members that take its place
    /// at once.
    pub(super) fn pass_over(&mut self, name: &Arc<str>, walk_on: bool) {
        if !self.passed_over.insert(name.clone()) {
            return;
        }
        let before = self.rings.subjects().to_vec();
        let live = self.ring_members();
        if !self.rings.remove(name, live.iter()) {
            return;
        }
        self.counters.passed_over += 1;
        self.overlay_dirty = true;
        let next: Vec<Arc<str>> = self
            .rings
            .subjects()
            .iter()
            .filter(|s| !before.contains(s))
            .cloned()
            .collect();
        debug!(member = %name, next = ?next, walk_on, "passing over a suspect on the rings");
        if walk_on {
            for subject in &next {
                self.detector.probe_soon(subject, self.now);
            }
        }
    }

    /// `name` is alive again (it refuted, or a new process took its
    /// name): it takes its places on the rings back.
    pub(super) fn take_back(&mut self, name: &Arc<str>) {
        if self.passed_over.remove(name) && self.rings.add(name) {
            self.overlay_dirty = true;
        }
    }

    /// `name` is down: nothing is left to pass over.
    pub(super) fn drop_passed_over(&mut self, name: &str) {
        self.passed_over.remove(name);
    }

    /// The members that may hold a place on this node's rings: every live
    /// member but those it passes over.
    pub(super) fn ring_members(&self) -> Vec<Arc<str>> {
        self.table
            .iter()
            .filter(|m| m.status.is_up() && !self.passed_over.contains(&m.id.name))
            .map(|m| m.id.name.clone())
            .collect()
    }
}
