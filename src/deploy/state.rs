//! What the Deployer keeps across its own restarts.

use super::converge::{Goal, GoalState, Goals};
use super::fetch::{PackageCache, PackageDirs};
use super::store::ModuleStore;
use super::uploads::Uploads;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How many packages' holder lists are remembered.
const HOLDER_MEMORY: usize = 256;

/// What the Deployer keeps across its own restarts: the installed modules,
/// the package cache, who holds which package, the locks that keep two
/// steps from changing one module at once (even a task left over from
/// before a restart), where each module stands, and which results went to
/// their origins.
pub struct DeployState {
    pub store: ModuleStore,
    pub cache: PackageCache,
    holders: Mutex<HashMap<String, BTreeSet<String>>>,
    module_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Mutex<DeployCounters>,
    /// Where this node stands on each module the table names for it.
    pub goals: Mutex<Goals>,
    /// Entries that arrived while this node ran, whose result their origin
    /// still waits for (by id).
    fresh: Mutex<HashSet<Arc<str>>>,
    /// Set once the node cleaned up after a crash and started what is
    /// installed: nothing is reconciled before, so a step never races the
    /// recovery of the folder it works in.
    ready: tokio::sync::watch::Sender<bool>,
    /// Steps of different modules run side by side, this many at once, so
    /// a table that names many modules does not start every download at
    /// once.
    pub step_slots: Arc<tokio::sync::Semaphore>,
    /// The peers this node sends packages to now.
    pub uploads: Mutex<Uploads>,
    /// Packages this node offered as a deploy's origin: it sends a new
    /// fetcher of one to the nodes that already fetched it.
    originated: Mutex<HashSet<String>>,
    /// Signed commands this node took as their origin, so none is taken twice.
    pub recent_commands: Mutex<crate::command::replay::RecentIds>,
    /// Table entries (id and version clock) this node refused to carry
    /// out, so each refusal is logged, counted and audited once.
    refused: Mutex<HashSet<(Arc<str>, u64)>>,
    /// Entries peers offered that this node's table refused outright:
    /// which were audited, and the budget for more.
    pub refused_entries: Mutex<super::refused_entries::RefusedEntries>,
    /// The steers of rollouts this node holds that it has audited.
    pub audited_steers: Mutex<super::steer_audit::AuditedSteers>,
    /// Each command this node took, carried out or refused.
    pub audit: crate::audit::AuditLog,
}

#[derive(Default, Debug, Clone, Copy, Serialize)]
pub(crate) struct DeployCounters {
    pub(crate) deployed: u64,
    pub(crate) unchanged: u64,
    pub(crate) failed: u64,
    pub(crate) undeployed: u64,
    pub(crate) reconciles: u64,
    pub(crate) chunks_served: u64,
    pub(crate) bytes_served: u64,
    /// Chunks refused because this node was sending to enough peers.
    pub(crate) chunks_refused_busy: u64,
    /// New fetchers this node, as a package's origin, sent to the nodes
    /// that already hold it.
    pub(crate) fetchers_redirected: u64,
    pub(crate) chunks_fetched: u64,
    /// Times a fetch found every holder busy and waited.
    pub(crate) fetch_waits: u64,
}

impl DeployState {
    /// Notes that this node refused version `clock` of entry `id`; true
    /// the first time. Forgets entries no longer in `held`.
    pub fn first_refusal(&self, id: &Arc<str>, clock: u64, held: &HashSet<Arc<str>>) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.retain(|(id, _)| held.contains(id));
        refused.insert((id.clone(), clock))
    }

    /// Opens `<data-dir>/mods` and `<data-dir>/packages`; `file://`
    /// packages are read only from `package_dirs`; `parallel` steps run at
    /// once, and packages are sent to `uploads` peers at once.
    pub fn open(
        data_dir: &Path,
        package_dirs: &[std::path::PathBuf],
        parallel: usize,
        uploads: usize,
    ) -> anyhow::Result<DeployState> {
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
            counters: Mutex::new(DeployCounters::default()),
            goals: Mutex::new(Goals::default()),
            fresh: Mutex::new(HashSet::new()),
            ready: tokio::sync::watch::Sender::new(false),
            step_slots: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            uploads: Mutex::new(Uploads::new(uploads)),
            originated: Mutex::new(HashSet::new()),
            recent_commands: Mutex::default(),
            refused: Mutex::default(),
            refused_entries: Mutex::new(super::refused_entries::RefusedEntries::new(std::time::Instant::now())),
            audited_steers: Mutex::default(),
            audit: crate::audit::AuditLog::open(data_dir),
        })
    }

    /// The node has recovered its installs and started them.
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits until [`DeployState::mark_ready`].
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// This node offers package `sha256` as a deploy's origin.
    pub fn mark_originated(&self, sha256: &str) {
        let mut originated = self.originated.lock().unwrap_or_else(|e| e.into_inner());
        if originated.len() >= HOLDER_MEMORY {
            originated.clear();
        }
        originated.insert(sha256.to_string());
    }

    /// Whether this node offered package `sha256` as a deploy's origin.
    pub fn originated(&self, sha256: &str) -> bool {
        self.originated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sha256)
    }

    /// Entries that just arrived from the cluster: their origins wait for
    /// this node's result.
    pub fn mark_fresh(&self, ids: impl IntoIterator<Item = Arc<str>>) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() > 4096 {
            fresh.clear();
        }
        fresh.extend(ids);
    }

    /// Whether entry `id`'s origin still waits for this node's result; if
    /// so, it no longer does once this answers.
    pub(crate) fn take_fresh(&self, id: &Arc<str>) -> bool {
        self.fresh.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    /// Every module's goal, for the status report.
    pub fn goals_report(&self) -> Vec<Goal> {
        self.goals
            .lock()
            .map(|g| g.report(std::time::Instant::now()))
            .unwrap_or_default()
    }

    /// The lock of one module's steps.
    pub(crate) fn module_lock(&self, module: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.module_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the locks nobody holds or waits for.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(module.to_string()).or_default().clone()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut DeployCounters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }

    pub(crate) fn add_holder(&self, sha256: &str, node: &str) {
        let Ok(mut holders) = self.holders.lock() else { return };
        if !holders.contains_key(sha256) && holders.len() >= HOLDER_MEMORY {
            if let Some(any) = holders.keys().next().cloned() {
                holders.remove(&any);
            }
        }
        holders.entry(sha256.to_string()).or_default().insert(node.to_string());
    }

    pub(crate) fn holders_of(&self, sha256: &str) -> BTreeSet<String> {
        self.holders
            .lock()
            .ok()
            .and_then(|h| h.get(sha256).cloned())
            .unwrap_or_default()
    }
}

impl DeployState {
    /// Where each module stands, how many packages have known holders,
    /// and the counters: for status answers and state dumps.
    pub(crate) fn summary(&self) -> Value {
        let goals = self.goals_report();
        let working: BTreeMap<&str, &str> = goals
            .iter()
            .filter(|g| g.state == GoalState::Working)
            .map(|g| (g.module.as_str(), g.reason.as_deref().unwrap_or("")))
            .collect();
        let failed: BTreeMap<&str, &str> = goals
            .iter()
            .filter(|g| g.state == GoalState::Failed)
            .map(|g| (g.module.as_str(), g.reason.as_deref().unwrap_or("")))
            .collect();
        json!({
            "working": working,
            "failed": failed,
            "known_packages": self.holders.lock().map(|h| h.len()).unwrap_or(0),
            "counters": self.counters.lock().map(|c| *c).unwrap_or_default(),
        })
    }
}
