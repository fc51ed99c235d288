//! Module packages and installs: everything about modules that is not an actor.
//!
//! - [`manifest`]: `mod.json`, parsed and validated.
//! - [`package`]: building and safely unpacking packages.
//! - [`fetch`]: fetching packages into the content-addressed cache.
//! - [`store`]: installs on disk, swapped in by renames, recovered after crashes.
//! - [`registry`]: the built-in kinds, and module specs for the supervisor.

pub mod fetch;
pub mod manifest;
pub mod package;
pub mod registry;
pub mod store;

pub use manifest::Manifest;
pub use registry::ModuleArgs;
