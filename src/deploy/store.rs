//! The installed modules of a node: `<data-dir>/mods/<name>/`.
//!
//! An install is complete when its folder holds `install.json`, which is
//! written last. Every step that changes what is installed is a rename, so a
//! crash at any point leaves either the old or the new version whole, plus
//! leftovers that [`ModuleStore::recover`] cleans at the next start:
//!
//! - `.staging-<name>-<id>/`: an unpack that never finished: removed;
//! - `.old-<name>/`: the previous version during an upgrade: put back if the
//!   new one is not complete, else removed;
//! - `<name>/` without `install.json`: half-written: removed;
//! - `.trash-*`: an undeploy in progress: removed.

use super::disk::WriteError;
use super::manifest::{Manifest, MANIFEST_FILE};
use super::package::{self, UnpackError, UnpackLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Written last into a module's folder; its presence means "installed".
pub const INSTALL_RECORD: &str = "install.json";
/// The module's effective config (the deploy's merged over the manifest's).
pub const CONFIG_FILE: &str = "config.json";

/// What was installed, and from which package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub config: Value,
    pub installed_at_ms: u64,
    /// The deployments-table entry that installed it; none if it was
    /// installed otherwise (then the table removes it only when an entry
    /// names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

/// A complete install on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledModule {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub record: InstallRecord,
}

/// A package unpacked into a staging folder, not yet installed.
#[derive(Debug)]
pub struct Staged {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// An install swapped in; the previous version is kept until [`ModuleStore::commit`].
#[derive(Debug)]
pub struct Swap {
    pub name: String,
    pub previous: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ModuleStore {
    root: PathBuf,
}

impl ModuleStore {
    pub fn open(root: &Path) -> std::io::Result<ModuleStore> {
        std::fs::create_dir_all(root)?;
        // Absolute, so a module's `main` resolves the same from its own cwd.
        Ok(ModuleStore {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn module_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn old_dir(&self, name: &str) -> PathBuf {
        self.root.join(format!(".old-{name}"))
    }

    /// Cleans up after a crash (see the module doc). Answers one sentence per
    /// thing it did, for the log.
    pub fn recover(&self) -> Vec<String> {
        let mut done = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return done;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let path = self.root.join(name);
            if name.starts_with(".staging-") || name.starts_with(".trash-") {
                let _ = std::fs::remove_dir_all(&path);
                done.push(format!("removed the unfinished {name}"));
            } else if let Some(module) = name.strip_prefix(".old-") {
                if self.read(module).is_ok() {
                    let _ = std::fs::remove_dir_all(&path);
                    done.push(format!(
                        "removed the previous version of {module} left by a finished upgrade"
                    ));
                } else {
                    let current = self.module_dir(module);
                    let _ = std::fs::remove_dir_all(&current);
                    match std::fs::rename(&path, &current) {
                        Ok(()) => done.push(format!(
                            "restored the previous version of {module} after an unfinished upgrade"
                        )),
                        Err(e) => done.push(format!("cannot restore the previous version of {module}: {e}")),
                    }
                }
            }
        }
        for name in names.iter().filter(|n| !n.starts_with('.')) {
            let path = self.root.join(name);
            if !path.is_dir() {
                continue;
            }
            if let Err(e) = self.read(name) {
                let _ = std::fs::remove_dir_all(&path);
                done.push(format!("removed the half-written install of {name} ({e})"));
            }
        }
        done
    }

    /// Reads one complete install.
    pub fn read(&self, name: &str) -> Result<InstalledModule, String> {
        let dir = self.module_dir(name);
        let record_path = dir.join(INSTALL_RECORD);
        let bytes = std::fs::read(&record_path).map_err(|_| format!("no {INSTALL_RECORD}"))?;
        let record: InstallRecord =
            serde_json::from_slice(&bytes).map_err(|e| format!("{INSTALL_RECORD} is unreadable: {e}"))?;
        let manifest = Manifest::read_from(&dir)?;
        if record.name != name || manifest.name != name {
            return Err(format!("the folder {name} holds module {}", manifest.name));
        }
        Ok(InstalledModule { dir, manifest, record })
    }

    /// Every complete install, by name.
    /// Records that table entry `entry` now stands for the installed
    /// module `name` (the entry asked for exactly what runs).
    pub fn adopt(&self, name: &str, entry: &str) -> Result<(), String> {
        let mut installed = self.read(name)?;
        installed.record.entry = Some(entry.to_string());
        let bytes = serde_json::to_vec_pretty(&installed.record).map_err(|e| e.to_string())?;
        crate::private_file::write(&installed.dir.join(INSTALL_RECORD), &bytes)
            .map_err(|e| format!("cannot write {}: {e}", INSTALL_RECORD))
    }

    pub fn installed(&self) -> Vec<InstalledModule> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.read(n).ok()).collect()
    }

    /// Unpacks a package into a fresh staging folder.
    pub fn stage(&self, package: &Path, limits: UnpackLimits) -> Result<Staged, UnpackError> {
        let dir = self.root.join(format!(".staging-{}", uuid::Uuid::now_v7()));
        match package::unpack(package, &dir, limits) {
            Ok(manifest) => Ok(Staged { dir, manifest }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Writes `config.json`, then `install.json` (which completes the install).
    pub fn complete(&self, staged: &Staged, record: &InstallRecord) -> Result<(), WriteError> {
        let write = |file: &str, value: &Value| {
            let text = serde_json::to_vec_pretty(value).map_err(|e| WriteError::Failed(e.to_string()))?;
            std::fs::write(staged.dir.join(file), text).map_err(|e| WriteError::new(format!("cannot write {file}"), &e))
        };
        write(CONFIG_FILE, &record.config)?;
        write(
            INSTALL_RECORD,
            &serde_json::to_value(record).map_err(|e| WriteError::Failed(e.to_string()))?,
        )
    }

    /// Throws a staging folder away.
    pub fn discard(&self, staged: Staged) {
        let _ = std::fs::remove_dir_all(staged.dir);
    }

    /// Moves the current version (if any) aside and the staged one in.
    pub fn swap_in(&self, staged: Staged) -> Result<Swap, String> {
        let name = staged.manifest.name.clone();
        let current = self.module_dir(&name);
        let old = self.old_dir(&name);
        let _ = std::fs::remove_dir_all(&old);
        let previous = if current.exists() {
            std::fs::rename(&current, &old).map_err(|e| format!("cannot move the installed {name} aside: {e}"))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&staged.dir, &current) {
            if let Some(old) = &previous {
                let _ = std::fs::rename(old, &current);
            }
            let _ = std::fs::remove_dir_all(&staged.dir);
            return Err(format!("cannot install {name}: {e}"));
        }
        Ok(Swap { name, previous })
    }

    /// Keeps the new version: drops the previous one.
    pub fn commit(&self, swap: Swap) {
        if let Some(old) = swap.previous {
            let _ = std::fs::remove_dir_all(old);
        }
    }

    /// Puts the previous version back (or removes the new one if there was none).
    pub fn rollback(&self, swap: Swap) -> Result<(), String> {
        let current = self.module_dir(&swap.name);
        self.remove_dir(&current);
        if let Some(old) = swap.previous {
            std::fs::rename(&old, &current)
                .map_err(|e| format!("cannot restore the previous version of {}: {e}", swap.name))?;
        }
        Ok(())
    }

    /// Removes an install. Answers whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let dir = self.module_dir(name);
        if !dir.exists() {
            return false;
        }
        self.remove_dir(&dir);
        true
    }

    /// Renames first, so a crash mid-delete leaves a `.trash-*` for recovery
    /// rather than a half-deleted module that looks installed.
    fn remove_dir(&self, dir: &Path) {
        let trash = self.root.join(format!(".trash-{}", uuid::Uuid::now_v7()));
        if std::fs::rename(dir, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// True when `dir` looks like a module folder (for the CLI's checks).
pub fn has_manifest(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

#[cfg(test)]
mod tests {
    use super::super::package::tests::module_dir;
    use super::*;
    use serde_json::json;

    fn record(name: &str, sha: &str) -> InstallRecord {
        InstallRecord {
            name: name.into(),
            version: "1.0.0".into(),
            sha256: sha.into(),
            config: json!({"k": 1}),
            installed_at_ms: 1,
            entry: None,
        }
    }

    fn staged(store: &ModuleStore, tmp: &Path, name: &str) -> Staged {
        let src = module_dir(&tmp.join("src"), name);
        let pkg = tmp.join(format!("{name}.tar.gz"));
        package::build(&src, &pkg).unwrap();
        store.stage(&pkg, UnpackLimits::for_package_limit(1 << 20)).unwrap()
    }

    #[test]
    fn install_upgrade_rollback_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ModuleStore::open(&tmp.path().join("mods")).unwrap();
        let s = staged(&store, tmp.path(), "demo");
        store.complete(&s, &record("demo", "a")).unwrap();
        store.commit(store.swap_in(s).unwrap());
        assert_eq!(store.read("demo").unwrap().record.sha256, "a");
        assert_eq!(
            serde_json::from_slice::<Value>(&std::fs::read(store.root().join("demo/config.json")).unwrap()).unwrap(),
            json!({"k": 1})
        );

        let s = staged(&store, tmp.path(), "demo");
        store.complete(&s, &record("demo", "b")).unwrap();
        let swap = store.swap_in(s).unwrap();
        assert_eq!(store.read("demo").unwrap().record.sha256, "b");
        store.rollback(swap).unwrap();
        assert_eq!(
            store.read("demo").unwrap().record.sha256,
            "a",
            "the previous version is back"
        );

        assert!(store.remove("demo"));
        assert!(!store.remove("demo"));
        assert!(store.installed().is_empty());
    }

    #[test]
    fn recover_cleans_up_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ModuleStore::open(&tmp.path().join("mods")).unwrap();
        // A complete install of `good`.
        let s = staged(&store, tmp.path(), "good");
        store.complete(&s, &record("good", "a")).unwrap();
        store.commit(store.swap_in(s).unwrap());
        // A crash mid-unpack: a staging folder.
        let _unfinished = staged(&store, tmp.path(), "other");
        // A crash after the swap, before install.json: `half` has no record.
        std::fs::create_dir_all(store.root().join("half")).unwrap();
        std::fs::write(store.root().join("half/mod.json"), "{}").unwrap();
        // A crash mid-upgrade of `up`: old version aside, new one incomplete.
        let s = staged(&store, tmp.path(), "up");
        store.complete(&s, &record("up", "old")).unwrap();
        store.commit(store.swap_in(s).unwrap());
        std::fs::rename(store.root().join("up"), store.root().join(".old-up")).unwrap();
        std::fs::create_dir_all(store.root().join("up")).unwrap();

        let done = store.recover();
        assert_eq!(done.len(), 3, "{done:?}");
        let names: Vec<String> = store.installed().into_iter().map(|m| m.record.name).collect();
        assert_eq!(names, ["good", "up"]);
        assert_eq!(store.read("up").unwrap().record.sha256, "old");
        let leftovers: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "only the two installs remain: {leftovers:?}");
    }
}
