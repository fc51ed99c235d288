//! A node's identity key pair: ed25519, kept in `<data-dir>/node.key`
//! (mode 0600) and made at the node's first start.
//!
//! Its X25519 form is the static key of every Noise handshake the node
//! makes, so when a link is up each side knows which key holds the other
//! end. The hello then names the ed25519 key (see `protocol::Hello`), and
//! the peer checks that this key is the one that made the link: a node
//! cannot claim another node's key without holding its private half. One
//! key for both is the standard ed25519-to-X25519 mapping; the node so has
//! one identity to keep, show and, later, have signed by an operator.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The file in the data dir.
pub const NODE_KEY_FILE: &str = "node.key";
/// How a node's public key is written.
pub const PUBLIC_PREFIX: &str = "cjnode1";
/// How the private key is written in its file.
const SECRET_PREFIX: &str = "cjnodesec1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A node's public identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodePublicKey([u8; 32]);

/// Keys held decompressed, by their bytes, at most this many: every
/// member of a fleet of 4,096, in under 2 MiB.
const DECOMPRESSED_KEYS: usize = 4_096;

/// Decompressed keys by their bytes. Reading 32 bytes as a point costs a
/// square root in the field, a third of a signature check, and a node meets
/// the same few hundred keys again and again: in every proof beside a
/// record, in each seal it checks, in each hello. A 200-node start spent
/// about 7% of its CPU decompressing the same keys. Emptied when full, so a
/// flood of new keys costs what it did without it, and memory stays bounded.
static DECOMPRESSED: std::sync::LazyLock<std::sync::Mutex<HashMap<[u8; 32], VerifyingKey>>> =
    std::sync::LazyLock::new(Default::default);

/// The key of `bytes` as a point, if they are a valid one.
fn decompressed(bytes: &[u8; 32]) -> Option<VerifyingKey> {
    if let Some(key) = DECOMPRESSED.lock().ok().and_then(|keys| keys.get(bytes).copied()) {
        return Some(key);
    }
    let key = VerifyingKey::from_bytes(bytes).ok()?;
    if let Ok(mut keys) = DECOMPRESSED.lock() {
        if keys.len() >= DECOMPRESSED_KEYS {
            keys.clear();
        }
        keys.insert(*bytes, key);
    }
    Some(key)
}

impl NodePublicKey {
    /// The key from its 32 bytes, if they are a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<NodePublicKey> {
        decompressed(&bytes).map(|_| NodePublicKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads `cjnode1<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<NodePublicKey, String> {
        let text = text.trim();
        let shown: String = text.chars().take(60).collect();
        let bytes: [u8; 32] = text
            .strip_prefix(PUBLIC_PREFIX)
            .and_then(|body| b64().decode(body).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("`{shown}` is not a node key (`{PUBLIC_PREFIX}` and 32 bytes in base64)"))?;
        NodePublicKey::from_bytes(bytes).ok_or_else(|| format!("`{shown}` is not a valid ed25519 public key"))
    }

    /// A short id for logs: the first 8 bytes of the key's sha256, in hex.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0)[..8])
    }

    /// The X25519 public key a Noise handshake shows for this identity.
    pub fn noise_static(&self) -> Option<[u8; 32]> {
        decompressed(&self.0).map(|k| k.to_montgomery().to_bytes())
    }

    /// Whether `sig` is this key's signature over `bytes` (strict: no
    /// malleable or small-order forms).
    pub fn verifies(&self, bytes: &[u8], sig: &[u8; 64]) -> bool {
        decompressed(&self.0).is_some_and(|k| k.verify_strict(bytes, &Signature::from_bytes(sig)).is_ok())
    }
}

impl std::fmt::Display for NodePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", b64().encode(self.0))
    }
}

impl std::fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodePublicKey({})", self.id())
    }
}

impl serde::Serialize for NodePublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for NodePublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        NodePublicKey::from_bytes(bytes).ok_or_else(|| serde::de::Error::custom("not a valid ed25519 public key"))
    }
}

/// A node's private identity key.
pub struct NodeKey(SigningKey);

/// Where a node's key came from at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKeySource {
    Created(PathBuf),
    Loaded(PathBuf),
}

impl NodeKey {
    /// A new key pair from the system's random source.
    pub fn generate() -> NodeKey {
        NodeKey(SigningKey::from_bytes(&rand::random()))
    }

    pub fn public(&self) -> NodePublicKey {
        NodePublicKey(self.0.verifying_key().to_bytes())
    }

    /// The X25519 private key of this node's Noise handshakes (its public
    /// half is `self.public().noise_static()`).
    pub fn noise_private(&self) -> [u8; 32] {
        self.0.to_scalar_bytes()
    }

    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.0.sign(bytes).to_bytes()
    }

    /// Reads `<data_dir>/node.key`, or makes it at a first start. A file
    /// that others may read, or that does not hold a key, stops the start:
    /// making a new key would give the node a new identity unasked.
    pub fn load_or_create(data_dir: &Path) -> Result<(NodeKey, NodeKeySource), String> {
        let path = data_dir.join(NODE_KEY_FILE);
        let shown = path.display();
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = NodeKey::generate();
                crate::private_file::write(
                    &path,
                    format!("{SECRET_PREFIX}{}\n", b64().encode(key.0.to_bytes())).as_bytes(),
                )
                .map_err(|e| format!("cannot create the node key {shown}: {e}"))?;
                Ok((key, NodeKeySource::Created(path)))
            }
            Err(e) => Err(format!("cannot read the node key {shown}: {e}")),
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "the node key {shown} has mode {mode:04o}: others could read it; `chmod 600` it"
                    ));
                }
                let text = crate::private_file::read_to_string(&path)
                    .map_err(|e| format!("cannot read the node key {shown}: {e}"))?;
                let bytes: [u8; 32] = text
                    .trim()
                    .strip_prefix(SECRET_PREFIX)
                    .and_then(|body| b64().decode(body).ok())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "{shown} does not hold a node key (`{SECRET_PREFIX}` and 32 bytes in base64); \
                             move it away to give this node a new identity"
                        )
                    })?;
                Ok((NodeKey(SigningKey::from_bytes(&bytes)), NodeKeySource::Loaded(path)))
            }
        }
    }
}

impl std::fmt::Debug for NodeKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.public().id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompressed_keys_answer_as_fresh_ones_and_stay_bounded() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let sig = key.sign(b"seal").to_bytes();
        let node = NodePublicKey::from_bytes(public).expect("a valid point");
        // Twice: the second use is answered from the held key.
        for _ in 0..2 {
            assert!(node.verifies(b"seal", &sig));
            assert!(!node.verifies(b"other", &sig));
            assert_eq!(
                node.noise_static(),
                Some(key.verifying_key().to_montgomery().to_bytes())
            );
        }
        // Bytes that are no point are refused every time, and not held.
        let invalid = (2u8..)
            .map(|b| {
                let mut bytes = [0u8; 32];
                bytes[0] = b;
                bytes
            })
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .expect("bytes off the curve");
        assert!(NodePublicKey::from_bytes(invalid).is_none());
        assert!(!DECOMPRESSED.lock().unwrap().contains_key(&invalid));
        // A flood of new keys holds no more than the bound.
        for i in 0..DECOMPRESSED_KEYS as u64 + 10 {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&i.to_le_bytes());
            let bytes = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            assert!(NodePublicKey::from_bytes(bytes).is_some());
            assert!(DECOMPRESSED.lock().unwrap().len() <= DECOMPRESSED_KEYS);
        }
    }

    #[test]
    fn a_first_start_makes_a_private_key_that_later_starts_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (made, source) = NodeKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        assert_eq!(source, NodeKeySource::Created(path.clone()));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, source) = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public(), made.public());
        assert_eq!(source, NodeKeySource::Loaded(path));
    }

    #[test]
    fn a_readable_damaged_or_linked_key_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        NodeKey::load_or_create(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(open.contains("mode 0644") && open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "cjnodesec1AAAA\n").unwrap();
        let damaged = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(damaged.contains("does not hold a node key"), "{damaged}");
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        NodeKey::load_or_create(&elsewhere).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(NODE_KEY_FILE), &path).unwrap();
        assert!(
            NodeKey::load_or_create(dir.path()).is_err(),
            "a link at node.key is followed"
        );
    }

    #[test]
    fn the_public_key_reads_back_and_names_the_noise_key() {
        let key = NodeKey::generate();
        let public = key.public();
        assert_eq!(NodePublicKey::parse(&public.to_string()).unwrap(), public);
        assert!(NodePublicKey::parse("cjop1AAAA").is_err());
        assert!(NodePublicKey::parse(&format!("{PUBLIC_PREFIX}{}", b64().encode([1u8; 31]))).is_err());
        let sig = key.sign(b"line");
        assert!(public.verifies(b"line", &sig));
        assert!(!public.verifies(b"lint", &sig));
        assert!(!NodeKey::generate().public().verifies(b"line", &sig));
    }
}
