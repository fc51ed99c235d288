//! A member's signed word about itself.
//!
//! Only a node may say that it is alive at some incarnation, with some
//! address and tags, or that it left: it signs that claim with its identity
//! key (see `node_key`), and the proof travels beside every record about it
//! (link protocol 4). Others may still report what they saw (suspect,
//! dead), but only at an incarnation the node itself has signed, so a host
//! that holds the cluster key cannot mark a healthy node `left`, put it
//! dead above any incarnation it can refute, or move it to another address.
//!
//! What is signed is a domain label, the cluster's name, and the postcard
//! bytes of (node id, incarnation, left): one encoding, read one way. A
//! node also seals each state it publishes (its status report) the same
//! way, over its name, boot, version and the state's sha256.

use super::identity::NodeId;
use super::node_key::{NodeKey, NodePublicKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Keeps a proof from being read as any other signed thing.
const DOMAIN: &[u8] = b"conjoiner member proof v1\0";

/// A node's signature over its own record: `id` (name, address, boot,
/// tags) is alive at `incarnation`, or, with `left`, has left for good.
/// `admission` is the node's admission, an operator's signed word that its
/// key may be this node (see `command::admission`), carried beside the
/// proof for fleets that require one; it is signed by the operator, not by
/// the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProof {
    pub id: Arc<NodeId>,
    pub incarnation: u32,
    pub left: bool,
    pub key: NodePublicKey,
    /// 64 bytes; any other length is refused.
    pub signature: Vec<u8>,
    pub admission: Option<String>,
}

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the signature is {0} bytes, not 64")]
    SignatureLength(usize),
    #[error("the signature does not verify under the key it names")]
    BadSignature,
}

fn signed_bytes(cluster: &str, id: &NodeId, incarnation: u32, left: bool) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    out.extend(postcard::to_allocvec(&(cluster, id, incarnation, left)).expect("a record serializes"));
    out
}

impl MemberProof {
    /// This node's claim about itself, signed with its key.
    pub fn sign(cluster: &str, key: &NodeKey, id: Arc<NodeId>, incarnation: u32, left: bool) -> MemberProof {
        let signature = key.sign(&signed_bytes(cluster, &id, incarnation, left)).to_vec();
        MemberProof {
            id,
            incarnation,
            left,
            key: key.public(),
            signature,
            admission: None,
        }
    }

    /// The same proof, showing `admission`.
    pub fn with_admission(mut self, admission: Option<String>) -> MemberProof {
        self.admission = admission;
        self
    }

    /// Whether the key it names signed exactly these fields for `cluster`.
    pub fn verify(&self, cluster: &str) -> Result<(), ProofError> {
        let sig: &[u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ProofError::SignatureLength(self.signature.len()))?;
        let bytes = signed_bytes(cluster, &self.id, self.incarnation, self.left);
        if self.key.verifies(&bytes, sig) {
            Ok(())
        } else {
            Err(ProofError::BadSignature)
        }
    }

    /// Whether this proof says more than `other` about the same member: a
    /// later boot, a higher incarnation, or a leave at the same one.
    pub fn newer_than(&self, other: &MemberProof) -> bool {
        (self.id.boot, self.incarnation, self.left) > (other.id.boot, other.incarnation, other.left)
    }
}

/// Keeps a state seal from being read as any other signed thing.
const STATE_DOMAIN: &[u8] = b"conjoiner state seal v1\0";

/// A node's signature over one of its own published states (its status
/// report), so that no other host can report in its name: the node's
/// name, boot and version, and the sha256 of the state's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSeal {
    pub name: Arc<str>,
    pub boot: u64,
    pub version: u64,
    /// 64 bytes; any other length is refused.
    pub signature: Vec<u8>,
}

fn state_bytes(cluster: &str, name: &str, boot: u64, version: u64, data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = STATE_DOMAIN.to_vec();
    out.extend(postcard::to_allocvec(&(cluster, name, boot, version)).expect("a header serializes"));
    out.extend(sha2::Sha256::digest(data));
    out
}

impl StateSeal {
    /// Seals this node's state `version` of boot `boot`, whose bytes are `data`.
    pub fn seal(cluster: &str, key: &NodeKey, name: Arc<str>, boot: u64, version: u64, data: &[u8]) -> StateSeal {
        let signature = key.sign(&state_bytes(cluster, &name, boot, version, data)).to_vec();
        StateSeal {
            name,
            boot,
            version,
            signature,
        }
    }

    /// Whether this seal is about that state of that node.
    pub fn covers(&self, name: &str, boot: u64, version: u64) -> bool {
        &*self.name == name && self.boot == boot && self.version == version
    }

    /// Whether `key` sealed exactly `data` as this state, for `cluster`.
    pub fn verify(&self, cluster: &str, key: &NodePublicKey, data: &[u8]) -> Result<(), ProofError> {
        let sig: &[u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ProofError::SignatureLength(self.signature.len()))?;
        if key.verifies(&state_bytes(cluster, &self.name, self.boot, self.version, data), sig) {
            Ok(())
        } else {
            Err(ProofError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(name: &str, tags: &[(&str, &str)]) -> Arc<NodeId> {
        let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Arc::new(NodeId::new(name, "10.0.0.1:7946".parse().unwrap(), 7, tags))
    }

    #[test]
    fn a_proof_verifies_only_for_the_fields_signed() {
        let key = NodeKey::generate();
        let good = MemberProof::sign("c", &key, id("n1", &[("role", "web")]), 3, false);
        assert_eq!(good.verify("c"), Ok(()));
        assert_eq!(good.verify("other"), Err(ProofError::BadSignature), "another cluster");

        let mut changed = good.clone();
        changed.incarnation = 4;
        assert_eq!(changed.verify("c"), Err(ProofError::BadSignature), "incarnation");
        let mut changed = good.clone();
        changed.left = true;
        assert_eq!(changed.verify("c"), Err(ProofError::BadSignature), "left");
        let mut changed = good.clone();
        changed.id = id("n1", &[("role", "db")]);
        assert_eq!(changed.verify("c"), Err(ProofError::BadSignature), "tags");
        let mut changed = good.clone();
        changed.key = NodeKey::generate().public();
        assert_eq!(changed.verify("c"), Err(ProofError::BadSignature), "another key");
        let mut changed = good.clone();
        changed.signature.push(0);
        assert_eq!(changed.verify("c"), Err(ProofError::SignatureLength(65)), "oversized");
    }

    #[test]
    fn a_state_seal_covers_its_bytes_and_version_under_its_key() {
        let key = NodeKey::generate();
        let seal = StateSeal::seal("c", &key, "n1".into(), 7, 3, b"report");
        assert_eq!(seal.verify("c", &key.public(), b"report"), Ok(()));
        assert!(seal.covers("n1", 7, 3) && !seal.covers("n1", 7, 4) && !seal.covers("n2", 7, 3));
        assert_eq!(
            seal.verify("c", &key.public(), b"backdoor"),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            seal.verify("x", &key.public(), b"report"),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            seal.verify("c", &NodeKey::generate().public(), b"report"),
            Err(ProofError::BadSignature)
        );
        let mut replayed = seal.clone();
        replayed.version = 4;
        assert_eq!(
            replayed.verify("c", &key.public(), b"report"),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn newer_means_later_boot_then_incarnation_then_leave() {
        let key = NodeKey::generate();
        let at = |inc, left| MemberProof::sign("c", &key, id("n1", &[]), inc, left);
        assert!(at(2, false).newer_than(&at(1, false)));
        assert!(at(1, true).newer_than(&at(1, false)));
        assert!(!at(1, false).newer_than(&at(1, false)));
        assert!(!at(1, true).newer_than(&at(2, false)));
    }
}
