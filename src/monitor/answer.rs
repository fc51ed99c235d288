//! The control API's answer to `GET /v1/status`, as one type: the API
//! builds it, and the CLI and the dashboard read it, so all three follow
//! the same rules of what is ok (those of [`super::board`]).

use super::board::{NodeView, Summary};
use crate::actors::cluster_bus::RefusedStanding;
use serde::{Deserialize, Serialize};

/// `GET /v1/status`: the fleet as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The node that answers.
    pub node: String,
    pub cluster: String,
    /// The answering node's identity key (`cjnode1…`), which its links
    /// prove.
    #[serde(default)]
    pub identity: String,
    pub status_interval_ms: u64,
    /// Set when this node has ways into the cluster but reaches no one
    /// (and is not refused, which says why it is alone).
    pub isolated: Option<Isolation>,
    /// Set while another live node holds this node's name.
    #[serde(default)]
    pub refused: Option<RefusedStanding>,
    /// The operator keys this node trusts, each with its scope; none
    /// means any holder of the cluster key can deploy to it.
    #[serde(default)]
    pub operator_keys: Vec<String>,
    /// How this node keeps each process module's processes together:
    /// `cgroup`, or `process tree (why)` where the host gives no cgroups
    /// (a double-forked daemon then outlives its module).
    #[serde(default)]
    pub module_containment: String,
    /// Of the whole fleet, whatever `?target=` narrowed.
    pub summary: Summary,
    /// How many nodes are listed in `nodes`.
    pub shown: usize,
    /// Failing nodes first, then by name.
    pub nodes: Vec<NodeView>,
}

/// Why a node counts itself cut off: the seeds it was given and how many
/// peers it knew from earlier runs, none of which it reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub seeds: Vec<String>,
    pub known_peers: usize,
}
