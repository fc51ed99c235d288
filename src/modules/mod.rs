//! Module packages and installs: everything about modules that is not an actor.
//!
//! - [`manifest`]: `mod.json`, parsed and validated.
//! - [`module_line`]: the lines a process module writes, parsed into ops.
//! - [`package`]: building and safely unpacking packages.
//! - [`fetch`]: fetching packages into the content-addressed cache.
//! - [`store`]: installs on disk, swapped in by renames, recovered after crashes.
//! - [`registry`]: the built-in kinds, and module specs for the supervisor.
//! - [`process_tree`]: every process a module started, to stop them all.
//! - [`publish_limit`]: a process module's publish rate limit.

pub mod fetch;
pub mod manifest;
pub mod module_line;
pub mod package;
pub mod process_tree;
pub mod publish_limit;
pub mod registry;
pub mod store;

pub use manifest::Manifest;
pub use registry::ModuleArgs;
