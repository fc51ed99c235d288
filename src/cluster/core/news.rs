//! News of new members, within each link's budget (see
//! `crate::cluster::news_budget`): a peer that invents members by the
//! thousand gets a few hundred into this node's table, then a few dozen a
//! second, and its lies go no further than this node. In its first
//! moments (`new_members_grace`) a node is learning the cluster, and takes
//! all it hears.

use super::{ClusterCore, LinkId};
use crate::cluster::news_budget::NewsBudget;
use crate::cluster::protocol::Record;
use std::time::Duration;
use tracing::warn;

impl ClusterCore {
    /// A fresh budget for a new link.
    pub(super) fn news_budget(&self) -> NewsBudget {
        NewsBudget::new(self.config.news_limits(), self.now)
    }

    /// Whether `record`, which came over `link` from a third party, fits
    /// that link's budget: news of a member already held always does.
    /// Counts and logs (once per 10 s) the news it drops.
    pub(super) fn news_fits(&mut self, link: Option<LinkId>, record: &Record) -> bool {
        if self.table.get(&record.id.name).is_some() || self.now < self.learning_until {
            return true;
        }
        let limits = self.config.news_limits();
        let now = self.now;
        let Some(l) = link.and_then(|link| self.links.get_mut(&link)) else {
            return true;
        };
        if l.join_answer > 0 {
            l.join_answer -= 1;
            return true;
        }
        if l.news.take(limits, now) {
            return true;
        }
        self.counters.news_over_budget += 1;
        let peer = l.peer_name().cloned();
        let due = self
            .news_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(10));
        if due {
            self.news_logged = Some(now);
            warn!(peer = peer.as_deref().unwrap_or("?"), member = %record.id.name,
                burst = limits.burst, per_sec = limits.per_sec, dropped_so_far = self.counters.news_over_budget,
                "a peer brings more new members than its link may introduce; dropped the news");
        }
        false
    }
}
