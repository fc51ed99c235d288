//! The cluster layer's parts that are not actors: the key, the encrypted
//! link, the link protocol, member identities and the timing config.
//! The ClusterBridge actor (`actors::cluster_bridge`) puts them together.

pub mod config;
pub mod identity;
pub mod key;
pub mod link;
pub mod noise;
pub mod protocol;

pub use config::ClusterConfig;
pub use identity::NodeId;
pub use key::{ClusterKey, KeySource};
