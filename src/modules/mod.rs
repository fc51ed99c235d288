//! Modules, apart from their actors: how the supervisor starts them, and a
//! process module's parts.
//!
//! - [`registry`]: module specs for the supervisor, built-in or process.
//! - [`module_line`]: the lines a process module writes, parsed into ops.
//! - [`line_codec`]: reading those lines, where an over-long one is skipped.
//! - [`process_tree`]: every process a module started, to stop them all.
//! - [`stdin_queue`]: what waits for a process module's stdin, bounded in bytes.

pub mod line_codec;
pub mod module_line;
pub mod process_tree;
pub mod registry;
pub mod stdin_queue;

pub use crate::actors::ModuleArgs;
