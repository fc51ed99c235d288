//! How the simulator's runs measure: spreads over nodes, percentiles, and
//! the idle window, shared by the standard run and its table phase.

use super::{NodeStats, Sim};
use serde::Serialize;
use std::time::Duration;

/// Per-node figures over a window: mean and max.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub max: f64,
}

pub fn spread(values: impl Iterator<Item = f64>) -> Spread {
    let (mut sum, mut max, mut n) = (0.0, 0.0f64, 0usize);
    for v in values {
        sum += v;
        max = max.max(v);
        n += 1;
    }
    Spread {
        mean: if n == 0 { 0.0 } else { sum / n as f64 },
        max,
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`th percentile of `sorted` (NaN if it is empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A repeatable number in [0, 1) for node `i`.
pub fn rand_unit(seed: u64, i: usize) -> f64 {
    let h = crate::cluster::core::hash::combine(seed, i as u64);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

pub fn totals(sim: &Sim) -> Vec<NodeStats> {
    sim.nodes.iter().map(|n| n.stats).collect()
}

/// Every node republishes its state this often, as the Monitor does: at
/// least every 10 s, and every N/2 s in larger clusters, so the cluster
/// carries about two states per second whatever its size.
pub fn state_refresh(nodes: usize) -> Duration {
    Duration::from_secs_f64((nodes as f64 / 2.0).max(10.0))
}

/// Per-node traffic over an idle window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    pub msgs_per_s: Spread,
    pub frames_per_s: Spread,
    pub bytes_per_s: Spread,
    pub refresh: Duration,
}

/// Runs `length` of idle time, every node republishing a state of
/// `state_bytes` on its refresh (each at its own repeatable moment), and
/// answers what each node sent and received meanwhile.
pub fn idle_window(sim: &mut Sim, length: Duration, state_bytes: usize, seed: u64) -> Idle {
    let before = totals(sim);
    let refresh = state_refresh(sim.nodes.len());
    let start = sim.now();
    let mut next_state: Vec<Duration> = (0..sim.nodes.len())
        .map(|i| start + refresh.mul_f64(rand_unit(seed ^ 0x5eed, i)))
        .collect();
    while sim.now() < start + length {
        for (i, at) in next_state.iter_mut().enumerate() {
            if *at <= sim.now() {
                if sim.nodes[i].up {
                    sim.set_state(i, state_bytes);
                }
                *at += refresh;
            }
        }
        sim.run_for(Duration::from_millis(100));
    }
    let secs = (sim.now() - start).as_secs_f64();
    let after = totals(sim);
    let up: Vec<bool> = sim.nodes.iter().map(|n| n.up).collect();
    let rate = |f: fn(&NodeStats) -> u64| {
        spread(
            before
                .iter()
                .zip(&after)
                .zip(&up)
                .filter(|(_, up)| **up)
                .map(|((b, a), _)| (f(a) - f(b)) as f64 / secs),
        )
    };
    Idle {
        msgs_per_s: rate(|s| s.msgs_in + s.msgs_out),
        frames_per_s: rate(|s| s.frames_in + s.frames_out),
        bytes_per_s: rate(|s| s.bytes_in + s.bytes_out),
        refresh,
    }
}
