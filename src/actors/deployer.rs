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

use super::context::ModuleContext;
use super::messages::{answer_status, state_handlers, Deliver, ShowState};
use super::modbus::{Publish, Subscribe, Unsubscribe};
use super::supervisor::{spawn_module, ListModules, ModuleInfo, ModuleState, RemoveModule, RunningModule, StartModule};
use super::transponder::{PublishToCluster, RequestCluster, SendDirect};
use crate::deploy::fetch::{CachedPackage, FetchError, PackageSource, StallRule};
use crate::deploy::manifest::{check_module_name, merge_config};
use crate::deploy::order::{
    DeployError, DeployOrder, DeployReport, DeployStatus, PeerNews, PeerRequest, UndeployOrder,
};
use crate::deploy::package::{parse_sha256, UnpackLimits, DEFAULT_MAX_PACKAGE_BYTES};
use crate::deploy::state::DeployState;
use crate::deploy::store::{InstallRecord, InstalledModule, Staged};
use crate::modules::registry::{Builtins, CORE_MODULES};
use crate::wire::{now_ms, Envelope, MessageType, Source};
use actix::prelude::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn, Instrument};

/// The Deployer's inbox (SPEC §2).
pub const DEPLOYER_ADDRESS: &str = "mod.deployer";
/// The largest chunk a peer asks for or serves.
pub const MAX_CHUNK_BYTES: u64 = 512 * 1024;

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
    /// How slow a package download may be before it fails as stalled.
    pub stall: StallRule,
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
            stall: StallRule::default(),
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
pub async fn start_installed(parts: &DeployerParts) {
    let span = parts.ctx.identity.span("deployer");
    let store = parts.state.store.clone();
    let (cleaned, installed) = blocking(move || (store.recover(), store.installed())).await;
    for line in cleaned {
        span.in_scope(|| warn!("recovery: {line}"));
    }
    for module in installed {
        let name = module.manifest.name.clone();
        let started = match parts.builtins.installed_spec(&parts.ctx, &module) {
            Ok(spec) => parts
                .ctx
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

/// An order's body, parsed once; a malformed one is answered as failed,
/// under the module it names if any.
fn parse_order<T: serde::de::DeserializeOwned>(envelope: &Envelope, kind: &str) -> Result<T, Box<DeployReport>> {
    serde_json::from_value(envelope.body.clone()).map_err(|e| {
        let module = envelope.body.get("module").and_then(Value::as_str).unwrap_or("");
        Box::new(DeployReport::failed(
            module,
            "invalid_order",
            format!("the {kind} order is malformed: {e}"),
        ))
    })
}

/// Runs blocking filesystem work off the node's event loop.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What the Deployer works with, handed to it by whoever assembles the
/// node: the runtime, its own state (kept across its restarts), its
/// settings, and the built-in kinds a package may name.
#[derive(Clone)]
pub struct DeployerParts {
    pub ctx: ModuleContext,
    pub state: Arc<DeployState>,
    pub config: DeployerConfig,
    pub builtins: Builtins,
}

/// The factory of the node's Deployer.
pub fn start_module(name: &str, parts: DeployerParts) -> anyhow::Result<RunningModule> {
    let deployer = Deployer {
        span: parts.ctx.identity.span(name),
        parts,
        name: name.to_string(),
        jobs: None,
        queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    Ok(spawn_module(deployer).1)
}

pub struct Deployer {
    parts: DeployerParts,
    name: String,
    span: tracing::Span,
    jobs: Option<mpsc::UnboundedSender<Envelope>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Deployer {
    /// Orders received and not yet finished.
    fn queued_orders(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn source(&self) -> Source {
        Source {
            node: self.parts.ctx.identity.name.clone(),
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
        self.parts.ctx.bus.do_send(Publish(reply));
    }

    /// A peer asks for a piece of a package this node holds.
    fn serve_chunk(&self, request: Envelope, sha256: String, offset: u64, len: u64) {
        let state = self.parts.state.clone();
        let me = self.source();
        let bus = self.parts.ctx.bus.clone();
        actix_rt::spawn(
            async move {
                let result = read_chunk(&state, &sha256, offset, len).await;
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

async fn read_chunk(state: &DeployState, sha256: &str, offset: u64, len: u64) -> Result<Vec<u8>, ServeError> {
    let bad = |why: &str| ServeError::InvalidRequest(why.to_string());
    let sha = parse_sha256(sha256).map_err(ServeError::InvalidRequest)?;
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
        self.parts.ctx.bus.do_send(Subscribe {
            address: format!("mod.{}", self.name),
            module: self.name.clone(),
            recipient: ctx.address().recipient(),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        self.jobs = Some(jobs);
        let worker = Worker {
            parts: self.parts.clone(),
            source: self.source(),
            queued: self.queued.clone(),
        };
        actix_rt::spawn(worker.run(queue).instrument(self.span.clone()));
        info!("deployer started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _g = self.span.clone().entered();
        self.parts.ctx.bus.do_send(Unsubscribe {
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
                let mut body = self.parts.state.summary();
                body["queued_orders"] = json!(self.queued_orders());
                answer_status(&self.parts.ctx.bus, &envelope, self.source(), body);
            }
            MessageType::Request => {
                let error = match serde_json::from_value::<PeerRequest>(envelope.body.clone()) {
                    Ok(PeerRequest::Chunk { sha256, offset, len }) => {
                        return self.serve_chunk(envelope, sha256, offset, len);
                    }
                    Ok(PeerRequest::Unknown) => {
                        ServeError::UnknownOp(format!("`{}`", envelope.body["op"].as_str().unwrap_or_default()))
                    }
                    Err(e) => ServeError::InvalidRequest(e.to_string()),
                };
                warn!(envelope = %envelope.id, from = %envelope.src.node, "{error}");
                self.reply(&envelope, Err(error));
            }
            MessageType::Event => match serde_json::from_value::<PeerNews>(envelope.body.clone()) {
                Ok(PeerNews::Have { sha256 }) => match parse_sha256(&sha256) {
                    Ok(sha) => {
                        debug!(sha256 = %sha, holder = %envelope.src.node, "peer holds a package");
                        self.parts.state.add_holder(&sha, &envelope.src.node);
                    }
                    Err(e) => debug!(holder = %envelope.src.node, error = %e, "ignoring a bad package announcement"),
                },
                _ => debug!(envelope = %envelope.id, "ignoring an event the deployer does not handle"),
            },
            other => {
                debug!(envelope = %envelope.id, kind = %other, "ignoring an envelope the deployer does not handle")
            }
        }
    }
}

impl ShowState for Deployer {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn state(&self) -> Value {
        let mut state = self.parts.state.summary();
        state["queued"] = json!(self.queued_orders());
        state
    }
}

state_handlers!(Deployer, stop);

/// Carries out orders and answers each to its origin.
#[derive(Clone)]
struct Worker {
    parts: DeployerParts,
    source: Source,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Worker {
    /// Hands each order to a task of its own. A module's orders wait for
    /// the one before (a chain of oneshots keeps arrival order), and every
    /// order waits for a place in the pool.
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Envelope>) {
        let pool = Arc::new(tokio::sync::Semaphore::new(self.parts.config.parallel_orders.max(1)));
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
                    let lock = worker.parts.state.module_lock(&module);
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
        let state = self.parts.state.clone();
        let started = Instant::now();
        let report = match order.kind {
            MessageType::Deploy => self.deploy(&order).await,
            _ => self.undeploy(&order).await,
        };
        state.set_activity(&report.module, None);
        self.parts.ctx.metrics.deploy_result(report.status.as_str());
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
            if let Some(t) = self.parts.ctx.transponder.get() {
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
            self.parts.ctx.identity.local_address(),
            None,
            json!({"action": action, "module": module, "version": version}),
        );
        self.parts.ctx.bus.do_send(Publish(envelope));
    }

    async fn deploy(&self, envelope: &Envelope) -> DeployReport {
        let order: DeployOrder = match parse_order(envelope, "deploy") {
            Ok(o) => o,
            Err(report) => return *report,
        };
        match self.try_deploy(&order).await {
            Ok(report) => report,
            Err(e) => DeployReport::failed(&order.module, e.code(), e.to_string()),
        }
    }

    async fn try_deploy(&self, order: &DeployOrder) -> Result<DeployReport, DeployError> {
        let parts = &self.parts;
        let state = &parts.state;
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
        let package = match tokio::time::timeout(parts.config.fetch_timeout, fetch).await {
            Ok(result) => result?,
            Err(_) => return Err(DeployError::FetchTimeout(parts.config.fetch_timeout.as_secs())),
        };
        info!(module_name = %name, sha256 = %package.sha256, size = package.size, "package fetched and checked");
        if let Some(current) = &current {
            if let Some(report) = self.unchanged(order, &package.sha256, current).await {
                return Ok(report);
            }
        }

        state.set_activity(name, Some(format!("unpacking {name}")));
        let store = state.store.clone();
        let limits = UnpackLimits::for_package_limit(parts.config.max_package_bytes);
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
            if parts.builtins.get(kind).is_none() {
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
            let _ = parts.ctx.supervisor.send(RemoveModule(name.to_string())).await;
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
                let _ = parts.ctx.supervisor.send(RemoveModule(name.to_string())).await;
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
        let store = self.parts.state.store.clone();
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
        let modules = self.parts.ctx.supervisor.send(ListModules).await.ok()?;
        modules.into_iter().find(|m| m.name == name)
    }

    /// Starts the installed module and waits out the probation: it must be
    /// running, with no restart, at the end of it.
    async fn start_and_watch(&self, name: &str) -> Result<(), String> {
        self.start_installed(name).await?;
        let probation = self.parts.config.probation;
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
        let store = self.parts.state.store.clone();
        let lookup = name.to_string();
        let installed = blocking(move || store.read(&lookup)).await?;
        let spec = self.parts.builtins.installed_spec(&self.parts.ctx, &installed)?;
        self.parts
            .ctx
            .supervisor
            .send(StartModule(spec))
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))??;
        Ok(installed.manifest.version)
    }

    /// Tells every node that this one now holds the package, so later
    /// fetches can use it as a source.
    fn announce(&self, package: &CachedPackage) {
        if let Some(t) = self.parts.ctx.transponder.get() {
            t.do_send(PublishToCluster {
                kind: MessageType::Event,
                module: self.source.module.clone(),
                address: DEPLOYER_ADDRESS.into(),
                target: None,
                body: serde_json::to_value(PeerNews::Have {
                    sha256: package.sha256.clone(),
                })
                .unwrap_or_default(),
            });
        }
    }

    async fn fetch(&self, order: &DeployOrder, expected: Option<&str>) -> Result<CachedPackage, FetchError> {
        let state = &self.parts.state;
        let limit = self.parts.config.max_package_bytes;
        match (&order.source.url, &order.source.peer, expected) {
            (Some(url), _, _) => {
                let source = PackageSource::parse(url)?;
                if expected.is_none() {
                    warn!(url = %url, "deploying without a sha256: the package is not checked against a known sum");
                }
                state
                    .cache
                    .fetch_with(&source, expected, limit, self.parts.config.stall)
                    .await
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
        let state = &self.parts.state;
        if let Some(hit) = state.cache.get(sha) {
            return Ok(hit);
        }
        let size = size.ok_or_else(|| FetchError::BadSource("a peer source needs the package `size`".into()))?;
        if size > limit {
            return Err(FetchError::TooLarge { limit });
        }
        let me = &self.parts.ctx.identity.name;
        let mut holders: Vec<String> = state
            .holders_of(sha)
            .into_iter()
            .filter(|h| h != me && h != origin)
            .collect();
        holders.push(origin.to_string());
        let chunk = self.parts.config.chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
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
        let transponder = self
            .parts
            .ctx
            .transponder
            .get()
            .ok_or("the transponder is restarting")?;
        let mut ask = RequestCluster::new(
            &self.source.module,
            DEPLOYER_ADDRESS,
            None,
            serde_json::to_value(PeerRequest::Chunk {
                sha256: sha.to_string(),
                offset,
                len,
            })
            .unwrap_or_default(),
            self.parts.config.chunk_timeout,
        );
        ask.to = Some(holder.to_string());
        let outcome = transponder
            .send(ask)
            .await
            .map_err(|e| format!("transponder unavailable: {e}"))??;
        let reply = outcome
            .replies
            .into_iter()
            .next()
            .ok_or_else(|| format!("no answer within {} s", self.parts.config.chunk_timeout.as_secs()))?;
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
        let order: UndeployOrder = match parse_order(envelope, "undeploy") {
            Ok(o) => o,
            Err(report) => return *report,
        };
        let name = order.module.as_str();
        if let Err(e) = check_module_name(name) {
            return DeployReport::failed(name, "invalid_order", e);
        }
        if CORE_MODULES.contains(&name) {
            return DeployReport::failed(name, "reserved", format!("`{name}` is a core module of every node"));
        }
        self.parts.state.set_activity(name, Some(format!("removing {name}")));
        let supervised = self.module_info(name).await;
        if supervised.is_some() {
            if let Ok(Err(e)) = self.parts.ctx.supervisor.send(RemoveModule(name.to_string())).await {
                return DeployReport::failed(name, "stop_failed", e);
            }
        }
        let store = self.parts.state.store.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn order_envelope(kind: MessageType, body: Value) -> Envelope {
        let from = Source {
            node: "origin".into(),
            module: "api".into(),
        };
        Envelope::new(kind, from, DEPLOYER_ADDRESS, None, body)
    }

    #[test]
    fn a_malformed_order_is_answered_failed_under_the_module_it_names() {
        let bad = order_envelope(MessageType::Deploy, json!({"module": "web", "source": "nowhere"}));
        let report = *parse_order::<DeployOrder>(&bad, "deploy").unwrap_err();
        assert_eq!(report.status, DeployStatus::Failed);
        assert_eq!(report.module, "web");
        assert_eq!(report.code.as_deref(), Some("invalid_order"));
        assert!(report.error.unwrap().starts_with("the deploy order is malformed"));

        let nameless = order_envelope(MessageType::Undeploy, json!({"modul": "web"}));
        let report = *parse_order::<UndeployOrder>(&nameless, "undeploy").unwrap_err();
        assert_eq!(
            (report.module.as_str(), report.code.as_deref()),
            ("", Some("invalid_order"))
        );

        let good = order_envelope(MessageType::Undeploy, json!({"module": "web"}));
        assert_eq!(parse_order::<UndeployOrder>(&good, "undeploy").unwrap().module, "web");
    }
}
