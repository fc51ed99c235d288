//! The core's rules, each on a few cores joined by an instant in-test
//! network under a mocked clock. (Many-node behaviour is tested on the
//! simulator, in `tests/cluster_sim.rs`.)

mod bounds;
mod datasets;
mod identities;
mod links;
mod membership;
mod net;
mod news;
mod pass_over;
mod proofs;
