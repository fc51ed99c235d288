//! News of new members, within each link's budget. News of a member this
//! node has never heard of costs a table entry, probes and a place in
//! every neighbour's table, and a peer that holds the cluster key can
//! invent members by the thousand (2,000 in one frame once split a
//! three-node cluster for minutes). So each link may introduce a burst of
//! new members, then a steady rate (`new_members_burst`,
//! `new_members_per_sec`); news over it is dropped and goes no further
//! than this node, and anti-entropy offers a genuine member again a round
//! later.
//!
//! Not news by a third party, so free: a member's own hello, and the
//! table a seed sends in answer to this node's join. And in its first
//! moments (`new_members_grace`) a node is learning the cluster: a
//! neighbour's table exchange brings nearly all of it over one link, so it
//! takes all it hears.

use super::{ClusterCore, LinkId};
use crate::cluster::protocol::Record;
use crate::token_bucket::TokenBucket;
use tracing::warn;

impl ClusterCore {
    /// A full budget for a new link.
    pub(super) fn news_budget(&self) -> TokenBucket {
        TokenBucket::with_burst(
            f64::from(self.config.new_members_per_sec),
            f64::from(self.config.new_members_burst),
            self.now,
        )
    }

    /// Whether `record`, which came over `link` from a third party, fits
    /// that link's budget: news of a member already held always does.
    /// Counts and logs (once per 10 s) the news it drops.
    pub(super) fn news_fits(&mut self, link: Option<LinkId>, record: &Record) -> bool {
        if self.table.get(&record.id.name).is_some() || self.now < self.learning_until {
            return true;
        }
        let now = self.now;
        let Some(l) = link.and_then(|link| self.links.get_mut(&link)) else {
            return true;
        };
        if l.join_answer > 0 {
            l.join_answer -= 1;
            return true;
        }
        if l.news.take(now) {
            return true;
        }
        self.counters.news_over_budget += 1;
        let peer = l.peer_name().cloned();
        if self.news_log.event(now).is_some() {
            warn!(peer = peer.as_deref().unwrap_or("?"), member = %record.id.name,
                burst = self.config.new_members_burst, per_sec = self.config.new_members_per_sec,
                dropped_so_far = self.counters.news_over_budget,
                "a peer brings more new members than its link may introduce; dropped the news");
        }
        false
    }
}
