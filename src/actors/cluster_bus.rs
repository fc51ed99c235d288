//! The ClusterBus interface: what the Transponder needs from whatever carries
//! envelopes between nodes.
//!
//! Two actors implement it: the [`super::ClusterBridge`] (the cluster core
//! over real links) and the [`super::LoopbackCluster`] (a node alone).

use crate::cluster::protocol::{Entry, SetId};
use crate::wire::Envelope;
use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A member's status in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Dead => "dead",
            MemberStatus::Left => "left",
        }
    }

    /// Alive or suspect: a member that is still asked.
    pub fn is_up(self) -> bool {
        matches!(self, MemberStatus::Alive | MemberStatus::Suspect)
    }

    pub fn parse(s: &str) -> Option<MemberStatus> {
        match s {
            "alive" => Some(MemberStatus::Alive),
            "suspect" => Some(MemberStatus::Suspect),
            "dead" => Some(MemberStatus::Dead),
            "left" => Some(MemberStatus::Left),
            _ => None,
        }
    }
}

/// One member as `GET /v1/members` shows it (and the CLI reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Member {
    pub name: String,
    /// The address other nodes reach it at; `None` while the node has no
    /// cluster link listener (a loopback cluster of one).
    pub addr: Option<String>,
    pub status: MemberStatus,
    pub tags: BTreeMap<String, String>,
    pub incarnation: u64,
    /// How long the member has had this status, as this node saw it.
    pub since_ms: u64,
    /// When the member's current process started (ms since the epoch): a
    /// status report from an earlier process is not news of this one.
    #[serde(default)]
    pub boot_ms: u64,
    /// The identity key (`cjnode1…`) the member proved on a link with the
    /// node that answers (its own, for itself); none while that node has
    /// not linked with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Push an envelope to every node of the cluster (including this one, whose
/// Transponder then decides by target whether it is meant for it).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Broadcast(pub Envelope);

/// Send an envelope straight to one node.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct Direct {
    pub node: String,
    pub envelope: Envelope,
}

/// Publish this node's state: its Monitor's latest `status` envelope. The
/// cluster keeps one state per node and spreads each new one once, as a
/// delta, instead of every node broadcasting reports periodically.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), String>")]
pub struct SetNodeState(pub Envelope);

/// Write a new version of an entry of a keyed dataset (the deployments
/// table); it spreads to every node. Answers the entry as written.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<Arc<Entry>, String>")]
pub struct WriteEntry {
    pub set: SetId,
    pub key: String,
    pub body: Bytes,
    /// The version's clock, when the writer signed the body for it (a
    /// rollout's driver does); `None` lets the cluster choose.
    pub clock: Option<u64>,
}

/// Entries of a keyed dataset kept on disk, taken at start before any
/// peer's. Answers how many were taken.
#[derive(Message, Debug, Clone)]
#[rtype(result = "usize")]
pub struct LoadEntries {
    pub set: SetId,
    pub entries: Vec<Arc<Entry>>,
}

/// Every entry held of a keyed dataset.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<Arc<Entry>>")]
pub struct ListEntries(pub SetId);

/// Tell `watcher` of every change of dataset `set` from now on (again
/// after every restart of the watcher).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchEntries {
    pub set: SetId,
    pub watcher: Recipient<EntriesChanged>,
}

/// Entries of a keyed dataset that this node holds now (new, or newer
/// versions), keys it dropped as obsolete, and entries peers offered that
/// its rules refused, each with why (see the core's `EntriesRefused`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct EntriesChanged {
    pub set: SetId,
    pub changed: Vec<Arc<Entry>>,
    pub removed: Vec<Arc<str>>,
    pub refused: Vec<(Arc<Entry>, String)>,
}

/// This node's tags changed: tell every member (selectors everywhere see
/// them at once).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetTags(pub BTreeMap<String, String>);

/// The current members.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Vec<Member>")]
pub struct ListMembers;

/// An envelope that arrived from the cluster, for the Transponder.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct FromCluster(pub Envelope);

/// The Transponder announces itself (again after every restart), so the
/// cluster side always delivers to the live one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachTransponder(pub Recipient<FromCluster>);

/// Ask the cluster side for its peers, links and queue depths (the Monitor
/// reports it; `/metrics` exports it).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "ClusterSummary")]
pub struct ClusterStatus;

/// One open link to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerLink {
    pub peer: String,
    /// Bytes waiting to be written to this peer.
    pub queued_bytes: usize,
    /// Part of the overlay (the broadcast tree runs over it), not a link
    /// opened for one direct message or probe.
    pub overlay: bool,
}

/// The cluster side's state in brief.
#[derive(MessageResponse, Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterSummary {
    /// Peers with an open link that said hello.
    pub peers: usize,
    /// Members by status (`alive`, `suspect`, …), this node included.
    pub members: BTreeMap<String, usize>,
    pub links: Vec<PeerLink>,
    /// Dials in progress.
    pub dialing: usize,
    /// Largest queue among the links, in bytes.
    pub max_queued_bytes: usize,
    /// `joined`, `alone`, `left`, or `refused: <why>` (another live node
    /// holds this node's name).
    pub standing: String,
    /// Set while another live node holds this node's name: this node stays
    /// out of the cluster until that one is gone.
    pub refused: Option<RefusedStanding>,
    /// The failure detector's local health score (0 is healthy).
    pub health: u32,
    /// Cluster envelopes dropped because the Transponder could not keep up.
    pub dropped_overloaded: u64,
}

/// Why this node is out of the cluster, and who holds its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RefusedStanding {
    /// The cluster address of the node that holds the name.
    pub holder: String,
    /// The refusal in words, with what to do about it.
    pub reason: String,
}

/// The handles the Transponder and the control API use to reach the cluster.
#[derive(Clone)]
pub struct ClusterHandle {
    pub broadcast: Recipient<Broadcast>,
    pub direct: Recipient<Direct>,
    pub members: Recipient<ListMembers>,
    pub attach: Recipient<AttachTransponder>,
    pub status: Recipient<ClusterStatus>,
    pub set_state: Recipient<SetNodeState>,
    pub write_entry: Recipient<WriteEntry>,
    pub load_entries: Recipient<LoadEntries>,
    pub list_entries: Recipient<ListEntries>,
    pub watch_entries: Recipient<WatchEntries>,
    pub set_tags: Recipient<SetTags>,
    /// Set while the links cannot carry more: publishers hold back.
    pub backpressure: crate::cluster::backpressure::Backpressure,
}

impl ClusterHandle {
    pub fn of<A>(addr: &Addr<A>) -> ClusterHandle
    where
        A: Actor<Context = Context<A>>
            + Handler<Broadcast>
            + Handler<Direct>
            + Handler<ListMembers>
            + Handler<AttachTransponder>
            + Handler<ClusterStatus>
            + Handler<SetNodeState>
            + Handler<WriteEntry>
            + Handler<LoadEntries>
            + Handler<ListEntries>
            + Handler<WatchEntries>
            + Handler<SetTags>,
    {
        ClusterHandle {
            broadcast: addr.clone().recipient(),
            direct: addr.clone().recipient(),
            members: addr.clone().recipient(),
            attach: addr.clone().recipient(),
            status: addr.clone().recipient(),
            set_state: addr.clone().recipient(),
            write_entry: addr.clone().recipient(),
            load_entries: addr.clone().recipient(),
            list_entries: addr.clone().recipient(),
            watch_entries: addr.clone().recipient(),
            set_tags: addr.clone().recipient(),
            backpressure: Default::default(),
        }
    }

    /// The gauge the cluster sets when it cannot carry more.
    pub fn with_backpressure(mut self, gauge: crate::cluster::backpressure::Backpressure) -> ClusterHandle {
        self.backpressure = gauge;
        self
    }
}
