//! Telling a full disk from a bad package.
//!
//! A deploy that could not be written for want of space was reported as
//! `bad_package`, and the package was thrown out of the cache, so the
//! operator looked for a fault in the package that was not there. A write
//! that fails because the disk (or the user's quota) is full is named as
//! such, with the code `disk_full`, wherever the Deployer writes.

use std::fmt::Display;
use std::io;

/// Whether `e` says the disk, or the node user's quota, is full.
pub fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// A write of the node's own files that failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Failed(String),
}

impl WriteError {
    /// `what` failed with `e`: a full disk, or another failure.
    pub fn new(what: impl Display, e: &io::Error) -> Self {
        if is_full(e) {
            WriteError::DiskFull(format!("{what}: {e}"))
        } else {
            WriteError::Failed(format!("{what}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_and_quota_are_a_full_disk_and_nothing_else_is() {
        let full = WriteError::new("cannot write x", &io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, WriteError::DiskFull(_)), "{full:?}");
        assert_eq!(
            full.to_string(),
            "the disk is full: cannot write x: No space left on device (os error 28)"
        );
        assert!(is_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        let denied = WriteError::new("cannot write x", &io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(denied, WriteError::Failed(_)), "{denied:?}");
    }
}
