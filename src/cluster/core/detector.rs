//! Failure detection: SWIM's probes with Lifeguard's refinements (Dadgar et
//! al., 2018), on the subjects the rings give this node.
//!
//! - **Probes.** Every `probe_interval` this node pings one of its subjects,
//!   in turn. No ack within `probe_timeout`: it asks `indirect_probes`
//!   neighbours to ping the subject for it. If none reaches it, the subject
//!   is suspected. A subject whose link breaks, or that someone else
//!   suspects, is probed at once, out of turn.
//! - **Local health.** A score from 0 to `max_health`: up by one for each
//!   failed probe (and for each helper that did not even send its nack, a
//!   sign that *this* node is the slow one) unless no link to the subject
//!   could be opened and every helper sent its nack (they could not reach
//!   it either), and for each suspicion of this
//!   node it has to refute; down by one for each probe answered. Probe
//!   intervals and timeouts are stretched by `score + 1`, so a node that is
//!   itself slow holds back its accusations instead of spreading them.
//! - **Dynamic suspicion.** A suspicion starts with `suspicion_max` to run
//!   and shrinks towards `suspicion_min` as other observers independently
//!   confirm it: `max − (max − min)·ln(C + 1)/ln(k + 1)` after `C` of the `k`
//!   expected confirmations. A lone accuser (often the slow one) waits long;
//!   a crash that every observer sees is declared quickly.
//! - **Stalls are not crashes.** When a probe and its helpers go
//!   unanswered, the core asks its driver whether the subject's *host*
//!   still acknowledges the link (on TCP: the peer's kernel acked what we
//!   sent). If it does, the process is alive but starved (CPU, swap, a
//!   pause), and the subject is not suspected until it has stayed silent
//!   for `stall_grace`. A killed process (its links reset) and a lost host
//!   (nothing acked) are suspected at once. This is what keeps a mass start
//!   of hundreds of processes on a few cores free of false deaths.

use super::hash::StableMap;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failure detector timings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub indirect_probes: usize,
    pub suspicion_min: Duration,
    pub suspicion_max: Duration,
    /// The highest local health score (Lifeguard's S; memberlist uses 8).
    pub max_health: u32,
    /// How long a subject whose host still acknowledges the link may leave
    /// probes unanswered before it is suspected.
    pub stall_grace: Duration,
}

/// What the detector asks the core to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectorOut {
    Ping {
        to: Arc<str>,
        seq: u32,
    },
    PingReq {
        helper: Arc<str>,
        target: Arc<str>,
        seq: u32,
    },
    PingReqAck {
        to: Arc<str>,
        seq: u32,
        reached: bool,
    },
    /// Neither a probe sent at `probed_at` nor its helpers reached
    /// `target`: suspect it (unless its host still answers, see
    /// [`Detector::host_answered`]). `unreachable_by_all`: no link to it
    /// could be opened, and helpers were asked and every one answered
    /// that it could not reach it either, so this node's own network is
    /// not the cause.
    Suspect {
        target: Arc<str>,
        probed_at: Instant,
        unreachable_by_all: bool,
    },
    /// A suspicion ran out: declare the member dead.
    Dead {
        name: Arc<str>,
        boot: u64,
        incarnation: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Direct,
    Indirect { asked: usize, nacks: usize },
}

#[derive(Debug, Clone)]
struct Probe {
    target: Arc<str>,
    seq: u32,
    started: Instant,
    deadline: Instant,
    stage: Stage,
}

/// An indirect probe this node runs for another.
#[derive(Debug, Clone)]
struct Helping {
    requester: Arc<str>,
    their_seq: u32,
    target: Arc<str>,
    deadline: Instant,
}

/// One suspected member.
#[derive(Debug, Clone)]
pub struct Suspicion {
    pub boot: u64,
    pub incarnation: u32,
    pub started: Instant,
    pub accusers: Vec<Arc<str>>,
    /// Confirmations that would bring the timeout down to its minimum.
    pub expected: usize,
    pub deadline: Instant,
}

/// Counters for the debug dump and the simulator.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DetectorCounters {
    pub probes: u64,
    pub probes_failed: u64,
    pub indirect_probes: u64,
    pub helped: u64,
    /// Failed probes not turned into suspicions: the subject's host still
    /// acknowledged the link.
    pub stalls_excused: u64,
}

/// A subject that leaves probes unanswered while its host acknowledges.
#[derive(Debug, Clone, Copy)]
struct Stall {
    since: Instant,
    last: Instant,
}

pub struct Detector {
    config: DetectorConfig,
    health: u32,
    seq: u32,
    next_probe: Instant,
    turn: usize,
    probe: Option<Probe>,
    urgent: VecDeque<Arc<str>>,
    urgent_since: Option<Instant>,
    helping: StableMap<u32, Helping>,
    suspicions: StableMap<Arc<str>, Suspicion>,
    /// `suspicions` by deadline.
    expiry: BTreeSet<(Instant, Arc<str>)>,
    stalls: StableMap<Arc<str>, Stall>,
    /// When a dial to each member last failed, kept for two probe
    /// intervals: a probe that follows sends no dial of its own (dials to
    /// an address are spaced out), yet the failure is as fresh.
    unreachable_at: StableMap<Arc<str>, Instant>,
    pub counters: DetectorCounters,
}

impl Detector {
    pub fn new(config: DetectorConfig, now: Instant) -> Detector {
        Detector {
            next_probe: now + config.probe_interval,
            config,
            health: 0,
            seq: 0,
            turn: 0,
            probe: None,
            urgent: VecDeque::new(),
            urgent_since: None,
            helping: StableMap::default(),
            suspicions: StableMap::default(),
            expiry: BTreeSet::new(),
            stalls: StableMap::default(),
            unreachable_at: StableMap::default(),
            counters: DetectorCounters::default(),
        }
    }

    /// Lifeguard's local health score: 0 is healthy.
    pub fn health(&self) -> u32 {
        self.health
    }

    fn scale(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn worse(&mut self, by: u32) {
        self.health = (self.health + by).min(self.config.max_health);
    }

    /// This node had to refute a suspicion of itself: it may be the slow one.
    pub fn refuted(&mut self) {
        self.worse(1);
    }

    /// Probe `name` as soon as the current probe is done.
    pub fn probe_soon(&mut self, name: &Arc<str>, now: Instant) {
        let current = self.probe.as_ref().is_some_and(|p| p.target == *name);
        if !current && !self.urgent.contains(name) {
            self.urgent.push_back(name.clone());
            self.urgent_since.get_or_insert(now);
        }
    }

    /// `name` cannot be reached at all (a dial failed): a direct probe of it
    /// fails now, and helping probes of it answer no.
    pub fn unreachable(&mut self, name: &str, now: Instant, helpers: &[Arc<str>], out: &mut Vec<DetectorOut>) {
        if let Some(p) = &self.probe {
            if &*p.target == name && p.stage == Stage::Direct {
                self.go_indirect(now, helpers, out);
            }
        }
        self.unreachable_at.insert(Arc::from(name), now);
        let failed: Vec<u32> = self
            .helping
            .iter()
            .filter(|(_, h)| &*h.target == name)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in failed {
            if let Some(h) = self.helping.remove(&seq) {
                out.push(DetectorOut::PingReqAck {
                    to: h.requester,
                    seq: h.their_seq,
                    reached: false,
                });
            }
        }
    }

    /// Runs what is due: helper nacks, suspicion expiry, probe stages, and
    /// the next probe. `subjects` are this node's subjects now; `helpers`
    /// gives the linked neighbours to ask for an indirect probe of a target.
    pub fn tick(
        &mut self,
        now: Instant,
        subjects: &[Arc<str>],
        helpers: impl Fn(&str) -> Vec<Arc<str>>,
        out: &mut Vec<DetectorOut>,
    ) {
        let late: Vec<u32> = self
            .helping
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in late {
            if let Some(h) = self.helping.remove(&seq) {
                out.push(DetectorOut::PingReqAck {
                    to: h.requester,
                    seq: h.their_seq,
                    reached: false,
                });
            }
        }
        let grace = self.config.stall_grace;
        self.stalls
            .retain(|_, s| now.saturating_duration_since(s.last) <= grace);
        let fresh = self.unreachable_kept();
        self.unreachable_at.retain(|_, at| *at + fresh >= now);
        let mut expired = Vec::new();
        while let Some((at, name)) = self.expiry.first().cloned() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            expired.push(name);
        }
        for name in expired {
            if let Some(s) = self.suspicions.remove(&name) {
                out.push(DetectorOut::Dead {
                    name,
                    boot: s.boot,
                    incarnation: s.incarnation,
                });
            }
        }
        if let Some(p) = self.probe.clone() {
            if !subjects.contains(&p.target) && !self.suspicions.contains_key(&p.target) {
                // No longer ours to watch (the rings moved, or it died).
                self.probe = None;
            } else if p.deadline <= now {
                match p.stage {
                    Stage::Direct => {
                        let helpers = helpers(&p.target);
                        self.go_indirect(now, &helpers, out);
                    }
                    Stage::Indirect { asked, nacks } => self.fail(asked.saturating_sub(nacks), false, out),
                }
            }
        }
        if self.probe.is_none() {
            self.start_probe(now, subjects, out);
        }
    }

    /// This node's own wake-up came late: it was itself starved of CPU, so
    /// an ack or a refutation may be waiting, unread, in its own queue.
    /// Every probe step, helper answer and suspicion that fell due waits
    /// `grace` more, so what is queued is read before anyone is accused.
    pub fn postpone_due(&mut self, now: Instant, grace: Duration) {
        let later = now + grace;
        if let Some(p) = self.probe.as_mut().filter(|p| p.deadline <= now) {
            p.deadline = later;
        }
        for h in self.helping.values_mut().filter(|h| h.deadline <= now) {
            h.deadline = later;
        }
        while let Some((at, name)) = self.expiry.first().cloned() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(s) = self.suspicions.get_mut(&name) {
                s.deadline = later;
            }
            self.expiry.insert((later, name));
        }
    }

    fn start_probe(&mut self, now: Instant, subjects: &[Arc<str>], out: &mut Vec<DetectorOut>) {
        if self.urgent.is_empty() {
            self.urgent_since = None;
        }
        let urgent = loop {
            match self.urgent.pop_front() {
                Some(n) if subjects.contains(&n) => break Some(n),
                Some(_) => continue,
                None => break None,
            }
        };
        let target = match urgent {
            Some(t) => t,
            None if now >= self.next_probe && !subjects.is_empty() => {
                self.turn = self.turn.wrapping_add(1);
                subjects[self.turn % subjects.len()].clone()
            }
            None => {
                // Nobody to probe this round (a lone node, or one still
                // joining): the round passes, so the deadline moves on
                // instead of staying in the past and waking the actor in a
                // tight loop.
                if now >= self.next_probe {
                    self.next_probe = now + self.scale(self.config.probe_interval);
                }
                return;
            }
        };
        self.next_probe = now + self.scale(self.config.probe_interval);
        let seq = self.next_seq();
        self.counters.probes += 1;
        self.probe = Some(Probe {
            target: target.clone(),
            seq,
            started: now,
            deadline: now + self.scale(self.config.probe_timeout),
            stage: Stage::Direct,
        });
        out.push(DetectorOut::Ping { to: target, seq });
    }

    fn go_indirect(&mut self, now: Instant, helpers: &[Arc<str>], out: &mut Vec<DetectorOut>) {
        let timeout = self.scale(self.config.probe_timeout);
        let Some(p) = self.probe.as_mut() else { return };
        let asked: Vec<Arc<str>> = helpers
            .iter()
            .filter(|h| **h != p.target)
            .take(self.config.indirect_probes)
            .cloned()
            .collect();
        if asked.is_empty() {
            return self.fail(0, false, out);
        }
        self.counters.indirect_probes += 1;
        p.stage = Stage::Indirect {
            asked: asked.len(),
            nacks: 0,
        };
        p.deadline = now + timeout;
        for helper in asked {
            out.push(DetectorOut::PingReq {
                helper,
                target: p.target.clone(),
                seq: p.seq,
            });
        }
    }

    /// How long a failed dial to a member counts as fresh.
    fn unreachable_kept(&self) -> Duration {
        self.config.probe_interval * 2
    }

    /// Whether a dial to `name` failed fresh at `at` (see `unreachable_at`).
    fn unreachable_since(&self, name: &str, at: Instant) -> bool {
        let fresh = self.unreachable_kept();
        self.unreachable_at
            .get(name)
            .is_some_and(|failed| *failed + fresh >= at)
    }

    /// A probe failed. It costs local health unless no link to the target
    /// could be opened and every helper asked answered that it could not
    /// reach it either: then the failure is the target's, not this node's.
    /// Without that, a peer that invents members nobody can reach would
    /// have every node that probes them slow its own probing to the
    /// slowest, and so its detection of real failures. (A probe lost on a
    /// lossy link still costs health, as Lifeguard has it.)
    fn fail(&mut self, missing_nacks: usize, helpers_agreed: bool, out: &mut Vec<DetectorOut>) {
        if let Some(p) = self.probe.take() {
            self.counters.probes_failed += 1;
            let unreachable_by_all = helpers_agreed && self.unreachable_since(&p.target, p.started);
            if !unreachable_by_all {
                self.worse(1 + missing_nacks as u32);
            }
            out.push(DetectorOut::Suspect {
                target: p.target,
                probed_at: p.started,
                unreachable_by_all,
            });
        }
    }

    /// An ack from `from` for `seq`.
    pub fn on_ack(&mut self, from: &str, seq: u32, out: &mut Vec<DetectorOut>) {
        self.stalls.remove(from);
        if self.probe.as_ref().is_some_and(|p| p.seq == seq && &*p.target == from) {
            self.probe = None;
            self.health = self.health.saturating_sub(1);
            return;
        }
        if let Some(h) = self.helping.get(&seq) {
            if &*h.target == from {
                let h = self.helping.remove(&seq).expect("just found");
                out.push(DetectorOut::PingReqAck {
                    to: h.requester,
                    seq: h.their_seq,
                    reached: true,
                });
            }
        }
    }

    /// `from`'s process answered, though not with an ack (it was at its link
    /// cap and turned the probe's link away): a probe of it, ours or one we
    /// help with, has its answer.
    pub fn answered(&mut self, from: &str, out: &mut Vec<DetectorOut>) {
        if let Some(seq) = self.probe.as_ref().filter(|p| &*p.target == from).map(|p| p.seq) {
            self.on_ack(from, seq, out);
        }
        let helping: Vec<u32> = self
            .helping
            .iter()
            .filter(|(_, h)| &*h.target == from)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in helping {
            self.on_ack(from, seq, out);
        }
    }

    /// A helper's answer about our current probe.
    pub fn on_pingreq_ack(&mut self, seq: u32, reached: bool, out: &mut Vec<DetectorOut>) {
        let Some(p) = self.probe.as_mut() else { return };
        if p.seq != seq {
            return;
        }
        let Stage::Indirect { asked, nacks } = p.stage else {
            return;
        };
        if reached {
            if let Some(p) = self.probe.take() {
                self.stalls.remove(&p.target);
            }
            return;
        }
        p.stage = Stage::Indirect {
            asked,
            nacks: nacks + 1,
        };
        if nacks + 1 >= asked {
            // Every helper answered no: no need to wait out the deadline.
            self.fail(0, true, out);
        }
    }

    /// Another node asks this one to probe `target`.
    pub fn on_pingreq(
        &mut self,
        from: &Arc<str>,
        seq: u32,
        target: &Arc<str>,
        now: Instant,
        out: &mut Vec<DetectorOut>,
    ) {
        self.counters.helped += 1;
        if self.unreachable_since(target, now) {
            // A dial to it failed a moment ago, and another would not be
            // sent yet: answer "no" now, not at the deadline.
            out.push(DetectorOut::PingReqAck {
                to: from.clone(),
                seq,
                reached: false,
            });
            return;
        }
        let my_seq = self.next_seq();
        // Answer "no" a little before the asker gives up on us.
        let deadline = now + self.scale(self.config.probe_timeout).mul_f32(0.8);
        self.helping.insert(
            my_seq,
            Helping {
                requester: from.clone(),
                their_seq: seq,
                target: target.clone(),
                deadline,
            },
        );
        out.push(DetectorOut::Ping {
            to: target.clone(),
            seq: my_seq,
        });
    }

    /// Starts or confirms a suspicion. Answers true if it is new (or about a
    /// newer incarnation), false for a confirmation or a repeat.
    pub fn suspect(
        &mut self,
        name: &Arc<str>,
        boot: u64,
        incarnation: u32,
        accuser: Option<&Arc<str>>,
        expected: usize,
        now: Instant,
    ) -> bool {
        let (min, max) = (self.config.suspicion_min, self.config.suspicion_max);
        if let Some(s) = self.suspicions.get_mut(name) {
            if s.boot == boot && s.incarnation >= incarnation {
                if let Some(a) = accuser {
                    if !s.accusers.contains(a) {
                        s.accusers.push(a.clone());
                        self.expiry.remove(&(s.deadline, name.clone()));
                        s.deadline = s.started + suspicion_timeout(min, max, s.accusers.len() - 1, s.expected);
                        self.expiry.insert((s.deadline, name.clone()));
                    }
                }
                return false;
            }
        }
        let accusers: Vec<Arc<str>> = accuser.into_iter().cloned().collect();
        let confirmations = accusers.len().saturating_sub(1);
        let deadline = now + suspicion_timeout(min, max, confirmations, expected);
        let old = self.suspicions.insert(
            name.clone(),
            Suspicion {
                boot,
                incarnation,
                started: now,
                accusers,
                expected,
                deadline,
            },
        );
        if let Some(old) = old {
            self.expiry.remove(&(old.deadline, name.clone()));
        }
        self.expiry.insert((deadline, name.clone()));
        true
    }

    /// The driver found that `name`'s host still acknowledges the link
    /// although the process left a probe unanswered. Answers whether to
    /// suspect it anyway: only once it has stalled for `stall_grace`.
    pub fn host_answered(&mut self, name: &Arc<str>, now: Instant) -> bool {
        let grace = self.config.stall_grace;
        let stall = self
            .stalls
            .entry(name.clone())
            .or_insert(Stall { since: now, last: now });
        if now.saturating_duration_since(stall.last) > grace {
            // Not probed (or not failed) for a long while: a new stall.
            stall.since = now;
        }
        stall.last = now;
        let suspect = now.saturating_duration_since(stall.since) >= grace;
        if suspect {
            self.stalls.remove(name);
        } else {
            self.counters.stalls_excused += 1;
        }
        suspect
    }

    /// How long `name` has been stalled, if it is.
    pub fn stalled_for(&self, name: &str, now: Instant) -> Option<Duration> {
        self.stalls.get(name).map(|s| now.saturating_duration_since(s.since))
    }

    /// The member was refuted, declared, replaced or forgotten.
    pub fn clear(&mut self, name: &str) {
        if let Some((key, s)) = self.suspicions.remove_entry(name) {
            self.expiry.remove(&(s.deadline, key));
        }
    }

    pub fn suspicion(&self, name: &str) -> Option<&Suspicion> {
        self.suspicions.get(name)
    }

    pub fn suspicions(&self) -> usize {
        self.suspicions.len()
    }

    /// The earliest time [`Detector::tick`] has work.
    pub fn next_deadline(&self) -> Instant {
        let mut next = match &self.probe {
            Some(p) => p.deadline,
            None => match self.urgent_since {
                Some(since) if !self.urgent.is_empty() => since.min(self.next_probe),
                _ => self.next_probe,
            },
        };
        for h in self.helping.values() {
            next = next.min(h.deadline);
        }
        if let Some((at, _)) = self.expiry.first() {
            next = next.min(*at);
        }
        next
    }
}

/// Lifeguard's dynamic suspicion timeout after `confirmations` of `expected`.
pub fn suspicion_timeout(min: Duration, max: Duration, confirmations: usize, expected: usize) -> Duration {
    if expected == 0 || max <= min {
        return min;
    }
    let frac = ((confirmations as f64) + 1.0).ln() / ((expected as f64) + 1.0).ln();
    let span = (max - min).as_secs_f64() * frac.min(1.0);
    max.saturating_sub(Duration::from_secs_f64(span)).max(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DetectorConfig {
        DetectorConfig {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            indirect_probes: 2,
            suspicion_min: Duration::from_secs(1),
            suspicion_max: Duration::from_secs(6),
            max_health: 8,
            stall_grace: Duration::from_secs(10),
        }
    }

    fn name(n: &str) -> Arc<str> {
        Arc::from(n)
    }

    fn helpers(_: &str) -> Vec<Arc<str>> {
        vec![name("h1"), name("h2"), name("h3")]
    }

    #[test]
    fn suspicion_shrinks_with_confirmations() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(6));
        assert_eq!(suspicion_timeout(min, max, 0, 3), max);
        let one = suspicion_timeout(min, max, 1, 3);
        let two = suspicion_timeout(min, max, 2, 3);
        assert!(max > one && one > two && two > min, "{one:?} {two:?}");
        assert_eq!(suspicion_timeout(min, max, 3, 3), min);
        assert_eq!(suspicion_timeout(min, max, 9, 3), min);
        assert_eq!(suspicion_timeout(min, max, 0, 0), min, "nobody else could confirm");
    }

    #[test]
    fn a_silent_subject_is_probed_then_asked_about_then_suspected() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let subjects = [name("s")];
        let mut out = Vec::new();
        d.tick(t0, &subjects, helpers, &mut out);
        assert!(out.is_empty(), "the first probe waits one interval");
        d.tick(t0 + Duration::from_millis(500), &subjects, helpers, &mut out);
        let Some(DetectorOut::Ping { seq, .. }) = out.pop() else {
            panic!("{out:?}")
        };
        d.tick(t0 + Duration::from_millis(700), &subjects, helpers, &mut out);
        assert_eq!(out.len(), 2, "two helpers asked: {out:?}");
        assert!(out
            .iter()
            .all(|o| matches!(o, DetectorOut::PingReq { seq: s, .. } if *s == seq)));
        out.clear();
        d.on_pingreq_ack(seq, false, &mut out);
        assert!(out.is_empty());
        d.on_pingreq_ack(seq, false, &mut out);
        assert_eq!(
            out,
            vec![DetectorOut::Suspect {
                target: name("s"),
                probed_at: t0 + Duration::from_millis(500),
                unreachable_by_all: false,
            }]
        );
        assert_eq!(d.health(), 1, "a failed probe with every nack back costs one point");
    }

    #[test]
    fn a_subject_no_one_can_reach_costs_no_health() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let subjects = [name("s")];
        let mut out = Vec::new();
        d.tick(t0 + Duration::from_millis(500), &subjects, helpers, &mut out);
        let Some(DetectorOut::Ping { seq, .. }) = out.pop() else {
            panic!("{out:?}")
        };
        // The dial to it fails at once: the helpers are asked without
        // waiting out the timeout, and neither reaches it.
        d.unreachable("s", t0 + Duration::from_millis(510), &helpers("s"), &mut out);
        assert_eq!(out.len(), 2, "two helpers asked: {out:?}");
        out.clear();
        d.on_pingreq_ack(seq, false, &mut out);
        d.on_pingreq_ack(seq, false, &mut out);
        assert_eq!(
            out,
            vec![DetectorOut::Suspect {
                target: name("s"),
                probed_at: t0 + Duration::from_millis(500),
                unreachable_by_all: true,
            }]
        );
        assert_eq!(d.health(), 0, "the failure is the subject's, not this node's");
    }

    #[test]
    fn a_stalled_subject_whose_host_answers_is_excused_until_the_grace_runs_out() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let s = name("s");
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        assert!(!d.host_answered(&s, at(1.0)), "the first silent probe starts the stall");
        assert!(!d.host_answered(&s, at(4.0)));
        assert_eq!(d.stalled_for("s", at(4.0)), Some(Duration::from_secs(3)));
        assert!(!d.host_answered(&s, at(10.9)), "9.9 s stalled: still excused");
        assert!(d.host_answered(&s, at(11.0)), "10 s stalled: suspect it");
        assert_eq!(d.counters.stalls_excused, 3);
        assert_eq!(
            d.stalled_for("s", at(11.0)),
            None,
            "a suspicion starts the next stall afresh"
        );
    }

    #[test]
    fn an_answer_ends_a_stall_and_a_long_quiet_one_starts_afresh() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let s = name("s");
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut out = Vec::new();
        assert!(!d.host_answered(&s, at(0.0)));
        d.on_ack("s", 99, &mut out);
        assert_eq!(
            d.stalled_for("s", at(9.0)),
            None,
            "any ack from the subject ends its stall"
        );
        assert!(!d.host_answered(&s, at(9.0)), "so a later silence starts a new one");
        // Not probed for longer than the grace (it stopped being a subject,
        // say): the old stall is forgotten, not counted on.
        d.tick(at(19.5), &[], helpers, &mut out);
        assert_eq!(d.stalled_for("s", at(19.5)), None);
        assert!(!d.host_answered(&s, at(19.5)));
        assert!(!d.host_answered(&s, at(25.0)));
        assert!(d.host_answered(&s, at(29.5)));
    }

    #[test]
    fn a_slow_node_stretches_its_probes_and_recovers() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let subjects = [name("s")];
        let mut out = Vec::new();
        // Helpers never answer: this node is likely the slow one.
        d.tick(t0 + Duration::from_millis(500), &subjects, helpers, &mut out);
        d.tick(t0 + Duration::from_millis(700), &subjects, helpers, &mut out);
        d.tick(t0 + Duration::from_millis(900), &subjects, helpers, &mut out);
        assert!(out
            .iter()
            .any(|o| matches!(o, DetectorOut::Suspect { target, .. } if *target == name("s"))));
        assert_eq!(d.health(), 3, "one for the failure, two for the missing nacks");
        out.clear();
        // The next probe comes 4 intervals later, with a 4× timeout.
        d.tick(t0 + Duration::from_millis(2000), &subjects, helpers, &mut out);
        let Some(DetectorOut::Ping { seq, .. }) = out.pop() else {
            panic!("{out:?}")
        };
        d.tick(t0 + Duration::from_millis(2700), &subjects, helpers, &mut out);
        assert!(out.is_empty(), "still waiting: the timeout is stretched to 800 ms");
        d.on_ack("s", seq, &mut out);
        assert_eq!(d.health(), 2, "an answered probe gives a point back");
    }

    #[test]
    fn helping_answers_yes_on_ack_and_no_when_late_or_unreachable() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let mut out = Vec::new();
        d.on_pingreq(&name("asker"), 7, &name("t"), t0, &mut out);
        let Some(DetectorOut::Ping { seq, .. }) = out.pop() else {
            panic!()
        };
        d.on_ack("t", seq, &mut out);
        assert_eq!(
            out.pop(),
            Some(DetectorOut::PingReqAck {
                to: name("asker"),
                seq: 7,
                reached: true
            })
        );
        d.on_pingreq(&name("asker"), 8, &name("t"), t0, &mut out);
        out.clear();
        d.tick(t0 + Duration::from_millis(170), &[], helpers, &mut out);
        assert_eq!(
            out,
            vec![DetectorOut::PingReqAck {
                to: name("asker"),
                seq: 8,
                reached: false
            }]
        );
        out.clear();
        d.on_pingreq(&name("asker"), 9, &name("gone"), t0, &mut out);
        out.clear();
        d.unreachable("gone", t0, &[], &mut out);
        assert_eq!(
            out,
            vec![DetectorOut::PingReqAck {
                to: name("asker"),
                seq: 9,
                reached: false
            }]
        );
    }

    #[test]
    fn a_suspicion_expires_sooner_with_each_independent_accuser() {
        let t0 = Instant::now();
        let mut d = Detector::new(config(), t0);
        let x = name("x");
        assert!(d.suspect(&x, 1, 0, Some(&name("a")), 3, t0));
        assert_eq!(d.suspicion("x").unwrap().deadline, t0 + Duration::from_secs(6));
        assert!(
            !d.suspect(&x, 1, 0, Some(&name("a")), 3, t0),
            "the same accuser twice counts once"
        );
        assert_eq!(d.suspicion("x").unwrap().deadline, t0 + Duration::from_secs(6));
        for a in ["b", "c", "d"] {
            d.suspect(&x, 1, 0, Some(&name(a)), 3, t0 + Duration::from_millis(100));
        }
        assert_eq!(d.suspicion("x").unwrap().deadline, t0 + Duration::from_secs(1));
        let mut out = Vec::new();
        d.tick(t0 + Duration::from_secs(1), &[], helpers, &mut out);
        assert!(out.contains(&DetectorOut::Dead {
            name: x.clone(),
            boot: 1,
            incarnation: 0
        }));
        assert_eq!(d.suspicions(), 0);
    }
}
