//! What the Deployer keeps across its own restarts.

use super::fetch::{PackageCache, PackageDirs};
use super::store::ModuleStore;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How many packages' holder lists are remembered.
const HOLDER_MEMORY: usize = 256;

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
pub(crate) struct DeployCounters {
    pub(crate) deployed: u64,
    pub(crate) unchanged: u64,
    pub(crate) failed: u64,
    pub(crate) undeployed: u64,
    pub(crate) chunks_served: u64,
    pub(crate) chunks_fetched: u64,
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

    pub(crate) fn set_activity(&self, module: &str, what: Option<String>) {
        if let Ok(mut a) = self.activity.lock() {
            match what {
                Some(what) => a.insert(module.to_string(), what),
                None => a.remove(module),
            };
        }
    }

    pub(crate) fn activity(&self) -> Value {
        self.activity.lock().map(|a| json!(*a)).unwrap_or(Value::Null)
    }

    /// The lock of one module's orders.
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
    /// What orders are doing, how many packages have known holders, and
    /// the counters: for status answers and state dumps.
    pub(crate) fn summary(&self) -> Value {
        json!({
            "activity": self.activity(),
            "known_packages": self.holders.lock().map(|h| h.len()).unwrap_or(0),
            "counters": self.counters.lock().map(|c| *c).unwrap_or_default(),
        })
    }
}
