//! The Transponder as a module of the node: its factory, which the
//! supervisor calls at start and after each restart. Apart from the actor,
//! so the Transponder does not import the module context that holds it.

use super::context::ModuleArgs;
use super::transponder::{Transponder, TransponderConfig};

/// The factory of the node's Transponder: a fresh one with `config`, put in
/// the node's slot so modules and the API reach it.
pub fn start_module(
    args: &ModuleArgs<'_>,
    config: TransponderConfig,
) -> anyhow::Result<super::supervisor::RunningModule> {
    let ctx = args.ctx;
    let transponder = Transponder::new(&ctx.identity, config, ctx.bus.clone(), ctx.cluster.clone());
    let transponder = transponder.with_metrics(ctx.metrics.clone(), args.name);
    let (addr, running) = super::supervisor::spawn_module(transponder);
    ctx.transponder.set(addr);
    Ok(running)
}
