//! Conjoiner: a decentralized management network for fleets of hosts.
//!
//! Every host runs the same node; nodes are equal. `README.md` is the way
//! in: what it is, the quick start, a tour; `docs/` holds the guides (operators, module
//! authors, desired state, the link protocol, the architecture) and the
//! benchmark figures.
//!
//! - [`wire`]: pure envelope, selector and frame code.
//! - [`actors`]: the node's actors (supervisor, ModBus, Transponder, modules).
//! - [`cluster`]: key, encrypted links, link protocol, membership identities.
//! - [`discovery`]: mDNS and `--join` seeds, which hand peers to the bridge.
//! - [`audit`]: each command a node took, carried out or refused, on disk.
//! - [`command`]: operator keys, signed commands and the one gate they pass.
//! - [`deploy`]: the deploy capability's parts: manifests, packages, the
//!   package cache, installs, and rollouts from the origin.
//! - [`monitor`]: the monitor capability's parts: the status board.
//! - [`modules`]: module specs for the supervisor, and a process module's parts.
//! - [`node`]: builds one node from a [`node::NodeConfig`].
//! - [`config`]: the agent's settings: the config file, the flags laid over
//!   it, the presets beneath, and what a reload may change.
//! - [`data_dir`]: the checks that keep a node's data dir its own.
//! - [`cgroup`]: a cgroup per process module, so that none of its processes
//!   outlives it.
//! - [`sim`]: the cluster core of many nodes on a virtual network.
//! - [`metrics`]: the node's Prometheus metrics.
//! - [`tags`]: a node's tags, and the changes made to them at run time.
//! - [`shown`]: text from elsewhere, cut to a bound for errors and logs.
//! - [`token_bucket`]: so many a second, with a burst (publishes, news of
//!   new members).
//! - [`api`]: the control API (HTTP) the CLI talks to.
//! - [`cli`]: the `conjoiner` command line.

pub mod actors;
pub mod api;
pub mod api_token;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod config;
pub mod data_dir;
pub mod deploy;
pub mod discovery;
pub mod logging;
pub mod metrics;
pub mod modules;
pub mod monitor;
pub mod node;
pub mod private_file;
pub mod shown;
pub mod sim;
pub mod swappable;
pub mod tags;
pub mod token_bucket;
pub mod wire;
