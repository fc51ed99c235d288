//! The simulator's deployments-table phase: what holding the table costs
//! the cluster, and how fast it moves. One node writes the table's entries
//! (as a long life of deploys would have), then the run measures the idle
//! traffic with the table held, how long one new entry (a deploy) takes
//! to reach every node, and how long a node that comes back with an empty
//! table takes to hold it all again.

use super::measure::{idle_window, ms, percentile, rand_unit, spread, Spread};
use super::{Crash, Sim};
use serde::Serialize;
use std::time::Duration;

/// What the phase does.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Entries written first (0 skips the phase).
    pub entries: usize,
    /// Bytes of each entry's body: a deploy entry with a package source,
    /// a sha256, a small config and a rollout is about 400.
    pub entry_bytes: usize,
    /// Time between two of the first entries' writes.
    pub write_gap: Duration,
    /// Single entries written afterwards, each timed until every node
    /// holds it.
    pub writes: usize,
    /// Entries written while the returning node is away.
    pub while_away: usize,
}

impl Default for TableConfig {
    fn default() -> TableConfig {
        TableConfig {
            entries: 1000,
            entry_bytes: 400,
            write_gap: Duration::from_millis(10),
            writes: 20,
            while_away: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub entries: usize,
    pub entry_bytes: usize,
    /// From the last of the first entries' writes until every running
    /// node holds them all.
    pub loaded_ms: Option<f64>,
    /// Per running node, in an idle window with the table held.
    pub idle_msgs_per_s: Spread,
    pub idle_bytes_per_s: Spread,
    pub memory_kib: Spread,
    pub writes: usize,
    /// Writes that every running node held within 30 s.
    pub writes_held_by_all: usize,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    pub write_max_ms: f64,
    /// Entries the returning node had to take, and how long it took from
    /// its start.
    pub returned_entries: usize,
    pub returned_ms: Option<f64>,
    pub false_dead: u64,
}

/// Entry `n`'s key, shaped like a deploy's UUIDv7.
fn key(n: usize) -> String {
    format!("0190c0de-0000-7000-8000-{n:012x}")
}

/// Runs until every running node holds `count` entries, or `limit`;
/// answers how long it took.
fn until_all_hold(sim: &mut Sim, count: usize, limit: Duration) -> Option<Duration> {
    let start = sim.now();
    loop {
        if (0..sim.nodes.len()).all(|i| !sim.nodes[i].up || sim.entries_held(i) >= count) {
            return Some(sim.now() - start);
        }
        if sim.now() - start > limit {
            return None;
        }
        sim.run_for(Duration::from_millis(5));
    }
}

/// The phase, on a converged cluster; `idle` and `state_bytes` as the
/// standard run's idle window.
pub fn run(
    sim: &mut Sim,
    config: &TableConfig,
    idle: Duration,
    state_bytes: usize,
    seed: u64,
    progress: &dyn Fn(&str),
) -> TableReport {
    let mut report = TableReport {
        entries: config.entries,
        entry_bytes: config.entry_bytes,
        writes: config.writes,
        ..TableReport::default()
    };
    let false_before = sim.false_deaths;
    let mut written = sim.entries_held(0);

    progress(&format!(
        "table: {} entries written {:?} apart",
        config.entries, config.write_gap
    ));
    for n in 0..config.entries {
        if n > 0 {
            sim.run_for(config.write_gap);
        }
        sim.write_entry(0, &key(written), config.entry_bytes);
        written += 1;
    }
    report.loaded_ms = until_all_hold(sim, written, Duration::from_secs(120)).map(ms);
    sim.run_for(Duration::from_secs(2));

    progress("table: idle window");
    let held = idle_window(sim, idle, state_bytes, seed);
    report.idle_msgs_per_s = held.msgs_per_s;
    report.idle_bytes_per_s = held.bytes_per_s;
    report.memory_kib = spread(
        sim.nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.core.heap_bytes() as f64 / 1024.0),
    );

    progress(&format!("table: {} single writes", config.writes));
    let up: Vec<usize> = (0..sim.nodes.len()).filter(|i| sim.nodes[*i].up).collect();
    let mut times = Vec::new();
    for w in 0..config.writes {
        let origin = up[(rand_unit(seed ^ 0x7ab1e, w) * up.len() as f64) as usize % up.len()];
        sim.write_entry(origin, &key(written), config.entry_bytes);
        written += 1;
        if let Some(took) = until_all_hold(sim, written, Duration::from_secs(30)) {
            times.push(ms(took));
        }
        sim.run_for(Duration::from_millis(500));
    }
    report.writes_held_by_all = times.len();
    times.sort_by(f64::total_cmp);
    report.write_p50_ms = percentile(&times, 50.0);
    report.write_p99_ms = percentile(&times, 99.0);
    report.write_max_ms = times.last().copied().unwrap_or(f64::NAN);

    progress("table: a node returns with an empty table");
    let away = up[up.len() / 4];
    sim.crash(away, Crash::Reset);
    sim.run_for(Duration::from_secs(5));
    for _ in 0..config.while_away {
        sim.write_entry(0, &key(written), config.entry_bytes);
        written += 1;
        sim.run_for(config.write_gap);
    }
    sim.run_for(Duration::from_secs(2));
    sim.restart(away);
    sim.join(away, 0);
    let start = sim.now();
    while sim.entries_held(away) < written && sim.now() - start < Duration::from_secs(120) {
        sim.run_for(Duration::from_millis(5));
    }
    report.returned_entries = sim.entries_held(away);
    report.returned_ms = (report.returned_entries >= written).then(|| ms(sim.now() - start));
    sim.run_for(Duration::from_secs(2));
    report.false_dead = sim.false_deaths - false_before;
    report
}
