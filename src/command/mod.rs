//! Who may change what a fleet runs: operator keys, the exact bytes an
//! operator signs, the keys a node trusts, and the one gate every command
//! passes on every node before it acts.
//!
//! The cluster key proves that a host belongs to the fleet; it does not
//! prove that a person may deploy code. When a node trusts at least one
//! operator key, it carries out only commands signed by a trusted key whose
//! scope covers them (default deny); when it trusts none, it says so loudly
//! and works as before.
//!
//! - [`operator_key`]: operator key pairs (`cjop1…`), from `keygen --operator`.
//! - [`canonical`]: the bytes an operator signs: one reading only.
//! - [`signature`]: a signature as a command carries it, checked.
//! - [`trust`]: the operator keys a node trusts, with their scopes.
//! - [`gate`]: the check every command passes, and why one was refused.
//! - [`replay`]: ids and times an origin has seen, so a captured command
//!   cannot be sent again.
//!
//! - [`keyring_change`]: the command that changes a node's cluster keys.
//! - [`tag_change`]: the command that changes a node's tags.
//! - [`admission`]: an operator's word that a host's identity key may be
//!   the node of a name, which peers that require admission check.
//!
//! The deploy commands live with the capability they drive: deploys and
//! undeploys are deployments-table entries (`deploy::command`).

pub mod admission;
pub mod canonical;
pub mod gate;
pub mod keyring_change;
pub mod operator_key;
pub mod replay;
pub mod signature;
pub mod tag_change;
pub mod trust;
