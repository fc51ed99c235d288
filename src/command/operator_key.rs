//! Operator key pairs: ed25519, made by `conjoiner keygen --operator`. The
//! public half (`cjop1<base64>`) is what nodes trust; the private half
//! stays with the operator (a file of mode 0600) and never has to be on a
//! node.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// How a public operator key is written.
pub const PUBLIC_PREFIX: &str = "cjop1";
/// How a private operator key is written (in its file).
pub const SECRET_PREFIX: &str = "cjopsec1";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A public operator key.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorKey(VerifyingKey);

impl OperatorKey {
    /// Reads `cjop1<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<OperatorKey, String> {
        let text = text.trim();
        let shown: String = text.chars().take(60).collect();
        let body = text
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| format!("`{shown}` is not an operator public key (they start with `{PUBLIC_PREFIX}`)"))?;
        let bytes = b64()
            .decode(body)
            .map_err(|e| format!("`{shown}` is not an operator public key: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("`{shown}` is not an operator public key: it must hold 32 bytes"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(OperatorKey)
            .map_err(|_| format!("`{shown}` is not a valid ed25519 public key"))
    }

    /// A short id for logs and audit lines: the first 8 bytes of the key's
    /// sha256, in hex.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `sig` is this key's signature over `bytes` (strict: no
    /// malleable or small-order forms).
    pub fn verifies(&self, bytes: &[u8], sig: &[u8; 64]) -> bool {
        self.0.verify_strict(bytes, &Signature::from_bytes(sig)).is_ok()
    }
}

impl std::fmt::Display for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", b64().encode(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OperatorKey({})", self.id())
    }
}

/// A private operator key: it signs commands.
pub struct OperatorSecret(SigningKey);

impl OperatorSecret {
    /// A new key pair from the system's random source.
    pub fn generate() -> OperatorSecret {
        let seed: [u8; 32] = rand::random();
        OperatorSecret(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> OperatorKey {
        OperatorKey(self.0.verifying_key())
    }

    /// The signature over `bytes`, in base64.
    pub fn sign(&self, bytes: &[u8]) -> String {
        b64().encode(self.0.sign(bytes).to_bytes())
    }

    /// Writes the private key to `path` (0600, refusing to replace a file)
    /// and the public one to `path.pub`.
    pub fn write_pair(&self, path: &Path) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        writeln!(file, "{SECRET_PREFIX}{}", b64().encode(self.0.to_bytes()))
            .and_then(|_| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let public = public_path(path);
        std::fs::write(&public, format!("{}\n", self.public()))
            .map_err(|e| format!("cannot write {}: {e}", public.display()))
    }

    /// Reads a private key file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<OperatorSecret, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("operator key {}: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "operator key {} has mode {mode:04o}: others could read it; `chmod 600` it (or make a new one)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("operator key {}: {e}", path.display()))?;
        let body = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(|| {
            format!(
                "{} is not a private operator key (those start with `{SECRET_PREFIX}`; make one with `conjoiner keygen --operator`)",
                path.display()
            )
        })?;
        let bytes: [u8; 32] = b64()
            .decode(body)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{} does not hold a 32-byte private operator key", path.display()))?;
        Ok(OperatorSecret(SigningKey::from_bytes(&bytes)))
    }
}

/// Where `keygen --operator -o FILE` writes the public key: `FILE.pub`.
pub fn public_path(secret: &Path) -> std::path::PathBuf {
    let mut name = secret.as_os_str().to_os_string();
    name.push(".pub");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_reads_back_and_checks_its_own_signatures_only() {
        let secret = OperatorSecret::generate();
        let key = OperatorKey::parse(&secret.public().to_string()).unwrap();
        assert_eq!(key, secret.public());
        let sig: [u8; 64] = b64().decode(secret.sign(b"deploy web")).unwrap().try_into().unwrap();
        assert!(key.verifies(b"deploy web", &sig));
        assert!(!key.verifies(b"deploy web2", &sig));
        assert!(!OperatorSecret::generate().public().verifies(b"deploy web", &sig));
    }

    #[test]
    fn malformed_public_keys_are_refused_with_the_reason() {
        for (text, why) in [
            ("abc", "start with"),
            ("cjop1!!!", "not an operator public key"),
            ("cjop1AAAA", "32 bytes"),
        ] {
            let e = OperatorKey::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_private_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("op.key");
        let secret = OperatorSecret::generate();
        secret.write_pair(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(OperatorSecret::load(&path).unwrap().public(), secret.public());
        let public = std::fs::read_to_string(public_path(&path)).unwrap();
        assert_eq!(OperatorKey::parse(&public).unwrap(), secret.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = OperatorSecret::load(&path).err().unwrap();
        assert!(e.contains("mode 0644"), "{e}");
        assert!(
            secret.write_pair(&path).unwrap_err().contains("cannot create"),
            "an existing key is never replaced"
        );
    }
}
