//! The layers of `src/` and the direction of their imports:
//!
//! 0. `wire`
//! 1. `cluster`, `sim`, `logging`, `metrics`, `private_file`, `api_token`, `tags`
//! 2. the runtime: the supervisor, ModBus, module messages, the cluster
//!    actors and the Transponder in `actors/`, and `discovery`
//! 3. capabilities: the Deployer, Monitor and built-in module actors,
//!    `deploy`, `monitor`, `modules`
//! 4. `node` (assembly)
//! 5. `api`, `cli`
//!
//! A file may import its own layer and the ones below. This test reads
//! every `crate::…` and `super::…` path in `src/` (comments and test
//! modules aside) and fails on any import upwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The runtime actors; every other file in `actors/` is a capability.
const RUNTIME_ACTORS: &[&str] = &[
    "supervisor",
    "modbus",
    "messages",
    "restart",
    "cluster_bridge",
    "cluster_bus",
    "context",
    "loopback_cluster",
    "transponder",
    "mod",
];

/// The layer of a module path such as `actors::deployer` or `wire`.
fn layer(path: &[&str]) -> Option<usize> {
    Some(match path.first().copied()? {
        "wire" => 0,
        "cluster" | "sim" | "logging" | "metrics" | "private_file" | "api_token" | "tags" => 1,
        "discovery" => 2,
        // `actors::Name` is an item of `actors/mod.rs`, which is runtime.
        "actors" => match path.get(1) {
            Some(actor) if !RUNTIME_ACTORS.contains(actor) && actor.starts_with(|c: char| c.is_lowercase()) => 3,
            _ => 2,
        },
        "modules" | "deploy" | "monitor" => 3,
        "node" => 4,
        "api" | "cli" => 5,
        _ => return None,
    })
}

/// `src/actors/deployer.rs` → `["actors", "deployer"]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` module and comments.
fn code_lines(text: &str) -> Vec<&str> {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// Every module path a line names: `crate::a::b` as `[a, b]`, and
/// `super::x` resolved against the file's own module.
fn imported(line: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", 0usize), ("super::", 1usize)] {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            // `crate::{a, b::c}` names several paths; `crate::a::b` one.
            let items: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())].split(',').collect(),
                None => vec![rest],
            };
            for item in items {
                let names: Vec<String> = item
                    .trim()
                    .split("::")
                    .take(2)
                    .map(|s| {
                        s.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .take_while(|s| !s.is_empty())
                    .collect();
                let mut path: Vec<String> = if base == 0 {
                    Vec::new()
                } else {
                    // `super` of a file's module is its parent.
                    own[..own.len().saturating_sub(1)].to_vec()
                };
                path.extend(names);
                path.truncate(2);
                if !path.is_empty() {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[test]
fn imports_only_flow_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upwards: BTreeSet<(String, String)> = BTreeSet::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let own = module_of(relative);
        let own_refs: Vec<&str> = own.iter().map(String::as_str).collect();
        let Some(mine) = layer(&own_refs) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for line in code_lines(&text) {
            for path in imported(line, &own) {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                if let Some(theirs) = layer(&refs) {
                    if theirs > mine {
                        upwards.insert((relative.display().to_string(), refs.join("::")));
                    }
                }
            }
        }
    }
    assert!(
        upwards.is_empty(),
        "imports up the layers (see the top of tests/layers.rs): {upwards:?}"
    );
}

#[test]
fn the_layer_reader_sees_crate_and_super_paths() {
    let own = vec!["actors".to_string(), "deployer".to_string()];
    assert_eq!(
        imported("use crate::node::NodeHandle; use super::supervisor::X;", &own),
        [vec!["node", "NodeHandle"], vec!["actors", "supervisor"]]
            .map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    assert_eq!(layer(&["actors", "deployer"]), Some(3));
    assert_eq!(layer(&["actors", "modbus"]), Some(2));
    assert_eq!(
        imported("use crate::{api, node::Node};", &own),
        [vec!["api"], vec!["node", "Node"]].map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    assert_eq!(layer(&["actors", "NodeIdentity"]), Some(2), "an item of actors/mod.rs");
    assert!(code_lines("use a;\n// crate::node\n#[cfg(test)]\nuse crate::api;").len() == 1);
}
