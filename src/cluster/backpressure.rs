//! Backpressure: when this node's links cannot carry more, the node holds
//! back what its own modules publish, instead of queueing without bound or
//! losing envelopes further on.
//!
//! The ClusterBridge looks at every link's queues several times a second
//! (a [`LinkWatch`] per link) and sets one [`Backpressure`] gauge. While
//! the node is congested, process modules' output is read no further (their
//! writes block, as on any full pipe) and the HTTP API answers publishes
//! `503 busy`.
//!
//! - A link is *backed up* when its bulk queue holds more than
//!   [`HIGH_BYTES`], or when the last frame it wrote from there had waited
//!   more than [`HIGH_WAIT`]: queues are measured in time as well as bytes.
//!   It stays backed up until its bulk queue is down to [`LOW_BYTES`].
//! - One slow peer must not hold the whole node back: a link backed up for
//!   [`LAG_AFTER`] is *lagging* and no longer counts. What it cannot take
//!   is shed at its queue's limits ([`MAX_WAIT`] in time, the configured
//!   bytes) and counted, and the broadcast tree's repair may still bring
//!   it to the peer.
//! - A link that writes nothing at all for [`STALL_AFTER`] while frames
//!   wait is *stalled* and closed: its peer reads nothing, so it does not
//!   read our probes either. A link that moves, however slowly, is never
//!   closed for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bulk bytes queued on one link past which the node is congested.
pub const HIGH_BYTES: usize = 512 * 1024;
/// Bulk bytes a backed-up link drains to before the node is clear again.
pub const LOW_BYTES: usize = 64 * 1024;
/// How long a frame may wait in a bulk queue before the link counts as
/// backed up (so latency stays bounded even with small frames).
pub const HIGH_WAIT: Duration = Duration::from_millis(200);
/// How long a link may stay backed up before it is lagging.
pub const LAG_AFTER: Duration = Duration::from_secs(5);
/// The longest a bulk frame waits on a link; older ones are shed, counted.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// How long a link may write nothing while frames wait before it is closed.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// The node's one congestion flag, set by the ClusterBridge and read by
/// whatever feeds the cluster. Cheap to clone; never congested by default
/// (a node without a cluster has nothing to hold back).
#[derive(Clone, Default)]
pub struct Backpressure(Arc<Gauge>);

#[derive(Default)]
struct Gauge {
    congested: AtomicBool,
    cleared: Notify,
    /// Times the node became congested.
    episodes: AtomicU64,
}

impl Backpressure {
    pub fn is_congested(&self) -> bool {
        self.0.congested.load(Ordering::Acquire)
    }

    /// Sets the flag; answers whether it changed. Clearing it wakes every
    /// waiter.
    pub fn set(&self, congested: bool) -> bool {
        let was = self.0.congested.swap(congested, Ordering::AcqRel);
        if was == congested {
            return false;
        }
        if congested {
            self.0.episodes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.0.cleared.notify_waiters();
        }
        true
    }

    /// Times the node became congested since it started.
    pub fn episodes(&self) -> u64 {
        self.0.episodes.load(Ordering::Relaxed)
    }

    /// Returns once the node is not congested.
    pub async fn wait_clear(&self) {
        loop {
            let cleared = self.0.cleared.notified();
            tokio::pin!(cleared);
            // Registered before the check, so a clearing in between is seen.
            cleared.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            cleared.await;
        }
    }
}

/// One look at a link's queues.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkSample {
    /// Bytes waiting on the link, both lanes.
    pub queued: usize,
    /// Bytes waiting in the bulk lane.
    pub bulk_queued: usize,
    /// Bytes the link has written since it came up.
    pub written: u64,
    /// How long the last bulk frame written had waited.
    pub last_bulk_wait: Duration,
}

/// What a link's queues say, at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// It keeps up.
    Clear,
    /// It cannot carry more right now: hold back new publishes.
    BackedUp,
    /// Backed up for too long: shed what it cannot take, hold nobody back.
    Lagging,
    /// Nothing written for [`STALL_AFTER`] while frames wait: close it.
    Stalled,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Clear => "clear",
            LinkState::BackedUp => "backed_up",
            LinkState::Lagging => "lagging",
            LinkState::Stalled => "stalled",
        }
    }
}

/// Follows one link's queues from look to look (sans-IO: the caller
/// brings the samples and the time).
#[derive(Debug, Clone)]
pub struct LinkWatch {
    backed_up_since: Option<Instant>,
    written: u64,
    moved_at: Instant,
    state: LinkState,
}

impl LinkWatch {
    pub fn new(now: Instant) -> LinkWatch {
        LinkWatch {
            backed_up_since: None,
            written: 0,
            moved_at: now,
            state: LinkState::Clear,
        }
    }

    /// The state as of the last look.
    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn look(&mut self, s: LinkSample, now: Instant) -> LinkState {
        if s.written != self.written || s.queued == 0 {
            self.written = s.written;
            self.moved_at = now;
        }
        let over = s.bulk_queued > HIGH_BYTES || (s.last_bulk_wait > HIGH_WAIT && s.bulk_queued > LOW_BYTES);
        match self.backed_up_since {
            None if over => self.backed_up_since = Some(now),
            Some(_) if s.bulk_queued <= LOW_BYTES => self.backed_up_since = None,
            _ => {}
        }
        self.state = if now.duration_since(self.moved_at) >= STALL_AFTER {
            LinkState::Stalled
        } else {
            match self.backed_up_since {
                None => LinkState::Clear,
                Some(since) if now.duration_since(since) >= LAG_AFTER => LinkState::Lagging,
                Some(_) => LinkState::BackedUp,
            }
        };
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(queued: usize, bulk: usize, written: u64, wait_ms: u64) -> LinkSample {
        LinkSample {
            queued,
            bulk_queued: bulk,
            written,
            last_bulk_wait: Duration::from_millis(wait_ms),
        }
    }

    #[test]
    fn a_link_is_backed_up_by_bytes_or_by_wait_and_clears_at_the_low_mark() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = LinkWatch::new(t0);
        // (at ms, queued, bulk queued, written, last wait ms) -> state
        let cases = [
            (0, 0, 0, 0, 0, LinkState::Clear),
            (50, 300_000, 300_000, 10, 10, LinkState::Clear),
            (100, 600_000, 600_000, 20, 10, LinkState::BackedUp),
            (150, 200_000, 200_000, 30, 10, LinkState::BackedUp),
            (200, 60_000, 60_000, 40, 10, LinkState::Clear),
            // Small, but its frames waited too long: latency counts.
            (250, 100_000, 100_000, 50, 300, LinkState::BackedUp),
            (300, 10_000, 10_000, 60, 300, LinkState::Clear),
        ];
        for (at, queued, bulk, written, wait, want) in cases {
            assert_eq!(w.look(sample(queued, bulk, written, wait), ms(at)), want, "at {at} ms");
        }
    }

    #[test]
    fn a_link_backed_up_for_long_is_lagging_and_one_that_writes_nothing_is_stalled() {
        let t0 = Instant::now();
        let mut w = LinkWatch::new(t0);
        let mut written = 0;
        let mut at = t0;
        // Moving, slowly: backed up, then lagging, never stalled.
        while at < t0 + STALL_AFTER * 2 {
            written += 1000;
            let state = w.look(sample(1 << 20, 1 << 20, written, 10), at);
            let want = if at.duration_since(t0) >= LAG_AFTER {
                LinkState::Lagging
            } else {
                LinkState::BackedUp
            };
            assert_eq!(state, want);
            at += Duration::from_millis(100);
        }
        // Draining to the low mark clears it at once.
        assert_eq!(w.look(sample(1000, 1000, written + 1, 10), at), LinkState::Clear);
        // Nothing written while a control frame waits: stalled after the limit.
        let since = at;
        while at < since + STALL_AFTER {
            assert_ne!(w.look(sample(100, 0, written + 1, 10), at), LinkState::Stalled);
            at += Duration::from_millis(500);
        }
        assert_eq!(w.look(sample(100, 0, written + 1, 10), at), LinkState::Stalled);
        // An idle link (nothing queued) is never stalled.
        let mut idle = LinkWatch::new(t0);
        assert_eq!(idle.look(sample(0, 0, 0, 0), t0 + STALL_AFTER * 3), LinkState::Clear);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_node_is_clear_again() {
        let gauge = Backpressure::default();
        assert!(!gauge.is_congested());
        gauge.wait_clear().await;
        assert!(gauge.set(true));
        assert!(!gauge.set(true), "no change");
        let waiter = tokio::spawn({
            let gauge = gauge.clone();
            async move { gauge.wait_clear().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(gauge.set(false));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
        assert_eq!(gauge.episodes(), 1);
    }
}
