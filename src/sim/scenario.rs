//! The simulator's standard run (`make sim N=…`): a simultaneous start, a
//! late joiner, an idle window, broadcasts, two crashes, then (if asked)
//! one lying node, then 10% loss and overload, measured the way the
//! benchmark measures real nodes.

use super::liar::{self, LiarReport};
use super::measure::{idle_window, ms, percentile, rand_unit, spread, Spread};
use super::table::{self, TableConfig, TableReport};
use super::{Crash, Sim, SimConfig};
use crate::cluster::core::hash::{StableMap, StableSet};
use crate::cluster::core::{Change, Standing};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Nodes start at random moments within this window.
    pub start_spread: Duration,
    pub idle: Duration,
    pub broadcasts: usize,
    pub loss: f64,
    pub loss_duration: Duration,
    /// Share of nodes made slow, how slow, and the broadcasts per second
    /// the cluster carries meanwhile.
    pub overload_share: f64,
    pub overload_factor: f64,
    pub overload_rate: f64,
    pub overload_duration: Duration,
    /// Bytes of each node's state: a status report, deflated, as a node
    /// publishes it (a three-module report of 2.5 KiB deflates to about
    /// 700 bytes).
    pub state_bytes: usize,
    /// The deployments-table phase.
    pub table: TableConfig,
    /// Give up on convergence after this long.
    pub limit: Duration,
    /// Nodes have identity keys and sign their own member records.
    pub keyed: bool,
    /// How long one node lies about all others (zero: no liar).
    pub liar: Duration,
}

impl ScenarioConfig {
    pub fn new(nodes: usize) -> ScenarioConfig {
        ScenarioConfig {
            nodes,
            seed: 1,
            start_spread: Duration::from_millis(500),
            idle: Duration::from_secs(30),
            broadcasts: 100,
            loss: 0.10,
            loss_duration: Duration::from_secs(300),
            overload_share: 0.10,
            overload_factor: 1000.0,
            overload_rate: 20.0,
            overload_duration: Duration::from_secs(60),
            state_bytes: 700,
            table: TableConfig::default(),
            limit: Duration::from_secs(180),
            keyed: false,
            liar: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    /// From the first node's start until every node lists every node up;
    /// `None` if that did not happen within the limit.
    pub converge_ms: Option<f64>,
    /// Nodes that listed everyone when the limit came (if it did).
    pub converged_nodes: usize,
    /// Member records refused as unproven by the time all listed all (a
    /// keyed run has no liar then: each is a genuine record refused).
    pub unproven_at_start: u64,
    /// News of new members dropped over a link's budget by then: a mass
    /// start should bring none over one link.
    pub news_dropped_at_start: u64,
    /// Signatures (members' proofs, seals) checked per node by then, mean
    /// and most: what signed records cost a start in CPU.
    pub signatures_at_start: Spread,
    pub late_join_ms: Option<f64>,
    /// Per node, in the idle window (a state republished every
    /// `state_refresh_s` per node, as the Monitor does).
    pub idle_msgs_per_s: Spread,
    pub idle_frames_per_s: Spread,
    pub idle_bytes_per_s: Spread,
    pub state_refresh_s: f64,
    pub open_links: Spread,
    pub max_links_ever: usize,
    pub memory_kib: Spread,
    pub broadcasts: usize,
    pub broadcast_reach: f64,
    pub broadcast_p50_ms: f64,
    pub broadcast_p99_ms: f64,
    pub broadcast_max_ms: f64,
    /// p99 in mean one-way link latencies.
    pub broadcast_p99_link_latencies: f64,
    /// Frames each node received per broadcast (1 is ideal).
    pub frames_per_broadcast: f64,
    /// Until every survivor lists a silently crashed host dead.
    pub detect_silent_ms: Option<f64>,
    pub detect_silent_p50_ms: Option<f64>,
    /// Until every survivor lists a killed process dead.
    pub detect_reset_ms: Option<f64>,
    pub false_dead_steady: u64,
    pub loss: f64,
    pub loss_s: f64,
    pub false_dead_loss: u64,
    pub suspicions_loss: u64,
    /// Failed probes not turned into suspicions: the host still acked.
    pub stalls_excused_loss: u64,
    pub overload_nodes: usize,
    pub overload_s: f64,
    pub false_dead_overload: u64,
    pub suspicions_overload: u64,
    pub stalls_excused_overload: u64,
    pub overload_max_queue_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liar: Option<LiarReport>,
    pub sim_events: u64,
    pub wall_s: f64,
}

/// Failed probes, summed over every node, that were not turned into
/// suspicions because the subject's host still acked.
fn stalls_excused(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .map(|n| n.core.detector_counters().stalls_excused)
        .sum()
}

/// Starts `n` nodes at random moments within `spread`, all joining node 0,
/// retrying like the seed task does, and runs until every node lists every
/// node, or `limit`. Answers the time it took.
pub fn start_cluster(sim: &mut Sim, n: usize, spread: Duration, limit: Duration) -> Option<Duration> {
    start_cluster_with(sim, n, spread, limit, &|_: &str| {})
}

/// [`start_cluster`], telling `progress` how far it got every simulated
/// second (a 10,000-node start takes minutes of wall time).
pub fn start_cluster_with(
    sim: &mut Sim,
    n: usize,
    spread: Duration,
    limit: Duration,
    progress: &dyn Fn(&str),
) -> Option<Duration> {
    let t0 = sim.now();
    let mut next_report = t0 + Duration::from_secs(1);
    let mut starts: Vec<(Duration, usize)> = Vec::new();
    for i in 0..n {
        let at = if i == 0 {
            Duration::ZERO
        } else {
            spread.mul_f64(rand_unit(sim.config.seed, i))
        };
        starts.push((at, i));
    }
    starts.sort();
    let first = sim.nodes.len();
    let mut pending = starts.into_iter().peekable();
    let mut retry: StableMap<usize, (Duration, Duration)> = StableMap::default();
    loop {
        let now = sim.now() - t0;
        while let Some((at, i)) = pending.peek().copied() {
            if at > now {
                break;
            }
            pending.next();
            let idx = sim.add_node(&format!("n{i}"));
            if i > 0 {
                sim.join(idx, first);
                retry.insert(
                    idx,
                    (sim.now() + Duration::from_millis(250), Duration::from_millis(250)),
                );
            }
        }
        // Seeds are retried with backoff until the node is in.
        let due: Vec<usize> = retry
            .iter()
            .filter(|(_, (at, _))| *at <= sim.now())
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            if sim.nodes[i].core.standing() == &Standing::Joined {
                retry.remove(&i);
            } else {
                let (_, backoff) = retry[&i];
                sim.join(i, first);
                let next = (backoff * 2).min(Duration::from_secs(30));
                retry.insert(i, (sim.now() + next, next));
            }
        }
        if pending.peek().is_none() && sim.converged() {
            return Some(sim.now() - t0);
        }
        if now > limit {
            return None;
        }
        if sim.now() >= next_report {
            next_report += Duration::from_secs(1);
            let least = sim.nodes.iter().map(|x| x.core.up_count()).min().unwrap_or(0);
            let full = sim.nodes.iter().filter(|x| x.core.up_count() == n).count();
            let most_links = sim.nodes.iter().map(|x| x.stats.max_links).max().unwrap_or(0);
            progress(&format!(
                "start +{:.0}s: {} of {n} started, {full} list everyone, the least informed lists {least}; \
                 most links held by one node so far {most_links}",
                now.as_secs_f64(),
                sim.nodes.len() - first,
            ));
        }
        sim.run_for(Duration::from_millis(20));
    }
}

/// Runs until every running node has seen `victim` dead; answers when
/// the last and the median one did.
fn wait_dead(sim: &mut Sim, victim: &str, since: Duration, limit: Duration) -> (Option<f64>, Option<f64>) {
    let deadline = sim.now() + limit;
    loop {
        let seen: StableSet<usize> = sim
            .seen
            .iter()
            .filter(|s| s.member == victim && s.change == Change::Dead)
            .map(|s| s.observer)
            .collect();
        let survivors: Vec<usize> = (0..sim.nodes.len())
            .filter(|i| sim.nodes[*i].up && sim.nodes[*i].name != victim)
            .collect();
        if survivors.iter().all(|i| seen.contains(i)) {
            let mut times: Vec<f64> = survivors
                .iter()
                .filter_map(|i| {
                    sim.seen
                        .iter()
                        .find(|s| s.observer == *i && s.member == victim && s.change == Change::Dead)
                        .map(|s| ms(s.at - since))
                })
                .collect();
            times.sort_by(f64::total_cmp);
            return (times.last().copied(), Some(percentile(&times, 50.0)));
        }
        if sim.now() > deadline {
            return (None, None);
        }
        sim.run_for(Duration::from_millis(10));
    }
}

/// The standard run.
pub fn run(config: &ScenarioConfig, progress: impl Fn(&str)) -> Report {
    let wall = Instant::now();
    let mut sim_config = SimConfig::lan(config.seed);
    sim_config.keyed = config.keyed;
    let mut sim = Sim::new(sim_config);
    let n = config.nodes;
    let mut report = Report {
        nodes: n,
        seed: config.seed,
        ..Report::default()
    };

    progress(&format!("starting {n} nodes"));
    report.converge_ms = start_cluster_with(&mut sim, n, config.start_spread, config.limit, &progress).map(ms);
    report.converged_nodes = sim.nodes.iter().filter(|x| x.core.up_count() == n).count();
    if report.converge_ms.is_none() {
        progress(&format!(
            "not converged after {:?}: {} of {n} nodes list everyone",
            config.limit, report.converged_nodes
        ));
        report.sim_events = sim.events;
        report.wall_s = wall.elapsed().as_secs_f64();
        return report;
    }
    progress(&format!("converged in {:.0} ms", report.converge_ms.unwrap_or(0.0)));
    report.unproven_at_start = sim.nodes.iter().map(|x| x.core.counters.records_unproven).sum();
    report.news_dropped_at_start = sim.nodes.iter().map(|x| x.core.counters.news_over_budget).sum();
    report.signatures_at_start = spread(sim.nodes.iter().map(|x| x.core.counters.signatures_checked as f64));

    // Every node publishes its status report once.
    for i in 0..n {
        sim.set_state(i, config.state_bytes);
    }
    sim.run_for(Duration::from_secs(2));

    progress("late joiner");
    let t = sim.now();
    let late = sim.add_node("late");
    sim.join(late, 0);
    loop {
        if sim.nodes.iter().all(|x| x.core.up_count() == n + 1) {
            report.late_join_ms = Some(ms(sim.now() - t));
            break;
        }
        if sim.now() - t > Duration::from_secs(60) {
            break;
        }
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(2));

    progress("idle window");
    let false_before = sim.false_deaths;
    let idle = idle_window(&mut sim, config.idle, config.state_bytes, config.seed);
    report.state_refresh_s = idle.refresh.as_secs_f64();
    report.idle_msgs_per_s = idle.msgs_per_s;
    report.idle_frames_per_s = idle.frames_per_s;
    report.idle_bytes_per_s = idle.bytes_per_s;
    report.open_links = spread(sim.nodes.iter().map(|x| x.core.link_count() as f64));
    report.max_links_ever = sim.nodes.iter().map(|x| x.stats.max_links).max().unwrap_or(0);
    report.memory_kib = spread(sim.nodes.iter().map(|x| x.core.heap_bytes() as f64 / 1024.0));

    progress("broadcasts");
    let frames_before: u64 = sim.nodes.iter().map(|x| x.stats.frames_in).sum();
    let mut sent: Vec<(u128, usize, Duration)> = Vec::new();
    sim.deliveries.clear();
    let total = sim.nodes.len();
    for b in 0..config.broadcasts {
        let origin = (crate::cluster::core::hash::combine(config.seed, b as u64) as usize) % total;
        let id = sim.broadcast(origin, 256);
        sent.push((id, origin, sim.now()));
        sim.run_for(Duration::from_millis(50));
    }
    sim.run_for(Duration::from_secs(3));
    let frames_after: u64 = sim.nodes.iter().map(|x| x.stats.frames_in).sum();
    let by_id: StableMap<u128, (usize, Duration)> = sent.iter().map(|(id, o, t)| (*id, (*o, *t))).collect();
    let mut latencies = Vec::new();
    let mut reached: StableSet<(u128, usize)> = StableSet::default();
    for d in &sim.deliveries {
        if let Some((origin, t)) = by_id.get(&d.id) {
            if d.node != *origin && reached.insert((d.id, d.node)) {
                latencies.push(ms(d.at - *t));
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    report.broadcasts = config.broadcasts;
    report.broadcast_reach = reached.len() as f64 / (config.broadcasts * (total - 1)) as f64;
    report.broadcast_p50_ms = percentile(&latencies, 50.0);
    report.broadcast_p99_ms = percentile(&latencies, 99.0);
    report.broadcast_max_ms = latencies.last().copied().unwrap_or(f64::NAN);
    report.broadcast_p99_link_latencies = report.broadcast_p99_ms / ms(sim.config.mean_latency());
    report.frames_per_broadcast = (frames_after - frames_before) as f64 / (config.broadcasts as f64 * total as f64);

    progress("silent crash");
    let victim = sim.nodes[total / 2].name.clone();
    sim.watch.insert(victim.clone());
    let t = sim.now();
    sim.crash(total / 2, Crash::Silent);
    let (last, median) = wait_dead(&mut sim, &victim, t, Duration::from_secs(60));
    report.detect_silent_ms = last;
    report.detect_silent_p50_ms = median;
    sim.run_for(Duration::from_secs(2));

    progress("killed process");
    let victim = sim.nodes[total / 3].name.clone();
    sim.watch.insert(victim.clone());
    let t = sim.now();
    sim.crash(total / 3, Crash::Reset);
    report.detect_reset_ms = wait_dead(&mut sim, &victim, t, Duration::from_secs(60)).0;
    sim.run_for(Duration::from_secs(2));
    report.false_dead_steady = sim.false_deaths - false_before;

    if !config.liar.is_zero() {
        report.liar = Some(liar::run(&mut sim, 1, config.liar, &progress));
    }

    if config.table.entries > 0 {
        report.table = Some(table::run(
            &mut sim,
            &config.table,
            config.idle,
            config.state_bytes,
            config.seed,
            &progress,
        ));
    }

    if !config.loss_duration.is_zero() {
        progress(&format!(
            "{:.0}% loss for {:?}",
            config.loss * 100.0,
            config.loss_duration
        ));
        let (f0, s0, e0) = (sim.false_deaths, sim.suspicions, stalls_excused(&sim));
        sim.config.loss = config.loss;
        sim.run_for(config.loss_duration);
        sim.config.loss = 0.0;
        sim.run_for(Duration::from_secs(5));
        report.loss = config.loss;
        report.loss_s = config.loss_duration.as_secs_f64();
        report.false_dead_loss = sim.false_deaths - f0;
        report.suspicions_loss = sim.suspicions - s0;
        report.stalls_excused_loss = stalls_excused(&sim) - e0;
    }

    if !config.overload_duration.is_zero() {
        progress(&format!("overload for {:?}", config.overload_duration));
        let (f0, s0, e0) = (sim.false_deaths, sim.suspicions, stalls_excused(&sim));
        let slow: Vec<usize> = (0..total)
            .filter(|i| sim.nodes[*i].up && rand_unit(config.seed ^ 0x510, *i) < config.overload_share)
            .collect();
        for i in &slow {
            sim.nodes[*i].slow = config.overload_factor;
            sim.nodes[*i].stats.max_queue_delay = Duration::ZERO;
        }
        let start = sim.now();
        let step = Duration::from_secs_f64(1.0 / config.overload_rate.max(0.1));
        let mut b = 0u64;
        while sim.now() < start + config.overload_duration {
            let origin = (crate::cluster::core::hash::combine(config.seed ^ 0xb, b) as usize) % total;
            b += 1;
            if sim.nodes[origin].up {
                sim.broadcast(origin, 1024);
            }
            sim.run_for(step);
        }
        report.overload_max_queue_ms = slow
            .iter()
            .map(|i| ms(sim.nodes[*i].stats.max_queue_delay))
            .fold(0.0, f64::max);
        for i in &slow {
            sim.nodes[*i].slow = 1.0;
        }
        sim.run_for(Duration::from_secs(10));
        report.overload_nodes = slow.len();
        report.overload_s = config.overload_duration.as_secs_f64();
        report.false_dead_overload = sim.false_deaths - f0;
        report.suspicions_overload = sim.suspicions - s0;
        report.stalls_excused_overload = stalls_excused(&sim) - e0;
    }

    report.sim_events = sim.events;
    report.wall_s = wall.elapsed().as_secs_f64();
    report
}

/// A figure of the table phase, or `-` for a run without it.
fn on_table(r: &Report, f: impl Fn(&TableReport) -> String) -> String {
    r.table.as_ref().map_or("-".to_string(), f)
}

/// The report as the table `make sim` prints.
pub fn table(reports: &[Report]) -> String {
    let opt = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0}"));
    let mut out = String::new();
    out.push_str("| measure | ");
    out.push_str(
        &reports
            .iter()
            .map(|r| format!("N = {}", r.nodes))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---:|".repeat(reports.len()));
    out.push('\n');
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        out.push_str(&format!("| {name} | "));
        out.push_str(&reports.iter().map(f).collect::<Vec<_>>().join(" | "));
        out.push_str(" |\n");
    };
    row("simultaneous start: all list all (ms)", &|r| opt(r.converge_ms));
    row("records refused as unproven during the start", &|r| {
        r.unproven_at_start.to_string()
    });
    row("new-member news over a link's budget during the start", &|r| {
        r.news_dropped_at_start.to_string()
    });
    row("signatures checked per node during the start, mean (max)", &|r| {
        format!("{:.0} ({:.0})", r.signatures_at_start.mean, r.signatures_at_start.max)
    });
    row("late joiner known to all (ms)", &|r| opt(r.late_join_ms));
    row("idle msgs/s per node, mean (max)", &|r| {
        format!("{:.1} ({:.1})", r.idle_msgs_per_s.mean, r.idle_msgs_per_s.max)
    });
    row("idle frames/s per node, mean (max)", &|r| {
        format!("{:.1} ({:.1})", r.idle_frames_per_s.mean, r.idle_frames_per_s.max)
    });
    row("idle KB/s per node, mean (max)", &|r| {
        format!(
            "{:.2} ({:.2})",
            r.idle_bytes_per_s.mean / 1000.0,
            r.idle_bytes_per_s.max / 1000.0
        )
    });
    row("open links per node after idle, mean (max); max during start", &|r| {
        format!("{:.1} ({}); {}", r.open_links.mean, r.open_links.max, r.max_links_ever)
    });
    row("cluster state held per node, KiB mean (max)", &|r| {
        format!("{:.0} ({:.0})", r.memory_kib.mean, r.memory_kib.max)
    });
    row("broadcast reach", &|r| format!("{:.2}%", r.broadcast_reach * 100.0));
    row("broadcast p50 / p99 / max (ms)", &|r| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            r.broadcast_p50_ms, r.broadcast_p99_ms, r.broadcast_max_ms
        )
    });
    row("broadcast p99 in link latencies", &|r| {
        format!("{:.1}", r.broadcast_p99_link_latencies)
    });
    row("frames received per node per broadcast", &|r| {
        format!("{:.2}", r.frames_per_broadcast)
    });
    row("host lost silently: dead on all (ms), median", &|r| {
        format!("{}, {}", opt(r.detect_silent_ms), opt(r.detect_silent_p50_ms))
    });
    row("process killed: dead on all (ms)", &|r| opt(r.detect_reset_ms));
    row("false dead, steady", &|r| r.false_dead_steady.to_string());
    row("false dead at 10% loss (suspicions; stalls excused)", &|r| {
        format!(
            "{} ({}; {}) over {:.0} s",
            r.false_dead_loss, r.suspicions_loss, r.stalls_excused_loss, r.loss_s
        )
    });
    row("false dead under overload (suspicions; stalls excused)", &|r| {
        format!(
            "{} ({}; {}), {} slow nodes, queue ≤ {:.0} ms",
            r.false_dead_overload,
            r.suspicions_overload,
            r.stalls_excused_overload,
            r.overload_nodes,
            r.overload_max_queue_ms
        )
    });
    row(
        "deployments table: entries of bytes; all hold all after the last write (ms)",
        &|r| {
            on_table(r, |t| {
                format!("{} of {} B; {}", t.entries, t.entry_bytes, opt(t.loaded_ms))
            })
        },
    );
    row("idle msgs/s per node with the table, mean (max)", &|r| {
        on_table(r, |t| {
            format!("{:.1} ({:.1})", t.idle_msgs_per_s.mean, t.idle_msgs_per_s.max)
        })
    });
    row("idle KB/s per node with the table, mean (max)", &|r| {
        on_table(r, |t| {
            format!(
                "{:.2} ({:.2})",
                t.idle_bytes_per_s.mean / 1000.0,
                t.idle_bytes_per_s.max / 1000.0
            )
        })
    });
    row("cluster state held per node with the table, KiB mean (max)", &|r| {
        on_table(r, |t| format!("{:.0} ({:.0})", t.memory_kib.mean, t.memory_kib.max))
    });
    row("one new entry held by all: p50 / p99 / max (ms), held/written", &|r| {
        on_table(r, |t| {
            format!(
                "{:.1} / {:.1} / {:.1}, {}/{}",
                t.write_p50_ms, t.write_p99_ms, t.write_max_ms, t.writes_held_by_all, t.writes
            )
        })
    });
    row("node back with an empty table holds all entries (ms)", &|r| {
        on_table(r, |t| {
            format!("{} ({} entries)", opt(t.returned_ms), t.returned_entries)
        })
    });
    row("false dead in the table phase", &|r| {
        on_table(r, |t| t.false_dead.to_string())
    });
    let on_liar = |r: &Report, f: &dyn Fn(&LiarReport) -> String| r.liar.as_ref().map_or("-".to_string(), f);
    row("one liar: keyed; seconds; forged records sent; its links", &|r| {
        on_liar(r, &|l| {
            format!(
                "{}; {:.0} s; {}; {}",
                if l.keyed { "yes" } else { "no" },
                l.seconds,
                l.lies,
                l.neighbours
            )
        })
    });
    row("one liar: false dead; lost pairs max, 10 s after; refused", &|r| {
        on_liar(r, &|l| {
            format!(
                "{}; {}, {}; {}",
                l.false_dead, l.lost_pairs_max, l.lost_pairs_end, l.refused
            )
        })
    });
    row("simulator wall time (s)", &|r| format!("{:.1}", r.wall_s));
    out
}
