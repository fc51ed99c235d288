//! The built-in module kinds, and how any module (built-in or process) is
//! turned into a [`ModuleSpec`] the supervisor can start and restart.
//!
//! Adding a Rust actor module takes one file in `src/actors/` with a
//! `start_module` function, and one line in [`BUILTINS`]. A package whose
//! `mod.json` says `"builtin": "<kind>"` then deploys it like any other.

use super::manifest::Manifest;
use super::store::InstalledModule;
use crate::actors::process_module::{ProcessModule, ProcessModuleSetup};
use crate::actors::supervisor::{spawn_module, ExitNote, ModuleSpec, RestartPolicy, RunningModule};
use crate::actors::{deployer, echo, monitor, transponder, uptime};
use crate::node::NodeHandle;
use serde_json::Value;
use std::time::Duration;

/// What a module's factory gets each time it (re)starts the module.
pub struct ModuleArgs<'a> {
    pub node: &'a NodeHandle,
    /// The module's name (its inbox is `mod.<name>`).
    pub name: &'a str,
    /// The module's effective config.
    pub config: &'a Value,
}

/// Builds one fresh actor of a kind and starts it with [`spawn_module`].
pub type BuiltinFactory = fn(&ModuleArgs<'_>) -> anyhow::Result<RunningModule>;

/// Every built-in kind, by name.
pub const BUILTINS: &[(&str, BuiltinFactory)] = &[
    ("transponder", transponder::start_module),
    ("deployer", deployer::start_module),
    ("monitor", monitor::start_module),
    ("echo", echo::start_module),
    ("uptime", uptime::start_module),
];

/// Kinds that are node infrastructure: started by the node itself, never by a package.
pub const CORE_ONLY: &[&str] = &["transponder", "deployer", "monitor"];

/// The modules every node runs, in start order, with their names.
pub const CORE_MODULES: &[&str] = &["transponder", "deployer", "monitor", "echo"];

pub fn builtin(kind: &str) -> Option<BuiltinFactory> {
    BUILTINS.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
}

/// A spec for a built-in module.
pub fn builtin_spec(
    node: &NodeHandle,
    kind: &str,
    name: &str,
    version: &str,
    config: Value,
    restart: RestartPolicy,
) -> Result<ModuleSpec, String> {
    let factory = builtin(kind).ok_or_else(|| {
        let known: Vec<&str> = BUILTINS.iter().map(|(k, _)| *k).collect();
        format!("unknown built-in kind `{kind}` (this node has: {})", known.join(", "))
    })?;
    let node = node.clone();
    let owned_name = name.to_string();
    Ok(ModuleSpec {
        name: name.to_string(),
        kind: kind.to_string(),
        version: version.to_string(),
        restart,
        stop_grace: Duration::from_secs(5),
        factory: Box::new(move || {
            factory(&ModuleArgs {
                node: &node,
                name: &owned_name,
                config: &config,
            })
        }),
    })
}

/// A spec for an installed module, process or built-in.
pub fn installed_spec(node: &NodeHandle, module: &InstalledModule) -> Result<ModuleSpec, String> {
    let manifest = &module.manifest;
    let config = module.record.config.clone();
    let restart = manifest.restart.policy();
    if let Some(kind) = &manifest.builtin {
        if CORE_ONLY.contains(&kind.as_str()) {
            return Err(format!(
                "built-in kind `{kind}` is node infrastructure and cannot be deployed"
            ));
        }
        return builtin_spec(node, kind, &manifest.name, &manifest.version, config, restart);
    }
    Ok(process_spec(node, module.dir.clone(), manifest.clone(), config))
}

fn process_spec(node: &NodeHandle, dir: std::path::PathBuf, manifest: Manifest, config: Value) -> ModuleSpec {
    let node = node.clone();
    // The supervisor waits a little longer than the module's own SIGTERM
    // grace before it aborts the actor (which SIGKILLs the child).
    let stop_grace = Duration::from_secs_f64(manifest.stop_grace_secs) + Duration::from_secs(2);
    ModuleSpec {
        name: manifest.name.clone(),
        kind: "process".into(),
        version: manifest.version.clone(),
        restart: manifest.restart.policy(),
        stop_grace,
        factory: Box::new(move || {
            let note = ExitNote::default();
            let setup = ProcessModuleSetup {
                name: manifest.name.clone(),
                dir: dir.clone(),
                manifest: manifest.clone(),
                config: config.clone(),
            };
            let actor = ProcessModule::new(
                &node.identity,
                setup,
                node.bus.clone(),
                node.transponder.clone(),
                note.clone(),
            );
            Ok(spawn_module(actor).1.with_exit_note(note))
        }),
    }
}
