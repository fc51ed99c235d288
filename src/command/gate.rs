//! The one check a command passes on every node before it acts: with no
//! trusted key, everything passes (the node is open, and says so); with
//! any, only a command signed by a trusted key whose scope covers it on
//! this node (default deny).

use super::operator_key::OperatorKey;
use super::signature::OperatorSignature;
use super::trust::Trust;
use std::collections::BTreeMap;

/// The error code of every refusal.
pub const NOT_AUTHORIZED: &str = "not_authorized";

/// What a command asks of this node, for the gate.
pub struct Asked<'a> {
    /// The command's canonical bytes (see `command::canonical`).
    pub signed_bytes: &'a [u8],
    pub signature: Option<&'a OperatorSignature>,
    pub module: &'a str,
    /// This node.
    pub node: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

/// Why a command was refused, in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    pub fn code(&self) -> &'static str {
        NOT_AUTHORIZED
    }
}

/// Who allowed it: the signing key, or no one when the node is open.
pub type Allowed = Option<OperatorKey>;

pub fn authorize(trust: &Trust, asked: &Asked<'_>) -> Result<Allowed, Refusal> {
    if trust.is_open() {
        return Ok(None);
    }
    let Some(signature) = asked.signature else {
        return Err(Refusal(
            "unsigned: this node carries out only commands signed by a trusted operator key \
             (sign with `--operator-key FILE`)"
                .into(),
        ));
    };
    let key = signature.check(asked.signed_bytes).map_err(Refusal)?;
    let mut why = None;
    for trusted in trust.entries_for(&key) {
        match trusted.covers(asked.module, asked.node, asked.tags) {
            Ok(()) => return Ok(Some(trusted.key.clone())),
            Err(e) => why = why.or(Some(e)),
        }
    }
    Err(Refusal(why.unwrap_or_else(|| {
        format!("key {} is not trusted on this node", key.id())
    })))
}

/// The check at the node that takes a command from an operator (its
/// origin), before anything is written: a signature, if there is one, is
/// valid; and with any key trusted, it is by a trusted key that may change
/// `module` on some node (each node checks its own scope again).
pub fn check_signer(
    trust: &Trust,
    signed_bytes: &[u8],
    signature: Option<&OperatorSignature>,
    module: &str,
) -> Result<Allowed, Refusal> {
    let key = match signature {
        Some(s) => s.check(signed_bytes).map_err(Refusal)?,
        None if trust.is_open() => return Ok(None),
        None => {
            return Err(Refusal(
                "unsigned: the nodes trust operator keys, so a command must be signed (`--operator-key FILE`)".into(),
            ))
        }
    };
    if trust.is_open() {
        return Ok(Some(key));
    }
    let mut entries = trust.entries_for(&key).peekable();
    if entries.peek().is_none() {
        return Err(Refusal(format!("key {} is not trusted on this node", key.id())));
    }
    let mut why = None;
    for trusted in entries {
        match trusted.covers_module(module) {
            Ok(()) => return Ok(Some(trusted.key.clone())),
            Err(e) => why = why.or(Some(e)),
        }
    }
    Err(Refusal(why.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::canonical::signed_bytes;
    use crate::command::operator_key::OperatorSecret;
    use crate::command::trust::TrustedKey;
    use serde_json::json;

    fn signed(secret: &OperatorSecret, bytes: &[u8]) -> OperatorSignature {
        OperatorSignature {
            key: secret.public().to_string(),
            sig: secret.sign(bytes),
        }
    }

    #[test]
    fn default_deny_once_any_key_is_trusted() {
        let alice = OperatorSecret::generate();
        let mallory = OperatorSecret::generate();
        let bytes = signed_bytes(&json!({"module": "web", "kind": "deploy"}));
        let other = signed_bytes(&json!({"module": "web", "kind": "undeploy"}));
        let tags = BTreeMap::new();
        fn ask<'a>(
            bytes: &'a [u8],
            tags: &'a BTreeMap<String, String>,
            signature: Option<&'a OperatorSignature>,
            module: &'a str,
        ) -> Asked<'a> {
            Asked {
                signed_bytes: bytes,
                signature,
                module,
                node: "n1",
                tags,
            }
        }
        let by_alice = signed(&alice, &bytes);
        let by_mallory = signed(&mallory, &bytes);
        let alice_over_other = signed(&alice, &other);
        let oversized = OperatorSignature {
            key: alice.public().to_string(),
            sig: "A".repeat(10_000),
        };

        assert_eq!(
            authorize(&Trust::default(), &ask(&bytes, &tags, None, "web")),
            Ok(None),
            "an open node takes anything"
        );

        let trust = Trust {
            keys: vec![TrustedKey::parse(&format!(r#"{{"key":"{}","modules":["web"]}}"#, alice.public())).unwrap()],
        };
        assert_eq!(
            authorize(&trust, &ask(&bytes, &tags, Some(&by_alice), "web")),
            Ok(Some(alice.public()))
        );
        for (signature, module, why) in [
            (None, "web", "unsigned"),
            (Some(&by_mallory), "web", "not trusted"),
            (Some(&alice_over_other), "web", "does not match"),
            (Some(&oversized), "web", "oversized"),
            (Some(&by_alice), "db", "only modules web"),
        ] {
            let e = authorize(&trust, &ask(&bytes, &tags, signature, module)).unwrap_err();
            assert!(e.0.contains(why), "{why}: {e}");
            assert_eq!(e.code(), "not_authorized");
        }
    }
}
