//! The cluster layer: the sans-IO core that decides everything, and the
//! parts that carry it: the key, encrypted links, the link protocol,
//! identities and the timing config. The ClusterBridge actor
//! (`actors::cluster_bridge`) drives the core over real links; the
//! simulator (`crate::sim`) drives thousands of cores over a virtual network.

pub mod admission;
pub mod backpressure;
pub mod config;
pub mod core;
pub mod identity;
pub mod key;
pub mod keyring;
pub mod link;
pub mod link_loads;
pub mod member_proof;
pub mod memory;
pub mod node_key;
pub mod noise;
pub mod protocol;
pub mod tcp_info;
pub mod transport;

pub use config::ClusterConfig;
pub use identity::NodeId;
pub use key::{ClusterKey, KeySource};
pub use keyring::{Keyring, SharedKeyring};
