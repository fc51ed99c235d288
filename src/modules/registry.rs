//! How any module (built-in or process) is turned into a [`ModuleSpec`] the
//! supervisor can start and restart.
//!
//! The table of built-in kinds a package may name (`"builtin": "<kind>"`)
//! is handed in by whoever assembles the node (see `node.rs`); the node's
//! own core modules (Transponder, Deployer, Monitor) are not among them.

use crate::actors::process_module::{ProcessModule, ProcessModuleSetup};
use crate::actors::supervisor::{spawn_module, ExitNote, ModuleSpec, RestartPolicy, RunningModule};
use crate::actors::{ModuleArgs, ModuleContext};
use crate::deploy::manifest::Manifest;
use crate::deploy::store::InstalledModule;
use serde_json::Value;
use std::time::Duration;

/// Builds one fresh actor of a kind and starts it with [`spawn_module`].
pub type BuiltinFactory = fn(&ModuleArgs<'_>) -> anyhow::Result<RunningModule>;

/// A factory that holds what its module is handed besides the context (the
/// Deployer's state, the Monitor's board).
pub type BoxedFactory = Box<dyn Fn(&ModuleArgs<'_>) -> anyhow::Result<RunningModule> + Send>;

/// The modules every node runs, in start order, with their names. No
/// package may take one of these names.
pub const CORE_MODULES: &[&str] = &["transponder", "deployer", "monitor", "echo"];

/// The built-in kinds a package may deploy, by name.
#[derive(Clone, Copy)]
pub struct Builtins(pub &'static [(&'static str, BuiltinFactory)]);

impl Builtins {
    pub fn get(&self, kind: &str) -> Option<BuiltinFactory> {
        self.0.iter().find(|(k, _)| *k == kind).map(|(_, f)| *f)
    }

    /// The kinds, for error messages.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }

    /// A spec for a built-in module of `kind`.
    pub fn spec(
        &self,
        ctx: &ModuleContext,
        kind: &str,
        name: &str,
        version: &str,
        config: Value,
        restart: RestartPolicy,
    ) -> Result<ModuleSpec, String> {
        let factory = self.get(kind).ok_or_else(|| {
            format!(
                "unknown built-in kind `{kind}` (a package may name: {})",
                self.kinds().join(", ")
            )
        })?;
        Ok(spec(ctx, kind, name, version, restart, factory, config))
    }

    /// A spec for an installed module, process or built-in.
    pub fn installed_spec(&self, ctx: &ModuleContext, module: &InstalledModule) -> Result<ModuleSpec, String> {
        let manifest = &module.manifest;
        let config = module.record.config.clone();
        let restart = manifest.restart.policy();
        if let Some(kind) = &manifest.builtin {
            return self.spec(ctx, kind, &manifest.name, &manifest.version, config, restart);
        }
        Ok(process_spec(ctx, module.dir.clone(), manifest.clone(), config))
    }
}

/// A spec whose factory calls `start` with the node's context, the
/// module's name and `config` on every (re)start.
pub fn spec(
    ctx: &ModuleContext,
    kind: &str,
    name: &str,
    version: &str,
    restart: RestartPolicy,
    start: impl Fn(&ModuleArgs<'_>) -> anyhow::Result<RunningModule> + Send + 'static,
    config: Value,
) -> ModuleSpec {
    let ctx = ctx.clone();
    let owned_name = name.to_string();
    ModuleSpec {
        name: name.to_string(),
        kind: kind.to_string(),
        version: version.to_string(),
        restart,
        stop_grace: Duration::from_secs(5),
        factory: Box::new(move || {
            start(&ModuleArgs {
                ctx: &ctx,
                name: &owned_name,
                config: &config,
            })
        }),
    }
}

fn process_spec(ctx: &ModuleContext, dir: std::path::PathBuf, manifest: Manifest, config: Value) -> ModuleSpec {
    let ctx = ctx.clone();
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
                containment: ctx.containment.clone(),
                backpressure: ctx.cluster.backpressure.clone(),
                metrics: ctx.metrics.clone(),
            };
            let actor = ProcessModule::new(
                &ctx.identity,
                setup,
                ctx.bus.clone(),
                ctx.transponder.clone(),
                note.clone(),
            );
            Ok(spawn_module(actor).1.with_exit_note(note))
        }),
    }
}
