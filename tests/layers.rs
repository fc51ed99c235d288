//! The layers of `src/` and the direction of their imports:
//!
//! 0. `wire`, `token_bucket`, `swappable`, `shown`
//! 1. `cluster`, `sim`, `logging`, `metrics`, `private_file`, `data_dir`, `api_token`,
//!    `tags`, `command` (operator keys and the command gate), `audit`
//! 2. the runtime: the supervisor, ModBus, module messages, the cluster
//!    actors and the Transponder in `actors/`, and `discovery`
//! 3. capabilities: the Deployer, Monitor and built-in module actors,
//!    `deploy`, `monitor`, `modules`
//! 4. `node` (assembly)
//! 5. `config` (the agent's settings, which resolve into a node's presets)
//! 6. `api`, `cli`
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
    "event_tap",
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
        "wire" | "token_bucket" | "swappable" | "shown" => 0,
        "cluster" | "sim" | "logging" | "metrics" | "private_file" | "data_dir" | "cgroup" | "api_token" | "tags"
        | "command" | "audit" => 1,
        "discovery" => 2,
        // `actors::Name` is an item of `actors/mod.rs`, which is runtime.
        "actors" => match path.get(1) {
            Some(actor) if !RUNTIME_ACTORS.contains(actor) && actor.starts_with(|c: char| c.is_lowercase()) => 3,
            _ => 2,
        },
        "modules" | "deploy" | "monitor" => 3,
        "node" => 4,
        "config" => 5,
        "api" | "cli" => 6,
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

/// Every full path a line names (`crate::a::b::C` as `[a, b, C]`,
/// `super::x::Y` resolved against the file's module), for the file graph.
fn full_paths(line: &str, own: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (prefix, from_parent) in [("crate::", false), ("super::", true)] {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let (head, items): (Vec<String>, Vec<&str>) = {
                // `a::b::{c, d::e}`: a shared head, then a group.
                let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'));
                let stem = &rest[..end.unwrap_or(rest.len())];
                match stem.find('{') {
                    Some(open) => {
                        let head = stem[..open].trim_end_matches("::");
                        let group = &rest[open + 1..];
                        let group = &group[..group.find('}').unwrap_or(group.len())];
                        (split_path(head), group.split(',').collect())
                    }
                    None => (Vec::new(), vec![stem]),
                }
            };
            for item in items {
                let mut path: Vec<String> = if from_parent {
                    own[..own.len().saturating_sub(1)].to_vec()
                } else {
                    Vec::new()
                };
                path.extend(head.iter().cloned());
                path.extend(split_path(item.trim()));
                if !path.is_empty() {
                    found.push(path);
                }
            }
        }
    }
    found
}

fn split_path(text: &str) -> Vec<String> {
    text.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty())
        .collect()
}

/// The file a module path lives in: the deepest `a/b.rs` or `a/b/mod.rs`.
fn file_of(src: &Path, path: &[String]) -> Option<PathBuf> {
    (1..=path.len()).rev().find_map(|n| {
        let dir: PathBuf = path[..n].iter().collect();
        [src.join(&dir).with_extension("rs"), src.join(&dir).join("mod.rs")]
            .into_iter()
            .find(|f| f.is_file())
    })
}

#[test]
fn no_two_files_import_each_other_even_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: std::collections::BTreeMap<PathBuf, BTreeSet<PathBuf>> = Default::default();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let own = module_of(relative);
        let text = std::fs::read_to_string(file).unwrap();
        for line in code_lines(&text) {
            // `mod x;` declares a child; it is not an import.
            let trimmed = line
                .trim_start()
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            if trimmed.starts_with("mod ") {
                continue;
            }
            for path in full_paths(line, &own) {
                if let Some(target) = file_of(&src, &path) {
                    if target != *file {
                        edges.entry(file.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    let reaches = |from: &PathBuf, to: &PathBuf| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(f) = stack.pop() {
            if f == *to {
                return true;
            }
            if seen.insert(f.clone()) {
                stack.extend(edges.get(&f).into_iter().flatten().cloned());
            }
        }
        false
    };
    let mut cycles = BTreeSet::new();
    for (from, tos) in &edges {
        for to in tos {
            if reaches(to, from) {
                let name = |p: &PathBuf| p.strip_prefix(&src).unwrap().display().to_string();
                cycles.insert((name(from), name(to)));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "imports that come back round to the importer: {cycles:#?}"
    );
}

#[test]
fn the_file_graph_reads_groups_and_super_paths() {
    let own = vec!["deploy".to_string(), "table".to_string()];
    assert_eq!(
        full_paths("use crate::cluster::core::{hash::combine, keyed::X};", &own),
        [
            vec!["cluster", "core", "hash", "combine"],
            vec!["cluster", "core", "keyed", "X"]
        ]
        .map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    assert_eq!(
        full_paths("use super::order::OrderSource;", &own),
        [vec!["deploy", "order", "OrderSource"]].map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let path: Vec<String> = ["cluster", "core", "keyed", "KeyedSet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(file_of(&src, &path), Some(src.join("cluster/core/keyed.rs")));
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
