//! A node's keyring: the cluster key it dials with (the primary) and the
//! others it also accepts, so that the fleet's key can change while nodes
//! run: install the new key everywhere, make it the primary, remove the
//! old one. A node that missed the change still gets in while any node
//! accepts its key.
//!
//! The handshake names keys by a short id (a hash, never the key), so
//! accepting several keys costs one handshake, not one per key (see
//! `noise`). The keyring is kept in `<data-dir>/keyring` (0600); without
//! that file it holds the one key given at start.

use super::key::ClusterKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// The file the keyring is kept in, in the data dir.
pub const KEYRING_FILE: &str = "keyring";
/// The most keys a keyring holds: each is named in every handshake.
pub const MAX_KEYS: usize = 8;

/// A key's short public name: 4 bytes of a hash of it.
pub type KeyId = [u8; 4];

/// The id the handshake names `key` by.
pub fn key_id(key: &ClusterKey) -> KeyId {
    let digest = Sha256::new()
        .chain_update(b"conjoiner cluster key id\0")
        .chain_update(key.as_bytes())
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A key id as people read it: 8 hex digits.
pub fn show_id(id: &KeyId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys a node holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    primary: ClusterKey,
    /// Accepted too, in the order they were installed.
    others: Vec<ClusterKey>,
}

impl std::fmt::Debug for Keyring {
    /// Names the keys by id, never by their secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring(primary {}, others [{}])",
            show_id(&key_id(&self.primary)),
            self.others
                .iter()
                .map(|k| show_id(&key_id(k)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The keyring as the file holds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    primary: String,
    #[serde(default)]
    others: Vec<String>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(primary: ClusterKey) -> Keyring {
        Keyring {
            primary,
            others: Vec::new(),
        }
    }

    pub fn primary(&self) -> &ClusterKey {
        &self.primary
    }

    /// Every key, the primary first.
    pub fn keys(&self) -> impl Iterator<Item = &ClusterKey> {
        std::iter::once(&self.primary).chain(&self.others)
    }

    /// Every key's id, the primary's first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys().map(key_id).collect()
    }

    /// The key named `id`, if this keyring holds it.
    pub fn by_id(&self, id: &KeyId) -> Option<&ClusterKey> {
        self.keys().find(|k| key_id(k) == *id)
    }

    /// Accepts `key` too. Answers whether it was new.
    pub fn install(&mut self, key: ClusterKey) -> Result<bool, String> {
        if self.keys().any(|k| *k == key) {
            return Ok(false);
        }
        if self.others.len() + 1 >= MAX_KEYS {
            return Err(format!("a keyring holds at most {MAX_KEYS} keys; remove one first"));
        }
        self.others.push(key);
        Ok(true)
    }

    /// Dials with `key` from now on; it must be installed. The old
    /// primary stays accepted.
    pub fn use_key(&mut self, key: &ClusterKey) -> Result<bool, String> {
        if self.primary == *key {
            return Ok(false);
        }
        let at = self
            .others
            .iter()
            .position(|k| k == key)
            .ok_or_else(|| format!("key {} is not installed; install it first", show_id(&key_id(key))))?;
        let key = self.others.remove(at);
        let old = std::mem::replace(&mut self.primary, key);
        self.others.insert(0, old);
        Ok(true)
    }

    /// Stops accepting `key`. The primary cannot be removed.
    pub fn remove(&mut self, key: &ClusterKey) -> Result<bool, String> {
        if self.primary == *key {
            return Err(format!(
                "key {} is the primary key, which this node dials with; `use` another key first",
                show_id(&key_id(key))
            ));
        }
        let before = self.others.len();
        self.others.retain(|k| k != key);
        Ok(self.others.len() != before)
    }

    /// Reads `<dir>/keyring`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<Keyring>, String> {
        let path = dir.join(KEYRING_FILE);
        let bytes = match crate::private_file::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let what = format!("the keyring {}", path.display());
        let file: KeyringFile = serde_json::from_slice(&bytes).map_err(|e| format!("{what} does not read: {e}"))?;
        let primary = ClusterKey::parse(&file.primary, &what).map_err(|e| e.to_string())?;
        let mut keyring = Keyring::new(primary);
        for other in &file.others {
            let key = ClusterKey::parse(other, &what).map_err(|e| e.to_string())?;
            keyring.install(key).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(Some(keyring))
    }

    /// Keeps the keyring in `<dir>/keyring` (written whole, or not at all).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let file = KeyringFile {
            primary: self.primary.to_base64(),
            others: self.others.iter().map(ClusterKey::to_base64).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        crate::private_file::write(&dir.join(KEYRING_FILE), &bytes)
    }
}

/// The keyring a node's links read at each handshake, replaced whole
/// (links up stay up).
pub type SharedKeyring = crate::swappable::Swappable<Keyring>;

impl From<Keyring> for SharedKeyring {
    fn from(keyring: Keyring) -> SharedKeyring {
        SharedKeyring::new(keyring)
    }
}

impl From<ClusterKey> for SharedKeyring {
    fn from(key: ClusterKey) -> SharedKeyring {
        SharedKeyring::new(Keyring::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_use_remove_keep_the_primary_and_refuse_what_would_lock_the_node_out() {
        let (k1, k2, k3) = (ClusterKey::generate(), ClusterKey::generate(), ClusterKey::generate());
        let mut ring = Keyring::new(k1.clone());
        assert_eq!(ring.install(k2.clone()), Ok(true));
        assert_eq!(ring.install(k2.clone()), Ok(false), "installed once");
        assert!(ring.use_key(&k3).unwrap_err().contains("not installed"));
        assert_eq!(ring.use_key(&k2), Ok(true));
        assert_eq!(ring.primary(), &k2);
        assert_eq!(
            ring.ids(),
            [key_id(&k2), key_id(&k1)],
            "the old primary is still accepted"
        );
        assert!(ring.remove(&k2).unwrap_err().contains("primary"));
        assert_eq!(ring.remove(&k1), Ok(true));
        assert_eq!(ring.remove(&k1), Ok(false));
        assert_eq!(ring.ids(), [key_id(&k2)]);
        for _ in 1..MAX_KEYS {
            ring.install(ClusterKey::generate()).unwrap();
        }
        assert!(ring.install(ClusterKey::generate()).is_err(), "bounded");
    }

    #[test]
    fn ids_are_short_stable_and_never_the_key() {
        let key = ClusterKey::generate();
        assert_eq!(key_id(&key), key_id(&key.clone()));
        assert_ne!(key_id(&key), key_id(&ClusterKey::generate()));
        assert_eq!(show_id(&key_id(&key)).len(), 8);
        let ring = Keyring::new(key.clone());
        assert!(!format!("{ring:?}").contains(&key.to_base64()));
    }

    #[test]
    fn the_keyring_file_reads_back_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Keyring::load(dir.path()), Ok(None));
        let mut ring = Keyring::new(ClusterKey::generate());
        ring.install(ClusterKey::generate()).unwrap();
        ring.save(dir.path()).unwrap();
        assert_eq!(Keyring::load(dir.path()).unwrap(), Some(ring));
        std::fs::write(dir.path().join(KEYRING_FILE), "{\"primary\": \"nope\"}").unwrap();
        let e = Keyring::load(dir.path()).unwrap_err();
        assert!(e.contains("keyring"), "{e}");
    }
}
