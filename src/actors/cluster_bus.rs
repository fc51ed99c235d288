//! The ClusterBus interface: what the Transponder needs from whatever carries
//! envelopes between nodes.
//!
//! Two actors implement it: the [`super::ClusterBridge`] (the cluster core
//! over real links) and the [`super::LoopbackCluster`] (a node alone).

use crate::wire::Envelope;
use actix::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// A member's status in the cluster (SPEC §5, §7).
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
    /// The failure detector's local health score (0 is healthy).
    pub health: u32,
    /// Cluster envelopes dropped because the Transponder could not keep up.
    pub dropped_overloaded: u64,
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
            + Handler<SetNodeState>,
    {
        ClusterHandle {
            broadcast: addr.clone().recipient(),
            direct: addr.clone().recipient(),
            members: addr.clone().recipient(),
            attach: addr.clone().recipient(),
            status: addr.clone().recipient(),
            set_state: addr.clone().recipient(),
        }
    }
}
