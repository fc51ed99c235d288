//! The Deployer: installs, upgrades and removes modules when a `deploy` or
//! `undeploy` envelope from the ClusterBus selects this node (SPEC §8).
//!
//! A deploy fetches the package (URL, file, or in chunks from the peers that
//! hold it), checks its sha256, unpacks it into a staging folder, swaps it in
//! by renaming, starts it under the supervisor and watches it for a short
//! probation. If the new version does not stay up, the previous one is put
//! back and started again. Every order gets a `deploy_result` sent straight
//! to its origin, and local modules hear of every change on `<node>.local`
//! (type `deployment_changed`).
//!
//! Orders run on worker tasks, so the actor itself stays free to serve
//! package chunks and answer the Monitor meanwhile. Orders for one module
//! run one at a time, in arrival order; orders for different modules run
//! side by side, at most `parallel_orders` at once, so one slow package URL
//! holds only its own module.

use super::messages::{answer_status, Deliver, DumpState, Snapshot, StopModule};
use super::modbus::{Publish, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, ListModules, ModuleInfo, ModuleState, RemoveModule, RunningModule, StartModule};
use super::transponder::{PublishToCluster, RequestCluster, SendDirect};
use crate::modules::fetch::{CachedPackage, FetchError, PackageCache, PackageDirs, PackageSource};
use crate::modules::manifest::{check_module_name, merge_config};
use crate::modules::package::{parse_sha256, UnpackLimits, DEFAULT_MAX_PACKAGE_BYTES};
use crate::modules::registry::{self, CORE_MODULES, CORE_ONLY};
use crate::modules::store::{InstallRecord, InstalledModule, ModuleStore, Staged};
use crate::modules::ModuleArgs;
use crate::node::NodeHandle;
use crate::wire::{now_ms, Envelope, MessageType, Source};
use actix::prelude::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn, Instrument};

/// The Deployer's inbox (SPEC §2).
pub const DEPLOYER_ADDRESS: &str = "mod.deployer";
/// The largest chunk a peer asks for or serves.
pub const MAX_CHUNK_BYTES: u64 = 512 * 1024;
/// How many packages' holder lists are remembered.
const HOLDER_MEMORY: usize = 256;

/// Tunables of the Deployer.
#[derive(Debug, Clone)]
pub struct DeployerConfig {
    /// The largest package (compressed) fetched, SPEC §8.
    pub max_package_bytes: u64,
    /// How long a new version must stay up, with no restart, to count as deployed.
    pub probation: Duration,
    /// The longest a whole fetch may take.
    pub fetch_timeout: Duration,
    /// Peer-to-peer chunk size, and how long one chunk may take.
    pub chunk_bytes: u64,
    pub chunk_timeout: Duration,
    /// Orders for different modules carried out at once.
    pub parallel_orders: usize,
    /// The only directories `file://` sources and `source.path` are read
    /// from (`agent --package-dir`); none by default.
    pub package_dirs: Vec<std::path::PathBuf>,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        DeployerConfig {
            max_package_bytes: DEFAULT_MAX_PACKAGE_BYTES,
            probation: Duration::from_millis(1000),
            fetch_timeout: Duration::from_secs(300),
            chunk_bytes: 256 * 1024,
            chunk_timeout: Duration::from_secs(15),
            parallel_orders: 4,
            package_dirs: Vec::new(),
        }
    }
}

/// What the Deployer keeps across its own restarts: the installed modules,
/// the package cache, who holds which package, and the locks that keep two
/// orders from changing one module at once (even a worker left over from
/// before a restart).
pub struct DeployState {
    pub store: ModuleStore,
    pub cache: PackageCache,
    holders: Mutex<HashMap<String, BTreeSet<String>>>,
    module_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What each module's order is doing now.
    activity: Mutex<BTreeMap<String, String>>,
    counters: Mutex<DeployCounters>,
}

#[derive(Default, Debug, Clone, Copy, Serialize)]
struct DeployCounters {
    deployed: u64,
    unchanged: u64,
    failed: u64,
    undeployed: u64,
    chunks_served: u64,
    chunks_fetched: u64,
}

impl DeployState {
    /// Opens `<data-dir>/mods` and `<data-dir>/packages`; `file://`
    /// packages are read only from `package_dirs`.
    pub fn open(data_dir: &Path, package_dirs: &[std::path::PathBuf]) -> anyhow::Result<DeployState> {
        use anyhow::Context as _;
        let readable = PackageDirs::new(package_dirs)?;
        let store = ModuleStore::open(&data_dir.join("mods"))
            .with_context(|| format!("cannot open {}", data_dir.join("mods").display()))?;
        let cache = PackageCache::open(&data_dir.join("packages"), readable)
            .with_context(|| format!("cannot open {}", data_dir.join("packages").display()))?;
        Ok(DeployState {
            store,
            cache,
            holders: Mutex::new(HashMap::new()),
            module_locks: Mutex::new(HashMap::new()),
            activity: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(DeployCounters::default()),
        })
    }

    fn set_activity(&self, module: &str, what: Option<String>) {
        if let Ok(mut a) = self.activity.lock() {
            match what {
                Some(what) => a.insert(module.to_string(), what),
                None => a.remove(module),
            };
        }
    }

    fn activity(&self) -> Value {
        self.activity.lock().map(|a| json!(*a)).unwrap_or(Value::Null)
    }

    /// The lock of one module's orders.
    fn module_lock(&self, module: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.module_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the locks nobody holds or waits for.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(module.to_string()).or_default().clone()
    }

    fn count(&self, f: impl FnOnce(&mut DeployCounters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }

    fn add_holder(&self, sha256: &str, node: &str) {
        let Ok(mut holders) = self.holders.lock() else { return };
        if !holders.contains_key(sha256) && holders.len() >= HOLDER_MEMORY {
            if let Some(any) = holders.keys().next().cloned() {
                holders.remove(&any);
            }
        }
        holders.entry(sha256.to_string()).or_default().insert(node.to_string());
    }

    fn holders_of(&self, sha256: &str) -> BTreeSet<String> {
        self.holders
            .lock()
            .ok()
            .and_then(|h| h.get(sha256).cloned())
            .unwrap_or_default()
    }
}

/// The body of a `deploy` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOrder {
    pub module: String,
    pub source: OrderSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// Where targeted nodes get the package: a URL each fetches itself, or a
/// peer (the origin) that offers it by sha256 over the cluster links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The body of an `undeploy` envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndeployOrder {
    pub module: String,
}

/// How one node carried out an order, as `status` of its `deploy_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Deploy: installed and started.
    Deployed,
    /// Deploy: that version with that checksum was already running.
    Unchanged,
    /// Undeploy: stopped and removed.
    Undeployed,
    /// Undeploy: there was nothing to remove.
    NotInstalled,
    /// Either: not done; the report's `code` and `error` say why.
    Failed,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Deployed => "deployed",
            DeployStatus::Unchanged => "unchanged",
            DeployStatus::Undeployed => "undeployed",
            DeployStatus::NotInstalled => "not_installed",
            DeployStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for DeployStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node's answer to an order: the body of its `deploy_result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployReport {
    pub status: DeployStatus,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl DeployReport {
    fn ok(status: DeployStatus, module: &str, version: &str, sha256: &str) -> DeployReport {
        DeployReport {
            status,
            module: module.into(),
            version: Some(version.into()),
            sha256: Some(sha256.into()),
            error: None,
            code: None,
        }
    }

    fn failed(module: &str, code: &str, error: impl Into<String>) -> DeployReport {
        DeployReport {
            status: DeployStatus::Failed,
            module: module.into(),
            version: None,
            sha256: None,
            error: Some(error.into()),
            code: Some(code.into()),
        }
    }
}

/// Why an order failed. `code()` is the stable `code` of its
/// `deploy_result`; the message is its `error`.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    InvalidOrder(String),
    #[error("`{0}` is a core module of every node and cannot be deployed over")]
    Reserved(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("fetching the package took longer than {0} s")]
    FetchTimeout(u64),
    #[error("{0}")]
    BadPackage(String),
    #[error("{0}")]
    InstallFailed(String),
    #[error("{0}")]
    StartFailed(String),
}

impl DeployError {
    pub fn code(&self) -> &'static str {
        match self {
            DeployError::InvalidOrder(_) => "invalid_order",
            DeployError::Reserved(_) => "reserved",
            DeployError::Fetch(e) => e.code(),
            DeployError::FetchTimeout(_) => "fetch_failed",
            DeployError::BadPackage(_) => "bad_package",
            DeployError::InstallFailed(_) => "install_failed",
            DeployError::StartFailed(_) => "start_failed",
        }
    }
}

/// Why a peer's request to the Deployer (a package chunk) was not served.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("this node does not hold package {0}")]
    NotHeld(String),
    #[error("cannot read package {sha256}: {error}")]
    Io { sha256: String, error: std::io::Error },
    #[error("the deployer does not know op {0}; it takes `chunk`")]
    UnknownOp(String),
}

impl ServeError {
    fn code(&self) -> &'static str {
        match self {
            ServeError::InvalidRequest(_) => "invalid_request",
            ServeError::NotHeld(_) => "not_held",
            ServeError::Io { .. } => "io_error",
            ServeError::UnknownOp(_) => "unknown_op",
        }
    }
}

/// Starts every module installed in `<data-dir>/mods`, after cleaning up
/// whatever a crash left half-done. Called once when the node starts.
pub async fn start_installed(node: &NodeHandle) {
    let span = node.identity.span("deployer");
    let store = node.deploy.store.clone();
    let (cleaned, installed) = blocking(move || (store.recover(), store.installed())).await;
    for line in cleaned {
        span.in_scope(|| warn!("recovery: {line}"));
    }
    for module in installed {
        let name = module.manifest.name.clone();
        let started = match registry::installed_spec(node, &module) {
            Ok(spec) => node
                .supervisor
                .send(StartModule(spec))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        span.in_scope(|| match started {
            Ok(()) => info!(module_name = %name, version = %module.manifest.version, "installed module started again"),
            Err(e) => error!(module_name = %name, error = %e, "installed module cannot start"),
        });
    }
}

/// Runs blocking filesystem work off the node's event loop.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The registry's factory for kind `deployer`.
pub fn start_module(args: &ModuleArgs<'_>) -> anyhow::Result<RunningModule> {
    let deployer = Deployer {
        node: args.node.clone(),
        name: args.name.to_string(),
        span: args.node.identity.span(args.name),
        jobs: None,
        queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    Ok(spawn_module(deployer).1)
}

pub struct Deployer {
    node: NodeHandle,
    name: String,
    span: tracing::Span,
    jobs: Option<mpsc::UnboundedSender<Envelope>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Deployer {
    fn source(&self) -> Source {
        Source {
            node: self.node.identity.name.clone(),
            module: self.name.clone(),
        }
    }

    /// Answers a request on the ModBus (the Transponder sends it on to the asker).
    fn reply(&self, request: &Envelope, result: Result<Value, ServeError>) {
        let reply = match result {
            Ok(body) => Envelope::reply_to_request(request, MessageType::Reply, self.source(), body),
            Err(e) => Envelope::reply_to_request(
                request,
                MessageType::Error,
                self.source(),
                json!({"error": e.to_string(), "code": e.code()}),
            ),
        };
        self.node.bus.do_send(Publish(reply));
    }

    /// A peer asks for a piece of a package this node holds.
    fn serve_chunk(&self, request: Envelope) {
        let state = self.node.deploy.clone();
        let me = self.source();
        let bus = self.node.bus.clone();
        actix_rt::spawn(
            async move {
                let result = read_chunk(&state, &request.body).await;
                let reply = match result {
                    Ok(data) => {
                        state.count(|c| c.chunks_served += 1);
                        Envelope::reply_to_request(
                            &request,
                            MessageType::Reply,
                            me,
                            json!({"data": BASE64.encode(data)}),
                        )
                    }
                    Err(e) => {
                        debug!(code = e.code(), error = %e, from = %request.src.node, "chunk not served");
                        Envelope::reply_to_request(
                            &request,
                            MessageType::Error,
                            me,
                            json!({"error": e.to_string(), "code": e.code()}),
                        )
                    }
                };
                bus.do_send(Publish(reply));
            }
            .instrument(self.span.clone()),
        );
    }
}

async fn read_chunk(state: &DeployState, body: &Value) -> Result<Vec<u8>, ServeError> {
    let bad = |why: &str| ServeError::InvalidRequest(why.to_string());
    let sha = body
        .get("sha256")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`sha256` is missing"))?;
    let sha = parse_sha256(sha).map_err(ServeError::InvalidRequest)?;
    let offset = body
        .get("offset")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("`offset` is missing"))?;
    let len = body
        .get("len")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("`len` is missing"))?;
    if len == 0 || len > MAX_CHUNK_BYTES {
        return Err(bad(&format!("`len` must be between 1 and {MAX_CHUNK_BYTES}")));
    }
    let package = state.cache.get(&sha).ok_or_else(|| ServeError::NotHeld(sha.clone()))?;
    if offset >= package.size {
        return Err(bad("`offset` is past the end of the package"));
    }
    let io = |error: std::io::Error| ServeError::Io {
        sha256: sha.clone(),
        error,
    };
    let mut file = tokio::fs::File::open(&package.path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut data = vec![0u8; len.min(package.size - offset) as usize];
    file.read_exact(&mut data).await.map_err(io)?;
    Ok(data)
}

impl Actor for Deployer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.node.bus.do_send(Subscribe {
            address: format!("mod.{}", self.name),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        self.jobs = Some(jobs);
        let worker = Worker {
            node: self.node.clone(),
            source: self.source(),
            queued: self.queued.clone(),
        };
        actix_rt::spawn(worker.run(queue).instrument(self.span.clone()));
        info!("deployer started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.node.bus.do_send(Unsubscribe {
            address: None,
            module: self.name.clone(),
        });
        info!("deployer stopped; an order in progress finishes first");
    }
}

impl Handler<Deliver> for Deployer {
    type Result = ();

    fn handle(&mut self, Deliver { envelope, .. }: Deliver, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        match &envelope.kind {
            MessageType::Deploy | MessageType::Undeploy => {
                let module = envelope.body.get("module").and_then(Value::as_str).unwrap_or("(none)");
                info!(envelope = %envelope.id, kind = %envelope.kind, from = %envelope.src.node,
                    module_name = %module, "order received");
                self.queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(jobs) = &self.jobs {
                    let _ = jobs.send(envelope);
                }
            }
            MessageType::StatusRequest => {
                let state = &self.node.deploy;
                let body = json!({
                    "activity": state.activity(),
                    "queued_orders": self.queued.load(std::sync::atomic::Ordering::Relaxed),
                    "known_packages": state.holders.lock().map(|h| h.len()).unwrap_or(0),
                    "counters": state.counters.lock().map(|c| *c).unwrap_or_default(),
                });
                answer_status(&self.node.bus, &envelope, self.source(), body);
            }
            MessageType::Request => match envelope.body.get("op").and_then(Value::as_str) {
                Some("chunk") => self.serve_chunk(envelope),
                other => {
                    let error = ServeError::UnknownOp(other.map_or("(none)".into(), |op| format!("`{op}`")));
                    warn!(envelope = %envelope.id, from = %envelope.src.node, "{error}");
                    self.reply(&envelope, Err(error));
                }
            },
            MessageType::Event if envelope.body.get("op").and_then(Value::as_str) == Some("have") => {
                if let Some(sha) = envelope.body.get("sha256").and_then(Value::as_str) {
                    if let Ok(sha) = parse_sha256(sha) {
                        debug!(sha256 = %sha, holder = %envelope.src.node, "peer holds a package");
                        self.node.deploy.add_holder(&sha, &envelope.src.node);
                    }
                }
            }
            other => {
                debug!(envelope = %envelope.id, kind = %other, "ignoring an envelope the deployer does not handle")
            }
        }
    }
}

impl Handler<StopModule> for Deployer {
    type Result = ();
    fn handle(&mut self, _msg: StopModule, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<DumpState> for Deployer {
    type Result = Snapshot;
    fn handle(&mut self, _msg: DumpState, _ctx: &mut Self::Context) -> Snapshot {
        let _g = self.span.clone().entered();
        let state = &self.node.deploy;
        let snapshot = json!({
            "activity": state.activity(),
            "queued": self.queued.load(std::sync::atomic::Ordering::Relaxed),
            "known_packages": state.holders.lock().map(|h| h.len()).unwrap_or(0),
            "counters": state.counters.lock().map(|c| *c).unwrap_or_default(),
        });
        info!(state = %snapshot, "state snapshot");
        Snapshot(snapshot)
    }
}

/// Carries out orders and answers each to its origin.
#[derive(Clone)]
struct Worker {
    node: NodeHandle,
    source: Source,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Worker {
    /// Hands each order to a task of its own. A module's orders wait for
    /// the one before (a chain of oneshots keeps arrival order), and every
    /// order waits for a place in the pool.
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Envelope>) {
        let pool = Arc::new(tokio::sync::Semaphore::new(
            self.node.settings.deployer.parallel_orders.max(1),
        ));
        let mut last_of: HashMap<String, oneshot::Receiver<()>> = HashMap::new();
        while let Some(order) = queue.recv().await {
            let module = order
                .body
                .get("module")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // Forget modules whose last order is done.
            last_of.retain(|_, done| matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            let before = last_of.remove(&module);
            let (finished, done) = oneshot::channel();
            last_of.insert(module.clone(), done);
            let worker = self.clone();
            let pool = pool.clone();
            actix_rt::spawn(
                async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    let lock = worker.node.deploy.module_lock(&module);
                    let _mine = lock.lock().await;
                    let Ok(_place) = pool.acquire().await else { return };
                    worker.carry_out(order).await;
                    let _ = finished.send(());
                }
                .in_current_span(),
            );
        }
    }

    async fn carry_out(&self, order: Envelope) {
        let state = self.node.deploy.clone();
        let started = Instant::now();
        let report = match order.kind {
            MessageType::Deploy => self.deploy(&order).await,
            _ => self.undeploy(&order).await,
        };
        state.set_activity(&report.module, None);
        self.node.metrics.deploy_result(report.status.as_str());
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match report.status {
            DeployStatus::Failed => {
                state.count(|c| c.failed += 1);
                warn!(envelope = %order.id, module_name = %report.module,
                    code = %report.code.as_deref().unwrap_or("unknown"),
                    error = %report.error.as_deref().unwrap_or(""), elapsed_ms, "order failed")
            }
            status => {
                state.count(|c| match status {
                    DeployStatus::Deployed => c.deployed += 1,
                    DeployStatus::Undeployed => c.undeployed += 1,
                    _ => c.unchanged += 1,
                });
                info!(envelope = %order.id, module_name = %report.module, status = %status,
                    version = %report.version.as_deref().unwrap_or("-"),
                    elapsed_ms, "order done")
            }
        }
        self.queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let body = serde_json::to_value(&report).unwrap_or(Value::Null);
        let result = Envelope::reply_to_request(&order, MessageType::DeployResult, self.source.clone(), body);
        self.send_direct(&order.src.node, result).await;
    }

    async fn send_direct(&self, node: &str, envelope: Envelope) {
        // The Transponder may be restarting; give it a moment.
        for _ in 0..20 {
            if let Some(t) = self.node.transponder.get() {
                let _ = t
                    .send(SendDirect {
                        node: node.to_string(),
                        envelope,
                    })
                    .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(to = %node, "cannot send the deploy result: no transponder");
    }

    /// Tells local modules what changed (`<node>.local`, `deployment_changed`).
    fn notify_local(&self, action: &str, module: &str, version: Option<&str>) {
        let envelope = Envelope::new(
            MessageType::Other("deployment_changed".into()),
            self.source.clone(),
            self.node.identity.local_address(),
            None,
            json!({"action": action, "module": module, "version": version}),
        );
        self.node.bus.do_send(Publish(envelope));
    }

    async fn deploy(&self, envelope: &Envelope) -> DeployReport {
        let module = envelope
            .body
            .get("module")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let order: DeployOrder = match serde_json::from_value(envelope.body.clone()) {
            Ok(o) => o,
            Err(e) => {
                return DeployReport::failed(&module, "invalid_order", format!("the deploy order is malformed: {e}"))
            }
        };
        match self.try_deploy(&order).await {
            Ok(report) => report,
            Err(e) => DeployReport::failed(&order.module, e.code(), e.to_string()),
        }
    }

    async fn try_deploy(&self, order: &DeployOrder) -> Result<DeployReport, DeployError> {
        let node = &self.node;
        let state = &node.deploy;
        let name = order.module.as_str();
        check_module_name(name).map_err(DeployError::InvalidOrder)?;
        if CORE_MODULES.contains(&name) {
            return Err(DeployError::Reserved(name.to_string()));
        }
        let expected = match (&order.sha256, &order.source.peer) {
            (Some(sha), _) => Some(parse_sha256(sha).map_err(DeployError::InvalidOrder)?),
            (None, Some(_)) => return Err(DeployError::InvalidOrder("a peer source needs `sha256`".into())),
            (None, None) => None,
        };
        let store = state.store.clone();
        let lookup = name.to_string();
        let current = blocking(move || store.read(&lookup).ok()).await;
        if let (Some(sha), Some(current)) = (&expected, &current) {
            if let Some(report) = self.unchanged(order, sha, current).await {
                return Ok(report);
            }
        }

        state.set_activity(name, Some(format!("fetching {name}")));
        let fetch = self.fetch(order, expected.as_deref());
        let package = match tokio::time::timeout(node.settings.deployer.fetch_timeout, fetch).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(DeployError::FetchTimeout(
                    node.settings.deployer.fetch_timeout.as_secs(),
                ))
            }
        };
        info!(module_name = %name, sha256 = %package.sha256, size = package.size, "package fetched and checked");
        if let Some(current) = &current {
            if let Some(report) = self.unchanged(order, &package.sha256, current).await {
                return Ok(report);
            }
        }

        state.set_activity(name, Some(format!("unpacking {name}")));
        let store = state.store.clone();
        let limits = UnpackLimits::for_package_limit(node.settings.deployer.max_package_bytes);
        let path = package.path.clone();
        let staged = match blocking(move || store.stage(&path, limits)).await {
            Ok(staged) => staged,
            Err(e) => {
                state.cache.evict(&package);
                return Err(DeployError::BadPackage(e));
            }
        };
        let manifest = staged.manifest.clone();
        if manifest.name != name {
            self.discard(staged).await;
            return Err(DeployError::BadPackage(format!(
                "the package holds module `{}`, not `{name}`",
                manifest.name
            )));
        }
        if let Some(kind) = &manifest.builtin {
            if registry::builtin(kind).is_none() || CORE_ONLY.contains(&kind.as_str()) {
                self.discard(staged).await;
                return Err(DeployError::BadPackage(format!(
                    "`builtin: {kind}` is not a deployable built-in kind on this node"
                )));
            }
        }
        let config = merge_config(&manifest.config, order.config.as_ref().unwrap_or(&Value::Null));
        if !config.is_object() {
            self.discard(staged).await;
            return Err(DeployError::InvalidOrder(
                "the deploy's `config` must be a JSON object".into(),
            ));
        }
        let record = InstallRecord {
            name: name.to_string(),
            version: manifest.version.clone(),
            sha256: package.sha256.clone(),
            config,
            installed_at_ms: now_ms(),
        };
        let store = state.store.clone();
        let (staged, completed) = blocking(move || {
            let r = store.complete(&staged, &record);
            (staged, r)
        })
        .await;
        if let Err(e) = completed {
            self.discard(staged).await;
            return Err(DeployError::InstallFailed(e));
        }

        state.set_activity(name, Some(format!("starting {name} {}", manifest.version)));
        let was_supervised = self.module_info(name).await.is_some();
        if was_supervised {
            info!(module_name = %name, "stopping the installed version");
            let _ = node.supervisor.send(RemoveModule(name.to_string())).await;
        }
        let store = state.store.clone();
        let swap = blocking(move || store.swap_in(staged))
            .await
            .map_err(DeployError::InstallFailed)?;
        match self.start_and_watch(name).await {
            Ok(()) => {
                let store = state.store.clone();
                blocking(move || store.commit(swap)).await;
                self.announce(&package);
                self.notify_local("deployed", name, Some(&manifest.version));
                Ok(DeployReport::ok(
                    DeployStatus::Deployed,
                    name,
                    &manifest.version,
                    &package.sha256,
                ))
            }
            Err(why) => {
                warn!(module_name = %name, error = %why, "new version did not start; putting the previous one back");
                let _ = node.supervisor.send(RemoveModule(name.to_string())).await;
                let store = state.store.clone();
                let had_previous = swap.previous.is_some();
                let restored = blocking(move || store.rollback(swap)).await;
                let mut error = format!("{} {} did not start: {why}", name, manifest.version);
                match (restored, had_previous) {
                    (Err(e), _) => error.push_str(&format!("; {e}")),
                    (Ok(()), true) => match self.start_installed(name).await {
                        Ok(version) => {
                            error.push_str(&format!("; the previous version {version} is running again"));
                            self.notify_local("restored", name, Some(&version));
                        }
                        Err(e) => error.push_str(&format!("; the previous version cannot start either: {e}")),
                    },
                    (Ok(()), false) => error.push_str("; nothing is installed"),
                }
                Err(DeployError::StartFailed(error))
            }
        }
    }

    async fn discard(&self, staged: Staged) {
        let store = self.node.deploy.store.clone();
        blocking(move || store.discard(staged)).await;
    }

    /// `unchanged` if this exact package and config already run here.
    async fn unchanged(&self, order: &DeployOrder, sha: &str, current: &InstalledModule) -> Option<DeployReport> {
        if current.record.sha256 != sha {
            return None;
        }
        let config = merge_config(&current.manifest.config, order.config.as_ref().unwrap_or(&Value::Null));
        if config != current.record.config {
            return None;
        }
        let running = self
            .module_info(&order.module)
            .await
            .is_some_and(|m| m.state == ModuleState::Running);
        running.then(|| DeployReport::ok(DeployStatus::Unchanged, &order.module, &current.manifest.version, sha))
    }

    async fn module_info(&self, name: &str) -> Option<ModuleInfo> {
        let modules = self.node.supervisor.send(ListModules).await.ok()?;
        modules.into_iter().find(|m| m.name == name)
    }

    /// Starts the installed module and waits out the probation: it must be
    /// running, with no restart, at the end of it.
    async fn start_and_watch(&self, name: &str) -> Result<(), String> {
        self.start_installed(name).await?;
        let probation = self.node.settings.deployer.probation;
        let deadline = Instant::now() + probation;
        loop {
            let info = self
                .module_info(name)
                .await
                .ok_or("the module vanished from the supervisor")?;
            let bad = info.restarts > 0 || matches!(info.state, ModuleState::Failed | ModuleState::Stopped);
            if bad {
                return Err(info.last_exit.unwrap_or_else(|| format!("it is {:?}", info.state)));
            }
            if Instant::now() >= deadline {
                return if info.state == ModuleState::Running {
                    Ok(())
                } else {
                    Err(format!(
                        "it is still {:?} after {} ms",
                        info.state,
                        probation.as_millis()
                    ))
                };
            }
            tokio::time::sleep(Duration::from_millis(50).min(probation)).await;
        }
    }

    /// Starts whatever is installed under `name`; answers its version.
    async fn start_installed(&self, name: &str) -> Result<String, String> {
        let store = self.node.deploy.store.clone();
        let lookup = name.to_string();
        let installed = blocking(move || store.read(&lookup)).await?;
        let spec = registry::installed_spec(&self.node, &installed)?;
        self.node
            .supervisor
            .send(StartModule(spec))
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))??;
        Ok(installed.manifest.version)
    }

    /// Tells every node that this one now holds the package, so later
    /// fetches can use it as a source.
    fn announce(&self, package: &CachedPackage) {
        if let Some(t) = self.node.transponder.get() {
            t.do_send(PublishToCluster {
                kind: MessageType::Event,
                module: self.source.module.clone(),
                address: DEPLOYER_ADDRESS.into(),
                target: None,
                body: json!({"op": "have", "sha256": package.sha256}),
            });
        }
    }

    async fn fetch(&self, order: &DeployOrder, expected: Option<&str>) -> Result<CachedPackage, FetchError> {
        let state = &self.node.deploy;
        let limit = self.node.settings.deployer.max_package_bytes;
        match (&order.source.url, &order.source.peer, expected) {
            (Some(url), _, _) => {
                let source = PackageSource::parse(url)?;
                if expected.is_none() {
                    warn!(url = %url, "deploying without a sha256: the package is not checked against a known sum");
                }
                state.cache.fetch(&source, expected, limit).await
            }
            (None, Some(peer), Some(sha)) => self.fetch_from_peers(peer, sha, order.source.size, limit).await,
            _ => Err(FetchError::BadSource(
                "the order names neither a `url` nor a `peer` source".into(),
            )),
        }
    }

    /// Fetches a package in chunks from the origin and any peer known to
    /// hold it, trying another holder when one fails.
    async fn fetch_from_peers(
        &self,
        origin: &str,
        sha: &str,
        size: Option<u64>,
        limit: u64,
    ) -> Result<CachedPackage, FetchError> {
        let state = &self.node.deploy;
        if let Some(hit) = state.cache.get(sha) {
            return Ok(hit);
        }
        let size = size.ok_or_else(|| FetchError::BadSource("a peer source needs the package `size`".into()))?;
        if size > limit {
            return Err(FetchError::TooLarge { limit });
        }
        let me = &self.node.identity.name;
        let mut holders: Vec<String> = state
            .holders_of(sha)
            .into_iter()
            .filter(|h| h != me && h != origin)
            .collect();
        holders.push(origin.to_string());
        let chunk = self.node.settings.deployer.chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let mut partial = state.cache.begin(limit).await?;
        let mut turn = 0usize;
        let mut last_error = String::new();
        while partial.size() < size {
            if holders.is_empty() {
                return Err(FetchError::Transfer(format!(
                    "no peer could send package {sha} (at byte {} of {size}): {last_error}",
                    partial.size()
                )));
            }
            let holder = holders[turn % holders.len()].clone();
            turn += 1;
            let offset = partial.size();
            let len = chunk.min(size - offset);
            match self.ask_chunk(&holder, sha, offset, len).await {
                Ok(data) => {
                    state.count(|c| c.chunks_fetched += 1);
                    partial.write(&data).await?;
                }
                Err(e) => {
                    warn!(holder = %holder, offset, error = %e, "peer could not send a package chunk; trying another");
                    last_error = format!("{holder}: {e}");
                    holders.retain(|h| h != &holder);
                }
            }
        }
        partial.finish(Some(sha)).await
    }

    async fn ask_chunk(&self, holder: &str, sha: &str, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let transponder = self.node.transponder.get().ok_or("the transponder is restarting")?;
        let mut ask = RequestCluster::new(
            &self.source.module,
            DEPLOYER_ADDRESS,
            None,
            json!({"op": "chunk", "sha256": sha, "offset": offset, "len": len}),
            self.node.settings.deployer.chunk_timeout,
        );
        ask.to = Some(holder.to_string());
        let outcome = transponder
            .send(ask)
            .await
            .map_err(|e| format!("transponder unavailable: {e}"))??;
        let reply = outcome.replies.into_iter().next().ok_or_else(|| {
            format!(
                "no answer within {} s",
                self.node.settings.deployer.chunk_timeout.as_secs()
            )
        })?;
        if let Some(error) = reply.error {
            return Err(error);
        }
        let data = reply
            .body
            .get("data")
            .and_then(Value::as_str)
            .ok_or("the answer has no `data`")?;
        let data = BASE64
            .decode(data)
            .map_err(|e| format!("the chunk is not base64: {e}"))?;
        if data.len() as u64 != len {
            return Err(format!("asked for {len} bytes, got {}", data.len()));
        }
        Ok(data)
    }

    async fn undeploy(&self, envelope: &Envelope) -> DeployReport {
        let module = envelope
            .body
            .get("module")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let order: UndeployOrder = match serde_json::from_value(envelope.body.clone()) {
            Ok(o) => o,
            Err(e) => {
                return DeployReport::failed(
                    &module,
                    "invalid_order",
                    format!("the undeploy order is malformed: {e}"),
                )
            }
        };
        let name = order.module.as_str();
        if let Err(e) = check_module_name(name) {
            return DeployReport::failed(name, "invalid_order", e);
        }
        if CORE_MODULES.contains(&name) {
            return DeployReport::failed(name, "reserved", format!("`{name}` is a core module of every node"));
        }
        self.node.deploy.set_activity(name, Some(format!("removing {name}")));
        let supervised = self.module_info(name).await;
        if supervised.is_some() {
            if let Ok(Err(e)) = self.node.supervisor.send(RemoveModule(name.to_string())).await {
                return DeployReport::failed(name, "stop_failed", e);
            }
        }
        let store = self.node.deploy.store.clone();
        let lookup = name.to_string();
        let removed = blocking(move || store.remove(&lookup)).await;
        if supervised.is_none() && !removed {
            return DeployReport {
                status: DeployStatus::NotInstalled,
                module: name.into(),
                version: None,
                sha256: None,
                error: None,
                code: None,
            };
        }
        self.notify_local("undeployed", name, supervised.as_ref().map(|m| m.version.as_str()));
        DeployReport {
            status: DeployStatus::Undeployed,
            module: name.into(),
            version: supervised.map(|m| m.version),
            sha256: None,
            error: None,
            code: None,
        }
    }
}
