//! Every timing and size knob of the cluster layer, in one place, with
//! presets in the manner of memberlist's `DefaultLANConfig`.

use super::core::detector::DetectorConfig;
use super::core::tree::TreeConfig;
use std::time::Duration;

/// Cluster timings and limits.
///
/// With the LAN preset a crashed node is seen `dead` by every survivor in
/// about one to two seconds, whatever the size of the cluster:
///
/// - a node's `rings` observers each probe it every `rings × probe_interval`,
///   so someone probes it every `probe_interval`; a process that dies closes
///   its links, and its observers probe it at once;
/// - no answer within `probe_timeout`, nor through `indirect_probes` helpers
///   within another: the observer suspects it and says so to every node
///   along the broadcast tree (milliseconds);
/// - the other observers probe it at once and confirm; with every
///   confirmation in, the suspicion runs `suspicion_min`, else up to
///   `suspicion_max` (a lone accuser, often the slow one, waits longest);
/// - the verdict reaches every node along the tree.
///
/// A slow node stretches its own probe intervals and timeouts (up to
/// `max_health + 1` times), so it holds back its accusations.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    // ---- overlay and links
    /// Hash rings of the overlay: each node probes `rings` subjects and is
    /// probed by `rings` observers, and holds at most `2 × rings` overlay links.
    pub rings: usize,
    /// Links kept open at most; beyond this, idle non-overlay links (direct
    /// messages, helpers, joins) are closed, least recently used first.
    pub max_links: usize,
    /// The most links a node holds, dials under way included. A new link
    /// dialed by a peer past it is closed at once, with a few live members
    /// named for a joiner to ask instead (`Msg::Busy`); before dialing at
    /// it, the node closes its least recently used spare link. Above
    /// `max_links`, so that only a mass start, when every joiner dials the
    /// same seed, meets it. Joiners sent on learn a partial table and catch
    /// up by anti-entropy, which `quick_rounds_after_news` keeps quick.
    pub link_cap: usize,
    /// A link that is not part of the overlay is closed after this long unused.
    pub link_idle: Duration,
    /// How long a new link may take to say hello.
    pub hello_timeout: Duration,
    /// How long dialing a peer may take, TCP connect plus handshake.
    pub dial_timeout: Duration,
    /// The least time between two dials of one address.
    pub redial_interval: Duration,

    // ---- failure detection (Lifeguard)
    /// How often this node probes one of its subjects.
    pub probe_interval: Duration,
    /// How long a probe waits for its ack before asking helpers, and the
    /// helpers for theirs.
    pub probe_timeout: Duration,
    /// How many neighbours are asked to probe a silent subject.
    pub indirect_probes: usize,
    /// A suspicion every observer confirms runs this long.
    pub suspicion_min: Duration,
    /// A suspicion nobody confirms runs this long.
    pub suspicion_max: Duration,
    /// The highest local health score; probes stretch up to `max_health + 1`×.
    pub max_health: u32,
    /// How long a member whose host still acknowledges our link (the
    /// process lives but is starved or paused) may leave probes unanswered
    /// before it is suspected. Crashes and lost hosts do not wait for it.
    pub stall_grace: Duration,

    // ---- broadcast tree
    /// How often the tree's root floods a beacon: how soon the tree heals
    /// after losing its root or a parent without a word.
    pub beacon_interval: Duration,
    /// How long a node waits for its old parent's beacon before following
    /// a quicker one.
    pub switch_grace: Duration,
    /// How long an announced message may take to arrive by the tree before
    /// it is grafted from the announcer.
    pub graft_timeout: Duration,
    /// How long a graft may take before the next announcer is asked.
    pub graft_retry: Duration,
    /// How often lazy neighbours get the ids of new messages (batched).
    pub lazy_interval: Duration,
    /// How long a broadcast is kept to answer grafts.
    pub cache_ttl: Duration,
    /// The most broadcast bytes kept to answer grafts.
    pub cache_bytes: usize,
    /// How long a broadcast id is remembered to drop duplicates.
    pub dedup_ttl: Duration,

    // ---- anti-entropy and recovery
    /// How often the member table is compared (by digest) with one
    /// neighbour; ten times as often while the last comparison found
    /// differences.
    pub anti_entropy_interval: Duration,
    /// After news of a member, this many comparisons follow at a tenth of
    /// `anti_entropy_interval`, even those that find nothing: the neighbour
    /// compared with may not have heard yet either, and a mass start
    /// otherwise ends with a node or two missing a member for one more full
    /// interval (2,000 simulated nodes behind a link cap of 32: all listed
    /// all after 1.2–1.6 s with 3, against 1.5–3.0 s with none).
    pub quick_rounds_after_news: u32,
    /// How often one member, picked at random, is looked at; if it is dead,
    /// it is dialed, so a healed partition or a restarted host rejoins
    /// without help. Each dead member is tried about once per interval
    /// across the whole cluster.
    pub reconnect_interval: Duration,
    /// How long a dead or departed member is remembered (and listed).
    pub remember_dead_for: Duration,

    // ---- limits
    /// The largest frame (one envelope, or one batch of messages) on a link.
    pub max_frame: usize,
    /// The most bytes queued for one peer; a peer that does not drain past
    /// this is disconnected.
    pub peer_queue_bytes: usize,
    /// The largest state (status report) a node publishes.
    pub max_state_bytes: usize,
    /// Messages held for a peer while its link is being dialed.
    pub max_pending_per_dial: usize,
    /// Members one link may introduce at once (news of members this node
    /// has never heard of, from a third party), and then per second; news
    /// over it is dropped and repaired by anti-entropy.
    pub new_members_burst: u32,
    pub new_members_per_sec: u32,
    /// How long after its start a node takes news of new members from any
    /// link without limit: it is learning the cluster, and a neighbour's
    /// table exchange brings nearly all of it over one link (a simulated
    /// start of 1,000 nodes dropped 10,429 news over a burst of 512).
    pub new_members_grace: Duration,
    /// The most members this node holds, itself included, and the most
    /// heap bytes their records may take. A full table forgets the dead and
    /// departed members that went down longest ago to make room; with none
    /// to forget, it refuses new members until some go down. However long
    /// a flood of invented members lasts, memory stays bounded.
    pub max_members: usize,
    pub max_member_bytes: usize,
}

impl ClusterConfig {
    /// For hosts on one LAN.
    pub fn lan() -> ClusterConfig {
        ClusterConfig {
            rings: 5,
            max_links: 24,
            link_cap: 32,
            link_idle: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(2),
            redial_interval: Duration::from_millis(500),

            probe_interval: Duration::from_millis(500),
            // Above one TCP retransmission (200 ms), so a single lost
            // segment does not fail a probe.
            probe_timeout: Duration::from_millis(400),
            indirect_probes: 3,
            suspicion_min: Duration::from_secs(1),
            suspicion_max: Duration::from_secs(6),
            max_health: 8,
            // Longer than the stalls of a 200-process mass start on two
            // cores (refutations came up to 6.4 s late there), short enough
            // that a hung process is still declared within about 15 s.
            stall_grace: Duration::from_secs(10),

            beacon_interval: Duration::from_secs(5),
            switch_grace: Duration::from_millis(100),
            graft_timeout: Duration::from_millis(80),
            graft_retry: Duration::from_millis(40),
            lazy_interval: Duration::from_millis(100),
            cache_ttl: Duration::from_secs(15),
            cache_bytes: 8 * 1024 * 1024,
            dedup_ttl: Duration::from_secs(20),

            anti_entropy_interval: Duration::from_secs(2),
            quick_rounds_after_news: 3,
            reconnect_interval: Duration::from_secs(2),
            remember_dead_for: Duration::from_secs(24 * 3600),

            max_frame: crate::wire::DEFAULT_MAX_FRAME,
            peer_queue_bytes: 8 * 1024 * 1024,
            max_state_bytes: 64 * 1024,
            max_pending_per_dial: 4096,
            new_members_burst: 512,
            new_members_per_sec: 64,
            new_members_grace: Duration::from_secs(30),
            // Five times the largest fleet simulated (10,000 nodes). A
            // record with its full share of tags takes about 16 KiB, so a
            // flood of those meets the byte bound first.
            max_members: 50_000,
            max_member_bytes: 64 * 1024 * 1024,
        }
    }

    /// For hosts across slow or lossy links: about five times slower to judge.
    pub fn wan() -> ClusterConfig {
        ClusterConfig {
            dial_timeout: Duration::from_secs(5),
            redial_interval: Duration::from_secs(2),
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_millis(1200),
            suspicion_min: Duration::from_secs(5),
            suspicion_max: Duration::from_secs(30),
            stall_grace: Duration::from_secs(30),
            beacon_interval: Duration::from_secs(15),
            switch_grace: Duration::from_millis(500),
            graft_timeout: Duration::from_millis(400),
            graft_retry: Duration::from_millis(200),
            lazy_interval: Duration::from_millis(300),
            anti_entropy_interval: Duration::from_secs(10),
            reconnect_interval: Duration::from_secs(10),
            ..ClusterConfig::lan()
        }
    }

    /// For nodes on one host (tests, demos): quick to judge.
    pub fn local() -> ClusterConfig {
        ClusterConfig {
            probe_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(150),
            suspicion_min: Duration::from_millis(600),
            suspicion_max: Duration::from_secs(4),
            stall_grace: Duration::from_secs(5),
            anti_entropy_interval: Duration::from_secs(1),
            reconnect_interval: Duration::from_secs(1),
            ..ClusterConfig::lan()
        }
    }

    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            indirect_probes: self.indirect_probes,
            suspicion_min: self.suspicion_min,
            suspicion_max: self.suspicion_max,
            max_health: self.max_health,
            stall_grace: self.stall_grace,
        }
    }

    pub fn tree(&self) -> TreeConfig {
        TreeConfig {
            beacon_interval: self.beacon_interval,
            switch_grace: self.switch_grace,
            graft_timeout: self.graft_timeout,
            graft_retry: self.graft_retry,
            lazy_interval: self.lazy_interval,
            cache_ttl: self.cache_ttl,
            cache_bytes: self.cache_bytes,
            dedup_ttl: self.dedup_ttl,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for config in [ClusterConfig::lan(), ClusterConfig::wan(), ClusterConfig::local()] {
            assert!(
                config.probe_timeout * 2 <= config.probe_interval * 2,
                "a probe fits its interval"
            );
            assert!(config.suspicion_min <= config.suspicion_max);
            assert!(
                config.rings >= 2,
                "two rings keep the overlay connected through a death"
            );
            assert!(
                config.max_links >= 2 * config.rings + 4,
                "room for the overlay and a few more"
            );
            assert!(
                config.link_cap > config.max_links,
                "idle links are closed before new ones are turned away"
            );
            assert!(config.max_frame < config.peer_queue_bytes, "one frame fits the queue");
        }
    }
}
