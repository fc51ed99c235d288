//! Who a member is, as the membership protocol sees it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A member's identity: its name, where to reach it, which boot of it this
/// is, and its tags.
///
/// The name is the member: the table holds one entry per name. `boot`
/// (milliseconds since the epoch when the process started) tells two
/// processes of one name apart: a restarted node takes over from its old
/// boot, and of two live processes claiming one name the older boot keeps
/// it (see `core::members`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: Arc<str>,
    /// The address other nodes dial to reach this one.
    pub addr: SocketAddr,
    /// Milliseconds since the epoch when this process started.
    pub boot: u64,
    /// The node's `--tag K=V` pairs; carried in the identity so they reach
    /// every member with the first packet about it.
    pub tags: BTreeMap<String, String>,
}

impl NodeId {
    pub fn new(name: &str, addr: SocketAddr, boot: u64, tags: BTreeMap<String, String>) -> NodeId {
        NodeId {
            name: Arc::from(name),
            addr,
            boot,
            tags,
        }
    }

    /// Roughly what this identity costs in memory, for the simulator's and
    /// the debug dump's accounting.
    pub fn heap_bytes(&self) -> usize {
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
        std::mem::size_of::<NodeId>() + self.name.len() + tags
    }
}
