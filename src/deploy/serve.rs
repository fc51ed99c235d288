//! Serving package chunks to peers: a node that holds a package (in its
//! cache) sends it to others piece by piece over the cluster links, so a
//! deploy needs no HTTP server and the origin is not the only source.

use super::install::MAX_CHUNK_BYTES;
use super::package::parse_sha256;
use super::state::DeployState;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Why a peer's request to the Deployer (a package chunk) was not served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("this node does not hold package {0}")]
    NotHeld(String),
    #[error("cannot read package {sha256}: {error}")]
    Io { sha256: String, error: std::io::Error },
    #[error("the deployer does not know op {0}; it takes `chunk`")]
    UnknownOp(String),
}

impl ServeError {
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::InvalidRequest(_) => "invalid_request",
            ServeError::NotHeld(_) => "not_held",
            ServeError::Io { .. } => "io_error",
            ServeError::UnknownOp(_) => "unknown_op",
        }
    }
}

/// Reads `len` bytes at `offset` of the package `sha256` this node holds.
pub async fn read_chunk(state: &DeployState, sha256: &str, offset: u64, len: u64) -> Result<Vec<u8>, ServeError> {
    let bad = |why: &str| ServeError::InvalidRequest(why.to_string());
    let sha = parse_sha256(sha256).map_err(ServeError::InvalidRequest)?;
    if len == 0 || len > MAX_CHUNK_BYTES {
        return Err(bad(&format!("`len` must be between 1 and {MAX_CHUNK_BYTES}")));
    }
    let package = state.cache.get(&sha).ok_or_else(|| ServeError::NotHeld(sha.clone()))?;
    if offset >= package.size {
        return Err(bad("`offset` is past the end of the package"));
    }
    let io = |error: std::io::Error| ServeError::Io {
        sha256: sha.clone(),
        error,
    };
    let mut file = tokio::fs::File::open(&package.path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut data = vec![0u8; len.min(package.size - offset) as usize];
    file.read_exact(&mut data).await.map_err(io)?;
    Ok(data)
}
