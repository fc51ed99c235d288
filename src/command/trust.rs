//! The operator keys a node trusts, each with its scope: which modules it
//! may change, and on which nodes. From `--trust-operator` (a key, `@FILE`,
//! or a JSON scope) and the `*.pub` files in `<data-dir>/operators/`.

use super::operator_key::OperatorKey;
use crate::wire::selector::glob_match;
use crate::wire::Target;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

/// The folder of trusted keys in the data dir.
pub const OPERATORS_DIR: &str = "operators";

/// One trusted key and what it may do.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: OperatorKey,
    /// Module name globs it may change; empty means every module.
    pub modules: Vec<String>,
    /// The nodes it may change: only nodes matching this (none: all).
    pub target: Option<Target>,
}

impl TrustedKey {
    /// Whether it may change `module` on the node `name` with `tags`; if
    /// not, why.
    pub fn covers(&self, module: &str, name: &str, tags: &BTreeMap<String, String>) -> Result<(), String> {
        self.covers_module(module)?;
        if let Some(t) = &self.target {
            if !t.matches(name, tags) {
                return Err(format!(
                    "key {} may change only nodes matching `{t}`, not this one",
                    self.key.id()
                ));
            }
        }
        Ok(())
    }

    /// Whether it may change `module` (on the nodes of its target).
    pub fn covers_module(&self, module: &str) -> Result<(), String> {
        if !self.modules.is_empty() && !self.modules.iter().any(|g| glob_match(g, module)) {
            return Err(format!(
                "key {} may change only modules {}, not `{module}`",
                self.key.id(),
                self.modules.join(", ")
            ));
        }
        Ok(())
    }

    /// Reads a key as `--trust-operator` takes it: `cjop1…`, or a JSON
    /// scope `{"key": "cjop1…", "modules": ["web-*"], "target": "tag.env=staging"}`.
    pub fn parse(text: &str) -> Result<TrustedKey, String> {
        let text = text.trim();
        if !text.starts_with('{') {
            return Ok(TrustedKey {
                key: OperatorKey::parse(text)?,
                modules: Vec::new(),
                target: None,
            });
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Scoped {
            key: String,
            #[serde(default)]
            modules: Vec<String>,
            target: Option<String>,
        }
        let scoped: Scoped =
            serde_json::from_str(text).map_err(|e| format!("a scoped operator key does not read: {e}"))?;
        if scoped.modules.iter().any(|g| g.is_empty()) {
            return Err("a scoped operator key's `modules` has an empty glob".into());
        }
        let target = scoped
            .target
            .as_deref()
            .map(Target::parse)
            .transpose()
            .map_err(|e| format!("a scoped operator key's `target`: {e}"))?;
        Ok(TrustedKey {
            key: OperatorKey::parse(&scoped.key)?,
            modules: scoped.modules,
            target,
        })
    }

    /// How it is shown at start and in status: the key id and its scope.
    pub fn describe(&self) -> String {
        let mut text = self.key.id();
        if !self.modules.is_empty() {
            text.push_str(&format!(" modules {}", self.modules.join(",")));
        }
        if let Some(t) = &self.target {
            text.push_str(&format!(" on `{t}`"));
        }
        text
    }
}

/// Every key a node trusts. Empty: the node is open (any holder of the
/// cluster key may deploy), and says so.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub keys: Vec<TrustedKey>,
}

impl Trust {
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted entries for `key` (a key may be listed more than once,
    /// with different scopes: any one that covers a command will do).
    pub fn entries_for<'a>(&'a self, key: &'a OperatorKey) -> impl Iterator<Item = &'a TrustedKey> {
        self.keys.iter().filter(move |t| t.key == *key)
    }

    /// The keys of `--trust-operator` values and of `<data_dir>/operators/*.pub`.
    pub fn load(flags: &[String], data_dir: &Path) -> Result<Trust, String> {
        let mut keys = Vec::new();
        for flag in flags {
            let key = match flag.strip_prefix('@') {
                Some(file) => read_key_file(Path::new(file))?,
                None => TrustedKey::parse(flag).map_err(|e| format!("--trust-operator: {e}"))?,
            };
            keys.push(key);
        }
        let dir = data_dir.join(OPERATORS_DIR);
        match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
            Ok(listing) => {
                check_not_planted(&dir)?;
                let mut files: Vec<_> = listing
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                    .collect();
                files.sort();
                for file in files {
                    keys.push(read_key_file(&file)?);
                }
            }
        }
        Ok(Trust { keys })
    }
}

/// The keys a node trusts right now, shared by every part that checks a
/// command. A reload of the config file (SIGHUP) replaces them whole; a
/// check in progress keeps the set it started with.
pub type SharedTrust = crate::swappable::Swappable<Trust>;

/// A key file: one `cjop1…` line, or a JSON scope.
fn read_key_file(path: &Path) -> Result<TrustedKey, String> {
    check_not_planted(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("operator key {}: {e}", path.display()))?;
    if text.len() > 64 * 1024 {
        return Err(format!("operator key {} is over 64 KiB", path.display()));
    }
    TrustedKey::parse(&text).map_err(|e| format!("operator key {}: {e}", path.display()))
}

/// A trusted key decides who may run code as this node's user, so another
/// user must not be able to plant one: the file or folder must belong to
/// this user (or root) and be writable by no one else.
fn check_not_planted(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this node's user ({me}); trusted keys must not come from another user",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: others could plant a trusted key there; `chmod go-w` it",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::operator_key::OperatorSecret;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_scope_limits_modules_and_nodes() {
        let key = OperatorSecret::generate().public();
        let scoped = TrustedKey::parse(&format!(
            r#"{{"key":"{key}","modules":["web-*"],"target":"tag.env=staging"}}"#
        ))
        .unwrap();
        let staging = tags(&[("env", "staging")]);
        assert!(scoped.covers("web-api", "n1", &staging).is_ok());
        assert!(scoped
            .covers("db", "n1", &staging)
            .unwrap_err()
            .contains("only modules web-*"));
        assert!(scoped
            .covers("web-api", "n1", &tags(&[("env", "prod")]))
            .unwrap_err()
            .contains("only nodes matching"));
        let whole = TrustedKey::parse(&key.to_string()).unwrap();
        assert!(whole.covers("db", "n9", &BTreeMap::new()).is_ok());
    }

    #[test]
    fn bad_scopes_are_refused() {
        let key = OperatorSecret::generate().public();
        for (text, why) in [
            (format!(r#"{{"key":"{key}","target":"tag."}}"#), "`target`"),
            (format!(r#"{{"key":"{key}","modules":[""]}}"#), "empty glob"),
            (format!(r#"{{"key":"{key}","module":["x"]}}"#), "unknown field"),
            (r#"{"key":"cjop1xx"}"#.to_string(), "not an operator public key"),
        ] {
            let e = TrustedKey::parse(&text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn keys_come_from_flags_and_the_operators_folder_but_not_from_a_writable_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (OperatorSecret::generate(), OperatorSecret::generate());
        let ops = dir.path().join(OPERATORS_DIR);
        std::fs::create_dir(&ops).unwrap();
        std::fs::set_permissions(&ops, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(ops.join("alice.pub"), format!("{}\n", a.public())).unwrap();
        std::fs::write(ops.join("notes.txt"), "not a key").unwrap();
        let trust = Trust::load(&[b.public().to_string()], dir.path()).unwrap();
        let ids: Vec<String> = trust.keys.iter().map(|k| k.key.id()).collect();
        assert_eq!(ids, vec![b.public().id(), a.public().id()]);

        std::fs::set_permissions(&ops, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Trust::load(&[], dir.path()).unwrap_err();
        assert!(e.contains("others could plant"), "{e}");

        assert!(Trust::load(&[], tempfile::tempdir().unwrap().path()).unwrap().is_open());
    }
}
