//! A rollout's progress (its wave, the share released, and whether it is
//! rolling, paused, done or reverted) changes without an operator: the node
//! that drives it writes each wave. So an operator signs *who* drives it,
//! and the driver seals each step.
//!
//! - A signed deploy with a rollout names its driver (the node it was
//!   given to) among its signed fields; a signed steer (pause, resume,
//!   revert) names the node it was given to, which drives from then on.
//! - The driver signs every version of the entry it writes with its
//!   identity key: the progress and the version, so a step cannot be
//!   written again under a newer version, and no other node's write counts.
//! - A node that trusts operator keys holds a rollout's entry only with a
//!   seal that verifies under the key its operator named, written by that
//!   node, and never steered earlier than the version it holds.
//!
//! A rollout signed before drivers were named (no `driver` among its signed
//! fields) keeps the older rule: its progress is taken unchecked. Nothing
//! can add a driver to it without breaking the operator's signature.

use super::steer::Driver;
use super::table::{Rollout, Row};
use crate::cluster::identity::cut;
use crate::cluster::node_key::{NodeKey, NodePublicKey};
use crate::cluster::protocol::Version;
use crate::command::canonical::canonical_json;
use crate::command::gate::Refusal;
use crate::command::trust::Trust;
use serde_json::json;

/// The first line of the bytes a driver signs: its identity key signs
/// other things too (member proofs, status seals, audit lines).
pub const DOMAIN: &[u8] = b"conjoiner rollout progress v1\n";

/// The bytes a driver signs for `rollout` of entry `entry` under `version`.
pub fn progress_bytes(entry: &str, version: &Version, rollout: &Rollout) -> Vec<u8> {
    let mut bytes = DOMAIN.to_vec();
    let fields = json!({
        "entry": entry,
        "clock": version.clock,
        "origin": &*version.origin,
        "released": rollout.released,
        "state": rollout.state.as_str(),
        "wave": rollout.wave,
        "wave_at_ms": rollout.wave_at_ms,
        "reason": rollout.reason,
        "policy": rollout.policy,
        "steer": rollout.steer.as_ref().map(|s| &s.id),
    });
    bytes.extend_from_slice(canonical_json(&fields).as_bytes());
    bytes
}

/// Seals `rollout` of entry `entry` as written under `version` by the
/// node that holds `key`.
pub fn seal(key: &NodeKey, entry: &str, version: &Version, rollout: &mut Rollout) {
    rollout.seal = Some(hex::encode(key.sign(&progress_bytes(entry, version, rollout))));
}

/// The node that drives `row`'s rollout: the one its newest steer names,
/// else the one its deploy names.
pub fn driver_of(row: &Row) -> Option<&Driver> {
    let rollout = row.deployment.rollout.as_ref()?;
    rollout
        .steer
        .as_ref()
        .map(|s| &s.driver)
        .or(row.deployment.driver.as_ref())
}

/// When `row`'s rollout was last steered by an operator (its command's
/// time if never).
fn steered_at(row: &Row) -> u64 {
    let rollout = row.deployment.rollout.as_ref();
    rollout
        .and_then(|r| r.steer.as_ref())
        .map_or(row.deployment.ts, |s| s.ts)
}

/// Whether a node that trusts `trust` may hold `row`'s rollout progress,
/// beside `held`, the version of the same entry it holds now. The deploy's
/// own signature is checked apart (`deploy::command::admit_entry`).
pub fn check_progress(trust: &Trust, row: &Row, held: Option<&Row>) -> Result<(), String> {
    let Some(rollout) = &row.deployment.rollout else {
        return Ok(());
    };
    if trust.is_open() || (rollout.steer.is_none() && row.deployment.driver.is_none()) {
        return Ok(());
    }
    if let Some(steer) = &rollout.steer {
        steer
            .check_kept(trust, &row.id, row.module())
            .map_err(|Refusal(why)| format!("not_authorized: its rollout's steer: {why}"))?;
    }
    let Some(driver) = driver_of(row) else {
        return Ok(());
    };
    if *row.version.origin != *driver.node {
        return Err(format!(
            "not_authorized: its rollout's progress was written by `{}`, not by `{}`, the node that drives it",
            cut(&row.version.origin),
            cut(&driver.node)
        ));
    }
    let key = NodePublicKey::parse(&driver.key).map_err(|e| format!("not_authorized: its driver's key: {e}"))?;
    let sig = rollout
        .seal
        .as_deref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or("not_authorized: its rollout's progress is not sealed by the node that drives it")?;
    if !key.verifies(&progress_bytes(&row.id, &row.version, rollout), &sig) {
        return Err(format!(
            "not_authorized: its rollout's progress does not verify under the key of `{}`, the node that drives it",
            cut(&driver.node)
        ));
    }
    if let Some(held) = held.filter(|h| h.id == row.id) {
        let (now, then) = (steered_at(row), steered_at(held));
        if now < then {
            return Err(format!(
                "not_authorized: its rollout was last steered at {now}, before the steer this node holds ({then})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
