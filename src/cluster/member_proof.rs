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
//! bytes of (node id, incarnation, left): one encoding, read one way.

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
    fn newer_means_later_boot_then_incarnation_then_leave() {
        let key = NodeKey::generate();
        let at = |inc, left| MemberProof::sign("c", &key, id("n1", &[]), inc, left);
        assert!(at(2, false).newer_than(&at(1, false)));
        assert!(at(1, true).newer_than(&at(1, false)));
        assert!(!at(1, false).newer_than(&at(1, false)));
        assert!(!at(1, true).newer_than(&at(2, false)));
    }
}
