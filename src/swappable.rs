//! A value that is replaced whole while others read it: the operator keys
//! a node trusts and its cluster keyring both change at a reload or by a
//! command, while checks and handshakes are under way. A reader takes a
//! snapshot and keeps it for what it is doing; a replacement is seen by
//! the next reader.

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Swappable<T>(Arc<RwLock<Arc<T>>>);

// Derived `Clone` would ask `T: Clone`; a handle clones without it.
impl<T> Clone for Swappable<T> {
    fn clone(&self) -> Self {
        Swappable(self.0.clone())
    }
}

impl<T> Swappable<T> {
    pub fn new(value: T) -> Swappable<T> {
        Swappable(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The value now. A writer that panicked left a whole value behind
    /// (replacement is one assignment), so a poisoned lock is read through.
    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Readers see `value` from now on; snapshots already taken stay.
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_outlives_a_replacement_and_every_handle_sees_the_new_value() {
        let shared = Swappable::new(vec![1]);
        let other = shared.clone();
        let before = shared.current();
        other.replace(vec![2]);
        assert_eq!(*before, vec![1], "a snapshot taken before stays");
        assert_eq!(*shared.current(), vec![2]);
    }
}
