//! `mod.json`, the manifest of a module package.
//!
//! Parsed leniently (unknown fields are ignored, so newer packages still load
//! on older nodes) and validated strictly: every error names the field that
//! is wrong and says what it must be.

use crate::actors::{RestartMode, RestartPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::time::Duration;

/// The manifest's file name at the root of a package and of an installed module.
pub const MANIFEST_FILE: &str = "mod.json";

/// The largest `mod.json` read, so a hostile package cannot make us parse gigabytes.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;

/// A parsed and validated `mod.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// A process module: the executable inside the package to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// A built-in module: the registered kind to start with this config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Addresses the module listens to; default `["mod.<name>"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default)]
    pub restart: RestartSpec,
    /// Defaults the deploy's `config` is merged over.
    #[serde(default = "empty_object")]
    pub config: Value,
    /// How long a process module has to exit after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_secs: f64,
    /// A process module's publishes a second; it may burst to twice that,
    /// and what it publishes beyond is dropped and counted.
    #[serde(default = "default_publish_per_sec")]
    pub publish_per_sec: f64,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn default_stop_grace() -> f64 {
    3.0
}

/// The default publish rate of a process module.
pub const DEFAULT_PUBLISH_PER_SEC: f64 = 100.0;

fn default_publish_per_sec() -> f64 {
    DEFAULT_PUBLISH_PER_SEC
}

/// `restart` in `mod.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestartSpec {
    #[serde(default = "default_mode")]
    pub policy: RestartMode,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_period")]
    pub period_secs: u64,
}

fn default_mode() -> RestartMode {
    RestartMode::OnFailure
}
fn default_max_restarts() -> u32 {
    5
}
fn default_period() -> u64 {
    60
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: default_mode(),
            max_restarts: default_max_restarts(),
            period_secs: default_period(),
        }
    }
}

impl RestartSpec {
    pub fn policy(&self) -> RestartPolicy {
        RestartPolicy {
            mode: self.policy,
            max_restarts: self.max_restarts,
            period: Duration::from_secs(self.period_secs),
            ..RestartPolicy::default()
        }
    }
}

/// Is `name` a valid module name (`[a-z0-9][a-z0-9_-]{0,63}`)?
pub fn check_module_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "module name `{name}` is invalid: use 1 to 64 characters of a-z, 0-9, `_` and `-`, \
             starting with a letter or digit"
        ))
    }
}

/// Is `path` a plain relative path inside the package (no `/…`, no `..`)?
pub fn check_relative_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    for component in p.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{path}` leaves the package with `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(format!("`{path}` is an absolute path")),
        }
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates a `mod.json` document.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST_FILE} is not a valid manifest: {e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Reads `mod.json` from a module folder.
    pub fn read_from(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join(MANIFEST_FILE);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(format!("{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes"));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Manifest::parse(&bytes)
    }

    fn validate(&self) -> Result<(), String> {
        let bad = |field: &str, why: String| Err(format!("{MANIFEST_FILE}: `{field}` {why}"));
        if let Err(e) = check_module_name(&self.name) {
            return bad("name", format!("is wrong: {e}"));
        }
        if self.version.trim().is_empty() {
            return bad("version", "must not be empty".into());
        }
        match (&self.main, &self.builtin) {
            (Some(_), Some(_)) => {
                return bad(
                    "main",
                    "and `builtin` are both set; a module is one or the other".into(),
                )
            }
            (None, None) => {
                return bad(
                    "main",
                    "is missing: set `main` (an executable in the package) or `builtin` (a built-in kind)".into(),
                )
            }
            (Some(main), None) => {
                if let Err(e) = check_relative_path(main) {
                    return bad("main", format!("must be a path inside the package: {e}"));
                }
            }
            (None, Some(kind)) if kind.trim().is_empty() => return bad("builtin", "must not be empty".into()),
            (None, Some(_)) => {}
        }
        if !self.config.is_object() {
            return bad("config", "must be a JSON object".into());
        }
        if let Some(subs) = &self.subscribe {
            if subs.iter().any(|s| s.trim().is_empty()) {
                return bad("subscribe", "must not contain an empty address".into());
            }
        }
        if self.restart.max_restarts > 10_000 {
            return bad("restart.max_restarts", "must be at most 10000".into());
        }
        if self.restart.period_secs == 0 {
            return bad("restart.period_secs", "must be at least 1".into());
        }
        if !(0.0..=600.0).contains(&self.stop_grace_secs) {
            return bad("stop_grace_secs", "must be between 0 and 600".into());
        }
        if !(0.1..=100_000.0).contains(&self.publish_per_sec) {
            return bad("publish_per_sec", "must be between 0.1 and 100000".into());
        }
        Ok(())
    }

    /// The addresses the module listens to.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subscribe
            .clone()
            .unwrap_or_else(|| vec![format!("mod.{}", self.name)])
    }

    /// `process` for a process module, else the built-in kind.
    pub fn kind(&self) -> &str {
        self.builtin.as_deref().unwrap_or("process")
    }
}

/// Merges `over` onto `base`: objects key by key, recursively; anything else
/// in `over` replaces what is in `base`.
pub fn merge_config(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let mut merged = b.clone();
            for (key, value) in o {
                let next = match merged.get(key) {
                    Some(existing) => merge_config(existing, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            Value::Object(merged)
        }
        (_, Value::Null) => base.clone(),
        (_, other) => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Manifest, String> {
        Manifest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_full_manifest_parses_with_defaults() {
        let m = parse(json!({"name": "echo", "version": "1.0.0", "main": "bin/echo"})).unwrap();
        assert_eq!(m.subscriptions(), ["mod.echo"]);
        assert_eq!(m.restart, RestartSpec::default());
        assert_eq!(m.kind(), "process");
        assert_eq!(m.config, json!({}));
        let b = parse(json!({"name": "up", "version": "1", "builtin": "uptime", "extra": 1})).unwrap();
        assert_eq!(b.kind(), "uptime");
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let cases = [
            (json!({"name": "Bad", "version": "1", "main": "x"}), "`name`"),
            (json!({"name": "ok", "version": "", "main": "x"}), "`version`"),
            (json!({"name": "ok", "version": "1"}), "`main` is missing"),
            (
                json!({"name": "ok", "version": "1", "main": "x", "builtin": "echo"}),
                "both",
            ),
            (json!({"name": "ok", "version": "1", "main": "../x"}), ".."),
            (json!({"name": "ok", "version": "1", "main": "/bin/sh"}), "absolute"),
            (
                json!({"name": "ok", "version": "1", "main": "x", "config": [1]}),
                "`config`",
            ),
            (
                json!({"name": "ok", "version": "1", "main": "x", "restart": {"policy": "sometimes"}}),
                "manifest",
            ),
            (
                json!({"name": "ok", "version": "1", "main": "x", "restart": {"period_secs": 0}}),
                "period",
            ),
        ];
        for (doc, needle) in cases {
            let err = parse(doc.clone()).unwrap_err();
            assert!(err.contains(needle), "{doc}: {err}");
        }
        assert!(Manifest::parse(b"{not json")
            .unwrap_err()
            .contains("not a valid manifest"));
    }

    #[test]
    fn module_names_follow_the_spec() {
        for ok in ["a", "echo", "web-1", "x_y", "0abc"] {
            assert!(check_module_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a.b", "a/b", &"a".repeat(65)] {
            assert!(check_module_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_merges_deeply() {
        let base = json!({"a": 1, "nested": {"x": 1, "y": 2}, "list": [1, 2]});
        let over = json!({"b": 2, "nested": {"y": 3}, "list": [9]});
        assert_eq!(
            merge_config(&base, &over),
            json!({"a": 1, "nested": {"x": 1, "y": 3}, "list": [9], "b": 2})
        );
        assert_eq!(merge_config(&base, &Value::Null), base);
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,24}".prop_map(Value::from),
            Just(json!(["mod.x", 1, null])),
            Just(json!({"policy": "always", "max_restarts": -1})),
        ]
    }

    proptest::proptest! {
        /// Any bytes parse or are refused with a message, never a panic.
        #[test]
        fn any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Manifest::parse(&bytes);
        }

        /// A manifest whose every field holds a value of any type: refused
        /// cleanly, or parsed into a module with a valid name.
        #[test]
        fn fields_of_any_type_are_refused_or_valid(
            name in any_json(), version in any_json(), main in any_json(),
            builtin in any_json(), subscribe in any_json(), restart in any_json(), config in any_json(),
        ) {
            let mut m = serde_json::Map::new();
            for (k, v) in [("name", name), ("version", version), ("main", main), ("builtin", builtin),
                           ("subscribe", subscribe), ("restart", restart), ("config", config)] {
                if !v.is_null() {
                    m.insert(k.to_string(), v);
                }
            }
            if let Ok(manifest) = parse(Value::Object(m)) {
                proptest::prop_assert!(check_module_name(&manifest.name).is_ok(), "{}", manifest.name);
            }
        }
    }
}
