//! The node's actors, one per file.
//!
//! - [`NodeSupervisor`]: owns and restarts every module.
//! - [`ModBus`]: the node's local publish/subscribe bus.
//! - [`Transponder`]: the border between the ClusterBus and the ModBus.
//! - [`ClusterBridge`]: links to other nodes, membership and the ClusterBus.
//! - [`LoopbackCluster`]: the ClusterBus of a node that is alone.
//! - [`Echo`]: the simplest module, for round trips.

pub mod cluster_bridge;
pub mod cluster_bus;
pub mod echo;
pub mod loopback_cluster;
pub mod messages;
pub mod modbus;
pub mod supervisor;
pub mod transponder;

pub use cluster_bridge::ClusterBridge;
pub use cluster_bus::{ClusterHandle, Member, MemberStatus};
pub use echo::Echo;
pub use loopback_cluster::LoopbackCluster;
pub use messages::{Deliver, DumpState, EventTap, NodeIdentity, QueueGauge, QueueTicket, Snapshot, StopModule};
pub use modbus::{BusError, ModBus};
pub use supervisor::{spawn_module, ModuleInfo, ModuleSpec, ModuleState, NodeSupervisor, RestartMode, RestartPolicy};
pub use transponder::{NodeReply, RequestOutcome, Transponder, TransponderConfig};
