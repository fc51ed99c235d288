//! What a module gets of its node: the runtime handles, nothing of any
//! capability. A module that needs more (the Deployer its package store,
//! the Monitor its status board) is handed that by whoever assembles the
//! node, so no module reaches into another's state.

use super::cluster_bus::ClusterHandle;
use super::messages::NodeIdentity;
use super::modbus::ModBus;
use super::supervisor::NodeSupervisor;
use super::transponder::{Transponder, TransponderSlot};
use crate::metrics::Metrics;
use actix::Addr;
use serde_json::Value;
use std::time::Instant;

/// The node's runtime, as modules see it. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct ModuleContext {
    pub identity: NodeIdentity,
    pub bus: Addr<ModBus>,
    pub supervisor: Addr<NodeSupervisor>,
    pub cluster: ClusterHandle,
    /// The live Transponder; replaced by its factory on every restart.
    pub transponder: TransponderSlot,
    /// When the node started.
    pub started: Instant,
    /// The same moment in ms since the epoch: the node's boot in the
    /// member table, and the `started_ms` of its status reports.
    pub started_ms: u64,
    pub metrics: Metrics,
    /// How process modules' processes are kept together: a cgroup each,
    /// or their process tree where the host gives no cgroups.
    pub containment: crate::cgroup::Containment,
}

impl ModuleContext {
    /// The Transponder, if it is running right now.
    pub fn transponder(&self) -> Option<Addr<Transponder>> {
        self.transponder.get()
    }
}

/// What a module's factory gets each time it (re)starts the module.
pub struct ModuleArgs<'a> {
    pub ctx: &'a ModuleContext,
    /// The module's name (its inbox is `mod.<name>`).
    pub name: &'a str,
    /// The module's effective config.
    pub config: &'a Value,
}
