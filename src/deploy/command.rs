//! Deploys and undeploys as commands: the fields an operator signs, the
//! rollout an operator asks for, and the gate a table entry passes on each
//! node before it may act there.
//!
//! Signed: the command's id (its table entry's key), its type, module,
//! target, package URL and sha256, config, time and rollout policy, and
//! for a rollout the node that drives it: every field that decides what
//! runs where. Not signed by the operator: where a node may also fetch the
//! package (`source.peer`, `source.size`: hints, made harmless by the
//! sha256), and a rollout's progress (its wave, released share and state),
//! which the driving node writes as the waves go and seals itself (see
//! `deploy::progress`).

use super::progress::check_progress;
use super::steer::Driver;
use super::table::{Amount, Deployment, RolloutPolicy, Row};
use crate::audit::{AuditLine, Decision};
use crate::command::canonical::signed_bytes;
use crate::command::gate::{authorize, check_signer, Allowed, Asked, Refusal};
use crate::command::operator_key::OperatorKey;
use crate::command::replay::RecentIds;
use crate::command::signature::OperatorSignature;
use crate::command::trust::Trust;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The signed fields of command `id` asking for `d`, released with `policy`.
pub fn signed_fields(id: &str, d: &Deployment, policy: Option<&RolloutPolicy>) -> Value {
    let mut fields = json!({
        "id": id,
        "type": d.action.as_str(),
        "module": d.module,
        "target": d.target,
        "url": d.source.as_ref().and_then(|s| s.url.as_deref()),
        "sha256": d.sha256,
        "config": d.config,
        "ts": d.ts,
        "rollout": policy,
    });
    // Only when named: commands signed before drivers were named keep
    // their bytes, and so their signatures.
    if let Some(driver) = &d.driver {
        fields["driver"] = json!(driver.node);
        fields["driver_key"] = json!(driver.key);
    }
    fields
}

/// The bytes an operator signs for command `id` asking for `d` with `policy`.
pub fn command_bytes(id: &str, d: &Deployment, policy: Option<&RolloutPolicy>) -> Vec<u8> {
    signed_bytes(&signed_fields(id, d, policy))
}

/// The gate for table entry `row` on node `name` with `tags`.
pub fn authorize_row(
    trust: &Trust,
    row: &Row,
    name: &str,
    tags: &BTreeMap<String, String>,
) -> Result<Allowed, Refusal> {
    let d = &row.deployment;
    let bytes = command_bytes(&row.id, d, d.rollout.as_ref().map(|r| &r.policy));
    authorize(
        trust,
        &Asked {
            signed_bytes: &bytes,
            signature: d.signature.as_ref(),
            module: &d.module,
            node: name,
            tags,
        },
    )
}

/// Whether the table may hold entry `row` at all, on a node that trusts
/// `trust`: with any key trusted, only entries signed by a trusted key that
/// may change its module. (Whether it acts on this node is
/// [`authorize_row`]'s answer, with the key's node scope.) So a host that
/// holds only the cluster key cannot write an entry that prunes a signed
/// one, or that any node keeps.
///
/// A rollout's progress is checked too, beside `held`, the version of the
/// same entry the table holds now (see `deploy::progress`).
pub fn admit_entry(trust: &Trust, row: &Row, held: Option<&Row>) -> Result<(), String> {
    if trust.is_open() {
        return Ok(());
    }
    let d = &row.deployment;
    let bytes = command_bytes(&row.id, d, d.rollout.as_ref().map(|r| &r.policy));
    check_signer(trust, &bytes, d.signature.as_ref(), &d.module).map_err(|r| format!("not_authorized: {r}"))?;
    check_progress(trust, row, held)
}

/// A rollout as a deploy or undeploy asks for it: amounts as a number of
/// nodes (`3`) or a share (`"25%"`). The control API reads it, and the CLI
/// reads the body it sends the same way, so both sign the same policy.
#[derive(Deserialize, Default, Debug)]
pub struct RolloutAsked {
    pub canary: Option<Value>,
    pub batch: Option<Value>,
    pub health_window_ms: Option<u64>,
    pub max_failed: Option<Value>,
    pub revert: Option<bool>,
}

/// How long each wave of a rollout must stay healthy, unless asked otherwise.
pub const DEFAULT_HEALTH_WINDOW_MS: u64 = 30_000;

impl RolloutAsked {
    /// The rollout asked for, if any: waves of `batch` after a first wave
    /// of `canary` (either one alone sets both).
    pub fn policy(&self) -> Result<Option<RolloutPolicy>, String> {
        let amount = |field: &str, v: &Option<Value>| -> Result<Option<Amount>, String> {
            let text = match v {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(format!(
                        "`{field}` must be a number of nodes or a percentage such as \"25%\", not {other}"
                    ))
                }
            };
            Amount::parse(&text).map(Some).map_err(|e| format!("`{field}`: {e}"))
        };
        let canary = amount("canary", &self.canary)?;
        let batch = amount("batch", &self.batch)?;
        if canary.is_none() && batch.is_none() {
            if self.health_window_ms.is_some() || self.max_failed.is_some() || self.revert.is_some() {
                return Err(
                    "`health_window_ms`, `max_failed` and `revert` come with a rollout: give `canary` or `batch`"
                        .into(),
                );
            }
            return Ok(None);
        }
        for (field, a) in [("canary", canary), ("batch", batch)] {
            if matches!(a, Some(Amount::Nodes(0))) || matches!(a, Some(Amount::Percent(p)) if p <= 0.0) {
                return Err(format!("`{field}` must release at least one node"));
            }
        }
        Ok(Some(RolloutPolicy {
            canary: canary.or(batch).unwrap_or(Amount::Nodes(1)),
            batch: batch.unwrap_or(Amount::Percent(100.0)),
            health_window_ms: self.health_window_ms.unwrap_or(DEFAULT_HEALTH_WINDOW_MS),
            max_failed: amount("max_failed", &self.max_failed)?.unwrap_or(Amount::Nodes(0)),
            revert: self.revert.unwrap_or(true),
        }))
    }
}

/// What a caller gives besides the deploy itself: for a signed command,
/// its id, time and signature (all three), and for a signed rollout its
/// driver; unsigned, at most an id.
#[derive(Deserialize, Default, Debug)]
pub struct Given {
    pub id: Option<String>,
    pub ts: Option<u64>,
    pub signature: Option<OperatorSignature>,
    /// For a signed rollout: the node that drives it, signed with it.
    pub driver: Option<Driver>,
}

/// Why the origin did not take a command.
#[derive(Debug, thiserror::Error)]
pub enum OriginRefusal {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotAuthorized(#[from] Refusal),
    /// A newer command of the module was taken already: this one would
    /// lose to it everywhere.
    #[error("{0}")]
    Stale(String),
}

impl OriginRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            OriginRefusal::Invalid(_) => "invalid_request",
            OriginRefusal::NotAuthorized(r) => r.code(),
            OriginRefusal::Stale(_) => "stale",
        }
    }
}

/// The origin `me` takes command `given` asking for `d` with `policy`,
/// against the table's `rows` and the `recent` commands, at `now_ms`: its
/// id, and the entry body with its time and signature. A signed command
/// keeps the time its operator signed; an unsigned one is timed after every
/// entry of its module, so it wins as the newest even if some origin's
/// clock ran ahead. A signed rollout must name this node as its driver; an
/// unsigned one is driven by this node.
#[allow(clippy::too_many_arguments)]
pub fn take_at_origin(
    trust: &Trust,
    recent: &mut RecentIds,
    rows: &[Row],
    me: &Driver,
    given: Given,
    mut d: Deployment,
    policy: Option<&RolloutPolicy>,
    now_ms: u64,
) -> Result<(Uuid, Deployment), OriginRefusal> {
    let newest = rows
        .iter()
        .filter(|r| r.module() == d.module)
        .map(|r| r.deployment.ts)
        .max();
    let id = match given.id.as_deref() {
        Some(text) => Uuid::parse_str(text)
            .map_err(|_| OriginRefusal::Invalid(format!("`id` must be a UUID, not `{}`", cut(text))))?,
        None if given.signature.is_some() => {
            return Err(OriginRefusal::Invalid("a signed command carries its `id`".into()))
        }
        None => Uuid::now_v7(),
    };
    if rows.iter().any(|r| *r.id == *id.to_string()) {
        return Err(Refusal(format!("replayed: entry {id} is in the table already")).into());
    }
    match (&given.signature, given.ts) {
        (Some(_), None) => return Err(OriginRefusal::Invalid("a signed command carries its `ts`".into())),
        (Some(_), Some(ts)) => d.ts = ts,
        (None, _) => d.ts = now_ms.max(newest.map_or(0, |t| t.saturating_add(1))),
    }
    d.signature = given.signature;
    d.driver = match (&d.signature, policy) {
        (Some(_), _) => given.driver,
        (None, Some(_)) => Some(me.clone()),
        (None, None) => None,
    };
    let bytes = command_bytes(&id.to_string(), &d, policy);
    check_signer(trust, &bytes, d.signature.as_ref(), &d.module)?;
    if d.signature.is_some() {
        match (&d.driver, policy) {
            (Some(driver), Some(_)) if !driver.is(&me.node, &me.key) => {
                return Err(Refusal(format!(
                    "the rollout was signed to be driven by node `{}`, not by this node `{}`; give it to that node, \
                     or sign it again for this one",
                    cut(&driver.node),
                    me.node
                ))
                .into())
            }
            (None, Some(_)) if !trust.is_open() => {
                return Err(Refusal(
                    "a signed rollout names the node that drives it (`driver`, `driver_key`), and this one names \
                     none; sign it with this release's CLI"
                        .into(),
                )
                .into())
            }
            _ => {}
        }
        recent.take(&id.to_string(), d.ts, now_ms).map_err(Refusal)?;
        if let Some(newest) = newest.filter(|n| *n >= d.ts) {
            return Err(OriginRefusal::Stale(format!(
                "a newer command of `{}` was given already (at {newest}, this one at {}); sign this one again",
                d.module, d.ts
            )));
        }
    }
    Ok((id, d))
}

/// The id of the operator key that signed `d`, if it names one.
pub fn signer_id(d: &Deployment) -> Option<String> {
    let key = OperatorKey::parse(&d.signature.as_ref()?.key).ok()?;
    Some(key.id())
}

/// An audit line by `node` about command `id` asking for `d`, which
/// `origin` took.
pub fn audit_line(node: &str, id: Option<&str>, d: &Deployment, origin: Option<&str>, decision: Decision) -> AuditLine {
    AuditLine {
        id: id.map(str::to_string),
        target: d.target.clone(),
        origin: origin.map(str::to_string),
        key: signer_id(d),
        ..AuditLine::of(node, d.action.as_str(), &d.module, decision)
    }
}

/// What a client or a peer sent, as this file's errors repeat it.
fn cut(text: &str) -> String {
    crate::shown::shown(text, 80)
}

#[cfg(test)]
mod tests;
