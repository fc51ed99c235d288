//! Which peer a node fetches a package from. The entry's origin always
//! holds it, but it is asked only while no other node is known to: once
//! one is, the nodes that fetched early carry the rest (waiting for one
//! that is busy rather than asking the origin), so the origin sends the
//! package a few times, not once per node. A holder that says it is busy
//! is left alone for a moment; one that fails is not asked again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a holder that said it is busy is left alone.
pub const BUSY_PAUSE: Duration = Duration::from_millis(700);

/// How many times a holder may say it does not hold the package yet (it
/// has fetched it and is still checking it) before it is given up.
pub const NOT_YET_LIMIT: u32 = 5;

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Ask this holder.
    Ask(String),
    /// Every holder is busy: wait, then look again.
    Wait(Duration),
    /// No holder is left to ask.
    NoneLeft,
}

/// The holders of one package as this fetch knows them.
#[derive(Debug)]
pub struct Holders {
    origin: String,
    known: BTreeSet<String>,
    busy_until: HashMap<String, Instant>,
    failed: HashMap<String, String>,
    not_yet: HashMap<String, u32>,
    /// The holder being fetched from: kept while it serves.
    current: Option<String>,
}

impl Holders {
    pub fn new(origin: &str) -> Holders {
        Holders {
            origin: origin.to_string(),
            known: BTreeSet::from([origin.to_string()]),
            busy_until: HashMap::new(),
            failed: HashMap::new(),
            not_yet: HashMap::new(),
            current: None,
        }
    }

    /// Holders heard of since (from their announcements and status
    /// reports), and which of the known ones are up: a holder that is not
    /// is not asked.
    pub fn learn(&mut self, holders: impl IntoIterator<Item = String>, is_up: impl Fn(&str) -> bool) {
        self.known.extend(holders);
        self.known.retain(|h| is_up(h));
        if self.current.as_ref().is_some_and(|c| !self.known.contains(c)) {
            self.current = None;
        }
    }

    /// The holder to ask now; `spin` picks among equals (a random number,
    /// so many fetchers do not all pick the same one).
    pub fn pick(&mut self, now: Instant, spin: usize) -> Pick {
        if let Some(current) = &self.current {
            return Pick::Ask(current.clone());
        }
        let usable: Vec<&String> = self.known.iter().filter(|h| !self.failed.contains_key(*h)).collect();
        if usable.is_empty() {
            return Pick::NoneLeft;
        }
        // The origin only while no other node holds the package: once one
        // does, a busy holder is waited for rather than the origin asked.
        let others: Vec<&String> = usable.iter().filter(|h| ***h != self.origin).copied().collect();
        let candidates = if others.is_empty() { usable } else { others };
        let free: Vec<&String> = candidates
            .iter()
            .filter(|h| self.busy_until.get(**h).is_none_or(|until| *until <= now))
            .copied()
            .collect();
        if free.is_empty() {
            let soonest = candidates
                .iter()
                .filter_map(|h| self.busy_until.get(*h))
                .min()
                .map_or(BUSY_PAUSE, |until| until.saturating_duration_since(now));
            return Pick::Wait(soonest.max(Duration::from_millis(50)));
        }
        let holder = free[spin % free.len()].clone();
        self.current = Some(holder.clone());
        Pick::Ask(holder)
    }

    /// Whether a holder other than the origin may still be asked.
    pub fn has_others(&self) -> bool {
        self.known
            .iter()
            .any(|h| *h != self.origin && !self.failed.contains_key(h))
    }

    /// `holder` is busy: someone else is asked meanwhile.
    pub fn busy(&mut self, holder: &str, now: Instant) {
        self.busy_until.insert(holder.to_string(), now + BUSY_PAUSE);
        self.drop_current(holder);
    }

    /// `holder` does not hold the package: it was named a holder as it
    /// finished fetching, and is still checking it. Waited for like a busy
    /// one, a few times, then given up.
    pub fn not_yet(&mut self, holder: &str, now: Instant) {
        let times = self.not_yet.entry(holder.to_string()).or_default();
        *times += 1;
        if *times > NOT_YET_LIMIT {
            self.failed(
                holder,
                format!("it said {NOT_YET_LIMIT} times that it does not hold the package"),
            );
        } else {
            self.busy(holder, now);
        }
    }

    /// `holder` failed to send a chunk: it is not asked again.
    pub fn failed(&mut self, holder: &str, why: String) {
        self.failed.insert(holder.to_string(), why);
        self.drop_current(holder);
    }

    fn drop_current(&mut self, holder: &str) {
        if self.current.as_deref() == Some(holder) {
            self.current = None;
        }
    }

    /// Why each holder that failed did, for the error when none is left.
    pub fn failures(&self) -> String {
        self.failed
            .iter()
            .map(|(h, why)| format!("{h}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(_: &str) -> bool {
        true
    }

    #[test]
    fn the_origin_is_asked_only_while_no_other_node_holds_the_package() {
        let t0 = Instant::now();
        let mut h = Holders::new("origin");
        assert_eq!(
            h.pick(t0, 7),
            Pick::Ask("origin".into()),
            "at first only the origin holds it"
        );
        h.busy("origin", t0);
        assert_eq!(h.pick(t0, 7), Pick::Wait(BUSY_PAUSE));
        h.learn(["b".to_string(), "c".to_string()], up);
        assert_eq!(
            h.pick(t0, 1),
            Pick::Ask("c".into()),
            "another holder, picked by the spin"
        );
        assert_eq!(h.pick(t0, 0), Pick::Ask("c".into()), "and kept while it serves");
        h.busy("c", t0);
        assert_eq!(h.pick(t0, 0), Pick::Ask("b".into()));
        h.busy("b", t0 + Duration::from_millis(100));
        let later = t0 + BUSY_PAUSE;
        assert_eq!(
            h.pick(t0 + Duration::from_millis(200), 0),
            Pick::Wait(Duration::from_millis(500)),
            "b and c are busy: wait for the first of them, even though the origin is free"
        );
        assert_eq!(h.pick(later, 0), Pick::Ask("c".into()));
        h.failed("c", "gone".into());
        h.failed("b", "gone".into());
        assert_eq!(h.pick(later, 0), Pick::Ask("origin".into()), "no other holder is left");
        h.failed("origin", "not_held".into());
        assert_eq!(h.pick(later, 0), Pick::NoneLeft);
        assert!(h.failures().contains("origin: not_held"), "{}", h.failures());
    }

    #[test]
    fn a_holder_that_is_not_up_is_not_asked() {
        let t0 = Instant::now();
        let mut h = Holders::new("origin");
        h.learn(["b".to_string()], |n| n != "b");
        assert_eq!(h.pick(t0, 0), Pick::Ask("origin".into()));
        h.learn([], |n| n != "origin");
        assert_eq!(h.pick(t0, 0), Pick::NoneLeft, "the current holder went down");
    }

    #[test]
    fn a_holder_still_checking_the_package_is_waited_for_a_few_times_then_given_up() {
        let t0 = Instant::now();
        let mut h = Holders::new("origin");
        h.learn(["b".to_string()], up);
        for round in 0..NOT_YET_LIMIT {
            let now = t0 + BUSY_PAUSE * round;
            assert_eq!(h.pick(now, 0), Pick::Ask("b".into()), "round {round}");
            h.not_yet("b", now);
            assert_eq!(
                h.pick(now, 0),
                Pick::Wait(BUSY_PAUSE),
                "the origin is not asked while b may soon hold it"
            );
        }
        let now = t0 + BUSY_PAUSE * NOT_YET_LIMIT;
        assert_eq!(h.pick(now, 0), Pick::Ask("b".into()));
        h.not_yet("b", now);
        assert!(!h.has_others());
        assert_eq!(h.pick(now, 0), Pick::Ask("origin".into()), "b is given up");
    }
}
