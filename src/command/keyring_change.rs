//! The keyring command: list a node's cluster keys, install one, make one
//! the primary, or remove one (`conjoiner keys`). A change decides which
//! hosts may link with the fleet, so on a node that trusts operator keys
//! it passes the same gate as a deploy: signed by a trusted key whose
//! scope covers the reserved name `keyring` on this node, new (its id
//! never seen), signed within the time window, and meant for this node
//! (the selector it was sent to is signed with it, so a captured change
//! cannot be sent on to a node outside it).

use super::canonical::signed_bytes;
use super::gate::{authorize, Asked, Refusal};
use super::replay::RecentIds;
use super::signature::OperatorSignature;
use super::trust::Trust;
use crate::cluster::keyring::{key_id, show_id, Keyring};
use crate::cluster::ClusterKey;
use crate::wire::Target;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// The name a trusted key's module scope must cover to change keyrings.
pub const KEYRING_SCOPE: &str = "keyring";

/// What is asked of the keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyringOp {
    List,
    Install,
    Use,
    Remove,
}

impl KeyringOp {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyringOp::List => "list",
            KeyringOp::Install => "install",
            KeyringOp::Use => "use",
            KeyringOp::Remove => "remove",
        }
    }
}

/// The command as it travels (the body of a request to `mod.keyring`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringChange {
    pub op: KeyringOp,
    /// The key (base64) for install, use and remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A fresh id and the time it was made, both signed.
    pub id: String,
    pub ts: u64,
    /// The nodes it is meant for: the selector the change was sent to
    /// (none: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<OperatorSignature>,
}

/// What a reader of a node's live envelopes (`conjoiner tail`) sees in
/// place of the key of a keyring change.
pub const KEY_HIDDEN: &str = "(hidden: a cluster key)";

/// Hides the cluster key in `body` if it is a keyring command (`{"op":
/// "keyring", "change": {"key": …}}`, as sent to `mod.deployer`); true if
/// it hid one. The API token lets its holder read envelope bodies, but
/// not become a member: a key read there would let any host link.
pub fn hide_key(body: &mut serde_json::Value) -> bool {
    if body.get("op").and_then(serde_json::Value::as_str) != Some("keyring") {
        return false;
    }
    match body.pointer_mut("/change/key") {
        Some(key) if !key.is_null() => {
            *key = KEY_HIDDEN.into();
            true
        }
        _ => false,
    }
}

/// A node's keyring as it answers: ids only, never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringAnswer {
    pub primary: String,
    pub keys: Vec<String>,
    /// Whether this command changed the keyring.
    pub changed: bool,
}

impl KeyringAnswer {
    pub fn of(keyring: &Keyring, changed: bool) -> KeyringAnswer {
        KeyringAnswer {
            primary: show_id(&key_id(keyring.primary())),
            keys: keyring.ids().iter().map(show_id).collect(),
            changed,
        }
    }
}

/// Why a keyring command was not carried out, with its error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringRefusal {
    pub code: &'static str,
    pub message: String,
}

impl KeyringRefusal {
    fn new(code: &'static str, message: impl Into<String>) -> KeyringRefusal {
        KeyringRefusal {
            code,
            message: message.into(),
        }
    }
}

impl KeyringChange {
    /// The bytes an operator signs for it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut fields = json!({
            "type": "keyring",
            "op": self.op.as_str(),
            "key": self.key,
            "id": self.id,
            "ts": self.ts,
        });
        // Signed only when given, so a change for every node reads as the
        // release before targets signed it.
        if let Some(target) = &self.target {
            fields["target"] = json!(target);
        }
        signed_bytes(&fields)
    }

    /// Checks the command against this node's trust and the ids it has
    /// seen, then applies it to `keyring`. Answers whether it changed;
    /// `keyring` is untouched on refusal. `list` needs no signature.
    pub fn apply(
        &self,
        keyring: &mut Keyring,
        trust: &Trust,
        seen: &mut RecentIds,
        node: &str,
        tags: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<bool, KeyringRefusal> {
        let key = match (self.op, &self.key) {
            (KeyringOp::List, _) => return Ok(false),
            (_, None) => return Err(KeyringRefusal::new("invalid_request", "give the key (base64)")),
            (_, Some(text)) => ClusterKey::parse(text, "the command")
                .map_err(|e| KeyringRefusal::new("invalid_request", e.to_string()))?,
        };
        let bytes = self.signed_bytes();
        let asked = Asked {
            signed_bytes: &bytes,
            signature: self.signature.as_ref(),
            module: KEYRING_SCOPE,
            node,
            tags,
        };
        authorize(trust, &asked).map_err(|Refusal(why)| KeyringRefusal::new(super::gate::NOT_AUTHORIZED, why))?;
        if let Some(text) = &self.target {
            let target = Target::parse(text).map_err(|e| KeyringRefusal::new("invalid_request", e.to_string()))?;
            if !target.matches(node, tags) {
                return Err(KeyringRefusal::new(
                    super::gate::NOT_AUTHORIZED,
                    format!("the change is meant for the nodes matching `{target}`, not for this one"),
                ));
            }
        }
        if !trust.is_open() || self.signature.is_some() {
            seen.take(&self.id, self.ts, now_ms)
                .map_err(|why| KeyringRefusal::new(super::gate::NOT_AUTHORIZED, why))?;
        }
        let mut next = keyring.clone();
        let changed = match self.op {
            KeyringOp::List => Ok(false),
            KeyringOp::Install => next.install(key),
            KeyringOp::Use => next.use_key(&key),
            KeyringOp::Remove => next.remove(&key),
        }
        .map_err(|why| KeyringRefusal::new("refused", why))?;
        *keyring = next;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::operator_key::OperatorSecret;
    use crate::command::trust::TrustedKey;

    fn change(op: KeyringOp, key: &ClusterKey, id: &str, now: u64) -> KeyringChange {
        KeyringChange {
            op,
            key: Some(key.to_base64()),
            id: id.into(),
            ts: now,
            target: None,
            signature: None,
        }
    }

    #[test]
    fn a_change_for_some_nodes_is_refused_by_the_others_and_its_target_cannot_be_stripped() {
        let alice = OperatorSecret::generate();
        let trust = trusting(&alice, &[]);
        let k2 = ClusterKey::generate();
        let now = 1_000_000_000;
        let for_n2 = signed(
            KeyringChange {
                target: Some("name=n2".into()),
                ..change(KeyringOp::Install, &k2, "t1", now)
            },
            &alice,
        );
        let tags = BTreeMap::new();
        let mut ring = Keyring::new(ClusterKey::generate());
        let refused = for_n2
            .apply(&mut ring, &trust, &mut RecentIds::default(), "n1", &tags, now)
            .unwrap_err();
        assert_eq!(refused.code, "not_authorized");
        assert!(
            refused.message.contains("meant for the nodes matching `name=n2`"),
            "{refused:?}"
        );
        assert_eq!(ring.ids().len(), 1, "n1's keyring changed");
        // Without its target it is another command, whose signature fails.
        let stripped = KeyringChange {
            target: None,
            ..for_n2.clone()
        };
        let refused = stripped
            .apply(&mut ring, &trust, &mut RecentIds::default(), "n1", &tags, now)
            .unwrap_err();
        assert!(refused.message.contains("does not match"), "{refused:?}");
        assert_eq!(
            for_n2.apply(&mut ring, &trust, &mut RecentIds::default(), "n2", &tags, now),
            Ok(true)
        );
    }

    fn signed(mut c: KeyringChange, by: &OperatorSecret) -> KeyringChange {
        c.signature = Some(OperatorSignature::by(by, &c.signed_bytes()));
        c
    }

    fn trusting(secret: &OperatorSecret, modules: &[&str]) -> Trust {
        Trust {
            keys: vec![TrustedKey {
                key: secret.public(),
                modules: modules.iter().map(|m| m.to_string()).collect(),
                target: None,
            }],
        }
    }

    #[test]
    fn an_open_node_takes_any_change_and_keeps_its_primary() {
        let (k1, k2) = (ClusterKey::generate(), ClusterKey::generate());
        let mut ring = Keyring::new(k1.clone());
        let (mut seen, tags, now) = (RecentIds::default(), BTreeMap::new(), 1_000_000_000);
        let open = Trust::default();
        assert_eq!(
            change(KeyringOp::Install, &k2, "a", now).apply(&mut ring, &open, &mut seen, "n1", &tags, now),
            Ok(true)
        );
        assert_eq!(
            change(KeyringOp::Use, &k2, "b", now).apply(&mut ring, &open, &mut seen, "n1", &tags, now),
            Ok(true)
        );
        let refused = change(KeyringOp::Remove, &k2, "c", now)
            .apply(&mut ring, &open, &mut seen, "n1", &tags, now)
            .unwrap_err();
        assert_eq!(refused.code, "refused");
        assert!(refused.message.contains("primary"), "{refused:?}");
        assert_eq!(KeyringAnswer::of(&ring, false).primary, show_id(&key_id(&k2)));
        let list = KeyringChange {
            op: KeyringOp::List,
            key: None,
            id: "d".into(),
            ts: now,
            target: None,
            signature: None,
        };
        assert_eq!(list.apply(&mut ring, &open, &mut seen, "n1", &tags, now), Ok(false));
    }

    #[test]
    fn a_trusting_node_takes_only_signed_new_changes_by_a_key_that_covers_the_keyring() {
        let (k1, k2) = (ClusterKey::generate(), ClusterKey::generate());
        let (alice, mallory, web_only) = (
            OperatorSecret::generate(),
            OperatorSecret::generate(),
            OperatorSecret::generate(),
        );
        let mut trust = trusting(&alice, &[]);
        trust.keys.extend(trusting(&web_only, &["web-*"]).keys);
        let (mut seen, tags, now) = (RecentIds::default(), BTreeMap::new(), 1_000_000_000);
        let mut ring = Keyring::new(k1.clone());
        let install = |id: &str| change(KeyringOp::Install, &k2, id, now);
        let cases = [
            (install("u"), "unsigned"),
            (signed(install("m"), &mallory), "not trusted"),
            (signed(install("w"), &web_only), "only modules web-*"),
            (
                KeyringChange {
                    key: Some(ClusterKey::generate().to_base64()),
                    ..signed(install("f"), &alice)
                },
                "does not match",
            ),
            (
                signed(change(KeyringOp::Install, &k2, "old", now - 10 * 60 * 1000), &alice),
                "clock_skew",
            ),
        ];
        for (c, why) in cases {
            let refused = c.apply(&mut ring, &trust, &mut seen, "n1", &tags, now).unwrap_err();
            assert_eq!(refused.code, "not_authorized", "{why}");
            assert!(refused.message.contains(why), "{why}: {}", refused.message);
        }
        assert_eq!(ring.ids().len(), 1, "nothing was installed");
        let good = signed(install("ok"), &alice);
        assert_eq!(good.apply(&mut ring, &trust, &mut seen, "n1", &tags, now), Ok(true));
        let again = good.apply(&mut ring, &trust, &mut seen, "n1", &tags, now).unwrap_err();
        assert!(again.message.contains("replayed"), "{again:?}");
    }
}
