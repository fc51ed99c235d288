//! The member table's bounds. Per-link budgets (`news`) slow a flood of
//! invented members, but a peer that keeps one up for hours, or has links
//! to many nodes, would still grow the table: invented members die
//! slowly, and dead ones are remembered for a day. So the table holds at
//! most `max_members` members in `max_member_bytes`. A full table forgets
//! the dead and departed members that went down longest ago; with none to
//! forget it refuses new names until some go down (the invented ones do,
//! as no one can reach them), and anti-entropy offers a genuine member
//! again a round later.

use super::ClusterCore;
use crate::cluster::protocol::Record;
use std::sync::Arc;
use tracing::{debug, warn};

impl ClusterCore {
    /// Whether the table has room for `record`, a member it does not hold,
    /// after forgetting old dead members if it must. Counts and logs (once
    /// per 10 s) the members it refuses.
    pub(super) fn room_for(&mut self, record: &Record) -> bool {
        let (max_members, max_bytes) = (self.config.max_members, self.config.max_member_bytes);
        let bytes = record.id.heap_bytes();
        // A batch at once: a flood at the bound would otherwise walk the
        // whole table for every record.
        let batch = (max_members / 64).max(1);
        while !self.table.has_room(bytes, max_members, max_bytes) {
            if self.table.down_count() == 0 {
                self.counters.table_full += 1;
                if self.table_full_log.event(self.now).is_some() {
                    warn!(member = %record.id.name, members = self.table.len(), max_members,
                        bytes = self.table.heap_bytes(), max_bytes, refused_so_far = self.counters.table_full,
                        "the member table is full of live members; refused a new one until some go down");
                }
                return false;
            }
            let gone = self.table.forget_oldest_down(batch);
            self.counters.forgotten_for_room += gone.len() as u64;
            debug!(
                forgotten = gone.len(),
                members = self.table.len(),
                "the member table is full; forgot the members down longest to make room"
            );
            for name in gone {
                self.forgotten(&name);
            }
        }
        true
    }

    /// Lets go of what this node kept about a member it forgot.
    pub(super) fn forgotten(&mut self, name: &Arc<str>) {
        self.detector.clear(name);
        self.states.remove(name);
    }
}
