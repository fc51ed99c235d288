//! The node's actors, one per file.
//!
//! - [`NodeSupervisor`]: owns and restarts every module.
//! - [`ModBus`]: the node's local publish/subscribe bus.
//! - [`Transponder`]: the border between the ClusterBus and the ModBus.
//! - [`ClusterBridge`]: links to other nodes, membership and the ClusterBus.
//! - [`LoopbackCluster`]: the ClusterBus of a node that is alone.
//! - [`Deployer`]: installs and removes modules on order from the cluster.
//! - [`Monitor`]: asks the modules for their status, publishes it, and keeps
//!   every node's latest report.
//! - [`ProcessModule`]: runs a package's program and bridges its stdio.
//! - [`Echo`]: the simplest module, for round trips.
//! - [`Uptime`]: reports the host's load and uptime (the worked example in `docs/modules.md`).
//!
//! Besides them, [`EventTap`] is the node's live stream of envelopes for
//! readers of the control API.

pub mod cluster_bridge;
pub mod cluster_bus;
pub mod context;
pub mod deployer;
pub mod echo;
pub mod event_tap;
pub mod loopback_cluster;
pub mod messages;
pub mod modbus;
pub mod monitor;
pub mod process_module;
pub mod restart;
pub mod supervisor;
pub mod transponder;
pub mod transponder_module;
pub mod uptime;

pub use cluster_bridge::ClusterBridge;
pub use cluster_bus::{ClusterHandle, Member, MemberStatus};
pub use context::{ModuleArgs, ModuleContext};
pub use deployer::Deployer;
pub use echo::Echo;
pub use event_tap::EventTap;
pub use loopback_cluster::LoopbackCluster;
pub use messages::{Deliver, DumpState, NodeIdentity, QueueGauge, QueueTicket, Snapshot, StopModule, Tags};
pub use modbus::{BusError, ModBus};
pub use monitor::Monitor;
pub use process_module::ProcessModule;
pub use supervisor::{spawn_module, ModuleInfo, ModuleSpec, ModuleState, NodeSupervisor, RestartMode, RestartPolicy};
pub use transponder::{NodeReply, RequestOutcome, Transponder, TransponderConfig};
pub use uptime::Uptime;
