//! A signature as a command carries it: `{"key": "cjop1…", "sig": "…"}`,
//! the operator's public key and its ed25519 signature (base64) over the
//! command's canonical bytes.

use super::operator_key::{OperatorKey, OperatorSecret};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Longest `key` and `sig` read: a real one is 49 and 88 characters, so
/// anything much longer is refused before it is decoded.
const MAX_KEY_CHARS: usize = 64;
const MAX_SIG_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSignature {
    pub key: String,
    pub sig: String,
}

impl OperatorSignature {
    /// `secret`'s signature over a command's canonical `bytes`.
    pub fn by(secret: &OperatorSecret, bytes: &[u8]) -> OperatorSignature {
        OperatorSignature {
            key: secret.public().to_string(),
            sig: secret.sign(bytes),
        }
    }

    /// The id of the key it names, for logs and the audit (whether or not
    /// the signature is valid).
    pub fn signer_id(&self) -> Option<String> {
        OperatorKey::parse(&self.key).ok().map(|k| k.id())
    }

    /// The key that made a valid signature over `bytes`, or why not.
    pub fn check(&self, bytes: &[u8]) -> Result<OperatorKey, String> {
        if self.key.len() > MAX_KEY_CHARS || self.sig.len() > MAX_SIG_CHARS {
            return Err(format!(
                "the signature is oversized ({} and {} characters, at most {MAX_KEY_CHARS} and {MAX_SIG_CHARS})",
                self.key.len(),
                self.sig.len()
            ));
        }
        let key = OperatorKey::parse(&self.key)?;
        let sig: [u8; 64] = base64::engine::general_purpose::STANDARD
            .decode(&self.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of base64")?;
        if key.verifies(bytes, &sig) {
            Ok(key)
        } else {
            Err(format!(
                "the signature by key {} does not match the command's fields",
                key.id()
            ))
        }
    }
}
