//! The steer command: `conjoiner deployments pause|resume|revert ID`, from
//! any node. It changes a rollout for the whole fleet, so on a node that
//! trusts operator keys it passes the same gate as a deploy: signed by a
//! trusted key that may change the entry's module, new (its id never seen)
//! and signed within the time window, and made for this node by name and
//! identity key. The node it was made for drives the rollout from then on,
//! and every other node takes the rollout's progress only as that node
//! sealed it (see `deploy::progress`).
//!
//! A leaf: the deployments table keeps a `Steer` in each rollout it
//! steered, and this file knows nothing of the table.

use crate::cluster::identity::cut;
use crate::command::canonical::signed_bytes;
use crate::command::gate::{check_signer, Allowed, Refusal};
use crate::command::replay::RecentIds;
use crate::command::signature::OperatorSignature;
use crate::command::trust::Trust;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The node that drives a rollout, by name and identity key (`cjnode1…`):
/// the node a deploy was given to, or the one it was last steered from.
/// An operator signs it, so a node that trusts operator keys takes the
/// rollout's progress only as this node sealed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Driver {
    pub node: String,
    pub key: String,
}

impl Driver {
    /// Whether it names the node `name` with identity `key`.
    pub fn is(&self, name: &str, key: &str) -> bool {
        self.node == name && self.key == key
    }
}

/// What a steer asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteerAction {
    Pause,
    Resume,
    Revert,
}

impl SteerAction {
    pub fn parse(text: &str) -> Option<SteerAction> {
        match text {
            "pause" => Some(SteerAction::Pause),
            "resume" => Some(SteerAction::Resume),
            "revert" => Some(SteerAction::Revert),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SteerAction::Pause => "pause",
            SteerAction::Resume => "resume",
            SteerAction::Revert => "revert",
        }
    }
}

/// The command as it travels (the body of
/// `POST /v1/deployments/{id}/{action}`) and as the rollout keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steer {
    pub action: SteerAction,
    /// The full id of the entry it steers.
    pub entry: String,
    /// The node it was given to, which drives the rollout from then on.
    pub driver: Driver,
    /// A fresh id and the time it was made, both signed.
    pub id: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<OperatorSignature>,
}

impl Steer {
    /// The bytes an operator signs for it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&json!({
            "type": "steer",
            "action": self.action.as_str(),
            "entry": self.entry,
            "driver": self.driver.node,
            "driver_key": self.driver.key,
            "id": self.id,
            "ts": self.ts,
        }))
    }

    /// The id of the operator key that signed it, if any (not checked).
    pub fn signer_id(&self) -> Option<String> {
        self.signature.as_ref().and_then(OperatorSignature::signer_id)
    }

    /// Whether a steer kept in a rollout of entry `entry` of `module` was
    /// signed for it by a trusted key that may change `module`: what every
    /// node checks before it takes that rollout's progress.
    pub fn check_kept(&self, trust: &Trust, entry: &str, module: &str) -> Result<Allowed, Refusal> {
        if self.entry != entry {
            return Err(Refusal(format!(
                "its steer was signed for entry {}, not for this one",
                cut(&self.entry)
            )));
        }
        check_signer(trust, &self.signed_bytes(), self.signature.as_ref(), module)
    }

    /// The node that takes the command from an operator (`me`, with its
    /// identity `my_key`) checks it for entry `entry` of `module`: what
    /// [`Steer::check_kept`] checks, and, once anything is signed or any
    /// key trusted, that it was made for this node and is new.
    #[allow(clippy::too_many_arguments)]
    pub fn take_at_origin(
        &self,
        trust: &Trust,
        recent: &mut RecentIds,
        entry: &str,
        module: &str,
        me: &str,
        my_key: &str,
        now_ms: u64,
    ) -> Result<Allowed, Refusal> {
        let allowed = self.check_kept(trust, entry, module)?;
        if trust.is_open() && self.signature.is_none() {
            return Ok(allowed);
        }
        if !self.driver.is(me, my_key) {
            return Err(Refusal(format!(
                "the command was made for node `{}` (key {}), not for this node `{me}`",
                cut(&self.driver.node),
                cut(&self.driver.key)
            )));
        }
        recent.take(&self.id, self.ts, now_ms).map_err(Refusal)?;
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::operator_key::OperatorSecret;
    use crate::command::trust::TrustedKey;

    const NOW: u64 = 1_000_000_000;

    /// A trust in `secret` for modules `web*` only.
    fn trusting(secret: &OperatorSecret) -> Trust {
        Trust {
            keys: vec![TrustedKey::parse(&format!(r#"{{"key":"{}","modules":["web*"]}}"#, secret.public())).unwrap()],
        }
    }

    fn steer(secret: Option<&OperatorSecret>, id: &str) -> Steer {
        let mut s = Steer {
            action: SteerAction::Revert,
            entry: "e1".into(),
            driver: Driver {
                node: "n2".into(),
                key: "cjnode1two".into(),
            },
            id: id.into(),
            ts: NOW,
            signature: None,
        };
        if let Some(secret) = secret {
            s.signature = Some(OperatorSignature::by(secret, &s.signed_bytes()));
        }
        s
    }

    #[test]
    fn a_steer_is_taken_signed_in_scope_for_this_node_and_once() {
        let alice = OperatorSecret::generate();
        let trust = trusting(&alice);
        let mut recent = RecentIds::default();
        let take = |s: &Steer, recent: &mut RecentIds, module: &str, me: &str| {
            s.take_at_origin(&trust, recent, "e1", module, me, "cjnode1two", NOW)
                .map_err(|Refusal(why)| why)
        };
        let unsigned = take(&steer(None, "s0"), &mut recent, "web", "n2").unwrap_err();
        assert!(unsigned.starts_with("unsigned"), "{unsigned}");
        let out_of_scope = take(&steer(Some(&alice), "s1"), &mut recent, "db", "n2").unwrap_err();
        assert!(out_of_scope.contains("db"), "{out_of_scope}");
        let elsewhere = take(&steer(Some(&alice), "s2"), &mut recent, "web", "n3").unwrap_err();
        assert!(elsewhere.contains("made for node `n2`"), "{elsewhere}");
        take(&steer(Some(&alice), "s3"), &mut recent, "web", "n2").unwrap();
        let again = take(&steer(Some(&alice), "s3"), &mut recent, "web", "n2").unwrap_err();
        assert!(again.starts_with("replayed"), "{again}");

        let mut forged = steer(Some(&alice), "s4");
        forged.action = SteerAction::Resume;
        assert!(take(&forged, &mut recent, "web", "n2").is_err(), "the action is signed");
        let mut moved = steer(Some(&alice), "s5");
        moved.driver.node = "n3".into();
        assert!(moved.check_kept(&trust, "e1", "web").is_err(), "the driver is signed");
        assert!(
            steer(Some(&alice), "s6").check_kept(&trust, "e2", "web").is_err(),
            "a steer kept for another entry"
        );
    }

    #[test]
    fn an_open_node_takes_an_unsigned_steer_from_anywhere() {
        let mut recent = RecentIds::default();
        let s = steer(None, "s1");
        assert!(s
            .take_at_origin(&Trust::default(), &mut recent, "e1", "web", "n9", "cjnode1nine", NOW)
            .is_ok());
    }
}
