//! Every timing and size knob of the cluster layer, in one place, with
//! presets in the manner of memberlist's `DefaultLANConfig`.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// Cluster timings and limits.
///
/// The LAN preset aims to have every survivor see a crashed node `dead` in
/// about two seconds, without false alarms on a busy host:
///
/// - a member is probed by someone about once per `probe_period`;
/// - it is `suspect` when neither the probe nor `indirect_probes` helpers get
///   an answer within the period;
/// - it has `suspect_to_down_after` to refute the suspicion (it hears of it by
///   gossip within a few `gossip_interval`s), else it is `dead`;
/// - the verdict then spreads by gossip to `gossip_fanout` members per
///   `gossip_interval`, reaching 50 nodes in about three rounds.
///
/// Expected detection: ½·period + period + suspicion + 3·gossip ≈ 1.8 s.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often this node probes one member.
    pub probe_period: Duration,
    /// How long a direct probe may take before helpers are asked.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect member may refute before it is declared dead.
    pub suspect_to_down_after: Duration,
    /// How often membership updates are pushed to random members.
    pub gossip_interval: Duration,
    /// How many members each gossip round reaches.
    pub gossip_fanout: usize,
    /// How many times one membership update is piggybacked.
    pub max_transmissions: u8,
    /// How often a member asks a random member for more members.
    pub announce_interval: Duration,
    /// How often dead members are contacted again, so a healed partition
    /// or a restarted host rejoins without help.
    pub announce_to_dead_interval: Duration,
    /// How long a dead member is remembered (and listed).
    pub remember_dead_for: Duration,
    /// How many random peers each node forwards a ClusterBus envelope to,
    /// besides the origin pushing to everyone it knows.
    pub relay_fanout: usize,
    /// How many times a ClusterBus envelope is forwarded at most.
    pub max_hops: u32,
    /// How many envelope ids are remembered to drop duplicates.
    pub dedup_capacity: usize,
    /// The largest frame (envelope JSON or membership packet) on a link.
    pub max_frame: usize,
    /// The most bytes queued for one peer; a peer that does not drain past
    /// this is disconnected.
    pub peer_queue_bytes: usize,
    /// How long dialing a peer may take, TCP connect plus handshake.
    pub dial_timeout: Duration,
    /// The largest membership packet foca produces.
    pub max_packet_size: usize,
}

impl ClusterConfig {
    /// For hosts on one LAN (and loopback test clusters).
    pub fn lan() -> ClusterConfig {
        ClusterConfig {
            probe_period: Duration::from_millis(400),
            probe_rtt: Duration::from_millis(150),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(900),
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 4,
            max_transmissions: 10,
            announce_interval: Duration::from_secs(5),
            announce_to_dead_interval: Duration::from_secs(1),
            remember_dead_for: Duration::from_secs(24 * 3600),
            relay_fanout: 2,
            max_hops: 3,
            dedup_capacity: 16_384,
            max_frame: crate::wire::DEFAULT_MAX_FRAME,
            peer_queue_bytes: 8 * 1024 * 1024,
            dial_timeout: Duration::from_secs(2),
            max_packet_size: 32 * 1024,
        }
    }

    /// For hosts across slow or lossy links: five times slower to judge.
    pub fn wan() -> ClusterConfig {
        ClusterConfig {
            probe_period: Duration::from_secs(2),
            probe_rtt: Duration::from_millis(800),
            suspect_to_down_after: Duration::from_secs(6),
            gossip_interval: Duration::from_millis(500),
            announce_to_dead_interval: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(5),
            ..ClusterConfig::lan()
        }
    }

    /// The foca settings these timings mean.
    pub fn foca(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).expect("max(1) is non-zero");
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions.max(1)).expect("max(1) is non-zero"),
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remember_dead_for),
            max_packet_size: nz(self.max_packet_size),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: nz(1),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_to_dead_interval,
                num_members: nz(2),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: nz(self.gossip_fanout),
            }),
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
    fn presets_are_valid_for_foca() {
        for config in [ClusterConfig::lan(), ClusterConfig::wan()] {
            let f = config.foca();
            assert!(f.probe_rtt < f.probe_period, "foca needs rtt < period");
            assert!(config.max_packet_size + 64 < config.max_frame);
            // A membership packet always fits one frame, and one frame fits the queue.
            assert!(config.max_frame < config.peer_queue_bytes);
        }
    }
}
