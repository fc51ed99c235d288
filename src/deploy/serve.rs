//! Serving package chunks to peers: a node that holds a package (in its
//! cache) sends it to others piece by piece over the cluster links, so a
//! deploy needs no HTTP server and the origin is not the only source.

use super::install::MAX_CHUNK_BYTES;
use super::order::NOT_HELD;
use super::package::parse_sha256;
use super::state::DeployState;
use super::uploads::BUSY;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::debug;

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
    #[error("this node sends packages to {0} peers already; ask another holder")]
    Busy(usize),
}

impl ServeError {
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::InvalidRequest(_) => "invalid_request",
            ServeError::NotHeld(_) => NOT_HELD,
            ServeError::Io { .. } => "io_error",
            ServeError::UnknownOp(_) => "unknown_op",
            ServeError::Busy(_) => BUSY,
        }
    }
}

/// The nodes a new fetcher (one asking for the first chunk) of package
/// `sha256` is sent to instead, if this node offered it as a deploy's
/// origin and other nodes that are up (`is_up`) hold it now. The origin
/// thus sends a package a few times at the start of a deploy, and the
/// nodes that fetch later (those that were down, among them) take it from
/// the nodes that fetched it first.
pub fn elsewhere(
    state: &DeployState,
    me: &str,
    to: &str,
    sha256: &str,
    offset: u64,
    is_up: impl Fn(&str) -> bool,
) -> Option<Vec<String>> {
    if offset != 0 || !state.originated(sha256) {
        return None;
    }
    let others: Vec<String> = state
        .holders_of(sha256)
        .into_iter()
        .filter(|h| h != me && h != to && is_up(h))
        .collect();
    (!others.is_empty()).then_some(others)
}

/// Reads `len` bytes at `offset` of the package `sha256` this node holds,
/// for peer `to`, if this node is not sending to enough peers already.
pub async fn read_chunk(
    state: &DeployState,
    to: &str,
    sha256: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ServeError> {
    let bad = |why: &str| ServeError::InvalidRequest(why.to_string());
    let sha = parse_sha256(sha256).map_err(ServeError::InvalidRequest)?;
    if len == 0 || len > MAX_CHUNK_BYTES {
        return Err(bad(&format!("`len` must be between 1 and {MAX_CHUNK_BYTES}")));
    }
    let package = state.cache.get(&sha).ok_or_else(|| ServeError::NotHeld(sha.clone()))?;
    if offset >= package.size {
        return Err(bad("`offset` is past the end of the package"));
    }
    let last = offset + len >= package.size;
    state
        .uploads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(to, &sha, last, Instant::now())
        .map_err(ServeError::Busy)?;
    if last && state.originated(&sha) {
        // The fetcher holds it all once it has checked it: this origin
        // sends new fetchers there rather than serving them again, from
        // now on (the slot just freed must not go to one of them), not
        // only once the fetcher's own announcement arrives.
        debug!(fetcher = %to, sha256 = %sha, "a fetcher has the whole package now; later fetchers go to it");
        state.add_holder(&sha, to);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_origin_sends_a_new_fetcher_elsewhere_and_only_to_holders_that_are_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = DeployState::open(dir.path(), &[], 1, 2).unwrap();
        let sha = "a".repeat(64);
        let up = |h: &str| h != "down";
        state.add_holder(&sha, "b");
        assert_eq!(
            elsewhere(&state, "me", "f", &sha, 0, up),
            None,
            "not this node's package"
        );
        state.mark_originated(&sha);
        assert_eq!(elsewhere(&state, "me", "f", &sha, 0, up), Some(vec!["b".to_string()]));
        assert_eq!(
            elsewhere(&state, "me", "f", &sha, 4096, up),
            None,
            "a fetch under way goes on where it is"
        );
        assert_eq!(
            elsewhere(&state, "me", "b", &sha, 0, up),
            None,
            "never to the fetcher itself"
        );
        state.add_holder(&sha, "down");
        state.add_holder(&sha, "me");
        assert_eq!(elsewhere(&state, "me", "f", &sha, 0, up), Some(vec!["b".to_string()]));
    }

    #[actix_rt::test]
    async fn a_fetcher_served_the_last_chunk_by_the_origin_is_where_the_next_new_fetcher_goes() {
        let dir = tempfile::tempdir().unwrap();
        let state = DeployState::open(dir.path(), &[], 1, 1).unwrap();
        let bytes = vec![7u8; 3000];
        let mut partial = state.cache.begin(1 << 20).await.unwrap();
        partial.write(&bytes).await.unwrap();
        let package = partial.finish(None).await.unwrap();
        let sha = package.sha256.clone();
        state.mark_originated(&sha);
        let up = |_: &str| true;

        assert_eq!(read_chunk(&state, "a", &sha, 0, 2000).await.unwrap().len(), 2000);
        assert!(
            matches!(read_chunk(&state, "b", &sha, 0, 2000).await, Err(ServeError::Busy(1))),
            "one upload at a time"
        );
        assert_eq!(
            elsewhere(&state, "me", "b", &sha, 0, up),
            None,
            "a holds only part of it"
        );
        assert_eq!(read_chunk(&state, "a", &sha, 2000, 2000).await.unwrap().len(), 1000);
        // `a` has it all now, before its own announcement could arrive: the
        // slot it freed does not go to a new fetcher.
        assert_eq!(elsewhere(&state, "me", "b", &sha, 0, up), Some(vec!["a".to_string()]));
    }
}
