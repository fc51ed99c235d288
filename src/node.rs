//! One node: builds every actor from a [`NodeConfig`] and wires them together.
//!
//! Nothing here is global: a node is handed its addresses explicitly, so
//! several nodes can run in one process (tests do this).

use crate::actors::cluster_bridge::LeaveCluster;
use crate::actors::cluster_bus::ClusterHandle;
use crate::actors::cluster_bus::SetTags;
use crate::actors::deployer::{self, DeployerParts};
use crate::actors::monitor::{self, MonitorConfig, MonitorParts};
use crate::actors::supervisor::{ListModules, RestartPolicy, Shutdown, StartModule};
use crate::actors::transponder::{TransponderConfig, TransponderSlot};
use crate::actors::transponder_module;
use crate::actors::{echo, uptime, ClusterBridge};
use crate::actors::{
    DumpState, EventTap, LoopbackCluster, ModBus, ModuleContext, ModuleInfo, ModuleState, NodeIdentity, NodeSupervisor,
    Snapshot, Tags, Transponder,
};
use crate::cluster::core::AdmissionRule;
use crate::cluster::keyring::{key_id, show_id};
use crate::cluster::memory::MemoryNetwork;
use crate::cluster::node_key::{NodeKey, NodeKeySource};
use crate::cluster::protocol::SET_DEPLOYMENTS;
use crate::cluster::transport::{TcpTransport, Transport};
use crate::cluster::{ClusterConfig, ClusterKey, KeySource, Keyring};
use crate::command::admission::Admission;
use crate::command::tag_change::TagRefusal;
use crate::deploy::fetch::{StallRule, UrlDeadline};
use crate::deploy::install::DeployerConfig;
use crate::deploy::state::DeployState;
use crate::deploy::table::DeploymentRules;
use crate::discovery::{known_peers, spawn_seeds, Mdns};
use crate::metrics::Metrics;
use crate::modules::registry::{self, BoxedFactory, Builtins, CORE_MODULES};
use crate::monitor::board::StatusBoard;
use crate::tags::TagChanges;
use crate::wire::{Envelope, MessageType, Source};
use actix::prelude::*;
use anyhow::Context as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Everything needed to build a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub cluster: String,
    pub tags: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub transponder: TransponderConfig,
    pub deployer: DeployerConfig,
    pub monitor: MonitorConfig,
    /// How this node links to others; `None` runs it alone on a
    /// [`LoopbackCluster`] (in-process tests do this).
    pub network: Option<NetworkConfig>,
}

/// Every timeout and limit of a node, by preset (`agent --profile`): the
/// cluster's timings and each core module's tunables. Each value is
/// documented beside its field in its own config type.
#[derive(Debug, Clone)]
pub struct Profile {
    pub cluster: ClusterConfig,
    pub transponder: TransponderConfig,
    pub deployer: DeployerConfig,
    pub monitor: MonitorConfig,
}

impl Profile {
    /// Hosts on one LAN: the defaults.
    pub fn lan() -> Profile {
        Profile {
            cluster: ClusterConfig::lan(),
            transponder: TransponderConfig::default(),
            deployer: DeployerConfig::default(),
            monitor: MonitorConfig::default(),
        }
    }

    /// Hosts across slow or lossy links: about five times slower to judge
    /// a peer, and as patient with downloads, module answers and new
    /// versions.
    pub fn wan() -> Profile {
        let lan = Profile::lan();
        Profile {
            cluster: ClusterConfig::wan(),
            transponder: TransponderConfig {
                module_request_timeout: Duration::from_secs(60),
                ..lan.transponder
            },
            deployer: DeployerConfig {
                probation: Duration::from_secs(3),
                fetch_timeout: Duration::from_secs(900),
                chunk_timeout: Duration::from_secs(60),
                stall: StallRule {
                    window: Duration::from_secs(60),
                    ..lan.deployer.stall
                },
                url_deadline: UrlDeadline {
                    base: Duration::from_secs(30),
                    min_bytes_per_sec: 128 * 1024,
                },
                ..lan.deployer
            },
            monitor: MonitorConfig {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
            },
        }
    }

    /// Nodes on one host (tests, demos): quick to judge.
    pub fn local() -> Profile {
        Profile {
            cluster: ClusterConfig::local(),
            ..Profile::lan()
        }
    }

    /// A preset by name: `lan`, `wan` or `local`.
    pub fn preset(name: &str) -> Option<Profile> {
        match name {
            "lan" => Some(Profile::lan()),
            "wan" => Some(Profile::wan()),
            "local" => Some(Profile::local()),
            _ => None,
        }
    }
}

/// How a node reaches the rest of its cluster.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where the cluster listener binds (port 0 picks a free port).
    pub bind: SocketAddr,
    /// The address peers dial; default: the bind address, or this host's
    /// first LAN address when bound to 0.0.0.0.
    pub advertise: Option<SocketAddr>,
    /// `--join` seeds, `host:port`.
    pub join: Vec<String>,
    pub mdns: bool,
    pub key_file: Option<PathBuf>,
    /// The `CONJOINER_KEY` value, if set.
    pub key_env: Option<String>,
    /// Link only with admitted peers (see `command::admission`).
    pub require_admission: bool,
    /// An admission to keep as this node's own (`--join-token`).
    pub join_token: Option<PathBuf>,
    pub timing: ClusterConfig,
    /// Link over this in-process network instead of TCP (tests); `bind`
    /// and mDNS are then unused.
    pub memory: Option<MemoryNetwork>,
}

/// The file in the data dir that holds the cluster listener's advertised
/// address, so scripts and tests can `--join` a node started on port 0.
pub const CLUSTER_ADDR_FILE: &str = "cluster.addr";

/// The address to advertise: the one given, else the bound address, else
/// (bound to every interface) this host's first non-loopback IPv4 address.
pub fn advertise_address(bound: SocketAddr, given: Option<SocketAddr>) -> SocketAddr {
    if let Some(mut addr) = given {
        if addr.port() == 0 {
            addr.set_port(bound.port());
        }
        return addr;
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let lan = if_addrs::get_if_addrs().ok().and_then(|ifaces| {
        ifaces
            .into_iter()
            .map(|i| i.ip())
            .find(|ip| ip.is_ipv4() && crate::discovery::mdns::usable_peer_ip(*ip))
    });
    match lan {
        Some(ip) => SocketAddr::new(ip, bound.port()),
        None => {
            warn!("no LAN address found; advertising 127.0.0.1 (use --advertise)");
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
        }
    }
}

/// This host's name as the kernel knows it (`gethostname`), if it has one.
pub fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length, and gethostname
    // writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).to_string()).filter(|n| !n.is_empty())
}

/// The cluster side of a running node, stopped in order at shutdown.
struct ClusterParts {
    bridge: Addr<ClusterBridge>,
    /// The keys links are made with; `conjoiner keys` changes them.
    keys: crate::cluster::SharedKeyring,
    /// Set by the bridge while the links cannot carry more.
    backpressure: crate::cluster::backpressure::Backpressure,
    mdns: Option<Mdns>,
    seeds: Vec<tokio::task::JoinHandle<()>>,
}

/// This node's admission (from `--join-token`, kept in the data dir), and,
/// when it requires admission of its peers, the rule their hellos are held
/// to, read against the operator keys trusted at that moment.
fn admission(
    identity: &NodeIdentity,
    node_key: &NodeKey,
    config: &NodeConfig,
    net: &NetworkConfig,
    span: &tracing::Span,
) -> anyhow::Result<(Option<String>, Option<AdmissionRule>)> {
    let me = node_key.public();
    if let Some(file) = &net.join_token {
        let text = crate::private_file::read_to_string(file)
            .with_context(|| format!("cannot read the join token {}", file.display()))?;
        let token = Admission::parse(&text).map_err(|e| anyhow::anyhow!("join token {}: {e}", file.display()))?;
        token
            .install(&config.data_dir, &me, &identity.name)
            .map_err(|e| anyhow::anyhow!("join token {}: {e}", file.display()))?;
        span.in_scope(|| info!(file = %file.display(), "kept the join token as this node's admission"));
    }
    let own = Admission::load(&config.data_dir).map_err(anyhow::Error::msg)?;
    span.in_scope(|| match &own {
        Some(a) => info!(signer = a.signature.signer_id().as_deref().unwrap_or("?"),
            "this node shows its admission to every peer"),
        None if net.require_admission => warn!(identity = %me,
            "this node holds no admission, so its peers refuse it too:              `conjoiner admit {me} --name {}`, then restart it with --join-token FILE", identity.name),
        None => {}
    });
    if !net.require_admission {
        return Ok((own.map(|a| a.to_text()), None));
    }
    let trust = config.deployer.trust.clone();
    if trust.current().is_open() {
        anyhow::bail!(
            "require_admission needs at least one trusted operator key (--trust-operator),              whose signature admits a node"
        );
    }
    span.in_scope(|| info!("links only with peers admitted by a trusted operator key"));
    let rule: AdmissionRule = Box::new(move |peer, key, text| {
        let admission = Admission::parse(text)?;
        admission.admits(&trust.current(), peer, key).map(|_| ())
    });
    Ok((own.map(|a| a.to_text()), Some(rule)))
}

/// The rules the deployments table is held by, with this node's operator keys.
fn deployment_rules(trust: &crate::command::trust::SharedTrust) -> Box<DeploymentRules> {
    let trust = trust.clone();
    Box::new(DeploymentRules::admitting(Box::new(move |row, held| {
        crate::deploy::command::admit_entry(&trust.current(), row, held)
    })))
}

impl ClusterParts {
    async fn start(
        identity: &NodeIdentity,
        node_key: Arc<NodeKey>,
        config: &NodeConfig,
        net: &NetworkConfig,
        metrics: &Metrics,
        started_ms: u64,
    ) -> anyhow::Result<ClusterParts> {
        let span = identity.span("cluster");
        let (key, source) = ClusterKey::load(net.key_file.as_deref(), net.key_env.as_deref(), &config.data_dir)?;
        span.in_scope(|| match &source {
            KeySource::Created(path) => warn!(
                file = %path.display(),
                "created a new cluster key; give the same key to every node of this cluster \
                 (copy this file and pass --key-file, or set CONJOINER_KEY to its contents)"
            ),
            other => info!(source = %other, "cluster key loaded"),
        });
        // The keyring, once there is one, is what the node links with.
        let keyring = match Keyring::load(&config.data_dir).map_err(anyhow::Error::msg)? {
            None => Keyring::new(key),
            Some(keyring) => {
                span.in_scope(|| {
                    let ids: Vec<String> = keyring.ids().iter().map(show_id).collect();
                    if keyring.keys().any(|k| *k == key) {
                        info!(primary = %ids[0], keys = %ids.join(", "), "keyring loaded");
                    } else {
                        warn!(primary = %ids[0], keys = %ids.join(", "), given = %show_id(&key_id(&key)),
                            source = %source, "the key given at start is not in the keyring, which wins");
                    }
                });
                keyring
            }
        };
        let transport: Arc<dyn Transport> = match &net.memory {
            Some(network) => Arc::new(network.transport()),
            None => {
                let listener = tokio::net::TcpListener::bind(net.bind)
                    .await
                    .with_context(|| format!("cannot bind the cluster listener on {} (use --bind)", net.bind))?;
                Arc::new(TcpTransport::new(listener)?)
            }
        };
        let bound = transport.local_addr();
        let advertise = advertise_address(bound, net.advertise);
        let addr_file = config.data_dir.join(CLUSTER_ADDR_FILE);
        crate::private_file::write(&addr_file, format!("{advertise}\n").as_bytes())
            .with_context(|| format!("cannot record the cluster address in {}", addr_file.display()))?;
        let keys = crate::cluster::SharedKeyring::new(keyring);
        let backpressure = crate::cluster::backpressure::Backpressure::default();
        let (own_admission, admission_rule) = admission(identity, &node_key, config, net, &span)?;
        let bridge = ClusterBridge::new(
            identity,
            net.timing.clone(),
            keys.clone(),
            transport,
            advertise,
            started_ms,
        )
        .with_node_key(node_key)
        .with_admission(own_admission, admission_rule)
        .with_metrics(metrics.clone())
        .with_backpressure(backpressure.clone())
        .holding(SET_DEPLOYMENTS, deployment_rules(&config.deployer.trust))
        .start();
        let mdns = if net.mdns && net.memory.is_none() {
            match Mdns::start(
                &identity.cluster,
                &identity.name,
                advertise,
                bridge.clone().recipient(),
                span.clone(),
            ) {
                Ok(m) => Some(m),
                Err(e) => {
                    span.in_scope(|| warn!(error = %format!("{e:#}"), "mDNS discovery is off; use --join seeds"));
                    None
                }
            }
        } else {
            span.in_scope(|| info!("mDNS discovery off (--no-mdns)"));
            None
        };
        let mut seeds = spawn_seeds(&net.join, bridge.clone().recipient(), span.clone());
        seeds.extend(known_peers::spawn(
            &config.data_dir,
            &identity.name,
            bridge.clone().recipient(),
            bridge.clone().recipient(),
            bridge.clone().recipient(),
            span,
        ));
        Ok(ClusterParts {
            bridge,
            keys,
            backpressure,
            mdns,
            seeds,
        })
    }

    /// Stops discovery, then says goodbye to the cluster.
    async fn stop(self) {
        for seed in self.seeds {
            seed.abort();
        }
        if let Some(m) = self.mdns {
            m.stop();
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.bridge.send(LeaveCluster)).await;
    }
}

/// The file in the data dir that holds the control API's bound address, so
/// scripts and tests can find a node started with `--http 127.0.0.1:0`.
pub const HTTP_ADDR_FILE: &str = "http.addr";

pub use crate::wire::MAX_ENVELOPE_BYTES as DEFAULT_MAX_BODY;

/// The built-in kinds a package may deploy (`"builtin": "<kind>"` in its
/// `mod.json`). Adding a Rust actor module takes one file in `src/actors/`
/// with a `start_module(&ModuleArgs)` function, and one line here.
pub const BUILTINS: Builtins = Builtins(&[("echo", echo::start_module), ("uptime", uptime::start_module)]);

/// The settings the control API reads.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub data_dir: PathBuf,
    /// `--join` seeds: with them (or known peers), a node alone is isolated.
    pub join: Vec<String>,
    pub transponder: TransponderConfig,
    pub deployer: DeployerConfig,
    pub monitor: MonitorConfig,
    /// The tags given at start, or by the config file's last reload;
    /// run-time changes lie over them. Held through a change, so that
    /// changes are made one at a time.
    pub given_tags: Arc<tokio::sync::Mutex<BTreeMap<String, String>>>,
    /// This node's identity key (`<data-dir>/node.key`).
    pub node_key: Arc<NodeKey>,
}

/// The parts of a node that the control API needs. Cheap to clone,
/// `Send + Sync`.
#[derive(Clone)]
pub struct NodeHandle {
    /// The runtime, as modules see it.
    pub ctx: ModuleContext,
    pub cluster_state: Recipient<DumpState>,
    pub tap: EventTap,
    pub settings: Arc<NodeSettings>,
    /// Installed modules and the package cache, shared with the Deployer.
    pub deploy: Arc<DeployState>,
    /// Every node's latest status report, filled by the Monitor.
    pub status: StatusBoard,
}

impl NodeHandle {
    /// The Transponder, if it is running right now.
    pub fn transponder(&self) -> Option<Addr<Transponder>> {
        self.ctx.transponder()
    }

    /// Changes this node's tags at run time: `set` and `delete` lie over
    /// the tags given at start, are kept in the data dir, and reach every
    /// member at once (selectors, and the Deployer reconciles). `allow`
    /// sees the tags before and after, and may refuse the change (the
    /// command gate); nothing is changed then. Answers the tags now.
    pub async fn change_tags(
        &self,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        allow: impl FnOnce(&BTreeMap<String, String>, &BTreeMap<String, String>) -> Result<(), TagRefusal>,
    ) -> Result<BTreeMap<String, String>, TagRefusal> {
        let given = self.settings.given_tags.lock().await;
        let dir = &self.settings.data_dir;
        // Changes that no longer read are replaced by these.
        let mut changes = TagChanges::load(dir).unwrap_or_default();
        changes.change(&set, &delete);
        let tags = changes.apply(&given);
        if tags.len() > crate::tags::MAX_TAGS {
            return Err(TagRefusal::invalid(format!(
                "a node carries at most {} tags; this would make {}",
                crate::tags::MAX_TAGS,
                tags.len()
            )));
        }
        allow(&self.ctx.identity.tags.get(), &tags)?;
        let save_dir = dir.clone();
        let save = changes.clone();
        tokio::task::spawn_blocking(move || save.save(&save_dir))
            .await
            .map_err(|e| TagRefusal::failed(e.to_string()))?
            .map_err(|e| TagRefusal::failed(format!("cannot keep the tags in {}: {e}", dir.display())))?;
        self.spread_tags(&tags);
        Ok(tags)
    }

    /// Takes `given` as the tags given at start (the config file was
    /// reloaded); the changes made at run time still lie over them.
    /// Answers the tags now.
    pub async fn set_given_tags(&self, given: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut held = self.settings.given_tags.lock().await;
        *held = given;
        let changes = TagChanges::load(&self.settings.data_dir).unwrap_or_default();
        let tags = changes.apply(&held);
        self.spread_tags(&tags);
        tags
    }

    /// Makes `tags` this node's, and tells every member if they changed.
    fn spread_tags(&self, tags: &BTreeMap<String, String>) {
        if self.ctx.identity.tags.set(tags.clone()) {
            self.ctx
                .identity
                .span("node")
                .in_scope(|| info!(tags = %self.ctx.identity.tags, "tags changed"));
            self.ctx.cluster.set_tags.do_send(SetTags(tags.clone()));
        }
    }

    /// This node as the driver of a rollout: its name and identity key.
    pub fn driver(&self) -> crate::deploy::steer::Driver {
        crate::deploy::steer::Driver {
            node: self.ctx.identity.name.clone(),
            key: self.settings.node_key.public().to_string(),
        }
    }

    /// Drives the rollout of table entry `id` from this node (its waves
    /// and its revert), until it is done, stopped, or another node drives it.
    pub fn drive_rollout(&self, id: uuid::Uuid) {
        actix_rt::spawn(crate::deploy::rollout::drive(
            self.ctx.clone(),
            self.status.clone(),
            self.settings.node_key.clone(),
            id.to_string(),
        ));
    }

    /// Makes every actor log one line with its state, and returns them all.
    pub async fn dump_state(&self) -> Value {
        let Snapshot(supervised) = self
            .ctx
            .supervisor
            .send(DumpState)
            .await
            .unwrap_or(Snapshot(Value::Null));
        let Snapshot(modbus) = self.ctx.bus.send(DumpState).await.unwrap_or(Snapshot(Value::Null));
        let Snapshot(cluster) = self
            .cluster_state
            .send(DumpState)
            .await
            .unwrap_or(Snapshot(Value::Null));
        json!({
            "node": self.ctx.identity.name,
            "supervisor": supervised["supervisor"],
            "modules": supervised["modules"],
            "modbus": modbus,
            "cluster": cluster,
        })
    }

    pub async fn modules(&self) -> Vec<ModuleInfo> {
        self.ctx.supervisor.send(ListModules).await.unwrap_or_default()
    }

    /// What, if anything, has broken the node itself: an actor it cannot
    /// run without has stopped, or an essential module has failed for good
    /// (its restarts used up). A node so broken must not answer `ok`; the
    /// agent exits non-zero so its service manager restarts it.
    pub async fn core_fault(&self) -> Option<String> {
        let ctx = &self.ctx;
        if !ctx.supervisor.connected() {
            return Some("the supervisor stopped".into());
        }
        if !ctx.bus.connected() {
            return Some("the ModBus stopped".into());
        }
        if !ctx.cluster.members.connected() {
            return Some("the cluster bridge stopped".into());
        }
        let Ok(modules) = ctx.supervisor.send(ListModules).await else {
            return Some("the supervisor stopped".into());
        };
        for name in ESSENTIAL_MODULES {
            match modules.iter().find(|m| m.name == *name) {
                None => return Some(format!("the {name} module is not running")),
                Some(m) if matches!(m.state, ModuleState::Failed | ModuleState::Stopped) => {
                    let why = m.last_exit.as_deref().unwrap_or("no reason recorded");
                    let state = if m.state == ModuleState::Failed {
                        "failed"
                    } else {
                        "stopped"
                    };
                    return Some(format!("the {name} module {state}: {why}"));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// The modules a node is useless without: its border, its deploys, its
/// status. (`echo` is core but not essential.)
pub const ESSENTIAL_MODULES: &[&str] = &["transponder", "deployer", "monitor"];

/// A running node. Its control API is started by whoever runs it (see
/// `cli/agent.rs`), with its [`NodeHandle`].
pub struct Node {
    pub handle: NodeHandle,
    cluster: Option<ClusterParts>,
}

impl Node {
    /// Builds and starts a node. Must be called inside an actix system.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        crate::data_dir::claim(&config.data_dir)?;
        // The tags given at start, with the changes made at run time.
        let changes = TagChanges::load(&config.data_dir);
        let identity = NodeIdentity {
            name: config.name.clone(),
            cluster: config.cluster.clone(),
            tags: Tags::new(changes.as_ref().map_or(config.tags.clone(), |c| c.apply(&config.tags))),
        };
        let span = identity.span("node");
        if let Err(e) = &changes {
            span.in_scope(
                || error!(error = %e, "the tags changed at run time are not applied; the tags given at start are"),
            );
        }
        span.in_scope(|| {
            info!(cluster = %identity.cluster, tags = %identity.tags, data_dir = %config.data_dir.display(),
                "node starting")
        });
        let (node_key, key_source) = NodeKey::load_or_create(&config.data_dir).map_err(anyhow::Error::msg)?;
        let node_key = Arc::new(node_key);
        span.in_scope(|| match &key_source {
            NodeKeySource::Created(path) => info!(
                identity = %node_key.public(), id = %node_key.public().id(), file = %path.display(),
                "made this node's identity key"
            ),
            NodeKeySource::Loaded(_) => {
                info!(identity = %node_key.public(), id = %node_key.public().id(), "identity key loaded")
            }
        });
        let trust = config.deployer.trust.current();
        span.in_scope(|| {
            if trust.is_open() {
                warn!("this node trusts no operator key: any holder of the cluster key can deploy code to it \
                    (make a key with `conjoiner keygen --operator` and start with --trust-operator)");
            } else {
                let keys: Vec<String> = trust.keys.iter().map(|k| k.describe()).collect();
                info!(keys = %keys.join("; "), "commands are carried out only when signed by one of these operator keys");
            }
        });

        // One moment for the node's start: its boot in the member table and
        // in its status reports, so a report from an earlier run is known
        // for what it is.
        let (started, started_ms) = (Instant::now(), crate::wire::now_ms());
        let tap = EventTap::default();
        let metrics = Metrics::new();
        let bus = ModBus::new(&identity, tap.clone())
            .with_metrics(metrics.clone())
            .start();
        let parts = match &config.network {
            Some(net) => {
                Some(ClusterParts::start(&identity, node_key.clone(), &config, net, &metrics, started_ms).await?)
            }
            None => None,
        };
        let (cluster, cluster_state) = match &parts {
            Some(p) => (
                ClusterHandle::of(&p.bridge).with_backpressure(p.backpressure.clone()),
                p.bridge.clone().recipient(),
            ),
            None => {
                let loopback = LoopbackCluster::new(&identity)
                    .holding(SET_DEPLOYMENTS, deployment_rules(&config.deployer.trust))
                    .start();
                (ClusterHandle::of(&loopback), loopback.recipient())
            }
        };
        let supervisor = NodeSupervisor::new(&identity).with_bus(bus.clone()).start();
        let ctx = ModuleContext {
            identity: identity.clone(),
            bus,
            supervisor: supervisor.clone(),
            cluster,
            transponder: TransponderSlot::default(),
            started,
            started_ms,
            metrics,
            containment: crate::cgroup::Containment::detect(&config.name),
        };
        let mut deploy = DeployState::open(
            &config.data_dir,
            &config.deployer.package_dirs,
            config.deployer.parallel_orders,
            config.deployer.max_uploads,
        )?;
        deploy.audit = deploy.audit.signed_by(node_key.clone());
        let deploy = Arc::new(deploy);
        let status = StatusBoard::default();
        let board = status.clone();
        let deployer = DeployerParts {
            ctx: ctx.clone(),
            state: deploy.clone(),
            config: config.deployer.clone(),
            builtins: BUILTINS,
            data_dir: config.data_dir.clone(),
            holders: Arc::new(move |sha: &str| board.holders_of(sha)),
            keys: parts.as_ref().map(|p| p.keys.clone()),
        };
        let boot_done = monitor::BootDone::default();
        let monitor = MonitorParts {
            ctx: ctx.clone(),
            config: config.monitor.clone(),
            board: status.clone(),
            deploy: deploy.clone(),
            boot_done: boot_done.clone(),
        };

        // The Transponder first (it is the border), then the other core modules.
        let version = env!("CARGO_PKG_VERSION");
        let restart = RestartPolicy::default();
        for name in CORE_MODULES {
            let start: BoxedFactory = match *name {
                "transponder" => {
                    let config = config.transponder.clone();
                    Box::new(move |args| transponder_module::start_module(args, config.clone()))
                }
                "deployer" => {
                    let parts = deployer.clone();
                    Box::new(move |args| deployer::start_module(args.name, parts.clone()))
                }
                "monitor" => {
                    let parts = monitor.clone();
                    Box::new(move |args| monitor::start_module(args.name, parts.clone()))
                }
                kind => Box::new(
                    BUILTINS
                        .get(kind)
                        .with_context(|| format!("no built-in kind `{kind}`"))?,
                ),
            };
            let spec = registry::spec(&ctx, name, name, version, restart, start, json!({}));
            supervisor
                .send(StartModule(spec))
                .await
                .context("supervisor is gone")?
                .map_err(anyhow::Error::msg)?;
        }
        // Then whatever was deployed here before the node last stopped.
        deployer::start_installed(&deployer).await;
        // Now the Monitor's first report can list them all.
        boot_done.store(true, std::sync::atomic::Ordering::Release);
        ctx.bus.do_send(crate::actors::modbus::Publish(Envelope::new(
            MessageType::Event,
            Source {
                node: ctx.identity.name.clone(),
                module: "node".into(),
            },
            ctx.identity.local_address(),
            None,
            json!({"event": monitor::NODE_STARTED}),
        )));

        let handle = NodeHandle {
            ctx,
            cluster_state,
            tap,
            settings: Arc::new(NodeSettings {
                data_dir: config.data_dir.clone(),
                join: config.network.as_ref().map(|n| n.join.clone()).unwrap_or_default(),
                transponder: config.transponder.clone(),
                deployer: config.deployer.clone(),
                monitor: config.monitor.clone(),
                given_tags: Arc::new(tokio::sync::Mutex::new(config.tags.clone())),
                node_key,
            }),
            deploy,
            status,
        };
        span.in_scope(|| info!("node running"));
        Ok(Node { handle, cluster: parts })
    }

    /// Leaves the cluster, then stops modules in reverse start order.
    pub async fn shutdown(self) {
        let span = self.handle.ctx.identity.span("node");
        span.in_scope(|| info!("node shutting down"));
        // Leave first, so peers stop sending here before the modules go.
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
        let _ = self.handle.ctx.supervisor.send(Shutdown).await;
        span.in_scope(|| info!("node stopped"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_sets_every_part_and_wan_is_the_most_patient() {
        assert!(Profile::preset("moon").is_none());
        let (lan, wan, local) = (Profile::lan(), Profile::wan(), Profile::local());
        for name in ["lan", "wan", "local"] {
            assert!(Profile::preset(name).is_some(), "{name}");
        }
        assert!(wan.cluster.suspicion_min > lan.cluster.suspicion_min);
        assert!(local.cluster.probe_interval < lan.cluster.probe_interval);
        assert!(wan.transponder.module_request_timeout > lan.transponder.module_request_timeout);
        assert!(wan.deployer.fetch_timeout > lan.deployer.fetch_timeout);
        assert!(wan.deployer.chunk_timeout > lan.deployer.chunk_timeout);
        assert!(wan.deployer.probation > lan.deployer.probation);
        assert!(wan.deployer.stall.window > lan.deployer.stall.window);
        assert_eq!(
            wan.deployer.max_package_bytes, lan.deployer.max_package_bytes,
            "limits stay"
        );
        assert!(wan.monitor.timeout > lan.monitor.timeout && wan.monitor.timeout < wan.monitor.interval);
    }
}
