//! Which inbound connections may start a handshake. A connection that has
//! not finished its handshake costs memory and a task, and anyone who can
//! reach the cluster port can open one: 2,000 idle connections once took a
//! node from 11 MB to 275 MB. So only so many may wait at once, in total and
//! from one source address; the rest are closed at once.
//!
//! Loopback sources are held to the total only: nodes that share a host
//! (the benchmark's 200 nodes, tests) all dial from 127.0.0.1, and a mass
//! start would look like a flood from one source.
//!
//! Pure bookkeeping; the transport's accept loop asks and releases.

use std::collections::HashMap;
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

/// The connections in their handshake now.
#[derive(Debug, Default)]
pub struct Admission {
    limits: AdmissionLimits,
    pending: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Connections refused since the start.
    pub refused: u64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            ..Admission::default()
        }
    }

    /// Lets a connection from `source` start its handshake, or says why not.
    /// Each admitted one must be [`Admission::release`]d.
    pub fn admit(&mut self, source: IpAddr) -> Result<(), Refusal> {
        if self.pending >= self.limits.total {
            self.refused += 1;
            return Err(Refusal::Total);
        }
        let from_source = self.by_source.entry(source).or_default();
        if !source.is_loopback() && *from_source >= self.limits.per_source {
            self.refused += 1;
            return Err(Refusal::Source);
        }
        *from_source += 1;
        self.pending += 1;
        Ok(())
    }

    /// A connection from `source` finished its handshake, well or not.
    pub fn release(&mut self, source: IpAddr) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
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
        for _ in 0..3 {
            assert_eq!(admission.admit(a), Ok(()));
        }
        assert_eq!(admission.admit(a), Err(Refusal::Source));
        assert_eq!(admission.admit(ip("10.0.0.2")), Ok(()));
        admission.release(a);
        assert_eq!(admission.admit(a), Ok(()), "a finished handshake frees a place");
        assert_eq!(admission.refused, 1);
    }

    #[test]
    fn the_total_holds_for_every_source_loopback_included() {
        let mut admission = Admission::new(AdmissionLimits {
            total: 5,
            per_source: 2,
        });
        let local = ip("127.0.0.1");
        for _ in 0..5 {
            assert_eq!(admission.admit(local), Ok(()), "loopback is held to the total only");
        }
        assert_eq!(admission.admit(local), Err(Refusal::Total));
        assert_eq!(admission.admit(ip("10.0.0.9")), Err(Refusal::Total));
        for _ in 0..5 {
            admission.release(local);
        }
        assert_eq!(admission.pending(), 0);
        assert!(admission.by_source.is_empty(), "released sources are forgotten");
        assert_eq!(admission.refused, 2);
    }
}
