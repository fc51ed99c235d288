//! A member's identity as the membership protocol (foca) sees it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Who a member is: its name, where to reach it, which boot of it this is,
/// and its tags.
///
/// foca treats identities with the same *name* as the same member, and keeps
/// the one that wins [`foca::Identity::win_addr_conflict`]: a later boot, or
/// the same boot renewed after being wrongly declared down. That is how a
/// restarted node rejoins under its old name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    /// The address other nodes dial to reach this one.
    pub addr: SocketAddr,
    /// Milliseconds since the epoch when this process started.
    pub boot: u64,
    /// How many times this boot renewed its identity after being declared down.
    pub renewal: u16,
    /// The node's `--tag K=V` pairs; carried in the identity so they reach
    /// every member with the first packet.
    pub tags: BTreeMap<String, String>,
}

impl NodeId {
    /// Orders identities of the same name: newer boot first, then renewals.
    fn generation(&self) -> (u64, u16) {
        (self.boot, self.renewal)
    }
}

impl foca::Identity for NodeId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            renewal: self.renewal.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation() > adversary.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity as _;

    fn id(boot: u64) -> NodeId {
        NodeId {
            name: "web-1".into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            boot,
            renewal: 0,
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn later_boots_and_renewals_win() {
        let old = id(1);
        let restarted = id(2);
        assert_eq!(old.addr(), restarted.addr(), "same name is the same member");
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let renewed = old.renew().unwrap();
        assert!(renewed.win_addr_conflict(&old));
        assert!(
            restarted.win_addr_conflict(&renewed),
            "a new boot beats any renewal of an old one"
        );
    }
}
