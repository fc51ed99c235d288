//! The monitor capability, apart from its actor (`actors/monitor.rs`).
//!
//! - [`board`]: every node's latest status report, judged fresh, stale or
//!   dead, and the health rules of nodes and modules.
//! - [`answer`]: the control API's status answer, which the CLI and the
//!   dashboard read as it is.

pub mod answer;
pub mod board;
