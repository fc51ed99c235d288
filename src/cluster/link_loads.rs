//! The ClusterBridge's view of its links' queues: it looks at each link
//! ([`backpressure::LinkWatch`]), sets the node's [`Backpressure`] gauge,
//! names the links that stalled, and counts every envelope a link lost
//! (shed at a full queue, shed after waiting too long, or still queued
//! when the link closed), so overload never loses an envelope uncounted.

use super::backpressure::{self, Backpressure, LinkState, LinkWatch};
use super::core::LinkId;
use super::link::LinkHandle;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Envelopes the links lost, by where, and links closed for not draining.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadCounters {
    /// Shed because the link's bulk queue was full.
    pub envelopes_dropped_queue_full: u64,
    /// Shed because they waited past the time limit.
    pub envelopes_dropped_stale: u64,
    /// Still queued when their link closed.
    pub envelopes_dropped_link_closed: u64,
    /// Links closed because the peer read nothing at all.
    pub links_dropped_stalled: u64,
    /// Times the node held its publishers back.
    pub congested_episodes: u64,
}

/// What one look at the links found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Links whose peer read nothing for [`backpressure::STALL_AFTER`].
    pub stalled: Vec<LinkId>,
    /// Envelopes found shed since the last look.
    pub dropped: u64,
    /// `Some(congested)` when the node's congestion changed.
    pub changed: Option<bool>,
    /// Links that became backed up (true) or clear again (false).
    pub backed_up: Vec<(LinkId, bool)>,
}

struct Look {
    watch: LinkWatch,
    /// The link's stale-shed count as of the last look.
    stale_seen: u64,
}

pub struct LinkLoads {
    gauge: Backpressure,
    looks: HashMap<LinkId, Look>,
    /// The longest a broadcast waited for the bridge since the last look.
    broadcast_lag: Duration,
    pub counters: LoadCounters,
}

/// Whether a link carries less than it is given, lagging or not.
fn backed_up(state: LinkState) -> bool {
    matches!(state, LinkState::BackedUp | LinkState::Lagging)
}

/// How often the links are looked at while anything is queued, and while
/// everything is idle.
pub const LOOK_BUSY: Duration = Duration::from_millis(50);
pub const LOOK_IDLE: Duration = Duration::from_secs(2);

impl LinkLoads {
    pub fn new(gauge: Backpressure) -> LinkLoads {
        LinkLoads {
            gauge,
            looks: HashMap::new(),
            broadcast_lag: Duration::ZERO,
            counters: LoadCounters::default(),
        }
    }

    pub fn gauge(&self) -> &Backpressure {
        &self.gauge
    }

    /// A bulk frame was shed at a full queue.
    pub fn shed(&mut self, envelopes: u32) {
        self.counters.envelopes_dropped_queue_full += u64::from(envelopes);
    }

    /// A broadcast waited this long between its publish and the bridge: a
    /// bridge that falls behind is congestion too.
    pub fn broadcast_waited(&mut self, lag: Duration) {
        self.broadcast_lag = self.broadcast_lag.max(lag);
    }

    /// The link is gone: what it had not written yet is lost. Answers how
    /// many envelopes that was (stale sheds not yet seen included).
    pub fn closed(&mut self, id: LinkId, handle: &LinkHandle) -> u64 {
        let seen = self.looks.remove(&id).map_or(0, |l| l.stale_seen);
        let stale = handle.shed_stale().saturating_sub(seen);
        let waiting = handle.envelopes_waiting();
        self.counters.envelopes_dropped_stale += stale;
        self.counters.envelopes_dropped_link_closed += waiting;
        stale + waiting
    }

    /// A link was closed for not draining.
    pub fn stalled_closed(&mut self) {
        self.counters.links_dropped_stalled += 1;
    }

    /// The state of link `id` as of the last look.
    pub fn state(&self, id: LinkId) -> LinkState {
        self.looks.get(&id).map_or(LinkState::Clear, |l| l.watch.state())
    }

    /// Looks at every link, sets the gauge, and says what to do.
    pub fn look(&mut self, links: &HashMap<LinkId, LinkHandle>, now: Instant) -> Verdict {
        let mut verdict = Verdict::default();
        let mut congested = self.broadcast_lag > backpressure::HIGH_WAIT;
        self.broadcast_lag = Duration::ZERO;
        self.looks.retain(|id, _| links.contains_key(id));
        for (id, handle) in links {
            let look = self.looks.entry(*id).or_insert_with(|| Look {
                watch: LinkWatch::new(now),
                stale_seen: 0,
            });
            let stale = handle.shed_stale();
            if stale > look.stale_seen {
                let new = stale - look.stale_seen;
                self.counters.envelopes_dropped_stale += new;
                verdict.dropped += new;
                look.stale_seen = stale;
            }
            let was = backed_up(look.watch.state());
            let state = look.watch.look(handle.sample(), now);
            if backed_up(state) != was {
                verdict.backed_up.push((*id, !was));
            }
            match state {
                LinkState::Clear | LinkState::Lagging => {}
                LinkState::BackedUp => congested = true,
                LinkState::Stalled => verdict.stalled.push(*id),
            }
        }
        if self.gauge.set(congested) {
            if congested {
                self.counters.congested_episodes += 1;
            }
            verdict.changed = Some(congested);
        }
        verdict
    }

    /// How soon to look again: often while anything waits on a link.
    pub fn next_look(&self, links: &HashMap<LinkId, LinkHandle>) -> Duration {
        if self.gauge.is_congested() || links.values().any(|l| l.queued_bytes() > 0) {
            LOOK_BUSY
        } else {
            LOOK_IDLE
        }
    }
}
