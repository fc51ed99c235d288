//! The deploy capability, apart from its actor (`actors/deployer.rs`).
//!
//! - [`manifest`]: `mod.json`, parsed and validated.
//! - [`package`]: building and safely unpacking packages.
//! - [`disk`]: a full disk told apart from a bad package.
//! - [`fetch`]: fetching packages into the content-addressed cache.
//! - [`serve`]: serving package chunks to peers.
//! - [`uploads`]: how many peers a node serves at once.
//! - [`holders`]: which peer a node fetches a package from.
//! - [`store`]: installs on disk, swapped in by renames, recovered after crashes.
//! - [`install`]: the one install pipeline (fetch, stage, swap, probation,
//!   commit or roll back), and removal.
//! - [`table`]: the deployments table: its entries, the rules a node holds
//!   them by, and which entry wins on a node.
//! - [`table_file`]: the table on disk.
//! - [`command`]: deploys and undeploys as signed commands, and their gate.
//! - [`reconcile`]: the plan: one step per module, from the table, what is
//!   installed and what runs.
//! - [`reconciler`]: carrying the plan out, and answering origins.
//! - [`converge`]: where each module stands, and the backoff of failures.
//! - [`origin`]: a deploy request at the origin, turned into a table entry.
//! - [`order`]: what a deploy asks and each node's result, as typed values.
//! - [`state`]: what the Deployer keeps across its own restarts.
//! - [`publish`]: a deploy or undeploy at its origin: the entry written and
//!   the results gathered.
//! - [`rollout`]: rollouts without a server: waves, health, revert.
//! - [`view`]: the table with its convergence, as the API shows it.
//! - [`trust_record`]: whom the settings told the node to obey, audited
//!   when a reload or a restart changes it.

pub mod command;
pub mod converge;
pub mod disk;
pub mod fetch;
pub mod holders;
pub mod install;
pub mod manifest;
pub mod order;
pub mod origin;
pub mod package;
pub mod progress;
pub mod publish;
pub mod reconcile;
pub mod reconciler;
pub mod refused_entries;
pub mod rollout;
pub mod serve;
pub mod state;
pub mod steer;
pub mod steer_audit;
pub mod store;
pub mod table;
pub mod table_file;
pub mod trust_record;
pub mod uploads;
pub mod view;

pub use manifest::Manifest;
