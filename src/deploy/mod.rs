//! The deploy capability, apart from its actor (`actors/deployer.rs`).
//!
//! - [`manifest`]: `mod.json`, parsed and validated.
//! - [`package`]: building and safely unpacking packages.
//! - [`fetch`]: fetching packages into the content-addressed cache.
//! - [`store`]: installs on disk, swapped in by renames, recovered after crashes.
//! - [`origin`]: a deploy request at the origin, turned into the order.
//! - [`order`]: orders and per-node results, as typed values.
//! - [`state`]: what the Deployer keeps across its own restarts.
//! - [`rollout`]: deploys and undeploys from the origin, all at once or batch by batch.

pub mod fetch;
pub mod manifest;
pub mod order;
pub mod origin;
pub mod package;
pub mod rollout;
pub mod state;
pub mod store;

pub use manifest::Manifest;
