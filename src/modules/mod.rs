//! Modules, apart from their actors: how the supervisor starts them, and a
//! process module's parts.
//!
//! - [`registry`]: module specs for the supervisor, built-in or process.
//! - [`module_line`]: the lines a process module writes, parsed into ops.
//! - [`line_codec`]: reading those lines, where an over-long one is skipped.
//! - [`process_tree`]: every process a module started, to stop them all.
//! - [`publish_limit`]: a process module's publish rate limit.

pub mod line_codec;
pub mod module_line;
pub mod process_tree;
pub mod publish_limit;
pub mod registry;

pub use crate::actors::ModuleArgs;
