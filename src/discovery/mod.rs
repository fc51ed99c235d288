//! Discovery: finding candidate peers. It never decides membership; it only
//! hands addresses to the ClusterBridge, which dials them and lets the
//! membership protocol take it from there.
//!
//! - [`mdns`]: zero-config discovery on the LAN (`_conjoiner._tcp.local.`).
//! - [`seeds`]: `--join host:port` seeds, retried with backoff until reached.
//! - [`known_peers`]: the live members of the last run, saved and dialed
//!   again after a restart.

pub mod known_peers;
pub mod mdns;
pub mod seeds;

pub use mdns::{Mdns, SERVICE_TYPE};
pub use seeds::spawn_seeds;
