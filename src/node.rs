//! One node: builds every actor from a [`NodeConfig`] and wires them together.
//!
//! Nothing here is global: a node is handed its addresses explicitly, so
//! several nodes can run in one process (tests do this).

use crate::actors::cluster_bus::ClusterHandle;
use crate::actors::supervisor::{ListModules, ModuleSpec, RestartPolicy, Shutdown, StartModule};
use crate::actors::transponder::TransponderConfig;
use crate::actors::{
    spawn_module, DumpState, Echo, EventTap, LoopbackCluster, ModBus, ModuleInfo, NodeIdentity, NodeSupervisor,
    Snapshot, Transponder,
};
use crate::api;
use actix::prelude::*;
use anyhow::Context as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tracing::{info, warn};

/// Everything needed to build a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub cluster: String,
    pub tags: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    /// Where the control API listens (port 0 picks a free port).
    pub http: SocketAddr,
    pub transponder: TransponderConfig,
    /// The largest request body the control API takes.
    pub max_body_bytes: usize,
}

/// The file in the data dir that holds the control API's bound address, so
/// scripts and tests can find a node started with `--http 127.0.0.1:0`.
pub const HTTP_ADDR_FILE: &str = "http.addr";

/// The largest envelope body, and so the largest API request body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// The parts of a node the control API needs. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct NodeHandle {
    pub identity: NodeIdentity,
    pub bus: Addr<ModBus>,
    pub cluster: ClusterHandle,
    pub cluster_state: Recipient<DumpState>,
    pub supervisor: Addr<NodeSupervisor>,
    /// The live Transponder; replaced by its factory on every restart.
    pub transponder: Arc<RwLock<Option<Addr<Transponder>>>>,
    pub tap: EventTap,
    pub started: Instant,
}

impl NodeHandle {
    /// The Transponder, if it is running right now.
    pub fn transponder(&self) -> Option<Addr<Transponder>> {
        self.transponder
            .read()
            .ok()
            .and_then(|t| t.clone())
            .filter(|t| t.connected())
    }

    /// Makes every actor log one line with its state, and returns them all.
    pub async fn dump_state(&self) -> Value {
        let Snapshot(supervised) = self.supervisor.send(DumpState).await.unwrap_or(Snapshot(Value::Null));
        let Snapshot(modbus) = self.bus.send(DumpState).await.unwrap_or(Snapshot(Value::Null));
        let Snapshot(cluster) = self
            .cluster_state
            .send(DumpState)
            .await
            .unwrap_or(Snapshot(Value::Null));
        json!({
            "node": self.identity.name,
            "supervisor": supervised["supervisor"],
            "modules": supervised["modules"],
            "modbus": modbus,
            "cluster": cluster,
        })
    }

    pub async fn modules(&self) -> Vec<ModuleInfo> {
        self.supervisor.send(ListModules).await.unwrap_or_default()
    }
}

/// A running node.
pub struct Node {
    pub handle: NodeHandle,
    pub http_addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
}

impl Node {
    /// Builds and starts a node. Must be called inside an actix system.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let identity = NodeIdentity {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            tags: config.tags.clone(),
        };
        let span = identity.span("node");
        span.in_scope(|| {
            info!(cluster = %identity.cluster, tags = ?identity.tags, data_dir = %config.data_dir.display(),
                "node starting")
        });

        let tap = EventTap::default();
        let bus = ModBus::new(&identity, tap.clone()).start();
        let loopback = LoopbackCluster::new(&identity).start();
        let cluster = ClusterHandle::of(&loopback);
        let supervisor = NodeSupervisor::new(&identity).start();
        let transponder = Arc::new(RwLock::new(None));

        let handle = NodeHandle {
            identity: identity.clone(),
            bus: bus.clone(),
            cluster: cluster.clone(),
            cluster_state: loopback.recipient(),
            supervisor: supervisor.clone(),
            transponder: transponder.clone(),
            tap,
            started: Instant::now(),
        };

        for spec in core_modules(&identity, &config, &handle) {
            supervisor
                .send(StartModule(spec))
                .await
                .context("supervisor is gone")?
                .map_err(anyhow::Error::msg)?;
        }

        let (server, http_addr) = api::serve(handle.clone(), config.http, config.max_body_bytes)
            .with_context(|| format!("cannot start the control API on {}", config.http))?;
        let addr_file = config.data_dir.join(HTTP_ADDR_FILE);
        span.in_scope(|| {
            if let Err(e) = std::fs::write(&addr_file, format!("{http_addr}\n")) {
                warn!(file = %addr_file.display(), error = %e, "cannot record the control API address");
            }
            info!(http = %http_addr, "node running; control API listening");
        });
        Ok(Node {
            handle,
            http_addr,
            server,
        })
    }

    /// Stops modules in reverse start order, then the control API.
    pub async fn shutdown(self) {
        let span = self.handle.identity.span("node");
        span.in_scope(|| info!("node shutting down"));
        let _ = self.handle.supervisor.send(Shutdown).await;
        self.server.stop(true).await;
        span.in_scope(|| info!("node stopped"));
    }
}

/// The modules every node runs: the Transponder first (it is the border), then
/// the built-in modules.
fn core_modules(identity: &NodeIdentity, config: &NodeConfig, handle: &NodeHandle) -> Vec<ModuleSpec> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let transponder = {
        let identity = identity.clone();
        let settings = config.transponder.clone();
        let bus = handle.bus.clone();
        let cluster = handle.cluster.clone();
        let slot = handle.transponder.clone();
        ModuleSpec {
            name: "transponder".into(),
            kind: "transponder".into(),
            version: version.clone(),
            restart: RestartPolicy::default(),
            factory: Box::new(move || {
                let (addr, running) = spawn_module(Transponder::new(
                    &identity,
                    settings.clone(),
                    bus.clone(),
                    cluster.clone(),
                ));
                *slot.write().map_err(|_| anyhow::anyhow!("transponder slot poisoned"))? = Some(addr);
                Ok(running)
            }),
        }
    };
    let echo = {
        let identity = identity.clone();
        let bus = handle.bus.clone();
        ModuleSpec {
            name: "echo".into(),
            kind: "echo".into(),
            version,
            restart: RestartPolicy::default(),
            factory: Box::new(move || Ok(spawn_module(Echo::new(&identity, "echo", bus.clone())).1)),
        }
    };
    vec![transponder, echo]
}
