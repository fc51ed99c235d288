//! A command that an origin takes must be new: its id not seen before, and
//! its time near this node's clock. With both, a captured command cannot be
//! sent again, whatever id it carries now (the id is signed, so a new id
//! breaks the signature, and the old one is remembered).

use std::collections::{HashMap, VecDeque};

/// How far a command's time may be from this node's clock.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;

/// The ids taken in the last window (older ones fail the time check).
#[derive(Default)]
pub struct RecentIds {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl RecentIds {
    /// Takes command `id` signed at `ts`, at `now_ms`; or says why not.
    pub fn take(&mut self, id: &str, ts: u64, now_ms: u64) -> Result<(), String> {
        self.forget_before(now_ms.saturating_sub(2 * WINDOW_MS));
        let skew = ts.abs_diff(now_ms);
        if skew > WINDOW_MS {
            return Err(format!(
                "clock_skew: the command was signed at {ts}, {:.0} s from this node's clock ({now_ms}); \
                 at most {} s is taken (is a clock wrong, or is this an old command sent again?)",
                skew as f64 / 1000.0,
                WINDOW_MS / 1000
            ));
        }
        if self.seen.contains_key(id) {
            return Err(format!("replayed: command {id} was taken before"));
        }
        self.seen.insert(id.to_string(), now_ms);
        self.order.push_back((now_ms, id.to_string()));
        Ok(())
    }

    fn forget_before(&mut self, cutoff: u64) {
        while self.order.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_taken_once_and_an_old_or_future_time_never() {
        let mut ids = RecentIds::default();
        let now = 1_000_000_000;
        ids.take("a", now - 1000, now).unwrap();
        assert!(ids.take("a", now - 1000, now + 5).unwrap_err().starts_with("replayed"));
        assert!(ids
            .take("b", now - WINDOW_MS - 1, now)
            .unwrap_err()
            .starts_with("clock_skew"));
        assert!(ids
            .take("c", now + WINDOW_MS + 1, now)
            .unwrap_err()
            .starts_with("clock_skew"));
        // Long after, the id is forgotten, but its time is out of the window.
        let later = now + 3 * WINDOW_MS;
        assert!(ids.take("a", now - 1000, later).unwrap_err().starts_with("clock_skew"));
        assert!(ids.seen.len() <= 1, "old ids are forgotten");
    }
}
