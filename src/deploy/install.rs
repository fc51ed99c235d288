//! The one install pipeline, shared by every path that changes what runs
//! on a node: fetch the package by sha256 (from its URL, or from any peer
//! that holds it), check it, stage it, swap it in, start it and watch it
//! for a probation, then commit, or roll back to the previous version.
//! Removing a module is here too.

use super::disk::WriteError;
use super::fetch::{CachedPackage, FetchError, PackageSource, StallRule, UrlDeadline};
use super::holders::{Holders, Pick};
use super::manifest::{check_module_name, merge_config};
use super::order::{DeployError, DeployOrder, DeployReport, DeployStatus, PeerNews, PeerRequest, NOT_HELD};
use super::package::{parse_sha256, UnpackError, UnpackLimits, DEFAULT_MAX_PACKAGE_BYTES};
use super::state::DeployState;
use super::store::{InstallRecord, InstalledModule, Staged};
use super::uploads::{BUSY, DEFAULT_MAX_UPLOADS};
use crate::actors::cluster_bus::ListMembers;
use crate::actors::modbus::Publish;
use crate::actors::supervisor::{ListModules, ModuleInfo, ModuleState, RemoveModule, StartModule};
use crate::actors::transponder::{PublishToCluster, RequestCluster};
use crate::actors::ModuleContext;
use crate::modules::registry::{Builtins, CORE_MODULES};
use crate::wire::{now_ms, Envelope, MessageType, Source};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The Deployer's inbox.
pub const DEPLOYER_ADDRESS: &str = "mod.deployer";
/// The largest chunk a peer asks for or serves.
pub const MAX_CHUNK_BYTES: u64 = 512 * 1024;

/// Tunables of the install pipeline.
#[derive(Debug, Clone)]
pub struct DeployerConfig {
    /// The largest package (compressed) fetched.
    pub max_package_bytes: u64,
    /// How long a new version must stay up, with no restart, to count as deployed.
    pub probation: Duration,
    /// The longest a whole fetch may take.
    pub fetch_timeout: Duration,
    /// Peer-to-peer chunk size, and how long one chunk may take.
    pub chunk_bytes: u64,
    pub chunk_timeout: Duration,
    /// Steps of different modules carried out at once.
    pub parallel_orders: usize,
    /// Peers this node sends packages to at once.
    pub max_uploads: usize,
    /// The only directories `file://` sources and `source.path` are read
    /// from (`agent --package-dir`); none by default.
    pub package_dirs: Vec<std::path::PathBuf>,
    /// How slow a package download may be before it fails as stalled.
    pub stall: StallRule,
    /// How long a URL is given when peers hold the package too.
    pub url_deadline: UrlDeadline,
    /// The operator keys whose commands this node carries out (none: any
    /// holder of the cluster key may deploy).
    pub trust: crate::command::trust::SharedTrust,
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
            max_uploads: DEFAULT_MAX_UPLOADS,
            package_dirs: Vec::new(),
            stall: StallRule::default(),
            url_deadline: UrlDeadline::default(),
            trust: Default::default(),
        }
    }
}

/// Why a holder did not send a chunk.
enum ChunkError {
    /// It sends to enough peers now: another holder is asked meanwhile.
    Busy,
    /// The origin sends this fetcher to the nodes that already hold it.
    Elsewhere(Vec<String>),
    /// It does not hold the package yet: it is still checking what it
    /// has just fetched.
    NotYet,
    /// It could not: it is not asked again for this fetch.
    Failed(String),
}

/// Runs blocking filesystem work off the node's event loop.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What the pipeline works with: the node's runtime, the package store and
/// cache, its settings, and the built-in kinds a package may name.
#[derive(Clone)]
pub struct Installer {
    pub ctx: ModuleContext,
    pub state: Arc<DeployState>,
    pub config: DeployerConfig,
    pub builtins: Builtins,
    /// What this node's deploy traffic is sent as (`<node>`, `deployer`).
    pub source: Source,
}

impl Installer {
    /// Installs `order`'s package and config as module `order.module`, for
    /// table entry `entry`: fetched by sha256 (from its URL, or from the
    /// peers that hold it), checked, unpacked into a staging folder,
    /// swapped in by renames, started, and watched for a probation. If the
    /// new version does not stay up, the previous one is put back and
    /// started again.
    pub async fn install(
        &self,
        order: &DeployOrder,
        entry: Option<&str>,
        say: &dyn Fn(String),
    ) -> Result<DeployReport, DeployError> {
        let state = &self.state;
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

        say(format!("fetching {name}"));
        let fetch = self.fetch(order, expected.as_deref());
        let package = match tokio::time::timeout(self.config.fetch_timeout, fetch).await {
            Ok(result) => result?,
            Err(_) => return Err(DeployError::FetchTimeout(self.config.fetch_timeout.as_secs())),
        };
        info!(module_name = %name, sha256 = %package.sha256, size = package.size, "package fetched and checked");
        if let Some(current) = &current {
            if let Some(report) = self.unchanged(order, &package.sha256, current).await {
                return Ok(report);
            }
        }

        say(format!("unpacking {name}"));
        let store = state.store.clone();
        let limits = UnpackLimits::for_package_limit(self.config.max_package_bytes);
        let path = package.path.clone();
        let staged = match blocking(move || store.stage(&path, limits)).await {
            Ok(staged) => staged,
            Err(UnpackError::Package(e)) => {
                state.cache.evict(&package);
                return Err(DeployError::BadPackage(e));
            }
            // The package may be fine: it stays cached for the next try.
            Err(UnpackError::DiskFull(e)) => return Err(DeployError::DiskFull(e)),
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
            if self.builtins.get(kind).is_none() {
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
            entry: entry.map(str::to_string),
        };
        let store = state.store.clone();
        let (staged, completed) = blocking(move || {
            let r = store.complete(&staged, &record);
            (staged, r)
        })
        .await;
        if let Err(e) = completed {
            self.discard(staged).await;
            return Err(match e {
                WriteError::DiskFull(e) => DeployError::DiskFull(e),
                WriteError::Failed(e) => DeployError::InstallFailed(e),
            });
        }

        say(format!("starting {name} {}", manifest.version));
        let was_supervised = self.module_info(name).await.is_some();
        if was_supervised {
            info!(module_name = %name, "stopping the installed version");
            let _ = self.ctx.supervisor.send(RemoveModule(name.to_string())).await;
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
                let _ = self.ctx.supervisor.send(RemoveModule(name.to_string())).await;
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

    pub async fn discard(&self, staged: Staged) {
        let store = self.state.store.clone();
        blocking(move || store.discard(staged)).await;
    }
    /// `unchanged` if this exact package and config already run here.
    pub async fn unchanged(&self, order: &DeployOrder, sha: &str, current: &InstalledModule) -> Option<DeployReport> {
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
    pub async fn module_info(&self, name: &str) -> Option<ModuleInfo> {
        let modules = self.ctx.supervisor.send(ListModules).await.ok()?;
        modules.into_iter().find(|m| m.name == name)
    }
    /// Starts the installed module and waits out the probation: it must be
    /// running, with no restart, at the end of it.
    pub async fn start_and_watch(&self, name: &str) -> Result<(), String> {
        self.start_installed(name).await?;
        let probation = self.config.probation;
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
    pub async fn start_installed(&self, name: &str) -> Result<String, String> {
        let store = self.state.store.clone();
        let lookup = name.to_string();
        let installed = blocking(move || store.read(&lookup)).await?;
        let spec = self.builtins.installed_spec(&self.ctx, &installed)?;
        self.ctx
            .supervisor
            .send(StartModule(spec))
            .await
            .map_err(|e| format!("supervisor unavailable: {e}"))??;
        Ok(installed.manifest.version)
    }
    /// Tells every node that this one now holds the package, so later
    /// fetches can use it as a source.
    fn announce(&self, package: &CachedPackage) {
        if let Some(t) = self.ctx.transponder.get() {
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
    /// Fetches the order's package: from the cache if it holds it, else
    /// from its URL, else (or when the URL fails, and the checksum is known)
    /// from the peers that hold it.
    pub async fn fetch(&self, order: &DeployOrder, expected: Option<&str>) -> Result<CachedPackage, FetchError> {
        let state = &self.state;
        let limit = self.config.max_package_bytes;
        if let Some(hit) = expected.and_then(|sha| state.cache.get(sha)) {
            return Ok(hit);
        }
        let from_url = match &order.source.url {
            Some(url) => {
                let source = PackageSource::parse(url)?;
                if expected.is_none() {
                    warn!(url = %url, "deploying without a sha256: the package is not checked against a known sum");
                }
                let download = state.cache.fetch_with(&source, expected, limit, self.config.stall);
                if order.source.peer.is_some() && expected.is_some() {
                    // Peers hold it too: a slow URL must not hold this
                    // node's step slot for long.
                    let deadline = self.config.url_deadline.for_size(order.source.size);
                    Some(tokio::time::timeout(deadline, download).await.unwrap_or_else(|_| {
                        Err(FetchError::Transfer(format!(
                            "the URL did not deliver the package within {:.0} s",
                            deadline.as_secs_f64()
                        )))
                    }))
                } else {
                    Some(download.await)
                }
            }
            None => None,
        };
        match (from_url, &order.source.peer, expected) {
            (Some(Ok(package)), _, _) => Ok(package),
            (Some(Err(e)), Some(peer), Some(sha)) if e.code() != "checksum_mismatch" => {
                warn!(error = %e, "the package's URL failed here; fetching it from the peers that hold it");
                self.fetch_from_peers(peer, sha, order.source.size, limit).await
            }
            (Some(Err(e)), _, _) => Err(e),
            (None, Some(peer), Some(sha)) => self.fetch_from_peers(peer, sha, order.source.size, limit).await,
            (None, _, _) => Err(FetchError::BadSource(
                "the order names neither a `url` nor a `peer` source".into(),
            )),
        }
    }

    /// Fetches a package in chunks from the peers that hold it: any other
    /// holder before the origin, another one when a holder is busy, and
    /// never again one that failed.
    pub async fn fetch_from_peers(
        &self,
        origin: &str,
        sha: &str,
        size: Option<u64>,
        limit: u64,
    ) -> Result<CachedPackage, FetchError> {
        let state = &self.state;
        if let Some(hit) = state.cache.get(sha) {
            return Ok(hit);
        }
        let size = size.ok_or_else(|| FetchError::BadSource("a peer source needs the package `size`".into()))?;
        if size > limit {
            return Err(FetchError::TooLarge { limit });
        }
        let me = self.ctx.identity.name.clone();
        let mut holders = Holders::new(origin);
        let chunk = self.config.chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let mut partial = state.cache.begin(limit).await?;
        let mut learnt = None::<Instant>;
        let mut members = Vec::new();
        while partial.size() < size {
            // Who holds it, and who is up, looked at again every second.
            if learnt.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                members = self.ctx.cluster.members.send(ListMembers).await.unwrap_or_default();
                let known = state.holders_of(sha).into_iter().filter(|h| *h != me);
                holders.learn(known, |h| members.iter().any(|m| m.name == h && m.status.is_up()));
                learnt = Some(Instant::now());
            }
            let holder = match holders.pick(Instant::now(), rand::random::<u32>() as usize) {
                Pick::Ask(holder) => holder,
                Pick::Wait(pause) => {
                    state.count(|c| c.fetch_waits += 1);
                    debug!(sha256 = %sha, pause_ms = pause.as_millis() as u64, "every holder of the package is busy; waiting");
                    tokio::time::sleep(pause).await;
                    learnt = None;
                    continue;
                }
                Pick::NoneLeft => {
                    let failures = holders.failures();
                    return Err(FetchError::Transfer(if failures.is_empty() {
                        format!("no alive peer holds package {sha} (its origin {origin} is not up)")
                    } else {
                        format!(
                            "no peer could send package {sha} (at byte {} of {size}): {failures}",
                            partial.size()
                        )
                    }));
                }
            };
            let offset = partial.size();
            let len = chunk.min(size - offset);
            match self.ask_chunk(&holder, sha, offset, len).await {
                Ok(data) => {
                    state.count(|c| c.chunks_fetched += 1);
                    partial.write(&data).await?;
                }
                Err(ChunkError::Busy) => {
                    debug!(holder = %holder, sha256 = %sha, "holder is busy; asking another");
                    holders.busy(&holder, Instant::now());
                }
                Err(ChunkError::NotYet) => {
                    debug!(holder = %holder, sha256 = %sha, "holder does not hold the package yet");
                    holders.not_yet(&holder, Instant::now());
                }
                Err(ChunkError::Elsewhere(others)) => {
                    debug!(holder = %holder, sha256 = %sha, others = others.len(), "the origin sends this fetch to the nodes that hold the package");
                    for other in &others {
                        state.add_holder(sha, other);
                    }
                    let others = others.into_iter().filter(|h| *h != me);
                    holders.learn(others, |h| members.iter().any(|m| m.name == h && m.status.is_up()));
                    if holders.has_others() {
                        holders.busy(&holder, Instant::now());
                    } else {
                        holders.failed(
                            &holder,
                            "it sends this node to holders that cannot send the package".into(),
                        );
                    }
                }
                Err(ChunkError::Failed(e)) => {
                    warn!(holder = %holder, offset, error = %e, "peer could not send a package chunk; trying another");
                    holders.failed(&holder, e);
                }
            }
        }
        partial.finish(Some(sha)).await
    }

    async fn ask_chunk(&self, holder: &str, sha: &str, offset: u64, len: u64) -> Result<Vec<u8>, ChunkError> {
        let failed = |why: String| ChunkError::Failed(why);
        let transponder = self
            .ctx
            .transponder
            .get()
            .ok_or_else(|| failed("the transponder is restarting".into()))?;
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
            self.config.chunk_timeout,
        );
        ask.to = Some(holder.to_string());
        let outcome = transponder
            .send(ask)
            .await
            .map_err(|e| failed(format!("transponder unavailable: {e}")))?
            .map_err(failed)?;
        let reply = outcome
            .replies
            .into_iter()
            .next()
            .ok_or_else(|| failed(format!("no answer within {} s", self.config.chunk_timeout.as_secs())))?;
        if reply.code.as_deref() == Some(BUSY) {
            return Err(ChunkError::Busy);
        }
        if reply.code.as_deref() == Some(NOT_HELD) {
            return Err(ChunkError::NotYet);
        }
        if let Some(error) = reply.error {
            return Err(failed(error));
        }
        if let Some(holders) = reply.body.get("holders").and_then(Value::as_array) {
            let holders = holders.iter().filter_map(Value::as_str).map(str::to_string).collect();
            return Err(ChunkError::Elsewhere(holders));
        }
        let data = reply
            .body
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| failed("the answer has no `data`".into()))?;
        let data = BASE64
            .decode(data)
            .map_err(|e| failed(format!("the chunk is not base64: {e}")))?;
        if data.len() as u64 != len {
            return Err(failed(format!("asked for {len} bytes, got {}", data.len())));
        }
        Ok(data)
    }

    /// Tells local modules what changed (`<node>.local`, `deployment_changed`).
    fn notify_local(&self, action: &str, module: &str, version: Option<&str>) {
        let envelope = Envelope::new(
            MessageType::Other("deployment_changed".into()),
            self.source.clone(),
            self.ctx.identity.local_address(),
            None,
            json!({"action": action, "module": module, "version": version}),
        );
        self.ctx.bus.do_send(Publish(envelope));
    }

    /// Stops module `name` and removes it from disk.
    pub async fn remove(&self, name: &str) -> DeployReport {
        if let Err(e) = check_module_name(name) {
            return DeployReport::failed(name, "invalid_order", e);
        }
        if CORE_MODULES.contains(&name) {
            return DeployReport::failed(name, "reserved", format!("`{name}` is a core module of every node"));
        }
        let supervised = self.module_info(name).await;
        if supervised.is_some() {
            if let Ok(Err(e)) = self.ctx.supervisor.send(RemoveModule(name.to_string())).await {
                return DeployReport::failed(name, "stop_failed", e);
            }
        }
        let store = self.state.store.clone();
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
