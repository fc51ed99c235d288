//! The monitor capability, apart from its actor (`actors/monitor.rs`).
//!
//! - [`board`]: every node's latest status report, judged fresh, stale or
//!   dead, and the health rules of nodes and modules.

pub mod board;
