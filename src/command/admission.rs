//! Admission: an operator's word that a host belongs to the fleet.
//!
//! The cluster key lets any host that holds it open links. A fleet that
//! requires admission (`require_admission`) also asks every peer's hello
//! for an admission: a statement, signed by a trusted operator key whose
//! scope covers the name `admit` on that node, that the identity key the
//! link proved may be the node of that name. `conjoiner admit NODE-KEY
//! --name NAME --operator-key FILE` makes one; the node is given it at
//! start (`agent --join-token FILE`, kept as `<data-dir>/admission.json`)
//! and shows it in every hello. A host that only stole the cluster key, or
//! that shows another node's admission, gets no link.

use super::canonical::signed_bytes;
use super::gate::{authorize, Asked, Refusal};
use super::operator_key::{OperatorKey, OperatorSecret};
use super::signature::OperatorSignature;
use super::trust::Trust;
use crate::cluster::identity::NodeId;
use crate::cluster::node_key::NodePublicKey;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;

/// The name a trusted key's module scope must cover to admit a node.
pub const ADMIT_SCOPE: &str = "admit";
/// Where a node keeps its own admission.
pub const ADMISSION_FILE: &str = "admission.json";
/// The largest admission a hello may carry, in bytes.
pub const MAX_ADMISSION_BYTES: usize = 2048;

/// One admission, as `conjoiner admit` writes it and a hello carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// The node's identity key (`cjnode1…`).
    pub node_key: String,
    /// The name that key may hold.
    pub name: String,
    /// When the operator signed it (ms since the epoch); shown, not
    /// checked: an admission is bound to a key only its node holds.
    pub ts: u64,
    pub signature: OperatorSignature,
}

impl Admission {
    fn signed_bytes(node_key: &str, name: &str, ts: u64) -> Vec<u8> {
        signed_bytes(&json!({
            "type": "admit",
            "node_key": node_key,
            "name": name,
            "ts": ts,
        }))
    }

    /// `secret`'s admission of `node_key` as the node `name`.
    pub fn issue(secret: &OperatorSecret, node_key: &NodePublicKey, name: &str, ts: u64) -> Admission {
        let node_key = node_key.to_string();
        let signature = OperatorSignature::by(secret, &Admission::signed_bytes(&node_key, name, ts));
        Admission {
            node_key,
            name: name.to_string(),
            ts,
            signature,
        }
    }

    /// Reads an admission, refusing one over [`MAX_ADMISSION_BYTES`].
    pub fn parse(text: &str) -> Result<Admission, String> {
        if text.len() > MAX_ADMISSION_BYTES {
            return Err(format!(
                "an admission of {} bytes is over the limit of {MAX_ADMISSION_BYTES}",
                text.len()
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("not an admission (made by `conjoiner admit`): {e}"))
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("an admission serializes")
    }

    /// Whether this admits the peer `id` whose link proved `key`, on a
    /// node that trusts `trust`; the operator key that did, or why not.
    pub fn admits(&self, trust: &Trust, id: &NodeId, key: &NodePublicKey) -> Result<OperatorKey, String> {
        if NodePublicKey::parse(&self.node_key).ok() != Some(*key) {
            return Err(format!(
                "the admission is for identity key {}, not for the key this node proved ({})",
                NodePublicKey::parse(&self.node_key).map_or_else(|_| "(unreadable)".to_string(), |k| k.id()),
                key.id()
            ));
        }
        if self.name != *id.name {
            return Err(format!(
                "the admission is for the name `{}`, not `{}`",
                crate::cluster::identity::cut(&self.name),
                id.name
            ));
        }
        let bytes = Admission::signed_bytes(&self.node_key, &self.name, self.ts);
        let asked = Asked {
            signed_bytes: &bytes,
            signature: Some(&self.signature),
            module: ADMIT_SCOPE,
            node: &id.name,
            tags: &id.tags,
        };
        match authorize(trust, &asked) {
            Ok(Some(operator)) => Ok(operator),
            Ok(None) => Err("this node trusts no operator key, so it can admit no one".into()),
            Err(Refusal(why)) => Err(why),
        }
    }

    /// The admission in `<data_dir>/admission.json`, if there is one.
    pub fn load(data_dir: &Path) -> Result<Option<Admission>, String> {
        let path = data_dir.join(ADMISSION_FILE);
        match crate::private_file::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            Ok(text) => Admission::parse(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
        }
    }

    /// Keeps this admission as the node's own (`--join-token`), after
    /// checking that it names this node's key and name.
    pub fn install(&self, data_dir: &Path, own_key: &NodePublicKey, own_name: &str) -> Result<(), String> {
        if NodePublicKey::parse(&self.node_key).ok() != Some(*own_key) {
            return Err(format!(
                "the join token admits identity key {}, not this node's ({own_key}); \
                 make one for this key with `conjoiner admit {own_key} --name {own_name}`",
                self.node_key
            ));
        }
        if self.name != own_name {
            return Err(format!(
                "the join token admits the name `{}`, not this node's `{own_name}`",
                crate::cluster::identity::cut(&self.name)
            ));
        }
        let path = data_dir.join(ADMISSION_FILE);
        crate::private_file::write(&path, self.to_text().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node_key::NodeKey;
    use crate::command::trust::TrustedKey;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn node(name: &str, tags: &[(&str, &str)]) -> NodeId {
        let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NodeId::new(name, "127.0.0.1:1".parse().unwrap(), 1, tags)
    }

    fn trusting(entries: &[&str]) -> Trust {
        Trust {
            keys: entries.iter().map(|e| TrustedKey::parse(e).unwrap()).collect(),
        }
    }

    #[test]
    fn an_admission_admits_only_its_key_under_its_name_signed_by_a_key_in_scope() {
        let alice = OperatorSecret::generate();
        let mallory = OperatorSecret::generate();
        let key = NodeKey::generate().public();
        let other = NodeKey::generate().public();
        let n4 = node("n4", &[("env", "prod")]);
        let trust = trusting(&[&alice.public().to_string()]);
        let ok = Admission::issue(&alice, &key, "n4", 1);
        assert_eq!(ok.admits(&trust, &n4, &key).unwrap(), alice.public());
        // It reads back from its text.
        assert_eq!(Admission::parse(&ok.to_text()).unwrap(), ok);

        let refused =
            |a: &Admission, trust: &Trust, id: &NodeId, k: &NodePublicKey| a.admits(trust, id, k).unwrap_err();
        let cases: Vec<(&str, String)> = vec![
            ("another node's key", refused(&ok, &trust, &n4, &other)),
            ("another name", refused(&ok, &trust, &node("n2", &[]), &key)),
            (
                "an untrusted signer",
                refused(&Admission::issue(&mallory, &key, "n4", 1), &trust, &n4, &key),
            ),
            (
                "a tampered name",
                refused(
                    &Admission {
                        name: "n5".into(),
                        ..ok.clone()
                    },
                    &trust,
                    &node("n5", &[]),
                    &key,
                ),
            ),
            (
                "a tampered time",
                refused(&Admission { ts: 2, ..ok.clone() }, &trust, &n4, &key),
            ),
            ("an open node", refused(&ok, &Trust::default(), &n4, &key)),
            (
                "a key scoped to other modules",
                refused(
                    &ok,
                    &trusting(&[&format!(r#"{{"key": "{}", "modules": ["web-*"]}}"#, alice.public())]),
                    &n4,
                    &key,
                ),
            ),
            (
                "a key scoped to other nodes",
                refused(
                    &ok,
                    &trusting(&[&format!(
                        r#"{{"key": "{}", "target": "tag.env=staging"}}"#,
                        alice.public()
                    )]),
                    &n4,
                    &key,
                ),
            ),
        ];
        for (what, why) in cases {
            assert!(!why.is_empty(), "{what}");
        }
        // A key scoped to `admit` on staging nodes admits a staging node.
        let staging = trusting(&[&format!(
            r#"{{"key": "{}", "modules": ["admit"], "target": "tag.env=staging"}}"#,
            alice.public()
        )]);
        assert!(ok.admits(&staging, &node("n4", &[("env", "staging")]), &key).is_ok());
    }

    #[test]
    fn a_node_keeps_only_its_own_admission_and_oversized_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let alice = OperatorSecret::generate();
        let key = Arc::new(NodeKey::generate());
        let mine = Admission::issue(&alice, &key.public(), "n4", 1);
        assert_eq!(Admission::load(dir.path()).unwrap(), None);
        let theirs = Admission::issue(&alice, &NodeKey::generate().public(), "n4", 1);
        assert!(theirs
            .install(dir.path(), &key.public(), "n4")
            .unwrap_err()
            .contains("not this node's"));
        assert!(mine
            .install(dir.path(), &key.public(), "n5")
            .unwrap_err()
            .contains("`n5`"));
        mine.install(dir.path(), &key.public(), "n4").unwrap();
        assert_eq!(Admission::load(dir.path()).unwrap(), Some(mine));
        let huge = format!(r#"{{"node_key": "{}"}}"#, "a".repeat(MAX_ADMISSION_BYTES));
        assert!(Admission::parse(&huge).unwrap_err().contains("over the limit"));
        std::fs::write(dir.path().join(ADMISSION_FILE), "{}").unwrap();
        assert!(Admission::load(dir.path()).is_err());
    }
}
