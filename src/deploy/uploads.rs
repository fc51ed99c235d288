//! How many peers one node sends packages to at once. A fetcher turned
//! away asks another holder, and every node that has fetched a package
//! serves it in turn, so a deploy to a hundred nodes spreads like a tree
//! and its origin sends the package a few times, not once per node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Peers a node sends packages to at once, unless configured otherwise.
pub const DEFAULT_MAX_UPLOADS: usize = 2;
/// A fetcher that asked for nothing this long has given up its place.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(5);
/// The error code of a chunk refused because the node is busy: the
/// fetcher tries another holder rather than give this one up.
pub const BUSY: &str = "busy";

/// Which peers this node is sending packages to: a place is taken by a
/// fetcher's first chunk, kept while it asks, and given up with its last
/// chunk or after [`UPLOAD_IDLE`] of silence.
#[derive(Debug)]
pub struct Uploads {
    limit: usize,
    active: HashMap<(String, String), Instant>,
}

impl Uploads {
    pub fn new(limit: usize) -> Uploads {
        Uploads {
            limit: limit.max(1),
            active: HashMap::new(),
        }
    }

    /// Whether `node` may have a chunk of package `sha256` now (`last`: the
    /// chunk ends the package); if not, how many peers are being sent to.
    pub fn admit(&mut self, node: &str, sha256: &str, last: bool, now: Instant) -> Result<(), usize> {
        self.active
            .retain(|_, seen| now.saturating_duration_since(*seen) < UPLOAD_IDLE);
        let key = (node.to_string(), sha256.to_string());
        if !self.active.contains_key(&key) && self.active.len() >= self.limit {
            return Err(self.active.len());
        }
        if last {
            self.active.remove(&key);
        } else {
            self.active.insert(key, now);
        }
        Ok(())
    }

    /// The peers being sent to now.
    pub fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_sends_to_a_few_peers_at_once_and_frees_a_place_when_one_is_done_or_gone() {
        let t0 = Instant::now();
        let mut uploads = Uploads::new(2);
        assert!(uploads.admit("a", "p", false, t0).is_ok());
        assert!(uploads.admit("b", "p", false, t0).is_ok());
        assert_eq!(uploads.admit("c", "p", false, t0), Err(2));
        // The ones admitted go on; another package counts against the limit too.
        assert!(uploads.admit("a", "p", false, t0).is_ok());
        assert!(uploads.admit("a", "q", false, t0).is_err());
        // `a`'s last chunk frees its place.
        assert!(uploads.admit("a", "p", true, t0).is_ok());
        assert!(uploads.admit("c", "p", false, t0).is_ok());
        // A fetcher silent for UPLOAD_IDLE loses its place.
        let later = t0 + UPLOAD_IDLE;
        assert!(uploads.admit("d", "p", false, later).is_ok());
        assert_eq!(uploads.active(), 1);
        // A one-chunk package takes no place.
        assert!(uploads.admit("e", "p", true, later).is_ok());
        assert_eq!(uploads.active(), 1);
    }
}
