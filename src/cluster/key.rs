//! The cluster key: 32 random bytes, written as base64.
//!
//! Every link between nodes is a Noise session keyed by it, so a node without
//! the key cannot join, read or inject anything. The key comes from
//! `--key-file`, else `CONJOINER_KEY`, else `<data-dir>/cluster.key`, which the
//! first start creates with mode 0600.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

/// The file in the data dir that holds the key when none is given.
pub const KEY_FILE: &str = "cluster.key";

/// The shared secret of one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_LEN]);

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cluster key from {source_name} is not base64: {reason}")]
    NotBase64 { source_name: String, reason: String },
    #[error("cluster key from {source_name} is {len} bytes; it must be {KEY_LEN} (make one with `conjoiner keygen`)")]
    WrongLength { source_name: String, len: usize },
    #[error("cannot read the cluster key file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot create the cluster key file {path}: {error}")]
    Create { path: PathBuf, error: std::io::Error },
}

/// Where the node's key came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env,
    /// The key was made at this start and saved to this file.
    Created(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "file {}", p.display()),
            KeySource::Env => write!(f, "CONJOINER_KEY"),
            KeySource::Created(p) => write!(f, "new file {}", p.display()),
        }
    }
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> ClusterKey {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        ClusterKey(bytes)
    }

    /// Parses the base64 text form; `source_name` says where it came from in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<ClusterKey, KeyError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|e| KeyError::NotBase64 {
            source_name: source_name.to_string(),
            reason: e.to_string(),
        })?;
        let len = bytes.len();
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::WrongLength {
            source_name: source_name.to_string(),
            len,
        })?;
        Ok(ClusterKey(bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Finds the key in this order: the file, the environment
    /// value, then `<data-dir>/cluster.key`, created if missing.
    pub fn load(
        key_file: Option<&Path>,
        env_value: Option<&str>,
        data_dir: &Path,
    ) -> Result<(ClusterKey, KeySource), KeyError> {
        if let Some(path) = key_file {
            return Ok((read_key_file(path)?, KeySource::File(path.to_path_buf())));
        }
        if let Some(text) = env_value.filter(|t| !t.trim().is_empty()) {
            return Ok((ClusterKey::parse(text, "CONJOINER_KEY")?, KeySource::Env));
        }
        let path = data_dir.join(KEY_FILE);
        if path.exists() {
            return Ok((read_key_file(&path)?, KeySource::File(path)));
        }
        let key = ClusterKey::generate();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| KeyError::Create {
                path: path.clone(),
                error,
            })?;
        file.write_all(format!("{}\n", key.to_base64()).as_bytes())
            .map_err(|error| KeyError::Create {
                path: path.clone(),
                error,
            })?;
        Ok((key, KeySource::Created(path)))
    }
}

fn read_key_file(path: &Path) -> Result<ClusterKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    ClusterKey::parse(&text, &format!("file {}", path.display()))
}

impl fmt::Debug for ClusterKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn round_trip_and_errors() {
        let key = ClusterKey::generate();
        assert_eq!(ClusterKey::parse(&key.to_base64(), "t").unwrap(), key);
        assert_ne!(ClusterKey::generate(), key, "keys are random");
        assert!(matches!(ClusterKey::parse("%%%", "t"), Err(KeyError::NotBase64 { .. })));
        let short = STANDARD.encode([1u8; 16]);
        let err = ClusterKey::parse(&short, "t").unwrap_err();
        assert!(err.to_string().contains("16 bytes"), "{err}");
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    }

    #[test]
    fn load_order_and_created_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (created, source) = ClusterKey::load(None, None, dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(source, KeySource::Created(path.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The second start reads the same key back.
        let (again, source) = ClusterKey::load(None, None, dir.path()).unwrap();
        assert_eq!(again, created);
        assert_eq!(source, KeySource::File(path));
        // The environment wins over the data dir, the key file over both.
        let env_key = ClusterKey::generate();
        let (k, s) = ClusterKey::load(None, Some(&env_key.to_base64()), dir.path()).unwrap();
        assert_eq!((k, s), (env_key.clone(), KeySource::Env));
        let file = dir.path().join("other.key");
        let file_key = ClusterKey::generate();
        std::fs::write(&file, file_key.to_base64()).unwrap();
        let (k, _) = ClusterKey::load(Some(&file), Some(&env_key.to_base64()), dir.path()).unwrap();
        assert_eq!(k, file_key);
        let missing = ClusterKey::load(Some(&dir.path().join("nope")), None, dir.path()).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
