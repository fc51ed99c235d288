//! The tags command: set and delete a node's tags at run time
//! (`conjoiner tags --set K=V --delete K`). Tags decide which deployments
//! table entries a node runs, config and secrets included, so on a node
//! that trusts operator keys a change passes the same gate as a deploy:
//! signed by a trusted key whose scope covers the reserved name `tags` on
//! this node both before and after the change (a key scoped to some nodes
//! cannot move a node out of its scope, or into another's), made for this
//! node by name, new (its id never seen), and signed within the time
//! window.

use super::canonical::signed_bytes;
use super::gate::{authorize, Allowed, Asked, Refusal, NOT_AUTHORIZED};
use super::replay::RecentIds;
use super::signature::OperatorSignature;
use super::trust::Trust;
use crate::tags::{check_key, parse_tag};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

/// The name a trusted key's module scope must cover to change tags.
pub const TAGS_SCOPE: &str = "tags";

/// The command as it travels (the body of `POST /v1/tags`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub delete: Vec<String>,
    /// The node it is meant for, signed, so that a change signed for one
    /// node is refused by every other.
    #[serde(default)]
    pub node: String,
    /// A fresh id and the time it was made, both signed.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<OperatorSignature>,
}

/// Why a tags command was not carried out, with its error code
/// (`invalid_tag`, `not_authorized`, or `failed` when the node could not
/// keep the change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRefusal {
    pub code: &'static str,
    pub message: String,
}

impl TagRefusal {
    pub fn invalid(message: impl Into<String>) -> TagRefusal {
        TagRefusal {
            code: "invalid_tag",
            message: message.into(),
        }
    }

    fn not_authorized(message: impl Into<String>) -> TagRefusal {
        TagRefusal {
            code: NOT_AUTHORIZED,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> TagRefusal {
        TagRefusal {
            code: "failed",
            message: message.into(),
        }
    }
}

impl TagChange {
    /// The bytes an operator signs for it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&json!({
            "type": "tags",
            "node": self.node,
            "set": self.set,
            "delete": self.delete,
            "id": self.id,
            "ts": self.ts,
        }))
    }

    /// A one-line account of the change, for logs and the audit.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.set.iter().map(|(k, v)| format!("set {k}={v}")).collect();
        parts.extend(self.delete.iter().map(|k| format!("delete {k}")));
        parts.join(", ")
    }

    /// The id of the operator key that signed it, if any (not checked).
    pub fn signer_id(&self) -> Option<String> {
        self.signature.as_ref().and_then(OperatorSignature::signer_id)
    }

    /// Whether the change reads: something to do, each tag under the rules
    /// every node holds peers' tags to, and no key both set and deleted.
    pub fn check(&self) -> Result<(), TagRefusal> {
        if self.set.is_empty() && self.delete.is_empty() {
            return Err(TagRefusal::invalid("give tags to `set` or to `delete`"));
        }
        for (k, v) in &self.set {
            parse_tag(&format!("{k}={v}")).map_err(TagRefusal::invalid)?;
        }
        for k in &self.delete {
            check_key(k).map_err(TagRefusal::invalid)?;
            if self.set.contains_key(k) {
                return Err(TagRefusal::invalid(format!("tag `{k}` is both set and deleted")));
            }
        }
        Ok(())
    }

    /// Checks the command against this node's trust and the ids it has
    /// seen: `node` is this node, `before` its tags now and `after` its
    /// tags with the change. Answers who allowed it.
    pub fn authorize(
        &self,
        trust: &Trust,
        seen: &mut RecentIds,
        node: &str,
        before: &BTreeMap<String, String>,
        after: &BTreeMap<String, String>,
        now_ms: u64,
    ) -> Result<Allowed, TagRefusal> {
        self.check()?;
        let bytes = self.signed_bytes();
        let ask = |tags| Asked {
            signed_bytes: &bytes,
            signature: self.signature.as_ref(),
            module: TAGS_SCOPE,
            node,
            tags,
        };
        let refused = |Refusal(why)| TagRefusal::not_authorized(why);
        let allowed = authorize(trust, &ask(before)).map_err(refused)?;
        if !trust.is_open() {
            authorize(trust, &ask(after)).map_err(|Refusal(why)| {
                TagRefusal::not_authorized(format!("the change would take this node out of the key's scope: {why}"))
            })?;
        }
        if !trust.is_open() || self.signature.is_some() {
            if self.node != node {
                return Err(TagRefusal::not_authorized(format!(
                    "the change was signed for node `{}`, not for this node `{node}`",
                    self.node
                )));
            }
            seen.take(&self.id, self.ts, now_ms)
                .map_err(TagRefusal::not_authorized)?;
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::operator_key::OperatorSecret;
    use crate::command::trust::TrustedKey;

    const NOW: u64 = 1_000_000_000;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn change(set: &[(&str, &str)], id: &str) -> TagChange {
        TagChange {
            set: tags(set),
            delete: Vec::new(),
            node: "n1".into(),
            id: id.into(),
            ts: NOW,
            signature: None,
        }
    }

    fn signed(mut c: TagChange, by: &OperatorSecret) -> TagChange {
        c.signature = Some(OperatorSignature::by(by, &c.signed_bytes()));
        c
    }

    fn trusting(grants: &[(&OperatorSecret, &str)]) -> Trust {
        Trust {
            keys: grants
                .iter()
                .map(|(secret, scope)| {
                    TrustedKey::parse(&format!(r#"{{"key":"{}",{scope}}}"#, secret.public())).unwrap()
                })
                .collect(),
        }
    }

    #[test]
    fn an_open_node_takes_any_change_that_reads() {
        let mut seen = RecentIds::default();
        let (before, after) = (tags(&[]), tags(&[("role", "db")]));
        let open = Trust::default();
        let mut unsigned = change(&[("role", "db")], "");
        unsigned.node = String::new();
        assert_eq!(
            unsigned.authorize(&open, &mut seen, "n1", &before, &after, NOW),
            Ok(None)
        );
        for (bad, why) in [
            (change(&[], "a"), "give tags"),
            (change(&[("bad key", "x")], "b"), "bad key"),
            (
                TagChange {
                    delete: vec!["role".into()],
                    ..change(&[("role", "db")], "c")
                },
                "both set and deleted",
            ),
        ] {
            let refused = bad.authorize(&open, &mut seen, "n1", &before, &after, NOW).unwrap_err();
            assert_eq!(refused.code, "invalid_tag", "{why}");
            assert!(refused.message.contains(why), "{why}: {}", refused.message);
        }
    }

    #[test]
    fn a_trusting_node_takes_only_a_new_change_signed_for_it_that_keeps_it_in_scope() {
        let (alice, mallory, web_only, staging) = (
            OperatorSecret::generate(),
            OperatorSecret::generate(),
            OperatorSecret::generate(),
            OperatorSecret::generate(),
        );
        let trust = trusting(&[
            (&alice, r#""modules":[]"#),
            (&web_only, r#""modules":["web-*"]"#),
            (&staging, r#""target":"tag.env=staging""#),
        ]);
        let mut seen = RecentIds::default();
        let before = tags(&[("env", "staging")]);
        let with = |c: &TagChange| {
            let mut t = before.clone();
            t.extend(c.set.clone());
            t
        };
        let tampered = {
            let mut c = signed(change(&[("role", "web")], "t"), &alice);
            c.set = tags(&[("role", "db")]);
            c
        };
        let elsewhere = {
            let mut c = change(&[("role", "db")], "o");
            c.node = "n2".into();
            signed(c, &alice)
        };
        let old = TagChange {
            ts: NOW - 10 * 60 * 1000,
            ..change(&[("role", "db")], "old")
        };
        let cases = [
            (change(&[("role", "db")], "u"), "unsigned"),
            (signed(change(&[("role", "db")], "m"), &mallory), "not trusted"),
            (signed(change(&[("role", "db")], "w"), &web_only), "only modules web-*"),
            (tampered, "does not match"),
            (elsewhere, "signed for node `n2`"),
            (signed(old, &alice), "clock_skew"),
            (
                signed(change(&[("env", "prod")], "s"), &staging),
                "out of the key's scope",
            ),
        ];
        for (c, why) in cases {
            let refused = c
                .authorize(&trust, &mut seen, "n1", &before, &with(&c), NOW)
                .unwrap_err();
            assert_eq!(refused.code, "not_authorized", "{why}");
            assert!(refused.message.contains(why), "{why}: {}", refused.message);
        }
        let good = signed(change(&[("role", "db")], "ok"), &staging);
        assert_eq!(
            good.authorize(&trust, &mut seen, "n1", &before, &with(&good), NOW),
            Ok(Some(staging.public()))
        );
        let again = good
            .authorize(&trust, &mut seen, "n1", &before, &with(&good), NOW)
            .unwrap_err();
        assert!(again.message.contains("replayed"), "{again:?}");
        assert_eq!(good.describe(), "set role=db");
    }
}
