//! Which inbound connections may start a handshake. A connection that has
//! not finished its handshake costs memory and a task, and anyone who can
//! reach the cluster port can open one: 2,000 idle connections once took a
//! node from 11 MB to 275 MB. So only so many may wait at once, in total and
//! from one source address.
//!
//! The places are shared fairly among sources: when all are taken, a
//! connection from a source with fewer waiting than the source with the
//! most takes the oldest place of that one, whose handshake is dropped.
//! Without this, nine addresses that reopened connections as fast as they
//! were closed held every place, and a real node could not join for as
//! long as they kept at it; now a source with nothing waiting always gets
//! in, and a flood only ever pushes out its own connections.
//!
//! Loopback sources are held to the total only: nodes that share a host
//! (the benchmark's 200 nodes, tests) all dial from 127.0.0.1, and a mass
//! start would look like a flood from one source.
//!
//! Pure bookkeeping; the transport's accept loop asks and releases, and
//! drops the handshake of a connection that lost its place.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// How many connections may be in their handshake at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub total: usize,
    pub per_source: usize,
}

impl Default for AdmissionLimits {
    /// 256 in all, 32 from one address. A handshake takes milliseconds, so
    /// a node rarely has many waiting; one closed over the limit is dialed
    /// again by a real node (joins and links retry), and a flood holds at
    /// most 256 small pending handshakes.
    fn default() -> Self {
        AdmissionLimits {
            total: 256,
            per_source: 32,
        }
    }
}

/// Why a connection was closed unheard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    Source,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Total => "too many handshakes in progress",
            Refusal::Source => "too many handshakes in progress from this address",
        })
    }
}

/// A place given to a connection, to hand back with [`Admission::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    pub source: IpAddr,
    id: u64,
}

/// A connection let in; `pushed_out` is what the caller gave for the
/// connection whose place it took, to drop (ending that handshake).
#[derive(Debug)]
pub struct Admitted<T> {
    pub place: Place,
    pub pushed_out: Option<T>,
}

/// The connections in their handshake now, each with the caller's `T`
/// (what ends its handshake when dropped).
#[derive(Debug)]
pub struct Admission<T> {
    limits: AdmissionLimits,
    next_id: u64,
    /// Per source, oldest first.
    by_source: HashMap<IpAddr, VecDeque<(u64, T)>>,
    pending: usize,
    /// Connections refused since the start.
    pub refused: u64,
    /// Handshakes ended early to make room for another source.
    pub pushed_out: u64,
}

impl<T> Admission<T> {
    pub fn new(limits: AdmissionLimits) -> Admission<T> {
        Admission {
            limits,
            next_id: 0,
            by_source: HashMap::new(),
            pending: 0,
            refused: 0,
            pushed_out: 0,
        }
    }

    /// Lets a connection from `source` start its handshake, taking the
    /// oldest place of the busiest source if every place is taken and
    /// `source` has fewer waiting than it; or says why not.
    pub fn admit(&mut self, source: IpAddr, value: T) -> Result<Admitted<T>, Refusal> {
        let waiting = self.by_source.get(&source).map_or(0, VecDeque::len);
        if !source.is_loopback() && waiting >= self.limits.per_source {
            self.refused += 1;
            return Err(Refusal::Source);
        }
        let mut pushed_out = None;
        if self.pending >= self.limits.total {
            let busiest = self
                .by_source
                .iter()
                .max_by_key(|(ip, queue)| (queue.len(), **ip))
                .map(|(ip, queue)| (*ip, queue.len()));
            match busiest {
                Some((busiest, most)) if waiting + 1 < most => {
                    pushed_out = self.take_oldest(busiest);
                    self.pushed_out += 1;
                }
                _ => {
                    self.refused += 1;
                    return Err(Refusal::Total);
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_source.entry(source).or_default().push_back((id, value));
        self.pending += 1;
        Ok(Admitted {
            place: Place { source, id },
            pushed_out,
        })
    }

    fn take_oldest(&mut self, source: IpAddr) -> Option<T> {
        let queue = self.by_source.get_mut(&source)?;
        let (_, value) = queue.pop_front()?;
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
        self.pending -= 1;
        Some(value)
    }

    /// The connection at `place` finished its handshake, well or not (a
    /// place already taken by another source is not counted twice).
    pub fn release(&mut self, place: Place) -> Option<T> {
        let queue = self.by_source.get_mut(&place.source)?;
        let at = queue.iter().position(|(id, _)| *id == place.id)?;
        let (_, value) = queue.remove(at)?;
        if queue.is_empty() {
            self.by_source.remove(&place.source);
        }
        self.pending -= 1;
        Some(value)
    }

    pub fn pending(&self) -> usize {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let mut admission = Admission::new(AdmissionLimits {
            total: 10,
            per_source: 3,
        });
        let a = ip("10.0.0.1");
        let places: Vec<Place> = (0..3).map(|i| admission.admit(a, i).unwrap().place).collect();
        assert_eq!(admission.admit(a, 9).unwrap_err(), Refusal::Source);
        assert!(admission.admit(ip("10.0.0.2"), 9).is_ok());
        assert_eq!(admission.release(places[0]), Some(0));
        assert!(admission.admit(a, 3).is_ok(), "a finished handshake frees a place");
        assert_eq!(admission.release(places[0]), None, "released once only");
        assert_eq!((admission.refused, admission.pending()), (1, 4));
    }

    #[test]
    fn the_total_holds_for_every_source_loopback_included() {
        let mut admission = Admission::new(AdmissionLimits {
            total: 5,
            per_source: 2,
        });
        let local = ip("127.0.0.1");
        let places: Vec<Place> = (0..5)
            .map(|i| {
                admission
                    .admit(local, i)
                    .expect("loopback is held to the total only")
                    .place
            })
            .collect();
        assert_eq!(admission.admit(local, 5).unwrap_err(), Refusal::Total);
        for place in places {
            admission.release(place);
        }
        assert_eq!(admission.pending(), 0);
        assert!(admission.by_source.is_empty(), "released sources are forgotten");
        assert_eq!(admission.refused, 1);
    }

    /// Nine sources that reopen every connection at once hold every place;
    /// a tenth source must still get in, and they must not push it out.
    #[test]
    fn with_every_place_held_by_a_flood_a_new_source_takes_the_busiest_ones_oldest_place() {
        let mut admission = Admission::new(AdmissionLimits {
            total: 256,
            per_source: 32,
        });
        let flood: Vec<IpAddr> = (0..9).map(|i| ip(&format!("10.0.0.{}", 100 + i))).collect();
        let mut held = 0;
        for round in 0..32 {
            for source in &flood {
                if admission.admit(*source, format!("{source} #{round}")).is_ok() {
                    held += 1;
                }
            }
        }
        assert_eq!((held, admission.pending()), (256, 256), "the flood holds every place");

        let node = ip("10.0.0.7");
        let admitted = admission
            .admit(node, "node".to_string())
            .expect("a source with none waiting gets in");
        let pushed = admitted.pushed_out.expect("a flood connection makes room");
        assert!(pushed.ends_with("#0"), "the oldest of the busiest source: {pushed}");
        assert_eq!(admission.pending(), 256);

        // The flood reopens as fast as it can: it only pushes out its own.
        for _ in 0..10_000 {
            for source in &flood {
                if let Ok(a) = admission.admit(*source, "again".to_string()) {
                    assert_ne!(a.pushed_out.as_deref(), Some("node"), "the node's handshake stays");
                }
            }
        }
        assert_eq!(admission.release(admitted.place).as_deref(), Some("node"));
        assert!(admission.pending() <= 256);
    }

    #[test]
    fn loopback_sources_of_one_host_still_share_the_total_as_before() {
        let mut admission = Admission::new(AdmissionLimits {
            total: 4,
            per_source: 2,
        });
        let local = ip("127.0.0.1");
        for i in 0..4 {
            admission.admit(local, i).unwrap();
        }
        // Another connection from the same host is refused, not swapped in.
        assert_eq!(admission.admit(local, 4).unwrap_err(), Refusal::Total);
        assert_eq!(admission.pushed_out, 0);
    }
}
